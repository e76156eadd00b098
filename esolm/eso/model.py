"""Eso-LM (A) and (B) (spec 7): one shared denoiser trained on the hybrid NELBO, an MDM
term on the diffusion part of the batch plus an AR term on the sequential part (7.1, 7.3),
evaluated by that NELBO or by the importance-weighted any-order bound (7.10).

(A) and (B) differ only in attention masks, the sequential sort and what the sampler may
cache (7.7); here they are two small subclasses of :class:`EsoLM` overriding its hooks.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

import torch

from esolm import masks
from esolm.backbone import Backbone, in_inference_mode
from esolm.config import ConfigError, ModelConfig, _check
from esolm.diffusion import forward_mask, local_times, ones_like_valid, target_logprob
from esolm.eso import ordering as order
from esolm.eso.sampler import sample as eso_sample
from esolm.interface import NLL, Capabilities, Display, LanguageModel, LossOutput, SampleOptions, SampleOutput
from esolm.likelihood import iw_nll
from esolm.schedules import LogLinear, stratified_times


@dataclass
class Terms:
    """The two halves of one batch's hybrid NELBO (7.3): per-token means R (AR) and D
    (MDM, ELBO weights), what is backpropagated for D, and each row's summed loss."""

    n_d: int
    R: torch.Tensor
    D: torch.Tensor
    D_objective: torch.Tensor
    rows: torch.Tensor  # [B] float64


def default_batch_split(alpha_0: float) -> float:
    """kappa of spec 7.2: 1 at alpha_0 = 1 (all diffusion), 0 at alpha_0 = 0 (all AR), else 0.5."""
    return 1.0 if alpha_0 == 1.0 else 0.0 if alpha_0 == 0.0 else 0.5


@dataclass
class EsoConfig(ModelConfig):
    """Eso-LM (spec 7.2).

    alpha_0: fraction of tokens the MDM generates (1 = pure diffusion, 0 = AR with AdaLN).
    batch_split: kappa, the fraction of each batch that gets the MDM loss; None picks
        the spec's value from alpha_0 (``default_batch_split``). It must be 1 at
        alpha_0 = 1, 0 at alpha_0 = 0 and strictly inside (0, 1) otherwise, so that the
        loss is always the full hybrid NELBO.
    loss_type: "elbo" or "low_var" (MDM weight -1, training only, 5.4).
    schedule_eps: the epsilon of LogLinear(alpha_0) (3.1).
    alpha_0_eval: default alpha_0 for sampling (None = alpha_0); any value in [0, 1].
    """

    alpha_0: float = 1.0
    batch_split: float | None = None
    loss_type: Literal["elbo", "low_var"] = "elbo"
    schedule_eps: float = 1e-3
    alpha_0_eval: float | None = None

    def __post_init__(self):
        if self.batch_split is None:
            self.batch_split = default_batch_split(self.alpha_0)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        a, k = self.alpha_0, self.batch_split
        _check(0.0 <= a <= 1.0, f"alpha_0 must lie in [0, 1] (1 = pure diffusion, 0 = AR); got {a}")
        _check(0.0 <= k <= 1.0, f"batch_split must lie in [0, 1]; got {k}")
        _check(a != 1.0 or k == 1.0, f"alpha_0=1 has no sequential term, so batch_split must be 1 "
                                     f"(or left unset); got {k}")
        _check(a != 0.0 or k == 0.0, f"alpha_0=0 has no diffusion term, so batch_split must be 0 "
                                     f"(or left unset); got {k}")
        _check(a in (0.0, 1.0) or 0.0 < k < 1.0, f"0 < alpha_0 < 1 needs both loss terms, so "
                                                f"batch_split must lie strictly inside (0, 1); got {k}")
        _check(self.loss_type in ("elbo", "low_var"), f"loss_type must be 'elbo' or 'low_var'; got {self.loss_type!r}")
        _check(0.0 <= self.schedule_eps < 1.0, f"schedule_eps must lie in [0, 1); got {self.schedule_eps}")
        if self.alpha_0_eval is not None:
            _check(0.0 <= self.alpha_0_eval <= 1.0, f"alpha_0_eval must lie in [0, 1]; got {self.alpha_0_eval}")


