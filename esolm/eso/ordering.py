"""Orders for Eso-LM: sort keys and gathers (spec 7.4, 7.6), the sampling schedule and
per-sample orders (7.8), the block ("subcontext") schedule (7.8) and the proposal of
the exact likelihood (7.10).

Convention: an order ``pi`` maps sorted slot -> original position, so the sorted tensor
is ``x[:, pi]`` (``gather``) and un-sorting scatters back (``ungather``).
"""
from __future__ import annotations

import torch

from esolm.config import ConfigError

# how each group of the sort is ordered (7.4)
SHUFFLE = "shuffle"  # clean and masks each in random order (diffusion half, A and B)
SHUFFLE_CLEAN = "shuffle_clean"  # clean random, masks left to right (sequential half of B)
NATURAL = "natural"  # both groups left to right (sequential half of A)
MODES = (SHUFFLE, SHUFFLE_CLEAN, NATURAL)


def _uniform(shape, generator=None, device=None) -> torch.Tensor:
    """U[0, 1) float64 drawn on the generator's device, moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=gen_device).to(device)


def sort_keys(masked: torch.Tensor, mode: str, generator=None, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Real keys whose ascending argsort puts clean slots first (spec 7.4).

    Clean keys lie in [0, 0.9), mask keys in [1, 2]. ``uniform`` [B, L] replaces the
    U[0, 1) draws (the spec's worked example uses given offsets).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown sort mode {mode!r}; choose one of {MODES}")
    B, L = masked.shape
    m = masked.to(torch.float64)
    natural = torch.linspace(0, 0.9, L, dtype=torch.float64, device=masked.device).expand(B, L)
    if mode == NATURAL:
        return m + natural
    u = _uniform((B, L), generator, masked.device) if uniform is None else uniform.to(masked.device, torch.float64)
    if mode == SHUFFLE:
        return m + 0.9 * u
    ascending = 1 + torch.arange(L, dtype=torch.float64, device=masked.device) / L  # in [1, 2)
    return torch.where(masked, ascending.expand(B, L), 0.9 * u)


def ordering(masked: torch.Tensor, mode: str, generator=None) -> torch.Tensor:
    """pi [B, L]: argsort of the sort keys (clean first; see ``sort_keys``)."""
    return torch.argsort(sort_keys(masked, mode, generator), dim=1, stable=True)


def gather(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """Sort ``x`` [B, L] by ``pi`` [B, L]: y[b, j] = x[b, pi[b, j]]."""
    return torch.gather(x, 1, pi)


def ungather(y: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """Inverse of ``gather``: x[b, pi[b, j]] = y[b, j] (spec 7.8 step 5)."""
    return torch.empty_like(y).scatter_(1, pi, y)


# ------------------------------------------------------------------ sampling (7.8)
def sampling_orders(num_samples: int, length: int, n_mdm: int, generator=None, device=None) -> torch.Tensor:
    """sigma [B, L]: one uniform permutation per sample with the sequential tail (slots
    n_MDM..L-1) sorted ascending, so the tail is a random subset decoded left to right (7.8)."""
    sigma = _uniform((num_samples, length), generator, device).argsort(dim=1)
    sigma[:, n_mdm:] = sigma[:, n_mdm:].sort(dim=1).values
    return sigma


def conditional_orders(given: torch.Tensor, n_mdm: int, generator=None) -> torch.Tensor:
    """sigma [B, L] under given tokens (spec 15.4.4): ``given`` [B, L] bool with the same count g
    in every row. The given positions come first, in natural order (causal attention in sigma
    lets every free token see them, and their K/V depend on given tokens only: the cache stays
    exact), then a uniform permutation of the free positions whose last n - ``n_mdm`` entries
    are re-sorted ascending (7.8 over the free set). With g = 0 it is ``sampling_orders``, draw
    for draw."""
    B, L = given.shape
    g = int(given[0].sum()) if B else 0
    by_kind = torch.argsort((~given).to(torch.uint8), dim=1, stable=True)  # given ascending, then free ascending
    free_order = sampling_orders(B, L - g, n_mdm, generator, given.device)
    return torch.cat([by_kind[:, :g], by_kind[:, g:].gather(1, free_order)], 1)


def block_schedule(length: int, block_steps: int, alpha_0_eval: float = 1.0, shuffle: bool = True,
                   generator=None) -> tuple[list[int], torch.Tensor, int]:
    """The block ("subcontext") sampler's sizes, shared order sigma [L] and n_MDM (7.8).

    Step r decodes the residue class {r, r + n_blk, r + 2 n_blk, ...} (n_blk = block_steps):
    P = L / n_blk far-apart positions. With ``shuffle`` the classes come in random order
    and positions inside a class too. The first int(n_blk * alpha_0_eval) classes form the
    diffusion phase; the remaining positions are decoded left to right, one per step
    (this equals the spec's int(L * alpha_0) diffusion slots whenever n_blk divides L).
    """
    _check_alpha(alpha_0_eval, "alpha_0_eval")
    if not 1 <= int(block_steps) <= length:
        raise ConfigError(f"block_steps (subcontext_len) must lie in [1, length={length}]; got {block_steps}")
    n_blk = int(block_steps)
    classes = _uniform(n_blk, generator).cpu().argsort() if shuffle else torch.arange(n_blk)
    n_diff = int(n_blk * alpha_0_eval)
    parts, sizes = [], []
    for r in classes[:n_diff].tolist():
        pos = torch.arange(r, length, n_blk)
        if shuffle:
            pos = pos[_uniform(len(pos), generator).cpu().argsort()]
        parts.append(pos)
        sizes.append(len(pos))
    n_mdm = sum(sizes)
    head = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    taken = torch.zeros(length, dtype=torch.bool)
    taken[head] = True
    tail = torch.arange(length)[~taken]
    return sizes + [1] * len(tail), torch.cat([head, tail]), n_mdm


# ---------------------------------------------------------------- likelihood (7.10)
def proposal(length: int, alpha_0: float, generator=None, device=None) -> tuple[torch.Tensor, int]:
    """One order sigma [L] from P^{alpha_0}_L and the size c of its clean set C (7.10).

    c ~ Binomial(L, alpha_0); sigma = the first c entries of a uniform permutation, then
    the other positions ascending (the law of esolm.likelihood.proposal_order; Eso-LM (A)
    needs c as well).
    """
    c = int((_uniform(length, generator) < alpha_0).sum())
    return sampling_orders(1, length, c, generator, device)[0], c


def _check_alpha(value: float, name: str) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must lie in [0, 1] (1 = pure diffusion, 0 = AR); got {value}")
