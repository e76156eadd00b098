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

Given tokens (spec 15.4.4, 15.4.5) come first in the order: the sorted buffer starts with them
at slots [0, g) and the first step feeds them with its masks (the prefill fused into step 1, no
extra NFE); the schedule runs over the n = L - g free positions only. All rows of one call
share g (the slot arithmetic is the batch's); ``sample`` runs one call per prompt length.

``decode`` is a generator yielding each step's state; ``sample`` just exhausts it, and
tests drive it step by step (cache exactness, teacher forcing).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from esolm import masks
from esolm.conditioning import Given, by_groups
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
           teacher: torch.Tensor | None = None, prefix: torch.Tensor | None = None):
    """Fill the all-mask sequence in the order ``sigma`` [B, L] with step ``sizes``; yield a Step each.

    ``prefix`` [B, g] (sorted): given tokens at slots [0, g), clean from the start; ``sizes`` then
    sum to L - g and ``n_mdm`` counts slots from 0 (g + the free tokens of the diffusion phase).
    ``teacher`` [B, L] (sorted): write these tokens instead of sampling (scoring mode).
    ``profile``: skip the sampling math; ``clock`` then brackets only the network calls.
    """
    B, L = sigma.shape
    z, start = _sorted_buffer(model, sigma, prefix)
    usable = kv_cache and bool(sizes) and model.cacheable(L - sizes[-1], n_mdm)  # the last step: the most cacheable
    cache = model.backbone.new_cache(B, L) if usable else None
    clock = clock or Clock(sigma.device)
    # rows [a, end) x keys [0, end) of this additive causal mask = a cached step's mask (L^2 entries)
    causal = None if cache is None else torch.zeros(L, L, dtype=cache.dtype, device=sigma.device).masked_fill_(
        ~masks.causal(L, sigma.device), float("-inf"))
    for i, k in enumerate(sizes):
        end = start + k
        a, logits = _step_logits(model, z, sigma, (start, end), n_mdm, (cache, causal), clock.region(profile))
        if teacher is not None:
            z[:, start:end] = teacher[:, start:end]
        elif not profile:
            z[:, start:end] = sample_categorical(logits, top_p, generator)
        yield Step(i, start, k, (a, end), logits, z, cache)
        start = end


def _step_logits(model, z, sigma, slots: tuple[int, int], n_mdm: int, cached, timed) -> tuple[int, torch.Tensor]:
    """(a, logits [B, k, V]) of the step filling sorted ``slots`` [start, end): it feeds [a, end),
    against the cache where the step may use it (``cached`` = (cache, causal mask)), inside the
    clock region ``timed``, and commits the tokens sampled before it."""
    (start, end), (cache, causal) = slots, cached
    use = cache is not None and model.cacheable(start, n_mdm)
    a = cache.length if use else 0
    mask = model.step_mask(a, end, min(start, n_mdm), causal)
    with timed:
        logits = model.backbone(z[:, a:end], sigma[:, a:end], mask, cache=cache if use else None, last=end - start)
    if use:
        cache.commit(start - a)  # the tokens sampled before this step are final
    return a, logits


def _sorted_buffer(model, sigma: torch.Tensor, prefix: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """The sorted tokens before the first step (masks, the given ``prefix`` at slots [0, g)) and g."""
    z = torch.full(sigma.shape, model.config.mask_id, dtype=torch.long, device=sigma.device)
    if prefix is None:
        return z, 0
    z[:, :prefix.shape[1]] = prefix
    return z, prefix.shape[1]


def plan(model, num_samples: int, length: int, steps: int, alpha_0_eval: float, sampler: str,
         block_steps: int | None, block_shuffle: bool, generator=None, given: Given | None = None):
    """(sigma [B, L], sizes, n_MDM) of the binomial (7.8) or the block sampler; under ``given``
    (every row with the same count g) the binomial schedule over the L - g free positions, the
    given ones first in sigma (15.4.4), n_MDM counted from slot 0."""
    dev = model.device
    if sampler == "binomial":
        g = 0 if given is None else int(given.counts[0])
        n = length - g  # the free positions
        sizes, n_mdm = eso_schedule(n, alpha_0_eval, steps, generator, model.config.schedule_eps) if n else ([], 0)
        if given is None:
            return order.sampling_orders(num_samples, length, n_mdm, generator, dev), sizes, n_mdm
        return order.conditional_orders(given.mask, n_mdm, generator), sizes, g + n_mdm
    if sampler == "block":
        if given is not None and not given.empty:
            raise ConfigError("the block (subcontext) sampler decodes fixed residue classes of all L positions, so "
                              "it cannot put given tokens first in its order (spec 15.4.4); sample under a prompt "
                              "or an infill with sampler='binomial'")
        sizes, sigma, n_mdm = order.block_schedule(length, block_steps or steps, alpha_0_eval,
                                                   block_shuffle, generator)
        return sigma.to(dev).expand(num_samples, length), sizes, n_mdm
    raise ConfigError(f"unknown Eso-LM sampler {sampler!r}; choose 'binomial' or 'block'")


def sample(model, num_samples: int, options, *, generator=None, profile: bool = False,
           given: Given | None = None) -> SampleOutput:
    """Eso-LM sampling (spec 7.8) with ``options`` (EsoSampleOptions); tokens come back in
    natural order.

    options.alpha_0_eval: the sampling alpha_0 (None = config.alpha_0_eval, else the training one).
    sampler="binomial": the binomial schedule over ``steps`` and one random order per sample.
    sampler="block": the subcontext sampler, ``block_steps`` (default ``steps``) residue classes,
    shuffled within each class when ``block_shuffle``.
    NFE = number of steps = network calls. profile=True times only the network calls on
    mask inputs (spec 8.5) and returns all-mask tokens.
    ``given`` (15.4.4, 15.4.5): the given tokens first in every order, the schedule over the free
    ones; rows with different numbers of given tokens run as one call each (NFE summed).
    """
    if given is None:
        return _sample(model, num_samples, options, generator, profile, None)
    return by_groups(given, lambda rows: _sample(model, rows.counts.numel(), options, generator, profile, rows))


def _sample(model, num_samples: int, options, generator, profile: bool, given: Given | None) -> SampleOutput:
    """``sample`` for rows that share their number of given tokens."""
    length, steps, top_p = model.sample_length(options), options.required_steps(model.name), options.top_p
    alpha_0_eval, sampler = options.alpha_0_eval, options.sampler
    if alpha_0_eval is None:
        alpha_0_eval = model.config.alpha_0_eval if model.config.alpha_0_eval is not None else model.config.alpha_0
    g = 0 if given is None else int(given.counts[0])
    clock = Clock(model.device)
    with clock.region(not profile):
        sigma, sizes, n_mdm = plan(model, num_samples, length, steps, float(alpha_0_eval), sampler,
                                   options.block_steps, options.block_shuffle, generator, given)
        prefix = None if given is None else order.gather(given.tokens, sigma[:, :g])
        tokens = prefix  # nothing to decode when every position is given
        for step in decode(model, sigma, sizes, n_mdm, top_p=top_p, kv_cache=options.kv_cache,
                           generator=generator, clock=clock, profile=profile, prefix=prefix):
            tokens = step.tokens
        tokens = order.ungather(tokens, sigma)
    return SampleOutput(tokens=tokens, nfe=len(sizes), seconds=clock.seconds,
                        extra={"n_mdm": n_mdm - g, "alpha_0_eval": float(alpha_0_eval), "sampler": sampler})
