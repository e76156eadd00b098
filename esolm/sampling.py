"""Categorical sampling shared by every sampler: nucleus filtering and Gumbel-argmax,
both in float64 (spec 5.6, 13: float32 Gumbel noise lowers the effective temperature)."""
from __future__ import annotations

import torch


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest top-probability prefix whose mass exceeds ``top_p`` (spec 5.6).

    Token j (in descending order) is removed iff the inclusive cumulative mass of the
    tokens before it already exceeds p; the top token always stays. Returns float64
    logits with removed entries at -inf. ``top_p >= 1`` returns the logits unchanged.
    """
    logits = logits.double()
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = torch.zeros_like(cum, dtype=torch.bool)
    remove_sorted[..., 1:] = cum[..., :-1] > top_p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def gumbel_noise(shape, generator=None, device=None) -> torch.Tensor:
    """float64 Gumbel(0, 1) noise: -log(-log u), u ~ U(0, 1)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    exponential = -torch.log(u.clamp_min(tiny))
    return -torch.log(exponential.clamp_min(tiny))


def sample_categorical(logits: torch.Tensor, top_p: float = 1.0, generator=None) -> torch.Tensor:
    """Draw one token per row from softmax(logits), nucleus-filtered, in float64."""
    logits = nucleus_filter(logits, top_p)
    return (logits + gumbel_noise(logits.shape, generator, logits.device)).argmax(dim=-1)


def sample_from_probs(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """Gumbel-argmax draw from (unnormalized) float64 probabilities; zeros are never drawn."""
    logp = probs.double().log()
    return (logp + gumbel_noise(logp.shape, generator, logp.device)).argmax(dim=-1)


def fill_slots(fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(at [B, k], keep [B, k]) for a boolean ``fill`` [B, N]: each row's positions to fill, in
    ascending order, padded to the longest row's k with positions that ``keep`` marks False.

    ``backbone(..., at=at)[keep]`` lists the logits of ``fill.nonzero()`` in the same order, so a
    sampler computes the LM head only where it draws a token.
    """
    k = int(fill.sum(1).max()) if fill.numel() else 0
    at = fill.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :k]
    return at, fill.gather(1, at)
