"""What the time-conditioned diffusion models share (UDLM, spec 15.1; SEDD, spec 15.2): the
LogLinear schedule, the denoiser that sees the noise level sigma = -log alpha_t through the
backbone's AdaLN input (15.1.3, 15.2.5), the per-token NELBO turned into ``loss`` / ``nll``, and
the reverse sampler's loop over the grid t = 1 ... 1e-5 with its final step to t = 0 (15.1.7,
15.2.6), projected onto given tokens before every network call and after the end (15.4.6).

A model of this family writes four things: ``initial`` (the prior sample), ``token_loss`` (its
per-token bound at one t), ``update`` (one reverse step from t to s; s = 0 is the final step) and
``prior_nats`` (the prior term per token, 0 unless the model adds one).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace

import torch

from esolm.backbone import Backbone, in_inference_mode
from esolm.conditioning import INFILL, PREFIX
from esolm.config import ConfigError, ModelConfig
from esolm.diffusion import local_times, ones_like_valid
from esolm.interface import (NLL, Capabilities, Clock, Display, LanguageModel, LossOutput, SampleOptions,
                             SampleOutput)
from esolm.schedules import LogLinear, stratified_times

T_MIN = 1e-5  # the last grid time of the samplers; the final step goes from here to t = 0 (15.1.7, 15.2.6)


@dataclass
class TimeConditionedConfig(ModelConfig):
    """A denoiser that sees sigma = -log alpha_t through AdaLN (spec 15.1.3, 15.2.5), so
    ``adaln`` must stay on. schedule_eps: the epsilon of LogLinear (alpha_1 = eps, 15.1.2)."""

    schedule_eps: float = 1e-3  # LogLinear: alpha_t = 1 - (1 - eps) t, so alpha_1 = eps and sigma_1 = -log eps

    def validate(self) -> None:
        super().validate()
        if not self.adaln:
            raise ConfigError("time-conditioned models feed sigma = -log alpha_t through AdaLN (spec 15.1.3): "
                              "they need adaln=True; drop adaln=false")
        if not 0.0 < self.schedule_eps < 1.0:
            raise ConfigError(f"schedule_eps must lie in (0, 1) (alpha_1 = eps; 0 makes sigma_1 infinite); "
                              f"got {self.schedule_eps}")


def sampling_times(steps: int) -> list[float]:
    """t_0 = 1 > ... > t_T = 1e-5 (T steps, 15.1.7, 15.2.6), then 0: the final step's target."""
    return torch.linspace(1.0, T_MIN, steps + 1, dtype=torch.float64).tolist() + [0.0]


