"""BD3-LM (spec 6): block diffusion. Blocks of size L' are generated left to right; each
block is a masked diffusion model conditioned on the clean blocks before it.

Training runs all blocks at once on the 2L input x_t (+) x under the block-diffusion mask
(6.2); the sampler (``bd3lm_sampler``) serves earlier blocks from an exact KV cache (6.4).
BD3-LM's own schedule is used throughout: move chance p_t = t (alpha_t = 1 - t, no epsilon),
so a masked token's NELBO weight is 1/t (3.1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from baselines.bd3lm_sampler import sample_blocks
from esolm import masks
from esolm.backbone import Backbone, in_inference_mode
from esolm.config import ConfigError, ModelConfig
from esolm.diffusion import ones_like_valid, target_logprob
from esolm.interface import NLL, Capabilities, Clock, Display, LanguageModel, LossOutput, SampleOptions, SampleOutput
from esolm.kv_cache import KVCache
from esolm.schedules import SAMPLING_EPS, stratified_times

FULL_INTERVAL = (SAMPLING_EPS, 1.0)  # [1e-3, 1]: every evaluation and the search's baseline (6.3)
MAX_RESAMPLE = 1000  # cap on mask redraws per batch with resample=True (6.3)


@dataclass
class BD3Config(ModelConfig):
    """BD3-LM (spec 6). block_size: L', a divisor of length (the paper: 4, 8, 16).
    ignore_bos: position 0 is never masked and not counted (6.2, 8.1).
    clip: train with t ~ U[clip_beta, clip_omega] (6.3); search_clip_interval() moves it.
    clip_widths / clip_stride / clip_search_batches: the interval search of 6.3.
    resample: redraw a block's mask until its masked fraction lies in the interval (6.3)."""

    block_size: int = 4
    ignore_bos: bool = True
    clip: bool = False
    clip_beta: float = SAMPLING_EPS
    clip_omega: float = 1.0
    clip_widths: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    clip_stride: float = 0.05
    clip_search_batches: int = 100
    resample: bool = False

    def validate(self) -> None:
        super().validate()
        if self.block_size < 1 or self.length % self.block_size:
            divisors = ", ".join(str(d) for d in range(1, self.length + 1) if self.length % d == 0)
            raise ConfigError(
                f"block_size={self.block_size} does not divide length={self.length}; choose one of "
                f"its divisors: {divisors} (the BD3-LM paper uses 4, 8 and 16)")
        if not 0.0 <= self.clip_beta < self.clip_omega <= 1.0:
            raise ConfigError(f"the clipped interval needs 0 <= clip_beta < clip_omega <= 1; got "
                              f"[{self.clip_beta}, {self.clip_omega}]")
        if not self.clip_widths or not all(0.0 < w <= 1.0 for w in self.clip_widths):
            raise ConfigError(f"clip_widths must be widths in (0, 1]; got {self.clip_widths}")
        if not 0.0 < self.clip_stride <= 1.0 or self.clip_search_batches < 1:
            raise ConfigError(f"clip_stride must lie in (0, 1] and clip_search_batches be >= 1; got "
                              f"{self.clip_stride} and {self.clip_search_batches}")


@dataclass
class ClipSearch:
    """Result of the interval search (6.3): the chosen [beta, omega] and every candidate's variance."""

    interval: tuple[float, float]
    variances: dict[tuple[float, float], float]


@dataclass
class BD3SampleOptions(SampleOptions):
    steps_per_block: int | None = None  # T' per block; None: T / (L / L')
    sampler: Literal["ancestral", "first_hitting"] = "ancestral"  # 5.5 per block, or one mask per step
    nucleus: Literal["bd3", "eso"] = "bd3"  # BD3-LM's own top-p filter, or spec 5.6's
    reference_grid: bool = False  # the authors' per-block grid linspace(1, 0, T') (docs/reference_switches.md)

    def __post_init__(self):
        super().__post_init__()
        if self.steps_per_block is not None and int(self.steps_per_block) < 1:
            raise ConfigError(f"steps_per_block must be >= 1; got {self.steps_per_block}")


