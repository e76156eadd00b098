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
    return chunk_rows_owned(rows, max_length, context)[0]


def chunk_rows_owned(rows: list[list[int]], max_length: int | None,
                     context: int | None) -> tuple[list[list[int]], list[int]]:
    """``chunk_rows`` and, for each chunk, the index of the row it came from (per-sample sums)."""
    chunks, owners = [], []
    for r, ids in enumerate(rows):
        ids = list(ids[:max_length] if max_length else ids)
        step = context or max(len(ids), 1)
        for s in range(0, len(ids), step):
            if len(ids[s:s + step]) >= 2:
                chunks.append(ids[s:s + step])
                owners.append(r)
    return chunks, owners


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
    """(sum of NLL over valid targets in nats, number of valid targets) of evaluator-token rows;
    with ``ref_pad`` also the same pair under the authors' padding rule (``score_chunks``)."""
    s = score_chunks(evaluator, rows, max_length=max_length, batch_size=batch_size, progress=progress,
                     ref_pad=ref_pad)
    if ref_pad:
        return s["nll"], s["count"], s["nll_ref_pad"], s["count_ref_pad"]
    return s["nll"], s["count"]


@torch.no_grad()
def score_chunks(evaluator, rows: list[list[int]], *, max_length: int | None = None, batch_size: int = 8,
                 progress: bool = False, ref_pad: bool = False) -> dict:
    """Every sum gen PPL needs, from one pass: ``nll`` (nats) and ``count`` over valid targets,
    ``row_nll`` / ``row_count`` per input row (its chunks summed, for bootstrap intervals over
    samples), and with ``ref_pad`` ``nll_ref_pad`` / ``count_ref_pad``.

    Chunks are sorted by length and scored ``batch_size`` at a time, right-padded with the
    evaluator's pad id under an attention mask. ref_pad (the authors' rule, ``ref_pad_chunks``):
    the chunks it picks get EOS written at their first pad position (under no attention, so
    nothing real sees it) and its log-probability added; a sorted batch whose longest chunk is
    one of them is one column wider.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
    chunks, owners = chunk_rows_owned(rows, max_length, evaluator.max_length)
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
    need = ref_pad_chunks(chunks, evaluator.eos_id, batch_size) if ref_pad else [False] * len(chunks)
    row_nll = torch.zeros(len(rows), dtype=torch.float64)
    row_count = torch.zeros(len(rows), dtype=torch.long)
    nll_sum = torch.zeros((), dtype=torch.float64)  # summed per batch, as before per-row sums existed
    extra_nll = torch.zeros((), dtype=torch.float64)
    extra_count = 0
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"gen PPL ({evaluator.name})", unit="batch")
    for start in batches:
        picked = order[start:start + batch_size]
        nll, total, count, extra = _score_batch(evaluator, [chunks[i] for i in picked], [need[i] for i in picked])
        owner = torch.tensor([owners[i] for i in picked], dtype=torch.long)
        row_nll.index_add_(0, owner, nll)
        row_count.index_add_(0, owner, count)
        nll_sum += total
        extra_nll += extra.sum()
        extra_count += sum(need[i] for i in picked)
    out = dict(nll=float(nll_sum), count=int(row_count.sum()), row_nll=row_nll.tolist(), row_count=row_count.tolist())
    if ref_pad:
        out.update(nll_ref_pad=float(nll_sum + extra_nll), count_ref_pad=out["count"] + extra_count)
    return out


def _score_batch(evaluator, batch: list[list[int]], extra: list[bool]) -> tuple:
    """One padded pass over ``batch``: per chunk the NLL over its valid targets [b] float64, the
    batch's total NLL (summed at once), the number of valid targets per chunk [b], and the NLL
    of EOS at the first pad for the chunks ``extra`` names [b] (0 elsewhere)."""
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
    kept = torch.where(valid, logp, torch.zeros_like(logp))
    extra_nll = torch.zeros(len(batch), dtype=torch.float64)
    for b, c in enumerate(batch):
        if extra[b]:  # target index len(c) - 1 predicts position len(c): EOS after the whole chunk
            extra_nll[b] = -logp[b, len(c) - 1]
    return -kept.sum(1), -kept.sum(), valid.sum(1), extra_nll


def gen_ppl(texts: list[str], evaluator, *, max_length: int | None, batch_size: int = 8,
            progress: bool = False, ref_pad: bool = False) -> dict:
    """Gen PPL = exp(sum NLL / sum valid targets) over all samples, token-weighted (spec 8.2).

    ``max_length``: the truncation length in evaluator tokens, the judged model's length L.
    ``ref_pad``: also ``gen_ppl_ref_pad``, the gen PPL under the authors' padding rule
    (``ref_pad_chunks``), from the same passes; off by default.

    Also ``per_sample`` = dict(nll=[...], count=[...]): each text's NLL sum (nats) over its valid
    targets and their number (its chunks summed), the unit of a bootstrap over samples; and
    ``scored_fraction``: the scored targets over all targets of the texts truncated to
    ``max_length`` (sum of len - 1 in evaluator tokens), which shows how much the first-EOS rule
    (and chunking) left out, so a sample run that is mostly EOS cannot hide behind a low PPL.
    """
    if not texts:
        raise ConfigError("gen_ppl needs at least one text; got none")
    rows = evaluator.encode(list(texts))
    scored = score_chunks(evaluator, rows, max_length=max_length, batch_size=batch_size, progress=progress,
                          ref_pad=ref_pad)
    num_tokens = scored["count"]
    targets = sum(max(len(r[:max_length] if max_length else r) - 1, 0) for r in rows)
    if targets == 0:
        raise ConfigError(f"no text has a scorable token under {evaluator.name} (every sample retokenizes "
                          f"to fewer than 2 tokens); check that the samples are not empty")
    # every target a repeated EOS (an all-EOS sampler): nothing is scored and gen PPL is undefined
    # (None), which scored_fraction = 0 says, rather than a refusal of the whole sample set
    nll = scored["nll"] / num_tokens if num_tokens else None
    out = dict(gen_ppl=_exp(nll) if num_tokens else None, nll_per_token=nll, num_tokens=num_tokens, num_samples=len(texts),
               max_length=max_length, context=evaluator.max_length, batch_size=batch_size,
               evaluator=evaluator.describe(), scored_fraction=num_tokens / targets,
               per_sample=dict(nll=scored["row_nll"], count=scored["row_count"]))
    if ref_pad and scored["count_ref_pad"]:
        nll_ref = scored["nll_ref_pad"] / scored["count_ref_pad"]
        out.update(gen_ppl_ref_pad=_exp(nll_ref), nll_per_token_ref_pad=nll_ref,
                   num_tokens_ref_pad=scored["count_ref_pad"], ref_pad_eos_targets=scored["count_ref_pad"] - num_tokens)
    return out


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