@dataclass
class EsoSampleOptions(SampleOptions):
    alpha_0_eval: float | None = None  # the sampling alpha_0 (None: config.alpha_0_eval, else the training one)
    sampler: Literal["binomial", "block"] = "binomial"  # binomial schedule, or the subcontext sampler (7.8)
    block_steps: int | None = None  # block sampler: residue classes (default: steps)
    block_shuffle: bool = True  # block sampler: shuffle within each class
    subcontext_len: int | None = None  # alias of block_steps
    subcontext_shuffle: bool | None = None  # alias of block_shuffle

    def __post_init__(self):
        super().__post_init__()
        if self.alpha_0_eval is not None and not 0.0 <= float(self.alpha_0_eval) <= 1.0:
            raise ConfigError(f"alpha_0_eval must lie in [0, 1] (1 = pure diffusion, 0 = AR); got {self.alpha_0_eval}")
        if self.subcontext_len is not None and self.block_steps is None:
            self.block_steps = self.subcontext_len
        if self.subcontext_shuffle is not None:
            self.block_shuffle = self.subcontext_shuffle


class EsoLM(LanguageModel, abc.ABC):
    """The shared Eso-LM: hybrid NELBO, IW exact likelihood and the sampler of sampler.py.

    Subclass hooks (the only places (A) and (B) differ, spec 7.7):
    ``diffusion_mask``, ``sequential_mask``, ``sequential_mode``, ``order_logliks``,
    and for the sampler ``cacheable`` and ``step_mask``.
    """

    config_class = EsoConfig
    sample_options_class = EsoSampleOptions
    sequential_mode: str  # sort mode of the sequential half (7.4)

    def __init__(self, config: EsoConfig):
        super().__init__(config)
        self.backbone = Backbone(config)
        self.schedule = LogLinear(config.alpha_0, config.schedule_eps)

    # -- hooks ----------------------------------------------------------------------------
    @abc.abstractmethod
    def diffusion_mask(self, num_clean: torch.Tensor, length: int):
        ...

    @abc.abstractmethod
    def sequential_mask(self, num_clean: torch.Tensor, length: int) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def order_logliks(self, tokens: torch.Tensor, sigma: torch.Tensor, num_clean: int) -> torch.Tensor:
        ...

    # -- the two loss terms (7.3) --------------------------------------------------------
    def split(self, batch: int) -> int:
        """N_d = int(kappa B): rows [0, N_d) are the diffusion part, the rest sequential (7.3)."""
        n_d = int(round(self.config.batch_split * batch, 9))
        a = self.config.alpha_0
        if 0.0 < a < 1.0 and not 0 < n_d < batch:
            need = next(b for b in range(2, 10**6) if 0 < int(round(self.config.batch_split * b, 9)) < b)
            raise ConfigError(f"a batch of {batch} rows with batch_split={self.config.batch_split} leaves one "
                              f"half of the hybrid NELBO empty; use batches of at least {need} rows")
        return n_d

    def diffusion_term(self, x, valid, t, generator=None):
        """MDM term (7.3b): unweighted -log p per sorted slot [N_d, L] (zero at clean and
        invalid slots), the ELBO weight -alpha'/(1 - alpha) per row [N_d, 1], and sorted z_t."""
        m = self.config.mask_id
        z = forward_mask(x, self.schedule.alpha(t)[:, None], m, generator)
        pi = order.ordering(z == m, order.SHUFFLE, generator)
        zs, xs, vs = order.gather(z, pi), order.gather(x, pi), order.gather(valid, pi)
        logits = self.backbone(zs, pi, self.diffusion_mask((zs != m).sum(1), x.shape[1]))
        nll = -target_logprob(logits, xs) * ((zs == m) & vs)
        return nll, self.schedule.elbo_weight(t)[:, None].to(nll.dtype), zs

    def sequential_term(self, x, valid, generator=None):
        """AR term (7.3a): -log p per sorted slot [N_s, L] of the z half of z0 (+) x (zero
        at clean and invalid slots), and the sorted z0."""
        m = self.config.mask_id
        z0 = forward_mask(x, self.config.alpha_0, m, generator)
        pi = order.ordering(z0 == m, self.sequential_mode, generator)
        zs, xs, vs = order.gather(z0, pi), order.gather(x, pi), order.gather(valid, pi)
        logits = self.sequential_logits(zs, xs, pi, (zs != m).sum(1))
        return -target_logprob(logits, xs) * ((zs == m) & vs), zs

    def terms(self, tokens, valid, times, low_var: bool = False, generator=None) -> Terms:
        """Both halves of the hybrid NELBO on one batch (7.3): rows [0, N_d) diffusion."""
        B = tokens.shape[0]
        n_d = self.split(B)
        zero = torch.zeros((), device=tokens.device)
        out = Terms(n_d, zero, zero, zero, torch.zeros(B, dtype=torch.float64, device=tokens.device))
        if n_d > 0:
            nll, w, _ = self.diffusion_term(tokens[:n_d], valid[:n_d], times(n_d), generator)
            n = valid[:n_d].sum().clamp_min(1)
            out.D = (nll * w).sum() / n
            out.D_objective = nll.sum() / n if low_var else out.D
            out.rows[:n_d] = (nll * w).detach().double().sum(1)
        if n_d < B:
            nll, _ = self.sequential_term(tokens[n_d:], valid[n_d:], generator)
            out.R = nll.sum() / valid[n_d:].sum().clamp_min(1)
            out.rows[n_d:] = nll.detach().double().sum(1)
        return out

    # -- the contract -------------------------------------------------------------------
    @classmethod
    def train_step_cost(cls, config) -> float:
        # kappa of the rows take one pass over L (diffusion term), the rest one over z0 (+) x (2L)
        return config.batch_split + 2.0 * (1.0 - config.batch_split)

    def loss(self, tokens, valid=None, *, generator=None) -> LossOutput:
        """loss = R + D, each half normalized by its own valid tokens (7.3c); the low_var
        weight only while training. nll_sum = (R + D with ELBO weights) * num_tokens, where
        num_tokens = the diffusion half's valid tokens (the sequential half's if none)."""
        self.check_tokens(tokens)
        valid = ones_like_valid(tokens, valid)
        low_var = self.training and self.config.loss_type == "low_var"
        tm = self.terms(tokens, valid, lambda n: local_times(self, n, generator, tokens.device),
                        low_var, generator)
        n_tok = valid[:tm.n_d].sum() if tm.n_d else valid.sum()
        return LossOutput(loss=tm.R + tm.D_objective, nll_sum=((tm.R + tm.D).detach() * n_tok),
                          num_tokens=n_tok)

    @in_inference_mode
    def nll(self, tokens, *, exact=False, valid=None, num_orders: int = 1, generator=None, **opts) -> NLL:
        """NELBO (default) or the IW any-order bound over ``num_orders`` orders (7.10).

        NELBO: each sequence's own single-sample hybrid NELBO (7.1): its MDM term (one
        stratified t per row over the batch, ELBO weights) plus its AR term (its own z0),
        summed over its tokens; num_tokens = its valid tokens. A row's value depends on the
        seed and its place in the batch, never on the other rows' tokens. Unlike training's
        kappa split (7.3), where each row carries one half only, every row carries both
        terms (when 0 < alpha_0 < 1 that is two passes per row instead of one); the
        aggregate exp(sum per_sequence / sum num_tokens) estimates the same NELBO PPL as the
        paper's split protocol (8.1), with less variance (docs/metrics.md).

        exact=True: for each of the K orders (one per k, shared by the batch) one order
        log-likelihood per sequence, then -logmeanexp over k; num_tokens = L (valid is
        ignored, as in the reference).
        """
        self.check_tokens(tokens)
        B, L = tokens.shape
        if exact:
            if int(num_orders) < 1:
                raise ConfigError(f"num_orders must be >= 1; got {num_orders}")
            scores = []
            for _ in range(int(num_orders)):
                sigma, c = order.proposal(L, self.config.alpha_0, generator, tokens.device)
                scores.append(self.order_logliks(tokens, sigma, c))
            return NLL(per_sequence=iw_nll(torch.stack(scores, 1)),
                       num_tokens=torch.full((B,), L, dtype=torch.long, device=tokens.device))
        valid = ones_like_valid(tokens, valid)
        rows = torch.zeros(B, dtype=torch.float64, device=tokens.device)
        if self.config.batch_split > 0:  # the MDM term exists (alpha_0 > 0)
            t = stratified_times(B, generator=generator, device=tokens.device)
            nll, w, _ = self.diffusion_term(tokens, valid, t, generator)
            rows += (nll * w).double().sum(1)
        if self.config.batch_split < 1:  # the AR term exists (alpha_0 < 1)
            rows += self.sequential_term(tokens, valid, generator)[0].double().sum(1)
        return NLL(per_sequence=rows, num_tokens=valid.sum(1))

    # -- exact likelihood (7.10) --------------------------------------------------------
    def sequential_logits(self, z_sorted, x_sorted, sigma, num_clean):
        """Sequential-mode logits at the z half (2L input, 7.5.3/7.5.4), sorted coordinates."""
        B, L = x_sorted.shape
        return self.backbone(torch.cat([z_sorted, x_sorted], 1), torch.cat([sigma, sigma], 1),
                             self.sequential_mask(num_clean, L),
                             at=torch.arange(L, device=x_sorted.device).expand(B, L))

    # -- sampling (7.8) -------------------------------------------------------------------
    @abc.abstractmethod
    def cacheable(self, start: int, n_mdm: int) -> bool:
        """May the step whose masks start at sorted slot ``start`` attend to a KV cache?"""

    @abc.abstractmethod
    def step_mask(self, a: int, end: int, num_clean: int, causal: torch.Tensor | None):
        """Mask of the fed sorted slots [a, end) (queries) over keys [0, end), given that slots
        < num_clean are clean; ``causal`` is the additive causal [L, L] mask for cached steps."""

    @in_inference_mode
    def generate(self, num_samples, options, *, generator=None, profile=False, given=None) -> SampleOutput:
        """See esolm.eso.sampler.sample (spec 7.8; under given tokens 15.4.4, 15.4.5)."""
        return eso_sample(self, num_samples, options, generator=generator, profile=profile, given=given)


