"""ReMDM (Wang et al. 2025; spec 15.3): MDLM's ancestral sampler with remasking, selected by
MDLM's sample option ``remask``, and the registry model ``remdm`` that samples with it by default.

One step t -> s (alpha_s > alpha_t) remasks a decoded token with probability sigma_t, 0 <= sigma_t
<= sigma_max = min(1, (1 - alpha_s) / alpha_t), and unmasks a masked one with more mass to make up
for it (15.3.1):

    z_t != m :  z_s = z_t  w.p. 1 - sigma_t,  m  w.p. sigma_t
    z_t  = m :  z_s ~ (1 - r) x_theta(z_t) + r delta_m,   r = (1 - alpha_s - sigma_t alpha_t) / (1 - alpha_t)

Whatever sigma_t, each position keeps the forward marginal q_s(. | x) = alpha_s x + (1 - alpha_s) m,
so an MDLM-trained x_theta is the right denoiser; sigma_t = 0 is MDLM's step (5.5), draw for draw.
The schedules of sigma_t are ReMDM's (15.3.2): ``cap``, ``rescale`` (ReMDM's eta * min(1, .), not
Duo's Psi-sampler eta * min(eta, .), 15.7) and ``loop``. ``remdm-conf`` is not implemented.

NFE (15.3.4): one network call per step that holds a mask token and whose input changed since the
last call (no time input: the same input gives the same p(x0)); no final noise-removal pass, since
the last step ends at alpha_s = 1, where sigma_max = 0 and every mask left is filled. Remasking
changes the sequence almost every step, so NFE is about T (MDLM's expected T (1 - e^(-L/T))).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from baselines.mdlm import MDLM, MDLMSampleOptions
from esolm.config import ConfigError, ModelConfig
from esolm.interface import Capabilities, Clock, Display, SampleOutput
from esolm.sampling import nucleus_filter, sample_from_probs

SCHEDULES = ("cap", "rescale", "loop")
DEFAULT_ETA = {"cap": 0.008, "rescale": 0.015, "loop": 0.02}  # ReMDM's OWT scripts (15.3.2)


# ------------------------------------------------------------------------ sigma_t (15.3.2)
def sigma_max(alpha_t: float, alpha_s: float) -> float:
    """The largest remasking probability that keeps the step a distribution: min(1, (1 - alpha_s) / alpha_t)
    (1 at alpha_t = 0, where no token is decoded yet)."""
    return 1.0 if alpha_t <= 0 else min(1.0, (1 - alpha_s) / alpha_t)


def loop_alpha(t: float, t_on: float, t_off: float, alpha_on: float) -> float:
    """ReMDM-loop's alpha_t: linear from 0 at t = 1 to alpha_on at t_on, constant alpha_on on
    [t_off, t_on] (the loop), linear from alpha_on to 1 at t = 0 (ReMDM's alpha_t = 1 - t has no eps)."""
    if t > t_on:
        return alpha_on * (1 - t) / (1 - t_on)
    if t >= t_off:
        return alpha_on
    return 1 - (1 - alpha_on) * t / t_off


@dataclass(frozen=True)
class RemaskPlan:
    """sigma_t of one schedule on the grid t_i = 1 - i/T, s_i = 1 - (i + 1)/T (the grid of 5.5)."""

    remask: str  # "none" | "cap" | "rescale" | "loop"
    eta: float
    steps: int
    alpha: Callable[[float], float]  # t -> alpha_t of the chain (cap, rescale: the model's schedule)
    loop: tuple = (0.55, 0.05, 0.9)  # (t_on, t_off, alpha_on)

    def step(self, i: int) -> tuple[float, float, float]:
        """(alpha_t, alpha_s, sigma_t) of step ``i``."""
        t, s = 1 - i / self.steps, 1 - (i + 1) / self.steps
        if self.remask == "loop":
            t_on, t_off, _ = self.loop
            alpha_t, alpha_s = loop_alpha(t, *self.loop), loop_alpha(s, *self.loop)
            return alpha_t, alpha_s, min(self.eta, sigma_max(alpha_t, alpha_s)) if t_off <= s and t <= t_on else 0.0
        alpha_t, alpha_s = self.alpha(t), self.alpha(s)
        if self.remask == "cap":
            return alpha_t, alpha_s, min(self.eta, sigma_max(alpha_t, alpha_s))
        if self.remask == "rescale":
            return alpha_t, alpha_s, self.eta * sigma_max(alpha_t, alpha_s)
        return alpha_t, alpha_s, 0.0

    def last_remasking_step(self) -> int:
        """The last step with sigma_t > 0 (-1: none); after it a sequence without masks is final."""
        return next((i for i in range(self.steps - 1, -1, -1) if self.step(i)[2] > 0), -1)


def plan(options, alpha, steps: int) -> RemaskPlan:
    """The plan of checked ``options`` (MDLMSampleOptions) over ``steps`` steps of ``alpha``."""
    return RemaskPlan(options.remask, resolved_eta(options), steps, alpha,
                      (options.t_on, options.t_off, options.alpha_on))


def resolved_eta(options) -> float:
    """``options.eta``, or the schedule's default (cap 0.008, rescale 0.015, loop 0.02) when None."""
    if options.remask == "none":
        return 0.0
    return DEFAULT_ETA[options.remask] if options.eta is None else float(options.eta)


def check_options(options) -> None:
    """One ConfigError naming the problem and the fix for ReMDM options that do not make a sampler."""
    if options.remask not in ("none", *SCHEDULES):
        raise ConfigError(f"remask must be none or one of {', '.join(SCHEDULES)} (ReMDM, spec 15.3.2); "
                          f"got {options.remask!r}")
    if options.eta is not None and not 0.0 <= float(options.eta) <= 1.0:
        raise ConfigError(f"eta must lie in [0, 1] (it scales a remasking probability); got {options.eta}")
    if options.remask != "loop":
        return
    if not 0.0 < options.t_off < options.t_on < 1.0 or not 0.0 < options.alpha_on < 1.0:
        raise ConfigError(f"remask=loop needs 0 < t_off < t_on < 1 and 0 < alpha_on < 1; got t_off={options.t_off}, "
                          f"t_on={options.t_on}, alpha_on={options.alpha_on}")
    bound = (1 - options.alpha_on) / options.alpha_on
    if resolved_eta(options) > bound:
        raise ConfigError(f"remask=loop remasks with sigma = eta inside the loop, at most (1 - alpha_on) / alpha_on "
                          f"= {bound:.4g} for alpha_on={options.alpha_on}; got eta={resolved_eta(options)}: lower "
                          f"eta or alpha_on")


# ------------------------------------------------------------------------ one step (15.3.1)
def step_probs(p_x0: torch.Tensor | None, z: torch.Tensor, mask_id: int, vocab_size: int,
               r: float, sigma) -> torch.Tensor:
    """The ReMDM kernel of every position, float64 [B, L, V] (unnormalised only by round-off).

    Masked positions: ``p_x0 (1 - r)`` and ``r`` at the mask (exactly MDLM's proposal, 5.5, for the
    same r); decoded positions: ``1 - sigma`` at their token and ``sigma`` at the mask. ``sigma`` is a
    float or a [B, L] tensor (0 where a token is given). ``p_x0`` None: no position is masked.
    """
    if p_x0 is None:
        q = torch.zeros(*z.shape, vocab_size, dtype=torch.float64, device=z.device)
    else:
        q = p_x0 * (1 - r)
    q[..., mask_id] = r
    decoded = z != mask_id
    keep = decoded.to(torch.float64)
    q.masked_fill_(decoded[..., None], 0.0)
    q.scatter_add_(-1, z[..., None], (keep * (1 - sigma))[..., None])
    q[..., mask_id] += keep * sigma
    return q


def chain(model, z: torch.Tensor, remask: RemaskPlan, *, top_p: float = 1.0, generator=None,
          reuse_px0: bool = True, free: torch.Tensor | float = 1.0, clock: Clock | None = None,
          profile: bool = False, on_step=None) -> tuple[int, int]:
    """Run the ReMDM chain on ``z`` in place; returns (NFE, tokens remasked). ``free`` [B, L] float:
    1 where a position may be remasked, 0 at given tokens (a float: the same everywhere). ``clock``
    with ``profile`` times the network calls only. ``on_step(i, z)`` (tests) sees z after step i."""
    m, vocab = model.config.mask_id, model.config.vocab_size
    clock = clock or Clock(z.device)
    nfe, remasked, p_cache, last = 0, 0, None, remask.last_remasking_step()
    for i in range(remask.steps):
        masked = z == m
        if i > last and not masked.any():
            break  # nothing left to unmask, and no later step remasks
        alpha_t, alpha_s, sigma = remask.step(i)
        p_x0, calls = _p_x0(model, z, masked, p_cache, top_p, clock, profile)
        nfe += calls
        r = (1 - alpha_s - sigma * alpha_t) / (1 - alpha_t)
        z_new = sample_from_probs(step_probs(p_x0, z, m, vocab, r, sigma * free), generator)
        remasked += int(((z_new == m) & ~masked).sum())
        p_cache = p_x0 if (reuse_px0 and torch.equal(z_new, z)) else None
        z.copy_(z_new)
        if on_step is not None:
            on_step(i, z)
    return nfe, remasked


def _p_x0(model, z, masked, p_cache, top_p, clock, profile) -> tuple[torch.Tensor | None, int]:
    """(p(x0), network calls made): the cached one while the input is unchanged (no time input),
    none when no position is masked, else one network call (5.5 step 2)."""
    if p_cache is not None or not masked.any():
        return p_cache, 0
    with clock.region(profile):
        return nucleus_filter(model.denoise(z), top_p).softmax(-1), 1


def generate(model, num_samples: int, options, *, generator=None, profile=False, given=None) -> SampleOutput:
    """MDLM's generate with ``options.remask`` != "none": the ReMDM chain step by step (``sampler`` is
    MDLM's choice for remask="none" only). Given tokens start in place and are never remasked.
    ``profile``: the chain runs as always, and ``seconds`` covers only its network calls."""
    length, steps = model.sample_length(options), options.required_steps(model.name)
    z = torch.full((num_samples, length), model.config.mask_id, dtype=torch.long, device=model.device)
    free = 1.0
    if given is not None:
        z = given.place(z)
        free = (~given.mask.to(z.device)).to(torch.float64)
    clock = Clock(model.device)
    with clock.region(not profile):
        nfe, remasked = chain(model, z, plan(options, model.schedule.alpha, steps), top_p=options.top_p,
                              generator=generator, reuse_px0=options.reuse_px0, free=free, clock=clock,
                              profile=profile)
    return SampleOutput(tokens=z, nfe=nfe, seconds=clock.seconds, extra=dict(remasked=remasked))


# ------------------------------------------------------------------------ the registry model
@dataclass
class ReMDMSampleOptions(MDLMSampleOptions):
    """MDLM's options with ReMDM's cap schedule by default (eta None: 0.008, 15.3.2)."""

    remask: Literal["none", "cap", "rescale", "loop"] = "cap"


class ReMDM(MDLM):
    """An MDLM (same network, loss and likelihoods) that samples with ReMDM-cap by default. Trained
    alone it is an MDLM run; ``mdlm`` samples the same way with ``remask=cap``."""

    sample_options_class = ReMDMSampleOptions
    capabilities = dataclasses.replace(MDLM.capabilities, nfe_equals_l=None, conditioning=("prefix", "infill"))

    @classmethod
    def capabilities_for(cls, config: ModelConfig) -> Capabilities:
        """NFE = L at T = L: remasking makes almost every step a network call (MDLM's T = 10^6 would run
        10^6 steps here)."""
        return dataclasses.replace(cls.capabilities, nfe_equals_l=dict(steps=config.length))

    @classmethod
    def display(cls, config: ModelConfig) -> Display:
        return Display("ReMDM", "ReMDM", "#bcbd22", marker="h", order=20)
