"""The BD3-LM sampler (spec 6.4): blocks left to right, each denoised for up to T' steps
against the exact KV cache of the clean blocks before it, then stored by one more pass.

Only the current block is ever fed during denoising, so a step costs L' queries against the
cache plus sampling work on the few positions it fills: nothing proportional to L^2 or L*V.
First hitting runs the LM head only at the one position a step fills (the whole block when
``on_step`` is given, so the hook sees every logit); ancestral steps read the whole block.
"""
from __future__ import annotations

from functools import partial

import torch

from esolm.sampling import draw, nucleus_filter

REFERENCE_FILL_TOKEN = 0
"""What the reference grid's last step (t = 0) writes at a position whose nucleus-filtered p(x0)
has no zero entry (besides the mask's): see :func:`reference_fill`."""


def bd3_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """BD3-LM's own top-p (5.6): keep tokens whose inclusive cumulative probability is <= p,
    and always the top one; float64 logits with the rest at -inf (softmax renormalizes)."""
    logits = logits.double()
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    keep_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def filtered_logits(logits: torch.Tensor, top_p: float, nucleus: str) -> torch.Tensor:
    """float64 ``logits`` with the tokens outside the nucleus (``nucleus``: bd3 or the spec's) at -inf."""
    return bd3_nucleus(logits, top_p) if nucleus == "bd3" else nucleus_filter(logits, top_p)


def draw_tokens(logits: torch.Tensor, top_p: float, nucleus: str, generator=None) -> torch.Tensor:
    """One token per row of ``logits`` [k, V]: nucleus filter, then the float64 draw (5.6, 13)."""
    return draw(filtered_logits(logits, top_p, nucleus), generator)


def reference_fill(logits: torch.Tensor, top_p: float, nucleus: str, mask_id: int) -> torch.Tensor:
    """What the authors' BD3-LM update writes at t = 0 (reference grid), one id per row of
    ``logits`` [k, V]: there the stay probability s/t is a negative number over zero, so every
    token's weight becomes p(x0) times infinity (NaN where p(x0) is exactly zero, e.g. outside
    the nucleus), the mask's weight is set to -inf, and the Gumbel argmax returns the first NaN:
    the lowest id, other than the mask, whose filtered p(x0) is zero; where no entry is zero
    every weight is +inf and the argmax returns id 0 (REFERENCE_FILL_TOKEN). A property of the
    row, not a fixed id (docs/reference_switches.md)."""
    zero = filtered_logits(logits, top_p, nucleus).softmax(dim=-1) == 0
    zero[..., mask_id] = False
    first = zero.to(torch.uint8).argmax(dim=-1)  # argmax returns the first of equal maxima
    return torch.where(zero.any(dim=-1), first, torch.full_like(first, REFERENCE_FILL_TOKEN))


def sample_blocks(model, z: torch.Tensor, steps_per_block: int, options, *, generator, profile: bool,
                  clock, on_step=None) -> dict:
    """Fill ``z`` [B, length] (masks, BOS at 0, given tokens) in place, block by block; returns
    pass counts. The leading blocks with no mask in any row (a prompt's whole blocks, spec
    15.4.3) are stored by one store pass; later blocks keep their clean tokens (carry-over).

    With ``profile`` only the network passes run (inside ``clock``); tokens stay masks.
    """
    B, length = z.shape
    bs, m = model.block_size, model.config.mask_id
    top_p, nucleus = options.top_p, options.nucleus
    cache = model.new_cache(B, length) if options.kv_cache else None
    counts = {"denoise_passes": 0, "store_passes": 0}
    first = given_blocks(z, bs, m)
    if cache is not None and 0 < first < length // bs:  # the prompt's store pass
        with clock.region(profile):
            model.store_block(z[:, :first * bs], 0, cache)
        counts["store_passes"] += 1

    for b in range(first, length // bs):
        start, end = b * bs, (b + 1) * bs
        block = z[:, start:end]  # a view: writes land in z
        denoise = partial(_denoise, model, z, b, bs, cache, clock, profile, counts, on_step)
        fill = _ancestral if options.sampler == "ancestral" else _first_hitting
        if options.reference_grid:
            fill = partial(_ancestral, grid=reference_unmask_probs(steps_per_block))
        fill(block, m, steps_per_block, denoise, top_p, nucleus, generator, profile)
        if cache is not None and end < length:  # the store pass (6.4 step 3)
            with clock.region(profile):
                model.store_block(block, start, cache)
            counts["store_passes"] += 1
    return counts


def given_blocks(z: torch.Tensor, bs: int, m: int) -> int:
    """How many leading blocks of ``z`` [B, length] hold no mask in any row."""
    full = (z != m).view(z.shape[0], -1, bs).all(-1).all(0)
    return int(full.long().cumprod(0).sum())


def _denoise(model, z, b, bs, cache, clock, profile, counts, on_step, at=None) -> torch.Tensor:
    """One denoising pass on block b: against the cache, or recomputing its clean prefix.
    Logits [B, k, V] at the block positions ``at`` [B, k]; [B, L', V] with ``on_step``."""
    start, end = b * bs, (b + 1) * bs
    head_at = None if on_step is not None else at
    with clock.region(profile):
        logits = (model.block_logits(z[:, start:end], start, cache, at=head_at) if cache is not None
                  else model.prefix_logits(z[:, :end], at=head_at))
    counts["denoise_passes"] += 1
    if on_step is not None:
        on_step(b, z.clone(), logits)
        if at is not None:
            logits = logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))
    return logits


