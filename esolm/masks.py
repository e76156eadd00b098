"""Every attention mask of the harness, in one place (spec 6.2, 7.5).

All builders return boolean tensors with True = "query (row) may attend to key (column)".
Eso-LM masks are in sorted coordinates: slot i holds the token at original position pi[i].
"""
from __future__ import annotations

import torch


def causal(n: int, device=None) -> torch.Tensor:
    """[n, n] lower-triangular: slot i attends to slots j <= i (AR; Eso-LM (B) diffusion, 7.5.1)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def prefix_lm(n: int, num_clean: torch.Tensor) -> torch.Tensor:
    """[B, n, n] Eso-LM (A) diffusion mask (7.5.2): causal, plus the first c slots bidirectional.

    ``num_clean`` [B]: c = number of clean tokens, which the sort puts first.
    """
    i = torch.arange(n, device=num_clean.device)
    c = num_clean[:, None, None]
    clean_block = (i[None, :, None] < c) & (i[None, None, :] < c)
    return causal(n, num_clean.device)[None] | clean_block


def block_diffusion(length: int, block_size: int, device=None) -> torch.Tensor:
    """[2L, 2L] block-diffusion mask on x_t (+) x (6.2): M_BD | M_OBC | M_BC.

    block_size = 1 is the Eso-LM (B) sequential mask in sorted coordinates (7.5.3).
    """
    q = torch.arange(2 * length, device=device)
    in_x = q >= length
    blk = torch.where(in_x, q - length, q) // block_size
    qx, kx = in_x[:, None], in_x[None, :]
    qb, kb = blk[:, None], blk[None, :]
    same_block = (qb == kb) & (qx == kx)  # M_BD: same half, same block
    offset_causal = ~qx & kx & (qb > kb)  # M_OBC: x_t query sees earlier clean blocks
    block_causal = qx & kx & (qb >= kb)  # M_BC: clean half is block-causal
    return same_block | offset_causal | block_causal


def sequential(length: int, device=None) -> torch.Tensor:
    """[2L, 2L] Eso-LM (B) sequential-phase mask on z0 (+) x (7.5.3)."""
    return block_diffusion(length, 1, device)


def sequential_prefix(length: int, num_clean: torch.Tensor) -> torch.Tensor:
    """[B, 2L, 2L] Eso-LM (A) sequential mask (7.5.4): 7.5.3 plus a bidirectional clean
    prefix of c slots in the x half."""
    base = sequential(length, num_clean.device)[None]
    i = torch.arange(2 * length, device=num_clean.device)
    in_prefix = (i[None] >= length) & (i[None] < length + num_clean[:, None])  # [B, 2L]
    return base | (in_prefix[:, :, None] & in_prefix[:, None, :])


def render(mask: torch.Tensor, rows: list[str] | None = None, cols: list[str] | None = None) -> str:
    """Draw a mask as the spec's grids: X = may attend, . = may not."""
    mask = mask.bool().cpu()
    n_r, n_c = mask.shape
    rows = rows or [str(i) for i in range(n_r)]
    cols = cols or [str(j) for j in range(n_c)]
    w = max(len(s) for s in rows + cols) + 1
    lines = [" " * w + "".join(c.rjust(w) for c in cols)]
    for r in range(n_r):
        lines.append(rows[r].rjust(w) + "".join(("X" if mask[r, c] else ".").rjust(w) for c in range(n_c)))
    return "\n".join(lines)