class EsoLMB(EsoLM):
    """Eso-LM (B), the paper's flagship: causal attention in the sorted order in both
    phases, so one exact KV cache serves every sampling step (7.5.1, 7.5.3, 7.9)."""

    capabilities = Capabilities(kv_cache=True, exact_likelihood=True, single_pass_likelihood=True,
                                nfe_equals_l=dict(steps=10**6),  # T = 10^6: about one token per step
                                conditioning=("prefix", "infill"))  # given tokens first in sigma (15.4.4)

    @classmethod
    def display(cls, config: EsoConfig) -> Display:
        return Display("Eso-LM (B)", "Eso-LM (B)", "#029e73", order=1000, shade_by="alpha_0")
    sequential_mode = order.SHUFFLE_CLEAN

    def diffusion_mask(self, num_clean, length):
        return "causal"

    def sequential_mask(self, num_clean, length):
        return masks.sequential(length, num_clean.device)[None]

    def order_logliks(self, tokens, sigma, num_clean):
        """sum_l log p(x_sigma(l) | x_sigma(<l)) per sequence in ONE pass: the sequential
        mode with an all-mask z half (7.5.5); ``num_clean`` plays no role for (B)."""
        B, L = tokens.shape
        sig = sigma.expand(B, L)
        xs = order.gather(tokens, sig)
        z = torch.full_like(xs, self.config.mask_id)
        logits = self.sequential_logits(z, xs, sig, torch.zeros(B, dtype=torch.long, device=tokens.device))
        return target_logprob(logits, xs).double().sum(1)

    def cacheable(self, start, n_mdm):
        return True

    def step_mask(self, a, end, num_clean, causal):
        return "causal" if a == 0 else causal[None, a:end, :end]


