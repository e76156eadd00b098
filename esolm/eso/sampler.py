"""The Eso-LM sampler (spec 7.8): a schedule of step sizes, one order per sample, then
one network call per step in sorted coordinates against a unified KV cache.

Every step i fills the masks at sorted slots [start, start + k_i). With the cache it feeds
only [tokens sampled last step (now clean) (+) masks to fill now] under a causal chunk
mask, attends to the committed cache slots, and commits the clean ones (7.8 step 4);
without it, it recomputes the whole sorted prefix [0, start + k_i) (the reference path).

Eso-LM (B) caches in both phases. Eso-LM (A) lets clean tokens attend bidirectionally,
so a new clean token changes the K/V of the earlier ones: its diffusion steps recompute
the clean prefix, and the cache serves the sequential phase, where the clean set is
frozen. Schedule choice for (A) (docs/esolm_a_sampler.md): the same binomial schedule and
orders as (B); a diffusion step feeds all clean tokens plus the k_i masks (future masks
are invisible to them, so they are not fed); the first sequential step feeds the n_MDM
clean tokens plus the first mask and fills the cache; later steps feed 2 tokens.

``decode`` is a generator yielding each step's state; ``sample`` just exhausts it, and
tests drive it step by step (cache exactness, teacher forcing).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from esolm import masks
from esolm.config import ConfigError
from esolm.eso import ordering as order
from esolm.interface import Clock, SampleOutput
from esolm.kv_cache import KVCache
from esolm.schedules import eso_schedule
from esolm.sampling import sample_categorical


@dataclass
class Step:
    """One sampling step, yielded after its masks were filled (sorted coordinates)."""

    index: int
    start: int  # first sorted slot filled at this step
    size: int  # k_i
    fed: tuple[int, int]  # sorted slots [a, end) fed to the network
    logits: torch.Tensor  # [B, k_i, V] for the masks being filled
    tokens: torch.Tensor  # [B, L] sorted tokens after this step (the live buffer: clone to keep)
    cache: KVCache | None  # the live cache (None without kv_cache or when never usable)


def decode(model, sigma: torch.Tensor, sizes: list[int], n_mdm: int, *, top_p: float = 1.0,
           kv_cache: bool = True, generator=None, clock: Clock | None = None, profile: bool = False,
           teacher: torch.Tensor | None = None):
    """Fill the all-mask sequence in the order ``sigma`` [B, L] with step ``sizes``; yield a Step each.

    ``teacher`` [B, L] (sorted): write these tokens instead of sampling (scoring mode).
    ``profile``: skip the sampling math; ``clock`` then brackets only the network calls.
    """
    B, L = sigma.shape
    m = model.config.mask_id
    z = torch.full((B, L), m, dtype=torch.long, device=sigma.device)
    usable = kv_cache and model.cacheable(L - sizes[-1], n_mdm)  # the last step is the most cacheable
    cache = model.backbone.new_cache(B, L) if usable else None
    clock = clock or Clock(sigma.device)
    # rows [a, end) x keys [0, end) of this additive causal mask = a cached step's mask (L^2 entries)
    causal = None if cache is None else torch.zeros(L, L, dtype=cache.dtype, device=sigma.device).masked_fill_(
        ~masks.causal(L, sigma.device), float("-inf"))
    start = 0
    for i, k in enumerate(sizes):
        end = start + k
        use = cache is not None and model.cacheable(start, n_mdm)
        a = cache.length if use else 0
        mask = model.step_mask(a, end, min(start, n_mdm), causal)
        with clock.region(profile):
            logits = model.backbone(z[:, a:end], sigma[:, a:end], mask, cache=cache if use else None, last=k)
        if use:
            cache.commit(start - a)  # the tokens sampled before this step are final
        if teacher is not None:
            z[:, start:end] = teacher[:, start:end]
        elif not profile:
            z[:, start:end] = sample_categorical(logits, top_p, generator)
        yield Step(i, start, k, (a, end), logits, z, cache)
        start = end


def plan(model, num_samples: int, length: int, steps: int, alpha_0_eval: float, sampler: str,
         block_steps: int | None, block_shuffle: bool, generator=None):
    """(sigma [B, L], sizes, n_MDM) of the binomial (7.8) or the block sampler."""
    dev = model.device
    if sampler == "binomial":
        sizes, n_mdm = eso_schedule(length, alpha_0_eval, steps, generator, model.config.schedule_eps)
        return order.sampling_orders(num_samples, length, n_mdm, generator, dev), sizes, n_mdm
    if sampler == "block":
        sizes, sigma, n_mdm = order.block_schedule(length, block_steps or steps, alpha_0_eval,
                                                   block_shuffle, generator)
        return sigma.to(dev).expand(num_samples, length), sizes, n_mdm
    raise ConfigError(f"unknown Eso-LM sampler {sampler!r}; choose 'binomial' or 'block'")


def sample(model, num_samples: int, options, *, generator=None, profile: bool = False) -> SampleOutput:
    """Eso-LM sampling (spec 7.8) with ``options`` (EsoSampleOptions); tokens come back in
    natural order.

    options.alpha_0_eval: the sampling alpha_0 (None = config.alpha_0_eval, else the training one).
    sampler="binomial": the binomial schedule over ``steps`` and one random order per sample.
    sampler="block": the subcontext sampler, ``block_steps`` (default ``steps``) residue classes,
    shuffled within each class when ``block_shuffle``.
    NFE = number of steps = network calls. profile=True times only the network calls on
    mask inputs (spec 8.5) and returns all-mask tokens.
    """
    length, steps, top_p = model.sample_length(options), options.required_steps(model.name), options.top_p
    alpha_0_eval, sampler = options.alpha_0_eval, options.sampler
    if alpha_0_eval is None:
        alpha_0_eval = model.config.alpha_0_eval if model.config.alpha_0_eval is not None else model.config.alpha_0
    clock = Clock(model.device)
    with clock.region(not profile):
        sigma, sizes, n_mdm = plan(model, num_samples, length, steps, float(alpha_0_eval), sampler,
                                   options.block_steps, options.block_shuffle, generator)
        for step in decode(model, sigma, sizes, n_mdm, top_p=top_p, kv_cache=options.kv_cache,
                           generator=generator, clock=clock, profile=profile):
            pass
        tokens = order.ungather(step.tokens, sigma)
    return SampleOutput(tokens=tokens, nfe=len(sizes), seconds=clock.seconds,
                        extra={"n_mdm": n_mdm, "alpha_0_eval": float(alpha_0_eval), "sampler": sampler})
