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


@torch.no_grad()
def score_rows(evaluator, rows: list[list[int]], *, max_length: int | None = None, batch_size: int = 8,
               progress: bool = False) -> tuple[float, int]:
    """(sum of NLL over valid targets in nats, number of valid targets) of evaluator-token rows.

    Chunks are sorted by length and scored ``batch_size`` at a time, right-padded with the
    evaluator's pad id under an attention mask.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
    chunks = chunk_rows(rows, max_length, evaluator.max_length)
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
    nll_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"gen PPL ({evaluator.name})", unit="batch")
    for start in batches:
        batch = [chunks[i] for i in order[start:start + batch_size]]
        n = len(batch[0])
        ids = torch.full((len(batch), n), evaluator.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), n), dtype=torch.bool)
        for b, c in enumerate(batch):
            ids[b, :len(c)] = torch.tensor(c, dtype=torch.long)
            attention[b, :len(c)] = True
        logp = evaluator.token_logprobs(ids, attention).detach().to("cpu", torch.float64)
        valid = valid_targets(ids, attention, evaluator.eos_id)
        nll_sum += -torch.where(valid, logp, torch.zeros_like(logp)).sum()
        count += int(valid.sum())
    return float(nll_sum), count


def gen_ppl(texts: list[str], evaluator, *, max_length: int | None, batch_size: int = 8,
            progress: bool = False) -> dict:
    """Gen PPL = exp(sum NLL / sum valid targets) over all samples, token-weighted (spec 8.2).

    ``max_length``: the truncation length in evaluator tokens, the judged model's length L.
    """
    if not texts:
        raise ConfigError("gen_ppl needs at least one text; got none")
    rows = evaluator.encode(list(texts))
    nll_sum, num_tokens = score_rows(evaluator, rows, max_length=max_length, batch_size=batch_size,
                                     progress=progress)
    if num_tokens == 0:
        raise ConfigError(f"no text has a scorable token under {evaluator.name} (every sample retokenizes "
                          f"to fewer than 2 tokens); check that the samples are not empty")
    nll = nll_sum / num_tokens
    return dict(gen_ppl=_exp(nll), nll_per_token=nll, num_tokens=num_tokens, num_samples=len(texts),
                max_length=max_length, context=evaluator.max_length, batch_size=batch_size,
                evaluator=evaluator.describe())


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
