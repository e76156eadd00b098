"""The one model interface every member of the registry implements.

Experiment code talks to models only through this contract and through
``model.capabilities``; it never branches on a model's name.

    model.loss(tokens)               -> LossOutput(loss, nll_sum, num_tokens)
    model.nll(tokens, exact=False)   -> NLL(per_sequence, num_tokens)      (nats)
    model.sample(num_samples, steps=T, ...) -> SampleOutput(tokens, nfe, seconds)

The keywords of ``sample`` are the fields of the model's ``SampleOptions`` dataclass, declared
once in the model's file; ``sample`` builds that dataclass and hands it to ``generate``.
"""
from __future__ import annotations

import abc
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from esolm.config import ConfigError, ModelConfig


@dataclass(frozen=True)
class Capabilities:
    """What a model can do; the harness asks these instead of model names."""

    kv_cache: bool  # sample(kv_cache=True) reuses keys/values exactly
    exact_likelihood: bool  # nll(exact=True) is available
    single_pass_likelihood: bool  # exact NLL costs one forward pass (per order)
    next_token_scoring: bool = False  # next_token_logprobs(tokens) scores text left to right (a gen-PPL evaluator)
    # the sample options of the NFE = L regime (spec 8.6: about one token per network call); None: not defined
    nfe_equals_l: dict | None = None
    # the forms of given tokens sample(given=...) takes (esolm.conditioning: "prefix", "infill")
    conditioning: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Display:
    """How tables and figures show a model: its method as the paper names it and a fixed style."""

    family: str  # the method family ("AR", "MDLM", "BD3-LM", "Eso-LM (B)", ...)
    label: str  # the method with what tells its variants apart ("BD3-LM L'=4", "AR + AdaLN")
    colour: str  # matplotlib colour of its points and lines, the same in every figure
    marker: str = "o"  # matplotlib marker of its points
    order: int = 100  # position in the paper's order of methods (tables, legends); ties by label
    reference: bool = False  # the quality reference: a star, its sample entropy a dashed line (AR)
    shade_by: str | None = None  # a config field whose value shades the colour and picks the marker