def reference_unmask_probs(steps: int) -> torch.Tensor:
    """P(a mask is unmasked at step i), i = 0..T'-1, on the authors' grid t_i = linspace(1, 0, T')
    with s_i = t_i - 1/T' and stay probability r_i = s_i / t_i (spec 5.5 with p_t = t). For
    T' >= 2 the last entry is the mass that survives to t = 0, which the reference fills with
    one fixed token; for T' = 1 the grid is [1] and s = 0 unmasks everything by draws."""
    t = torch.linspace(1.0, 0.0, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
    r = ((t - 1.0 / steps) / t.clamp_min(1e-300)).clamp(0.0, 1.0)
    r[-1] = 0.0  # the last step leaves no mask: draws (T' = 1) or the fixed token (t = 0)
    alive = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(r, 0)[:-1]])
    return alive * (1.0 - r)


def _ancestral(block, m, steps, denoise, top_p, nucleus, generator, profile, grid=None) -> None:
    """Spec 5.5 on one block with BD3's p_t = t: from t = 1 - i/T' to s = t - 1/T' a mask stays
    with probability r = s/t, so its unmasking step is uniform on 0..T'-1, independently.

    We draw those steps up front and visit only the non-empty ones: the network runs on the
    current block exactly when 5.5 would (step 0, then after every step that changed something
    in the batch: the p(x0) reuse), and the tokens filled at a step are draws from the
    nucleus-filtered p(x0) of the current state, as the q_s draw of 5.5 gives. Empty steps,
    which 5.5 spends only on reuse, cost nothing (T' = 5000 of 8.6 stays cheap).

    ``grid`` (reference_unmask_probs): unmasking steps drawn from the authors' grid instead;
    on it, with T' >= 2, the masks left for the last step (t = 0) get :func:`reference_fill`
    of that step's logits (the reference runs the pass), not a draw.
    """
    masked = block == m
    if grid is None:
        when = torch.randint(steps, block.shape, generator=generator, device=block.device)
    else:
        u = torch.rand(block.shape, generator=generator, dtype=torch.float64, device=block.device)
        cdf = grid.to(block.device).cumsum(0)
        when = torch.searchsorted(cdf, u.contiguous(), right=True).clamp_max(steps - 1)
    when = when.masked_fill(~masked, steps)  # clean positions are never filled
    for step in torch.unique(when[masked]).tolist():
        logits = denoise()
        if profile:
            continue
        rows, cols = (when == step).nonzero(as_tuple=True)
        if grid is not None and steps > 1 and step == steps - 1:
            block[rows, cols] = reference_fill(logits[rows, cols], top_p, nucleus, m)  # t = 0: no draw
            continue
        block[rows, cols] = draw_tokens(logits[rows, cols], top_p, nucleus, generator)


def _first_hitting(block, m, steps, denoise, top_p, nucleus, generator, profile) -> None:
    """First-hitting (6.4): each step unmasks exactly one uniformly chosen masked position.

    For a batch, every row picks its own position: the batch is B independent batch-1 runs
    (unconditionally rows start with the same number of masks and finish together; a row with
    given tokens in the block finishes early and is left alone after). The official t <- t u^(1/n)
    update only times the event; with sigma = 0 the network never sees t, so it is not drawn.
    """
    n_masks = int((block == m).sum(1).max())
    rows = torch.arange(block.shape[0], device=block.device)
    for _ in range(n_masks):
        keys = torch.rand(block.shape, generator=generator, dtype=torch.float64, device=block.device)
        cols = keys.masked_fill(block != m, -1.0).argmax(dim=1)  # uniform among the row's masks
        logits = denoise(cols[:, None])  # the network never sees the choice: only where to read
        if profile:
            continue
        live = block[rows, cols] == m  # rows with a mask left
        block[rows, cols] = torch.where(live, draw_tokens(logits[:, 0], top_p, nucleus, generator), block[rows, cols])
