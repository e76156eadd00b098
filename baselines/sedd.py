"""SEDD with the absorbing graph (spec 15.2): the masking process and LogLinear schedule of MDLM,
a denoiser told sigma_t = -log alpha_t that outputs an unnormalised score (15.2.2), the
diffusion-weighted denoising score entropy (DWDSE, 15.2.3) as its loss, and the Tweedie
tau-leaping ("analytic") or Euler sampler with the final denoiser step (15.2.6).

The score of a masked position ``l`` at y != mask estimates p_t(z with z^l <- y) / p_t(z):

    log s_{l,y} = h_{l,y} - log(e^sigma - 1) - log(V - 1)      (V - 1 = the non-mask ids)

with h the backbone's logits (the mask's own logit is -1e6, so it adds nothing to the sums).
With the normalised score p_hat = s / S the loss is MDLM's NELBO of p_hat plus a non-negative
penalty that vanishes when S = 1 / (e^sigma - 1) (15.2.4); at h = 0 the two losses coincide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from baselines.time_conditioned import TimeConditioned
from esolm.diffusion import forward_mask
from esolm.interface import Display, SampleOptions
from esolm.sampling import nucleus_filter, sample_from_probs


@dataclass
class SEDDSampleOptions(SampleOptions):
    # the step t -> s at a masked position (15.2.6): "analytic" = Tweedie tau-leaping (Duo's SEDD
    # baseline), "euler" = SEDD's Euler predictor; the final step is the denoiser either way
    predictor: Literal["analytic", "euler"] = "analytic"


def log_score(h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """log s [..., V] of 15.2.2 from the logits h and alpha_t (broadcasting against h[..., 0]):
    h - log(e^sigma - 1) - log(V - 1), with e^sigma - 1 = (1 - alpha) / alpha for sigma = -log alpha.
    The mask column keeps h's -1e6 (no weight); its own score 1 enters the samplers directly."""
    shift = torch.log1p(-alpha) - torch.log(alpha) + math.log(h.shape[-1] - 1)
    return h - shift.to(h.dtype)[..., None]


def dwdse(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, dalpha: torch.Tensor) -> torch.Tensor:
    """The DWDSE of 15.2.3 per masked position [...]: sigma' [S - r log s_x + r (log r - 1)], with
    r = 1 / (e^sigma - 1) = alpha / (1 - alpha), sigma' = -alpha' / alpha and S = sum_{y != m} s_y."""
    alpha, dalpha = alpha.to(h.dtype), dalpha.to(h.dtype)
    log_s = log_score(h, alpha)
    total = torch.logsumexp(log_s, -1).exp()
    log_r = torch.log(alpha) - torch.log1p(-alpha)
    r = log_r.exp()
    log_s_x = log_s.gather(-1, x[..., None])[..., 0]
    return (-dalpha / alpha) * (total - r * log_s_x + r * (log_r - 1))


def step_probs(h: torch.Tensor, alpha_t: float, unmask: float, mask_id: int, top_p: float) -> torch.Tensor:
    """Weights [..., V] of z_s at a masked position (15.2.6): ``unmask`` s_y at y != m and
    1 - ``unmask`` S at the mask (clipped at 0, which is what the reference Gumbel-ratio draw does
    with a negative weight). ``unmask`` = e^{dsigma} - 1 (Tweedie) or dt sigma'_t (Euler); None
    is the final denoiser (the mask column zeroed). Nucleus keeps the law of *when* a position
    unmasks and filters *what* it becomes: s_y = S p_hat_y with p_hat nucleus-filtered."""
    p_hat = nucleus_filter(h, top_p).softmax(-1)
    if unmask is None:
        return p_hat
    alpha = torch.tensor(alpha_t, dtype=torch.float64, device=h.device)
    total = torch.logsumexp(log_score(h.double(), alpha), -1).exp()
    probs = unmask * total[..., None] * p_hat
    probs[..., mask_id] = (1 - unmask * total).clamp_min(0)
    return probs


class SEDD(TimeConditioned):
    sample_options_class = SEDDSampleOptions
    style = Display("SEDD", "SEDD Absorb", "#8c564b", marker="d", order=5)  # the paper's Table 1 row

    def token_loss(self, tokens, t, noisy, generator=None) -> torch.Tensor:
        alpha = self.schedule.alpha(t)[:, None]
        z = torch.where(noisy, forward_mask(tokens, alpha, self.config.mask_id, generator), tokens)
        h = self.denoise(z, t)
        h = h.to(torch.promote_types(h.dtype, torch.float32))
        loss = dwdse(h, tokens, alpha.expand_as(tokens), self.schedule.dalpha(t)[:, None].expand_as(tokens))
        return loss * (z == self.config.mask_id)

    def initial(self, num_samples, length, generator=None) -> torch.Tensor:
        return torch.full((num_samples, length), self.config.mask_id, dtype=torch.long, device=self.device)

    def update(self, z, logits, t, s, options, generator=None) -> torch.Tensor:
        """One step t -> s at the masked positions (clean ones never change); s = 0: the denoiser."""
        alpha_t, alpha_s = float(self.schedule.alpha(t)), float(self.schedule.alpha(s))
        if s == 0.0:
            unmask = None
        elif options.predictor == "analytic":
            unmask = alpha_s / alpha_t - 1  # e^{sigma_t - sigma_s} - 1
        else:
            unmask = (t - s) * -float(self.schedule.dalpha(t)) / alpha_t  # dt sigma'_t
        probs = step_probs(logits, alpha_t, unmask, self.config.mask_id, options.top_p)
        return torch.where(z == self.config.mask_id, sample_from_probs(probs, generator), z)
