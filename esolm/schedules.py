"""Noise schedules, training-time sampling of t, the binomial unmasking schedule and
Eso-LM's sampling schedule built on it (spec 3.1, 3.2, 5.7, 7.8)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


SAMPLING_EPS = 1e-3  # t ~ [1e-3, 1) at training and evaluation (3.2)


@dataclass(frozen=True)
class LogLinear:
    """alpha_t = alpha_0 (1 - (1 - eps) t); alpha'_t = -alpha_0 (1 - eps)  (spec 3.1).

    alpha_0 = 1 is MDLM's linear schedule; eps = 0 gives the paper form alpha_0 (1 - t).
    """

    alpha_0: float = 1.0
    eps: float = 1e-3

    def alpha(self, t):
        return self.alpha_0 * (1 - (1 - self.eps) * t)

    def dalpha(self, t):
        rate = -self.alpha_0 * (1 - self.eps)
        return torch.full_like(t, rate) if torch.is_tensor(t) else rate

    def elbo_weight(self, t):
        """-alpha'_t / (1 - alpha_t): the positive weight of each masked token's -log p."""
        return -self.dalpha(t) / (1 - self.alpha(t))


def stratified_times(n: int, *, offset: int = 0, total: int | None = None,
                     eps: float = SAMPLING_EPS, generator=None, device=None) -> torch.Tensor:
    """Low-discrepancy t (3.2): row i of the global batch of ``total`` rows gets a uniform
    draw from its own stratum [i/total, (i+1)/total), rescaled into [eps, 1).

    A rank (or accumulation micro-step) holding global rows [offset, offset + n) passes
    them here, so the strata of all ranks together tile [0, 1).
    """
    total = n if total is None else total
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    i = torch.arange(offset, offset + n, device=device, dtype=torch.float64)
    e = (u / total + i / total) % 1.0
    return (1 - eps) * e + eps


def binomial_schedule(length: int, schedule: LogLinear, steps: int, generator=None) -> tuple[list[int], int]:
    """Sizes of the non-empty parallel steps, and the tokens left for the sequential phase (5.7).

    Spec 5.7 runs a chain of binomials over t = 1, 1 - 1/T, ..., 1/T, unmasking each
    remaining mask with p = (alpha_s - alpha_t) / (1 - alpha_t). Tokens are independent,
    so the chain's joint law is a multinomial: each token lands in step j with probability
    (alpha_{s_j} - alpha_{t_j}) / (1 - alpha_1), or stays masked with probability
    (1 - alpha_0) / (1 - alpha_1). We draw that directly: O(L + T), so T = 10^6 (the
    first-hitting regime of spec 8.6) costs milliseconds.
    """
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # t_0 = 1 ... t_T = 0
    alpha = schedule.alpha(t)
    probs = torch.cat([alpha[1:] - alpha[:-1], (1 - alpha[-1:])]).clamp_min(0) / (1 - alpha[0])
    bins = torch.multinomial(probs, length,
                             replacement=True, generator=generator)
    counts = torch.bincount(bins, minlength=steps + 1)
    parallel = counts[:steps]
    return parallel[parallel > 0].tolist(), int(counts[steps])


def eso_schedule(length: int, alpha_0_eval: float, steps: int, generator=None,
                 eps: float = 1e-3) -> tuple[list[int], int]:
    """Eso-LM's sampling schedule: per-step sizes k (sum = L) and n_MDM (spec 7.8 step 1).

    The binomial schedule of LogLinear(alpha_0_eval) over ``steps`` steps gives the
    non-empty parallel steps; the L - n_MDM tokens it leaves masked are then decoded one
    per step. At alpha_0_eval = 1 any leftover (probability 0 in exact arithmetic) is
    one more parallel step. The arguments are checked where the options are made:
    ``steps`` >= 1 in SampleOptions, ``alpha_0_eval`` in [0, 1] in EsoSampleOptions.
    """
    counts, left = binomial_schedule(length, LogLinear(alpha_0_eval, eps), int(steps), generator)
    if alpha_0_eval == 1.0 and left:
        counts, left = counts + [left], 0
    return counts + [1] * left, length - left


def expected_nfe(length: int, alpha_0: float, steps: int) -> float:
    """E[NFE] ~= T (1 - exp(-alpha_0 L / T)) + (1 - alpha_0) L (spec 7.8, 11.9)."""
    import math

    return steps * (1 - math.exp(-alpha_0 * length / steps)) + (1 - alpha_0) * length
