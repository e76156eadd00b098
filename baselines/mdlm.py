"""MDLM (spec 5): bidirectional denoiser, SUBS parameterization, continuous-time NELBO,
and the ancestral sampler that reuses p(x0) while nothing changes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from esolm.backbone import Backbone, in_inference_mode
from esolm.config import ModelConfig
from esolm.diffusion import forward_mask, local_times, ones_like_valid, target_logprob
from esolm.interface import NLL, Capabilities, Clock, Display, LanguageModel, LossOutput, SampleOptions, SampleOutput
from esolm.likelihood import iw_nll, proposal_order
from esolm.sampling import fill_slots, nucleus_filter, sample_categorical, sample_from_probs
from esolm.schedules import LogLinear, stratified_times


@dataclass
class MDLMConfig(ModelConfig):
    """MDLM. loss_type: "elbo" (weights -alpha'/(1-alpha) = 1/t) or "low_var" (weight 1,
    training only, spec 5.4). schedule_eps: the epsilon of LogLinear (3.1)."""

    loss_type: Literal["elbo", "low_var"] = "elbo"
    schedule_eps: float = 1e-3


@dataclass
class MDLMSampleOptions(SampleOptions):
    sampler: Literal["schedule", "ancestral"] = "schedule"  # the schedule's equivalent order, or 5.5 step by step
    reuse_px0: bool = True  # ancestral: reuse p(x0) while nothing changes
    # ReMDM remasking (spec 15.3, baselines/remdm.py): none | cap | rescale | loop; not none: step by step
    remask: Literal["none", "cap", "rescale", "loop"] = "none"
    eta: float | None = None  # ReMDM's eta; None: the schedule's default (cap 0.008, rescale 0.015, loop 0.02)
    t_on: float = 0.55  # remask=loop: the loop runs on [t_off, t_on] at alpha = alpha_on
    t_off: float = 0.05
    alpha_on: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        from baselines.remdm import check_options  # remdm imports this module
        check_options(self)


class MDLM(LanguageModel):
    config_class = MDLMConfig
    sample_options_class = MDLMSampleOptions
    capabilities = Capabilities(kv_cache=False, exact_likelihood=True, single_pass_likelihood=False,
                                nfe_equals_l=dict(steps=10**6),  # first hitting: about one token per step
                                conditioning=("prefix", "infill"))  # carry-over keeps given tokens (15.4.2)

    @classmethod
    def display(cls, config: MDLMConfig) -> Display:
        return Display("MDLM", "MDLM", "#0173b2", order=10)

    def __init__(self, config: MDLMConfig):
        super().__init__(config)
        self.backbone = Backbone(config)
        self.schedule = LogLinear(1.0, config.schedule_eps)

    def denoise(self, z: torch.Tensor) -> torch.Tensor:
        """x_theta(z): logits at every position, bidirectional attention, sigma = 0."""
        return self.backbone(z, torch.arange(z.shape[1], device=z.device), None)

    def _masked_nll(self, tokens, valid, t, weighting: str, generator=None):
        """Per-token loss (SUBS carry-over: zero at clean positions), [B, L]."""
        z = forward_mask(tokens, self.schedule.alpha(t)[:, None], self.config.mask_id, generator)
        nll = -target_logprob(self.denoise(z), tokens) * (z == self.config.mask_id) * valid
        if weighting == "elbo":
            return nll * self.schedule.elbo_weight(t)[:, None].to(nll.dtype), nll
        return nll, nll

    def loss(self, tokens, valid=None) -> LossOutput:
        self.check_tokens(tokens)
        valid = ones_like_valid(tokens, valid)
        t = local_times(self, tokens.shape[0], device=tokens.device)
        low_var = self.training and self.config.loss_type == "low_var"
        weighted, raw = self._masked_nll(tokens, valid, t, "elbo")
        objective = raw if low_var else weighted
        n = valid.sum()
        return LossOutput(loss=objective.sum() / n, nll_sum=weighted.sum().detach(), num_tokens=n)

    @in_inference_mode
    def nll(self, tokens, *, exact=False, valid=None, num_orders: int = 1, generator=None,
            pass_batch: int = 256, **opts) -> NLL:
        """NELBO (one stratified t per sequence) or, with ``exact=True``, the any-order IW
        bound over ``num_orders`` orders at L forward passes per order (Table 6)."""
        self.check_tokens(tokens)
        valid = ones_like_valid(tokens, valid)
        if not exact:
            t = stratified_times(tokens.shape[0], generator=generator, device=tokens.device)
            weighted, _ = self._masked_nll(tokens, valid, t, "elbo", generator)
            return NLL(per_sequence=weighted.double().sum(1), num_tokens=valid.sum(1))
        scores = torch.stack([self._order_loglik(tokens, generator, pass_batch) for _ in range(num_orders)], 1)
        return NLL(per_sequence=iw_nll(scores), num_tokens=torch.full_like(valid.sum(1), tokens.shape[1]))

    def _order_loglik(self, tokens, generator, pass_batch) -> torch.Tensor:
        """sum_l log p(x_sigma(l) | x_sigma(<l)) for one uniform order shared by the batch."""
        B, L = tokens.shape
        dev = tokens.device
        sigma = proposal_order(L, 1.0, generator, dev)
        rank = torch.empty_like(sigma)
        rank[sigma] = torch.arange(L, device=dev)
        # input row l hides sigma(>= l) and scores position sigma(l)
        hidden = rank[None, :] >= torch.arange(L, device=dev)[:, None]  # [L, L]
        z = torch.where(hidden[None], self.config.mask_id, tokens[:, None, :]).reshape(B * L, L)
        pos = sigma.repeat(B)[:, None]  # [B*L, 1]
        targets = tokens.repeat_interleave(L, 0).gather(1, pos)
        out = torch.empty(B * L, dtype=torch.float64, device=dev)
        for i in range(0, B * L, pass_batch):
            j = min(i + pass_batch, B * L)
            logits = self.backbone(z[i:j], torch.arange(L, device=dev), None, at=pos[i:j])
            out[i:j] = target_logprob(logits, targets[i:j])[:, 0].double()
        return out.view(B, L).sum(1)

    @in_inference_mode
    def generate(self, num_samples, options, *, generator=None, profile=False, given=None) -> SampleOutput:
        """Ancestral sampling over ``steps`` steps (spec 5.5), float64 nucleus and draw.

        sampler="ancestral" is spec 5.5 step by step (p(x0) reused while nothing changes
        when ``reuse_px0``). sampler="schedule" (default) draws the same process in an
        equivalent order: each token's unmasking step first (the multinomial law of the
        binomial chain, 5.7), then only the non-empty steps, so T = 10^6 costs what its NFE
        costs. MDLM has no KV cache: ``kv_cache`` is ignored (capabilities.kv_cache=False).

        ``given`` (a prompt or an infill, spec 15.4.2): the given tokens start clean and SUBS
        carry-over keeps them; the schedule is unchanged, only the free positions are masks (the
        positions after the last given token stay masks too: the model may end the text there).
        ``remask`` != "none": ReMDM's chain (baselines/remdm.py).
        """
        if options.remask != "none":
            from baselines import remdm
            return remdm.generate(self, num_samples, options, generator=generator, profile=profile, given=given)
        length, steps, top_p = self.sample_length(options), options.required_steps(self.name), options.top_p
        z = torch.full((num_samples, length), self.config.mask_id, dtype=torch.long, device=self.device)
        if given is not None:
            z = given.place(z)
        clock = Clock(self.device)
        if options.sampler == "ancestral":
            with clock.region(True):
                nfe = self._ancestral(z, steps, top_p, generator, options.reuse_px0)
        else:
            with clock.region(not profile):
                nfe = self._scheduled(z, steps, top_p, generator, clock, profile)
        return SampleOutput(tokens=z, nfe=nfe, seconds=clock.seconds)

    def _ancestral(self, z, steps, top_p, generator, reuse_px0) -> int:
        m, nfe, p_cache = self.config.mask_id, 0, None
        for i in range(steps):
            if not (z == m).any():
                break
            t, s = 1 - i / steps, 1 - (i + 1) / steps
            if p_cache is None:
                nfe += 1
                p_x0 = nucleus_filter(self.denoise(z), top_p).softmax(-1)
            else:
                p_x0 = p_cache
            r = (1 - self.schedule.alpha(s)) / (1 - self.schedule.alpha(t))
            q_s = p_x0 * (1 - r)
            q_s[..., m] = r
            z_new = torch.where(z == m, sample_from_probs(q_s, generator), z)
            p_cache = p_x0 if (reuse_px0 and torch.equal(z_new, z)) else None
            z.copy_(z_new)
        return nfe

    def _unmask_steps(self, z, steps, generator) -> torch.Tensor:
        """Each token's unmasking step in [0, steps), drawn from the binomial chain's law."""
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        alpha = self.schedule.alpha(t)
        probs = (alpha[1:] - alpha[:-1]) / (1 - alpha[0])
        return torch.multinomial(probs, z.numel(), replacement=True, generator=generator).view(z.shape)

    def _scheduled(self, z, steps, top_p, generator, clock, profile=False) -> int:
        """The LM head runs only at the positions filled this step (``fill_slots``): at NFE = L
        that is one position instead of L, the same draws from the same logits. ``profile``
        (spec 8.5): time only the network passes on the all-mask input, draw nothing."""
        when = self._unmask_steps(z, steps, generator).to(z.device)
        when = when.masked_fill(z != self.config.mask_id, steps)  # given tokens: never filled
        active = torch.unique(when[when < steps])  # the non-empty steps, ascending
        positions = torch.arange(z.shape[1], device=z.device)
        rows = torch.arange(z.shape[0], device=z.device)[:, None]
        for step in active.tolist():
            at, keep = fill_slots(when == step)
            with clock.region(profile):
                logits = self.backbone(z, positions, None, at=at)
            if not profile:
                z[rows.expand_as(at)[keep], at[keep]] = sample_categorical(logits[keep], top_p, generator)
        return len(active)