class TimeConditioned(LanguageModel):
    """Base of UDLM and SEDD: bidirectional DiT on sigma_t, NELBO bound, T + 1 network calls."""

    config_class = TimeConditionedConfig
    sample_options_class = SampleOptions
    # no KV cache (the input changes everywhere each step) and no p(x0) reuse (the time input
    # changes every step, 15.1.3); the likelihood is a NELBO bound
    capabilities = Capabilities(kv_cache=False, exact_likelihood=False, single_pass_likelihood=False,
                                conditioning=(PREFIX, INFILL))

    style: Display  # how tables and figures show the model, the same for every config

    @classmethod
    def display(cls, config: TimeConditionedConfig) -> Display:
        return cls.style

    @classmethod
    def capabilities_for(cls, config: TimeConditionedConfig) -> Capabilities:
        """NFE = T + 1 (T steps and the final one, 15.3.4): steps = L - 1 is the NFE = L regime."""
        return replace(cls.capabilities, nfe_equals_l=dict(steps=config.length - 1))

    def __init__(self, config: TimeConditionedConfig):
        super().__init__(config)
        self.backbone = Backbone(config)
        self.schedule = LogLinear(1.0, config.schedule_eps)
        self.capabilities = self.capabilities_for(config)  # this instance's, with its L

    # -- the network -----------------------------------------------------------------------
    def denoise(self, z: torch.Tensor, t) -> torch.Tensor:
        """Logits [B, N, V] of the denoiser on z [B, N] at time t (a float or [B]), bidirectional,
        conditioned on sigma_t = -log alpha_t, one scalar per sequence (15.1.3, 15.2.5)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device).expand(z.shape[0])
        sigma = -torch.log(self.schedule.alpha(t))
        return self.backbone(z, torch.arange(z.shape[1], device=z.device), None, sigma=sigma)

    @property
    def classes(self) -> int:
        """The number of token classes, every id but the mask (the backbone gives the mask -1e6)."""
        return self.config.vocab_size - 1

    # -- what each model writes --------------------------------------------------------------
    @abc.abstractmethod
    def token_loss(self, tokens: torch.Tensor, t: torch.Tensor, noisy: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """The per-token bound [B, L] at times t [B]: positions where ``noisy`` [B, L] is False stay
        clean (a context) and score 0."""

    @property
    def prior_nats(self) -> float:
        """The prior term KL(q_1(. | x) || p(z_1)) per token; 0 where the model omits it."""
        return 0.0

    @abc.abstractmethod
    def initial(self, num_samples: int, length: int, generator=None) -> torch.Tensor:
        """z_1 ~ p(z_1): the sampler's start [num_samples, length]."""

    @abc.abstractmethod
    def update(self, z: torch.Tensor, logits: torch.Tensor, t: float, s: float, options: SampleOptions,
               generator=None) -> torch.Tensor:
        """One reverse step z_t -> z_s from the denoiser's ``logits`` at t; s = 0 is the final step."""

    # -- the contract ------------------------------------------------------------------------
    def bound(self, tokens, t, valid, generator=None) -> torch.Tensor:
        """The per-token NELBO [B, L] at times t [B]: ``token_loss`` plus the prior term, 0 off ``valid``."""
        loss = self.token_loss(tokens, t, valid, generator)
        return loss + self.prior_nats * valid.to(loss.dtype)

    def loss(self, tokens, valid=None) -> LossOutput:
        """Per-token NELBO (prior term included) at one stratified t per sequence."""
        self.check_tokens(tokens)
        valid = ones_like_valid(tokens, valid)
        per_token = self.bound(tokens, local_times(self, tokens.shape[0], device=tokens.device), valid)
        n = valid.sum()
        return LossOutput(loss=per_token.sum() / n, nll_sum=per_token.sum().detach(), num_tokens=n)

    @in_inference_mode
    def nll(self, tokens, *, exact=False, valid=None, generator=None, **opts) -> NLL:
        """The NELBO of each sequence at one stratified t per sequence (the prior term included)."""
        if exact:
            raise ConfigError(f"{self.name} has no exact likelihood, only its NELBO bound; drop exact=True "
                              f"(--exact)")
        self.check_tokens(tokens)
        valid = ones_like_valid(tokens, valid)
        t = stratified_times(tokens.shape[0], generator=generator, device=tokens.device)
        per_token = self.bound(tokens, t, valid, generator)
        return NLL(per_sequence=per_token.double().sum(1), num_tokens=valid.sum(1))

    # what conditional_loglik returns, in the words of esolm.lmeval's KINDS
    lmeval_kind = "conditional NELBO (a lower bound on the log-likelihood), {M} Monte Carlo draws, seed {seed}"

    @in_inference_mode
    def conditional_loglik(self, context: list[int], continuation: list[int], scorer) -> tuple[float, bool]:
        """lm-eval's log p(continuation | context) >= -NELBO with only the continuation noised and
        scored (spec 15.5.7, 15.5.8): ``scorer.mc_draws`` stratified t, seeded by ``scorer.seed``;
        a sum over the continuation's tokens (and its prior terms). Never greedy-exact."""
        n = len(context) + len(continuation)
        if n > self.config.length:
            raise ConfigError(f"{self.name} scores at most length={self.config.length} tokens; got {n}: cut the "
                              f"context from the left (esolm.lmeval.conditional_loglik does)")
        x = torch.tensor([list(context) + list(continuation)], device=self.device).expand(scorer.mc_draws, -1)
        noisy = torch.zeros_like(x, dtype=torch.bool)
        noisy[:, len(context):] = True
        generator = scorer.generator(self.device)
        t = stratified_times(scorer.mc_draws, generator=generator, device=self.device)
        return -float(self.bound(x, t, noisy, generator).double().sum(1).mean()), False

    @in_inference_mode
    def generate(self, num_samples, options, *, generator=None, profile=False, given=None,
                 on_step=None) -> SampleOutput:
        """T = ``steps`` reverse steps over t = 1 ... 1e-5 and the final step to t = 0: NFE = T + 1
        (15.3.4). ``given`` tokens are written in before every network call and after the end
        (projection, 15.4.6). ``on_step(i, t, s, z)`` (a test hook) sees z after each step."""
        length, steps = self.sample_length(options), options.required_steps(self.name)
        place = given.place if given is not None else (lambda z: z)
        z = self.initial(num_samples, length, generator)
        times = sampling_times(steps)
        clock = Clock(self.device)
        with clock.region(not profile):
            for i, (t, s) in enumerate(zip(times[:-1], times[1:])):
                z = place(z)
                with clock.region(profile):
                    logits = self.denoise(z, t)
                z = self.update(z, logits, t, s, options, generator)
                if on_step is not None:
                    on_step(i, t, s, z)
            z = place(z)
        return SampleOutput(tokens=z, nfe=len(times) - 1, seconds=clock.seconds)

