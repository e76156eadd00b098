"""Pieces shared by the masked-diffusion models (MDLM, BD3-LM, Eso-LM): the forward
masking process, target log-probabilities, and the per-rank slice of stratified t."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def forward_mask(x: torch.Tensor, keep_prob: torch.Tensor, mask_id: int, generator=None) -> torch.Tensor:
    """q_t(z | x): each token becomes ``mask_id`` with probability 1 - keep_prob (spec 3.3).

    ``keep_prob`` (alpha_t) broadcasts against x: [B, 1] per sequence or [B, L] per token.
    """
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    return torch.where(u < 1 - keep_prob, torch.full_like(x, mask_id), x)


def target_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in at least float32 (the mask logit is already -1e6)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.gather(F.log_softmax(logits, dim=-1), -1, targets[..., None])[..., 0]


def local_times(model, n: int, generator=None, device=None) -> torch.Tensor:
    """Stratified t for this rank's ``n`` rows of a global batch (spec 3.2, 13)."""
    from esolm.schedules import stratified_times

    return stratified_times(n, offset=model.rank * n, total=model.world_size * n,
                            generator=generator, device=device)


def ones_like_valid(tokens: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid.bool()