class BD3LM(LanguageModel):
    config_class = BD3Config
    sample_options_class = BD3SampleOptions
    # one token per step: T' = 5000 per block, T = 1 so that steps_per_block decides
    capabilities = Capabilities(kv_cache=True, exact_likelihood=False, single_pass_likelihood=False,
                                nfe_equals_l=dict(steps=1, steps_per_block=5000),
                                conditioning=("prefix", "infill"))  # infill in block order (15.4.3)

    @classmethod
    def display(cls, config: BD3Config) -> Display:
        colour = {4: "#de8f05", 8: "#cc78bc", 16: "#d55e00"}.get(config.block_size, "#ca9161")
        return Display("BD3-LM", f"BD3-LM L'={config.block_size}", colour, order=100 + config.block_size)

    def __init__(self, config: BD3Config):
        super().__init__(config)
        self.backbone = Backbone(config)
        L = config.length
        # not in the state_dict, so BD3-LM, MDLM and Eso-LM weights load into each other
        self.register_buffer("train_mask", masks.block_diffusion(L, config.block_size), persistent=False)
        self.register_buffer("positions", torch.arange(L), persistent=False)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def n_blocks(self) -> int:
        return self.config.length // self.config.block_size

    # -- network passes ------------------------------------------------------------------
    def denoise(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, L, V] of the x_t half of the 2L pass on z (+) x under the 6.2 mask."""
        B, L = z.shape
        at = self.positions[:L].expand(B, L)
        return self.backbone(torch.cat([z, x], 1), self.positions.repeat(2), self.train_mask[None], at=at)

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        return self.backbone.new_cache(batch, length or self.config.length)

    def block_logits(self, block: torch.Tensor, start: int, cache: KVCache,
                     at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L', V] of a block at positions [start, start + L') against the cached
        clean blocks before it (6.4 step 2); the block's K/V stay provisional. ``at`` [B, k]
        (indices into the block): only those positions' logits, [B, k, V]."""
        if cache.length != start:
            raise ConfigError(f"the cache holds {cache.length} clean tokens but the block starts at {start}; "
                              f"store every earlier block with store_block() first")
        return self.backbone(block, self.positions[start:start + block.shape[1]], None, cache=cache, at=at)

    def store_block(self, block: torch.Tensor, start: int, cache: KVCache) -> None:
        """The store pass (6.4 step 3): compute a clean block's K/V and commit them to the cache.
        ``block`` may hold several whole blocks (a prompt's, spec 15.4.3): they attend
        block-causally (M_BC), as the clean half of training does."""
        if cache.length != start:
            raise ConfigError(f"the cache holds {cache.length} clean tokens but the block starts at {start}; "
                              f"store the blocks in order, each right after the one before it")
        n, L = block.shape[1], self.config.length
        if n % self.block_size or start % self.block_size:
            raise ConfigError(f"store_block stores whole blocks: got {n} tokens at {start} with "
                              f"block_size={self.block_size}")
        mask = None if n == self.block_size else self.train_mask[None, L + start:L + start + n, L:L + start + n]
        none = torch.empty(block.shape[0], 0, dtype=torch.long, device=block.device)
        self.backbone(block, self.positions[start:start + n], mask, cache=cache, at=none)
        cache.commit(n)

    def prefix_logits(self, prefix: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L', V] of the last block of ``prefix`` [B, e] (clean blocks, then the
        current one) recomputed from scratch under the block-causal mask: no cache. ``at``
        [B, k] (indices into the last block): only those positions' logits, [B, k, V]."""
        e = prefix.shape[1]
        L = self.config.length
        mask = self.train_mask[L:L + e, L:L + e]  # M_BC: block(q) >= block(k)
        if at is not None:
            return self.backbone(prefix, self.positions[:e], mask[None], at=at + (e - self.block_size))
        return self.backbone(prefix, self.positions[:e], mask[None], last=self.block_size)

    # -- noise ----------------------------------------------------------------------------
    def block_times(self, batch: int, interval=FULL_INTERVAL, *, distributed: bool = False,
                    generator=None) -> torch.Tensor:
        """t [B, n_blocks] ~ U[beta, omega], one per block (6.2 step 1).

        Antithetic over all B * n_blocks entries (3.2, flattened; with ``distributed`` this
        rank's slice of the global batch). Each row's strata are then shuffled over its blocks,
        so every block's t is marginally uniform and the per-block estimate is unbiased; the
        set of strata, hence the variance reduction, is unchanged.
        """
        n, nb = batch * self.n_blocks, self.n_blocks
        offset, total = (self.rank * n, self.world_size * n) if distributed else (0, n)
        e = stratified_times(n, offset=offset, total=total, eps=0.0, generator=generator, device=self.device)
        shuffle = torch.rand(batch, nb, generator=generator, dtype=torch.float64, device=self.device).argsort(1)
        e = e.view(batch, nb).gather(1, shuffle)
        beta, omega = interval
        return beta + (omega - beta) * e

    def corrupt(self, tokens: torch.Tensor, t: torch.Tensor, *, resample_in=None, generator=None):
        """(z_t, masked): each token masked with probability t of its block (6.2 step 2),
        position 0 kept when ignore_bos. ``resample_in=(beta, omega)`` redraws the masks of
        blocks whose masked fraction falls outside it (6.3)."""
        B, L = tokens.shape
        bs = self.block_size
        t_tok = t.repeat_interleave(bs, dim=1)
        keep = torch.ones(L, dtype=torch.bool, device=tokens.device)
        keep[0] = not self.config.ignore_bos  # maskable positions
        masked = (torch.rand(B, L, generator=generator, dtype=torch.float64, device=tokens.device) < t_tok) & keep
        if resample_in is not None:
            beta, omega = resample_in
            n = keep.view(-1, bs).sum(1).double()  # maskable tokens per block
            reachable = torch.ceil(beta * n - 1e-9) <= torch.floor(omega * n + 1e-9)  # some k/n in range
            for _ in range(MAX_RESAMPLE):
                frac = masked.view(B, -1, bs).sum(-1) / n.clamp_min(1)
                bad = ((frac < beta) | (frac > omega)) & reachable & (n > 0)
                if not bad.any():
                    break
                redraw = bad.repeat_interleave(bs, dim=1)
                fresh = torch.rand(B, L, generator=generator, dtype=torch.float64, device=tokens.device) < t_tok
                masked = torch.where(redraw, fresh & keep, masked)
        return torch.where(masked, self.config.mask_id, tokens), masked

    def nelbo_terms(self, tokens, t, valid, *, resample_in=None, generator=None) -> torch.Tensor:
        """Per-token NELBO terms [B, L]: (1/t) * -log p_theta(x | z_t, x_<b) at masked, valid
        positions, zero elsewhere (SUBS carry-over, 6.2 step 6)."""
        z, masked = self.corrupt(tokens, t, resample_in=resample_in, generator=generator)
        nll = -target_logprob(self.denoise(z, tokens), tokens) * (masked & valid)
        weight = 1.0 / t.repeat_interleave(self.block_size, dim=1)
        return nll * weight.to(nll.dtype)

    def scored(self, tokens, valid=None) -> torch.Tensor:
        """The positions that count (6.2 step 3): valid ones, minus position 0 with ignore_bos."""
        valid = ones_like_valid(tokens, valid).clone()
        if self.config.ignore_bos:
            valid[:, 0] = False
        return valid

    @property
    def train_interval(self) -> tuple[float, float]:
        return (max(self.config.clip_beta, SAMPLING_EPS), self.config.clip_omega) if self.config.clip \
            else FULL_INTERVAL

    # -- the contract -------------------------------------------------------------------------
    @classmethod
    def train_step_cost(cls, config) -> float:
        return 2.0  # x_t (+) x: the vectorized 2L input of 6.2

    def loss(self, tokens, valid=None) -> LossOutput:
        """NELBO per scored token (6.2 step 7). In training mode with clip=True, t ~ U[beta, omega]
        (and masks resampled with resample=True); evaluation always uses [1e-3, 1] (6.3)."""
        self.check_tokens(tokens)
        valid = self.scored(tokens, valid)
        interval = self.train_interval if self.training else FULL_INTERVAL
        t = self.block_times(tokens.shape[0], interval, distributed=True)
        resample = interval if (self.training and self.config.resample) else None
        terms = self.nelbo_terms(tokens, t, valid, resample_in=resample)
        n = valid.sum()
        return LossOutput(loss=terms.sum() / n, nll_sum=terms.sum().detach(), num_tokens=n)

    @in_inference_mode
    def nll(self, tokens, *, exact=False, valid=None, generator=None, **opts) -> NLL:
        """NELBO per sequence (one t per block, t in [1e-3, 1], 8.1), normalized by L - 1
        scored tokens with ignore_bos."""
        if exact:
            raise ConfigError("BD3-LM has no exact likelihood (capabilities.exact_likelihood is False); "
                              "use nll(exact=False) for its NELBO")
        self.check_tokens(tokens)
        valid = self.scored(tokens, valid)
        t = self.block_times(tokens.shape[0], FULL_INTERVAL, generator=generator)
        terms = self.nelbo_terms(tokens, t, valid, generator=generator)
        return NLL(per_sequence=terms.double().sum(1), num_tokens=valid.sum(1))

    # -- the data-driven clipped schedule (6.3) -------------------------------------------------
    def clip_candidates(self) -> list[tuple[float, float]]:
        """[1e-3, 1], then every [beta, beta + w] for w in clip_widths, beta = 0, stride, ..."""
        cands = [FULL_INTERVAL]
        for w in self.config.clip_widths:
            k = 0
            while k * self.config.clip_stride + w <= 1.0 + 1e-9:
                beta = round(k * self.config.clip_stride, 10)
                cands.append((max(beta, SAMPLING_EPS), round(min(beta + w, 1.0), 10)))
                k += 1
        return list(dict.fromkeys(cands))

    @in_inference_mode
    def search_clip_interval(self, batches, *, seed: int = 0) -> ClipSearch:
        """Pick the interval whose per-block NELBO estimates have the lowest variance over the
        first clip_search_batches batches (6.3), and train with it from now on.

        Every candidate sees the same batches and the same random numbers (common random
        numbers), so the comparison is not blurred by sampling noise. Call after validation.
        """
        batches = [b for _, b in zip(range(self.config.clip_search_batches), batches)]
        if not batches:
            raise ConfigError("search_clip_interval needs at least one batch of tokens")
        was_training = self.training
        self.eval()
        variances = {}
        try:
            for cand in self.clip_candidates():
                g = torch.Generator(device=self.device).manual_seed(seed)
                per_block = []
                for tokens in batches:
                    tokens = tokens.to(self.device)
                    t = self.block_times(tokens.shape[0], cand, generator=g)
                    resample = cand if self.config.resample else None
                    terms = self.nelbo_terms(tokens, t, self.scored(tokens), resample_in=resample, generator=g)
                    per_block.append(terms.double().view(tokens.shape[0], self.n_blocks, -1).sum(-1).flatten())
                variances[cand] = float(torch.cat(per_block).var())
        finally:
            self.train(was_training)
        best = min(variances, key=variances.get)
        self.config.clip_beta, self.config.clip_omega = best
        return ClipSearch(interval=best, variances=variances)

    def after_validation(self, batches) -> ClipSearch | None:
        """Trainer hook: with clip=True, re-run the interval search on validation batches."""
        return self.search_clip_interval(batches) if self.config.clip else None

    # -- sampling (6.4) ---------------------------------------------------------------------------
    @in_inference_mode
    def generate(self, num_samples, options, *, generator=None, profile=False, on_step=None,
                 given=None) -> SampleOutput:
        """Block by block (6.4), BOS first; ``steps`` is the total T and each block gets
        T' = T / (L / L') steps unless ``steps_per_block`` is given. ``on_step(block, z, logits)``
        (a test hook: ``sample(..., hooks=dict(on_step=f))``) sees every denoising pass.

        sampler: "ancestral" (5.5 with r = s/t and p(x0) reused while nothing changes) or
        "first_hitting" (one uniformly chosen masked position per step and row; needs T' >= L').
        nucleus: "bd3" (BD3-LM's own filter: keep inclusive cumulative mass <= p, top-1 always;
        the paper ran BD3 this way) or "eso" (5.6, as AR / MDLM / Eso-LM). kv_cache=False
        recomputes the clean prefix at every step. NFE counts every network call, store passes
        included (the last block is never stored: nothing reads it).
        reference_grid: the authors' per-block grid t = linspace(1, 0, T') with s = t - 1/T'
        (ancestral only; off by default): its last step sits at t = 0 and fills every mask still
        there as the authors' division by t = 0 does (bd3lm_sampler.reference_fill: the lowest
        id outside the nucleus, else id 0; docs/reference_switches.md).

        ``given`` (spec 15.4.3): the leading blocks given in every row are stored by one store
        pass (no denoising); every later block starts with its given tokens clean (carry-over)
        and its free ones masked. A given token in block b is seen by blocks >= b only (the block
        order), so an infill is conditioned on to the left of each block, never to its right.
        """
        length = self.sample_length(options)
        steps_per_block = self._steps_per_block(length, options)
        z = torch.full((num_samples, length), self.config.mask_id, dtype=torch.long, device=self.device)
        z[:, 0] = self.config.bos_id
        if given is not None:
            z = given.place(z)
        clock = Clock(self.device)
        with clock.region(not profile):
            counts = sample_blocks(self, z, steps_per_block, options, generator=generator, profile=profile,
                                   clock=clock, on_step=on_step)
        extra = dict(counts, steps_per_block=steps_per_block, sampler=options.sampler, nucleus=options.nucleus,
                     reference_grid=options.reference_grid)
        return SampleOutput(tokens=z, nfe=counts["denoise_passes"] + counts["store_passes"],
                            seconds=clock.seconds, extra=extra)

    def _steps_per_block(self, length: int, options: BD3SampleOptions) -> int:
        """T' of every block, checked against the block size and the sampler."""
        bs = self.block_size
        if length % bs:
            raise ConfigError(f"BD3-LM samples whole blocks: length={length} must be a multiple of "
                              f"block_size={bs}")
        n_blocks, steps = length // bs, options.steps
        if options.steps_per_block is not None:
            steps_per_block = int(options.steps_per_block)
        elif steps is None or int(steps) < n_blocks or int(steps) % n_blocks:
            raise ConfigError(
                f"steps={steps} must be a positive multiple of the number of blocks L/L' = {n_blocks} "
                f"(each block gets T' = steps / {n_blocks}, spec 6.4); pass such a steps or steps_per_block")
        else:
            steps_per_block = int(steps) // n_blocks
        if options.sampler == "first_hitting" and steps_per_block < bs:
            raise ConfigError(f"first_hitting unmasks one token per step, so it needs steps_per_block >= "
                              f"block_size={bs}; got {steps_per_block}")
        if options.reference_grid and options.sampler != "ancestral":
            raise ConfigError("reference_grid is the authors' ancestral time grid; it needs sampler='ancestral'")
        return steps_per_block