@dataclass
class SampleOptions:
    """The options of one sampling call that every model takes; a model's own options
    extend this dataclass in the model's file (``LanguageModel.sample_options_class``)."""

    steps: int | None = None  # T: denoising steps in all (AR: ignored, NFE = L - 1)
    length: int | None = None  # sampled length; None: the model's L
    top_p: float = 1.0  # nucleus mass (spec 5.6); 1 keeps the whole distribution
    kv_cache: bool = True  # reuse keys and values (exact) where the model has a KV cache

    def __post_init__(self):  # the one check of each shared option (the samplers trust them)
        if self.steps is not None and int(self.steps) < 1:
            raise ConfigError(f"steps must be >= 1; got {self.steps}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ConfigError(f"top_p must lie in (0, 1]; got {self.top_p}")

    def required_steps(self, model: str) -> int:
        """``steps``, which this model cannot sample without."""
        if self.steps is None:
            raise ConfigError(f"{model} samples over T denoising steps: pass steps=T (e.g. steps=128)")
        return int(self.steps)


@dataclass
class LossOutput:
    """Training objective of one batch: ``loss`` is what gets backpropagated.

    ``nll_sum / num_tokens`` is the per-token NLL (or NELBO) estimate of the batch.
    """

    loss: torch.Tensor
    nll_sum: torch.Tensor
    num_tokens: torch.Tensor


@dataclass
class NLL:
    """Per-sequence negative log-likelihood in nats (an upper bound unless exact).

    ``num_tokens`` is the number of tokens each sequence's NLL is normalized by
    when reporting perplexity (e.g. L - 1 for AR, L - 1 for BD3-LM with ignore_bos).
    """

    per_sequence: torch.Tensor  # [B] float64, nats
    num_tokens: torch.Tensor  # [B] long

    @property
    def per_token(self) -> float:
        return float(self.per_sequence.sum() / self.num_tokens.sum())


@dataclass
class SampleOutput:
    """Tokens in natural order [num_samples, length]; honest NFE; wall seconds.

    With ``profile=True`` ``seconds`` covers only the network forward passes.
    """

    tokens: torch.Tensor
    nfe: int
    seconds: float
    extra: dict = field(default_factory=dict)


def sync(device: torch.device | str) -> None:
    """Wait for queued device work so a clock reading means something."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Accumulates seconds of the regions it brackets, synchronizing the device."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.seconds = 0.0

    @contextmanager
    def region(self, enabled: bool = True):
        if not enabled:
            yield
            return
        sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds += time.perf_counter() - t0


def sample_options(model, options: dict) -> dict:
    """Check ``options`` against the model's ``SampleOptions`` dataclass; strings (from the
    command line) are typed by the field's annotation. An unknown key is an error listing the
    valid ones. Returns the given options only, typed (the dataclass's defaults fill the rest)."""
    from esolm.config import coerce, field_types

    types_ = field_types(model.sample_options_class)
    unknown = sorted(set(options) - set(types_))
    if unknown:
        raise ConfigError(f"unknown sampling option {unknown[0]!r} for {model.name}; valid: {', '.join(sorted(types_))}")
    return {k: coerce(v, types_[k], k) if isinstance(v, str) else v for k, v in options.items()}


class LanguageModel(nn.Module, abc.ABC):
    """Base class: holds the config; subclasses implement loss / nll / sample.

    Subclasses set ``config_class`` (a ModelConfig subclass), ``sample_options_class`` (a
    SampleOptions subclass), ``capabilities`` and ``display``.
    The dataloader hands ``tokens`` of shape [B, config.length]; ``valid`` marks
    real tokens (all ones for packed data).
    """

    config_class: type[ModelConfig] = ModelConfig
    sample_options_class: type[SampleOptions] = SampleOptions
    capabilities: Capabilities

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # DDP / stratified-time slice: (index of this rank's first row, global rows factor)
        self.rank, self.world_size = 0, 1

    # -- the contract ---------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> LossOutput:
        ...

    @abc.abstractmethod
    def nll(self, tokens: torch.Tensor, *, exact: bool = False, **opts) -> NLL:
        ...

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None, profile: bool = False,
               hooks: dict | None = None, given=None, **options) -> SampleOutput:
        """``num_samples`` sequences; ``options`` are fields of ``sample_options_class`` (strings
        are typed). ``profile=True`` times only the network passes (spec 8.5). ``hooks`` are
        keyword arguments of the model's ``generate`` handed on as they are (test hooks, such as
        BD3-LM's ``on_step``). ``given`` (esolm.conditioning.Given): tokens every sample keeps, a
        prompt or an infill (spec 15.4), checked against ``capabilities_for(config).conditioning``;
        None samples unconditionally, draw for draw as before."""
        opts = self.options(options)
        kwargs = dict(hooks or {})
        if given is not None:
            kwargs["given"] = given = given.checked(self, num_samples, self.sample_length(opts))
        out = self.generate(num_samples, opts, generator=generator, profile=profile, **kwargs)
        if given is not None and not profile and not given.preserved(out.tokens):
            raise AssertionError(f"{self.name}'s sampler changed given tokens (a bug in its conditioning)")
        return out

    def options(self, given: dict) -> SampleOptions:
        """The model's ``SampleOptions`` with ``given`` (checked and typed) over its defaults."""
        return self.sample_options_class(**sample_options(self, given))

    @abc.abstractmethod
    def generate(self, num_samples: int, options: SampleOptions, *, generator: torch.Generator | None = None,
                 profile: bool = False, given=None) -> SampleOutput:
        """Sampling with checked options and checked ``given`` tokens (what ``sample`` calls)."""

    @classmethod
    def capabilities_for(cls, config: ModelConfig) -> Capabilities:
        """What this model can do with ``config`` (e.g. NFE = L options that depend on L); by
        default the class's ``capabilities``. The harness asks this, not the class attribute."""
        return cls.capabilities

    @classmethod
    def train_step_cost(cls, config: ModelConfig) -> float:
        """Positions the backbone runs per token of a training batch (1 = one pass over L).
        The local cluster balances its lanes of training jobs by steps x this (a structural
        count, not a timing; docs/cpu_presets.md gives the measured seconds per step)."""
        return 1.0

    @classmethod
    def display(cls, config: ModelConfig) -> Display:
        """How tables and figures show this model with this config (a model overrides it)."""
        return Display(family=cls.__name__, label=cls.__name__, colour="#949494")

    def after_validation(self, batches: list[torch.Tensor]) -> dict | None:
        """Hook the trainer calls after each validation pass (BD3-LM's clipped-schedule
        search uses it); returns what it changed, for the log."""
        return None

    # -- shared helpers ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def name(self) -> str:
        return getattr(self, "registry_name", type(self).__name__)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Reject batches the model cannot take, with the fix in the message."""
        if tokens.dim() != 2:
            raise ConfigError(f"tokens must have shape [batch, length]; got {tuple(tokens.shape)}")
        if tokens.shape[1] != self.config.length:
            raise ConfigError(
                f"{self.name} was built for length={self.config.length} but got sequences of "
                f"length {tokens.shape[1]}; rebuild it with length={tokens.shape[1]} or repack the data"
            )
        if tokens.numel() and (int(tokens.max()) >= self.config.vocab_size or int(tokens.min()) < 0):
            raise ConfigError(
                f"token ids must lie in [0, {self.config.vocab_size}); got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]: the data and the model use different vocabularies"
            )

    def sample_length(self, options: SampleOptions) -> int:
        """The length to sample: ``options.length``, else the model's L; at least 2 and at most L."""
        length = self.config.length if options.length is None else int(options.length)
        if not 2 <= length <= self.config.length:
            raise ConfigError(
                f"{self.name} cannot sample length={length}: it was built for sequences of up to "
                f"{self.config.length} tokens (and at least 2); pass length<= {self.config.length} "
                f"or build the model with a larger length"
            )
        return length

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
