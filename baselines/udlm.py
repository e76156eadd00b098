"""UDLM / Duo's base model (spec 15.1): uniform-state discrete diffusion. Each token is replaced
by a uniform draw over the K token classes with probability 1 - alpha_t; the denoiser, told
sigma_t = -log alpha_t, predicts x_theta = softmax(logits) (the "mean" parameterisation); the
loss is the continuous-time NELBO of 15.1.4 plus the prior term; the sampler is ancestral over
the posterior of 15.1.6 with a final noise-removal step (15.1.7).

K = V - 1 here: every id but the mask (which this family never uses; the backbone gives it the
logit -1e6, so x_theta puts no mass on it). docs/families.md lists where the harness departs
from the reference code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from baselines.time_conditioned import TimeConditioned
from esolm.interface import Display, SampleOptions
from esolm.sampling import nucleus_filter, sample_from_probs


@dataclass
class UDLMSampleOptions(SampleOptions):
    # the final step from t = 1e-5 to 0 (15.1.7): "ancestral" samples the posterior with alpha_s = 1,
    # "greedy" takes argmax x_theta (Duo's greedy tail); either is one network call
    noise_removal: Literal["ancestral", "greedy"] = "ancestral"


def uniform_noise(shape, mask_id: int, classes: int, generator=None, device=None) -> torch.Tensor:
    """Ids drawn uniformly from the ``classes`` ids other than ``mask_id``."""
    r = torch.randint(0, classes, shape, generator=generator, device=device)
    return r + (r >= mask_id).long()


def uniform_nelbo(x_theta: torch.Tensor, x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                  dalpha: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The continuous-time NELBO integrand of 15.1.4 per position [...].

    x_theta [..., V] the denoiser's distribution (0 at ``mask_id``, which is no class: K = V - 1),
    x the clean ids, z = z_t the noisy ids, alpha / dalpha alpha_t and alpha'_t broadcasting
    against x. With xbar = K alpha e_x + (1 - alpha) 1 (xbar_theta the same with x_theta),
    rho_j = xbar_j / xbar_z and u_j = xbar_theta_j / (xbar_theta_z rho_j), 15.1.4's bracket is
    -sum_j rho_j f(u_j) with f(u) = u - 1 - log u >= 0, so

        loss = (-alpha' / (K alpha)) sum_j rho_j f(u_j),

    a sum of non-negative terms (the tests check it equals both forms of 15.1.4), 0 when
    x_theta = e_x. rho takes two values, rho_x at the clean token and rho_o elsewhere: the sum is
    rho_o sum_j f(u_j) over all ids with rho_o in u, less the mask's and the clean token's terms,
    plus the clean token's own (one [..., V] pass, no one-hot tensor).
    """
    K = x_theta.shape[-1] - 1
    alpha, dalpha = alpha.to(x_theta.dtype)[..., None], dalpha.to(x_theta.dtype)[..., None]
    xbar_theta = K * alpha * x_theta + (1 - alpha)
    xbar_x = K * alpha + (1 - alpha)  # xbar at the clean token; 1 - alpha at the others
    rho_o = (1 - alpha) / torch.where((x == z)[..., None], xbar_x, 1 - alpha)
    rho_x = rho_o * xbar_x / (1 - alpha)
    u = xbar_theta / (xbar_theta.gather(-1, z[..., None]) * rho_o)
    u_x, u_mask = u.gather(-1, x[..., None]), u[..., mask_id:mask_id + 1]
    total = rho_o * (_f(u).sum(-1, keepdim=True) - _f(u_x) - _f(u_mask)) + rho_x * _f(u_x * rho_o / rho_x)
    return (-dalpha / (K * alpha) * total)[..., 0]


def _f(u: torch.Tensor) -> torch.Tensor:
    """u - 1 - log u: >= 0, and 0 only at u = 1."""
    return u - 1 - torch.log(u)


def prior_kl(classes: int, alpha_1: float) -> float:
    """KL(q_1(. | x) || Uniform(K)) per token (15.1.4): the prior term Duo leaves out."""
    K, a = classes, alpha_1
    return (a + (1 - a) / K) * math.log((K - 1) * a + 1) + (1 - 1 / K) * (1 - a) * math.log1p(-a)


def uniform_posterior(x_theta: torch.Tensor, z: torch.Tensor, alpha_t: float, alpha_s: float,
                      mask_id: int) -> torch.Tensor:
    """q(z_s | z_t, x_theta) of 15.1.6 times its normaliser K alpha_t <x_theta, z_t> + 1 - alpha_t
    (float64 [..., V], 0 at ``mask_id``; the draw takes unnormalised weights). alpha_s = 1 is the
    noise removal: x_theta (K alpha_t e_z + (1 - alpha_t) 1), the Bayes posterior of the clean token."""
    K = x_theta.shape[-1] - 1
    a_ts = alpha_t / alpha_s
    q = (alpha_s - alpha_t) * x_theta + (1 - a_ts) * (1 - alpha_s) / K
    at_z = z[..., None]  # the terms on e_z, added in place of a one-hot [..., V] tensor
    q.scatter_add_(-1, at_z, K * alpha_t * x_theta.gather(-1, at_z) + (a_ts - alpha_t))
    q[..., mask_id] = 0
    return q


class UDLM(TimeConditioned):
    sample_options_class = UDLMSampleOptions
    style = Display("UDLM", "UDLM", "#9467bd", marker="p", order=30)  # the paper's Table 1 row

    @property
    def prior_nats(self) -> float:
        return prior_kl(self.classes, self.config.schedule_eps)

    def corrupt(self, x: torch.Tensor, alpha: torch.Tensor, generator=None) -> torch.Tensor:
        """z_t ~ q_t(. | x) (15.1.1): with probability 1 - alpha_t a uniform draw over the K classes
        (which may redraw x itself), else x. ``alpha`` broadcasts against x."""
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
        noise = uniform_noise(x.shape, self.config.mask_id, self.classes, generator, x.device)
        return torch.where(u < 1 - alpha, noise, x)

    def token_loss(self, tokens, t, noisy, generator=None) -> torch.Tensor:
        alpha = self.schedule.alpha(t)[:, None]
        z = torch.where(noisy, self.corrupt(tokens, alpha, generator), tokens)
        logits = self.denoise(z, t)
        x_theta = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)
        loss = uniform_nelbo(x_theta, tokens, z, alpha, self.schedule.dalpha(t)[:, None], self.config.mask_id)
        return loss * noisy

    def initial(self, num_samples, length, generator=None) -> torch.Tensor:
        return uniform_noise((num_samples, length), self.config.mask_id, self.classes, generator, self.device)

    def update(self, z, logits, t, s, options, generator=None) -> torch.Tensor:
        """Ancestral step t -> s over the posterior of 15.1.6 with x_theta nucleus-filtered first
        (Duo's main branch); at s = 0 the noise removal of ``options.noise_removal``."""
        if s == 0.0 and options.noise_removal == "greedy":
            return logits.argmax(-1)
        x_theta = nucleus_filter(logits, options.top_p).softmax(-1)
        q = uniform_posterior(x_theta, z, float(self.schedule.alpha(t)), float(self.schedule.alpha(s)),
                              self.config.mask_id)
        return sample_from_probs(q, generator)
