"""The importance-weighted any-order likelihood bound (spec 7.10), shared by Eso-LM
(one forward pass per order) and MDLM (L passes per order)."""
from __future__ import annotations

import math

import torch


def iw_nll(order_logliks: torch.Tensor) -> torch.Tensor:
    """-log( (1/K) sum_k exp(s_k) ) per row of ``order_logliks`` [B, K] (float64)."""
    s = order_logliks.double()
    return -(torch.logsumexp(s, dim=1) - math.log(s.shape[1]))


def proposal_order(length: int, alpha_0: float, generator=None, device=None) -> torch.Tensor:
    """One order sigma from P^{alpha_0}_L: each position is in the clean set C with
    probability alpha_0; sigma = C in uniform random order, then the rest ascending."""
    in_c = torch.rand(length, generator=generator, dtype=torch.float64) < alpha_0
    perm = torch.randperm(length, generator=generator)
    clean = perm[in_c[perm]]
    rest = torch.arange(length)[~in_c]
    return torch.cat([clean, rest]).to(device)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """pi^{-1}[pi[j]] = j, row-wise for [..., L]."""
    inv = torch.empty_like(perm)
    inv.scatter_(-1, perm, torch.arange(perm.shape[-1], device=perm.device).expand_as(perm).contiguous())
    return inv
