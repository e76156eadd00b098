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
import torch.nn.functional as F

from baselines.time_conditioned import TimeConditioned, TimeConditionedConfig
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


def class_mask(vocab_size: int, mask_id: int, device=None) -> torch.Tensor:
    """[V] bool: True at the K token classes, False at the mask id."""
    keep = torch.ones(vocab_size, dtype=torch.bool, device=device)
    keep[mask_id] = False
    return keep


def uniform_nelbo(x_theta: torch.Tensor, x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                  dalpha: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The continuous-time NELBO integrand of 15.1.4 per position [...].

    x_theta [..., V] the denoiser's distribution (0 off ``classes``), x the clean ids, z = z_t the
    noisy ids, alpha / dalpha alpha_t and alpha'_t broadcasting against x. With
    xbar = K alpha e_x + (1 - alpha) 1 and xbar_theta the same with x_theta, rho_j = xbar_j / xbar_i
    and u_j = (xbar_theta_j / xbar_theta_i) / rho_j at i = z, 15.1.4's bracket is
    -sum_j rho_j (u_j - 1 - log u_j), so

        loss = (-alpha' / (K alpha)) sum_j rho_j (u_j - 1 - log u_j),

    a sum of non-negative terms (no cancellation of the O(K) terms of 15.1.4's forms; the tests
    check it equals both), exactly 0 when x_theta = e_x.
    """
    K = classes.sum()
    alpha, dalpha = alpha.to(x_theta.dtype)[..., None], dalpha.to(x_theta.dtype)[..., None]
    xbar_theta = K * alpha * x_theta + (1 - alpha)
    xbar = K * alpha * F.one_hot(x, x_theta.shape[-1]).to(x_theta.dtype) + (1 - alpha)
    at_z = z[..., None]
    rho = xbar / xbar.gather(-1, at_z)
    u = xbar_theta / xbar_theta.gather(-1, at_z) / rho
    terms = torch.where(classes, rho * (u - 1 - torch.log(u)), 0.0)
    return (-dalpha / (K * alpha))[..., 0] * terms.sum(-1)


def prior_kl(classes: int, alpha_1: float) -> float:
    """KL(q_1(. | x) || Uniform(K)) per token (15.1.4): the prior term Duo leaves out."""
    K, a = classes, alpha_1
    return (a + (1 - a) / K) * math.log((K - 1) * a + 1) + (1 - 1 / K) * (1 - a) * math.log1p(-a)


def uniform_posterior(x_theta: torch.Tensor, z: torch.Tensor, alpha_t: float, alpha_s: float,
                      classes: torch.Tensor) -> torch.Tensor:
    """q(z_s | z_t, x_theta) of 15.1.6 times its normaliser K alpha_t <x_theta, z_t> + 1 - alpha_t
    (float64 [..., V]; the draw takes unnormalised weights). alpha_s = 1 is the noise removal:
    x_theta (K alpha_t e_z + (1 - alpha_t) 1), the Bayes posterior of the clean token."""
    K = int(classes.sum())
    onehot = F.one_hot(z, x_theta.shape[-1]).double()
    a_ts = alpha_t / alpha_s
    return (K * alpha_t * x_theta * onehot + (a_ts - alpha_t) * onehot + (alpha_s - alpha_t) * x_theta
            + (1 - a_ts) * (1 - alpha_s) / K * classes.double())


class UDLM(TimeConditioned):
    sample_options_class = UDLMSampleOptions

    @classmethod
    def display(cls, config: TimeConditionedConfig) -> Display:
        return Display("UDLM", "UDLM", "#9467bd", marker="p", order=30)

    def __init__(self, config: TimeConditionedConfig):
        super().__init__(config)
        self.register_buffer("class_mask", class_mask(config.vocab_size, config.mask_id), persistent=False)

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
        loss = uniform_nelbo(x_theta, tokens, z, alpha, self.schedule.dalpha(t)[:, None], self.class_mask)
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
                              self.class_mask)
        return sample_from_probs(q, generator)
