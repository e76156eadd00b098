"""Generative perplexity (spec 8.2): retokenize with the evaluator, truncate to the model
length, chunk to the evaluator context (no carry-over), score, keep targets by the
first-EOS rule, and aggregate token-weighted over all samples."""
from __future__ import annotations

import math

import torch

from esolm.config import ConfigError


def valid_targets(chunk: torch.Tensor, attention: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """[B, n-1] bool: which targets ``chunk[:, 1:]`` count (spec 8.2 step 5, 11.17).

    A target counts iff it is a real token (not padding) and it is not EOS or it is the
    first EOS of its chunk. The first EOS is searched over the whole chunk, position 0
    included, so a leading BOS = EOS (GPT-2, OWT samples) is the chunk's first EOS and no
    EOS target is scored after it. Tokens after the first EOS still count. Padding never
    counts, so the result does not depend on how samples are batched.
    """
    attention = attention.bool()
    real = attention[:, 1:]
    if eos_id is None:
        return real
    is_eos = (chunk == eos_id) & attention
    first = is_eos & (is_eos.long().cumsum(1) == 1)
    return real & (~is_eos[:, 1:] | first[:, 1:])


def chunk_rows(rows: list[list[int]], max_length: int | None, context: int | None) -> list[list[int]]:
    """Truncate each row to ``max_length`` and cut it into consecutive ``context``-long chunks
    scored independently (spec 8.2 steps 2-3); chunks with no target (length < 2) are dropped."""
    chunks = []
    for ids in rows:
        ids = list(ids[:max_length] if max_length else ids)
        step = context or max(len(ids), 1)
        chunks.extend(ids[s:s + step] for s in range(0, len(ids), step) if len(ids[s:s + step]) >= 2)
    return chunks


def ref_pad_chunks(chunks: list[list[int]], eos_id: int | None, batch_size: int) -> list[bool]:
    """The authors' padding rule (docs/reference_switches.md): which chunks score one more
    target, EOS at their first pad. Their scorer pads with EOS = pad and finds the first EOS
    over the padded row, so a chunk with no EOS of its own that its batch pads (shorter than
    the longest chunk of its group of ``batch_size`` consecutive samples) has its first pad
    counted as EOS. Without an EOS id no chunk does."""
    if eos_id is None:
        return [False] * len(chunks)
    need = []
    for g in range(0, len(chunks), batch_size):
        group = chunks[g:g + batch_size]
        longest = max(len(c) for c in group)
        need += [len(c) < longest and eos_id not in c for c in group]
    return need


@torch.no_grad()
def score_rows(evaluator, rows: list[list[int]], *, max_length: int | None = None, batch_size: int = 8,
               progress: bool = False, ref_pad: bool = False) -> tuple:
    """(sum of NLL over valid targets in nats, number of valid targets) of evaluator-token rows.

    Chunks are sorted by length and scored ``batch_size`` at a time, right-padded with the
    evaluator's pad id under an attention mask.

    ref_pad: also the same pair under the authors' padding rule (``ref_pad_chunks``), from the
    same passes: (nll, count, nll_ref_pad, count_ref_pad). The chunks that rule picks get EOS
    written at their first pad position (under no attention, so nothing real sees it) and
    its log-probability added; a sorted batch whose longest chunk is one of them is one
    column wider.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
    chunks = chunk_rows(rows, max_length, evaluator.max_length)
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
    need = ref_pad_chunks(chunks, evaluator.eos_id, batch_size) if ref_pad else [False] * len(chunks)
    nll_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    extra_nll = torch.zeros((), dtype=torch.float64)
    extra_count = 0
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"gen PPL ({evaluator.name})", unit="batch")
    for start in batches:
        batch = [chunks[i] for i in order[start:start + batch_size]]
        extra = [need[i] for i in order[start:start + batch_size]]
        n = max(len(c) + int(e) for c, e in zip(batch, extra))  # a column more for a longest chunk's first pad
        ids = torch.full((len(batch), n), evaluator.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), n), dtype=torch.bool)
        for b, c in enumerate(batch):
            ids[b, :len(c)] = torch.tensor(c, dtype=torch.long)
            attention[b, :len(c)] = True
            if extra[b]:
                ids[b, len(c)] = evaluator.eos_id
        logp = evaluator.token_logprobs(ids, attention).detach().to("cpu", torch.float64)
        valid = valid_targets(ids, attention, evaluator.eos_id)
        nll_sum += -torch.where(valid, logp, torch.zeros_like(logp)).sum()
        count += int(valid.sum())
        for b, c in enumerate(batch):
            if extra[b]:  # target index len(c) - 1 predicts position len(c): EOS after the whole chunk
                extra_nll += -logp[b, len(c) - 1]
                extra_count += 1
    if ref_pad:
        return float(nll_sum), count, float(nll_sum + extra_nll), count + extra_count
    return float(nll_sum), count


def gen_ppl(texts: list[str], evaluator, *, max_length: int | None, batch_size: int = 8,
            progress: bool = False, ref_pad: bool = False) -> dict:
    """Gen PPL = exp(sum NLL / sum valid targets) over all samples, token-weighted (spec 8.2).

    ``max_length``: the truncation length in evaluator tokens, the judged model's length L.
    ``ref_pad``: also ``gen_ppl_ref_pad``, the gen PPL under the authors' padding rule
    (``ref_pad_chunks``), from the same passes; off by default.
    """
    if not texts:
        raise ConfigError("gen_ppl needs at least one text; got none")
    rows = evaluator.encode(list(texts))
    scored = score_rows(evaluator, rows, max_length=max_length, batch_size=batch_size, progress=progress,
                        ref_pad=ref_pad)
    nll_sum, num_tokens = scored[:2]
    if num_tokens == 0:
        raise ConfigError(f"no text has a scorable token under {evaluator.name} (every sample retokenizes "
                          f"to fewer than 2 tokens); check that the samples are not empty")
    nll = nll_sum / num_tokens
    out = dict(gen_ppl=_exp(nll), nll_per_token=nll, num_tokens=num_tokens, num_samples=len(texts),
               max_length=max_length, context=evaluator.max_length, batch_size=batch_size,
               evaluator=evaluator.describe())
    if ref_pad:
        nll_ref = scored[2] / scored[3]
        out.update(gen_ppl_ref_pad=_exp(nll_ref), nll_per_token_ref_pad=nll_ref, num_tokens_ref_pad=scored[3],
                   ref_pad_eos_targets=scored[3] - num_tokens)
    return out


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