class EsoLMA(EsoLM):
    """Eso-LM (A): clean tokens attend bidirectionally among themselves, masks causally
    (7.5.2, 7.5.4, 7.7). Its KV cache serves the sequential phase only (the clean set is
    frozen there); see esolm/eso/sampler.py and docs/esolm_a_sampler.md.

    The exact likelihood follows (A)'s own one-token-per-step generative process: the
    diffusion-phase conditionals see their clean set bidirectionally, so each needs its
    own pass (c passes per order, batched), plus one sequential-mode pass for the tail.
    Hence ``single_pass_likelihood`` is False for (A).
    """

    capabilities = Capabilities(kv_cache=True, exact_likelihood=True, single_pass_likelihood=False,
                                conditioning=("prefix", "infill"))  # given tokens join the clean set (15.4.5)

    @classmethod
    def display(cls, config: EsoConfig) -> Display:
        return Display("Eso-LM (A)", "Eso-LM (A)", "#56b4e9", order=1001, shade_by="alpha_0")
    sequential_mode = order.NATURAL
    pass_batch = 64  # rows per network call in order_logliks

    def diffusion_mask(self, num_clean, length):
        return masks.prefix_lm(length, num_clean)

    def sequential_mask(self, num_clean, length):
        return masks.sequential_prefix(length, num_clean)

    def order_logliks(self, tokens, sigma, num_clean):
        """sum_l log p(x_sigma(l) | x_sigma(<l)) per sequence under (A)'s attention: the
        tail (slots >= c) from one sequential-mode pass with z0 = x on C; slot l < c from
        the diffusion-mode pass on [x_sigma(<l) ; mask] (prefix-LM, l clean)."""
        B, L = tokens.shape
        m, c, dev = self.config.mask_id, int(num_clean), tokens.device
        sig = sigma.expand(B, L)
        xs = order.gather(tokens, sig)
        z = xs.clone()
        z[:, c:] = m
        logits = self.sequential_logits(z, xs, sig, torch.full((B,), c, device=dev))
        total = target_logprob(logits[:, c:], xs[:, c:]).double().sum(1)
        per_call = max(1, self.pass_batch // B)
        for l0 in range(0, c, per_call):
            ls = torch.arange(l0, min(l0 + per_call, c), device=dev)  # conditionals in this call
            n = int(ls[-1]) + 1  # slots after the last scored one are invisible: drop them
            slot = torch.arange(n, device=dev)
            zl = torch.where(slot[None, None] < ls[:, None, None], xs[None, :, :n], m).reshape(-1, n)
            nc = ls.repeat_interleave(B)
            out = self.backbone(zl, sig[:, :n].repeat(len(ls), 1), masks.prefix_lm(n, nc), at=nc[:, None])
            lp = target_logprob(out[:, 0], xs[:, ls].T.reshape(-1))
            total += lp.double().view(len(ls), B).sum(0)
        return total

    def cacheable(self, start, n_mdm):
        return start >= n_mdm

    def step_mask(self, a, end, num_clean, causal):
        if num_clean <= a:  # sequential phase: the clean prefix is committed in the cache
            return "causal" if a == 0 else causal[None, a:end, :end]
        return masks.prefix_lm(end, torch.tensor([num_clean], device=self.device))  # a = 0 here
