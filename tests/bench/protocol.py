"""What the benchmarks time (spec 8.6): every method on one backbone, batch 1, NFE = L, no
nucleus, first-hitting regime, with and without its KV cache; the settings of a session.

Per NFE (spec 8.6): AR feeds 1 token against its cache; Eso-LM (B) 2 tokens (the one sampled
last step, now clean, and the mask to fill); BD3-LM L' tokens plus one store pass per block;
MDLM a full L-token bidirectional pass. Without a cache, AR, BD3-LM and Eso-LM recompute the
whole clean prefix at every step.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field

import pytest
import torch
from torch.utils.benchmark import Timer

from esolm import registry

# MDLM and Eso-LM: T = 10^6, about one token per step (8.6), as Eso-LM declares it
FIRST_HITTING_T = registry.model_class("esolm-b").capabilities.nfe_equals_l["steps"]
STORE = pytest.StashKey()  # config.stash[STORE]: the Session of conftest.py


@dataclass(frozen=True)
class Method:
    """One sampler of the comparison: a registry model, its config, and the options it is timed
    with: the NFE = L options its capabilities declare (8.6), updated with ``extra``."""

    key: str  # id in test names and the JSON: "ar", "mdlm", "bd3lm-4", "bd3lm-16", "esolm-b"
    label: str  # as the paper's Table 11 names it
    model: str  # registry name
    overrides: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # sample options on top of the model's NFE = L ones

    @property
    def options(self) -> dict:
        return {**registry.model_class(self.model).capabilities.nfe_equals_l, **self.extra}

    @property
    def has_cache(self) -> bool:
        return registry.model_class(self.model).capabilities.kv_cache


METHODS = {m.key: m for m in [
    Method("ar", "AR", "ar", {}),  # L - 1 calls whatever steps says
    # the schedule sampler: each token's unmasking step drawn first, only non-empty steps run
    Method("mdlm", "MDLM", "mdlm", {}, dict(sampler="schedule")),
    # first hitting (the official BD3-LM sampler at batch 1, 6.4): exactly one token per step
    *[Method(f"bd3lm-{b}", f"BD3-LM L'={b}", "bd3lm", dict(block_size=b), dict(sampler="first_hitting"))
      for b in (4, 16)],
    # alpha_0 = 1 (every token through the diffusion phase); a sequential-phase step feeds the
    # same 2 tokens against the cache, so the per-step work does not depend on alpha_0 (8.6)
    Method("esolm-b", "Eso-LM (B)", "esolm-b", dict(alpha_0=1.0)),
]}


@dataclass
class Settings:
    """One benchmark session (from the command line, see conftest.py)."""

    device: str = "cpu"
    lengths: tuple[int, ...] = (256, 1024)
    preset: str = "spec-tiny"  # the run name whose backbone is timed (esolm/runs.py: d = 256, 8 layers, 8 heads)
    vocab_size: int = 50258  # GPT-2's 50257 tokens + [MASK], as the paper's OWT models
    alt_vocab_size: int = 2049  # the harness's tiny BPE (2048 + [MASK]): the AR / Eso-LM pair again
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    rounds: int = 3
    warmup: int = 1
    full_upto: int = 256  # longer L: MDLM and the uncached samplers run subsampled (estimate.py)
    timed_calls: int = 48  # network calls actually computed per kind in a subsampled run
    train_length: int = 256
    train_batch: int = 4
    likelihood_length: int = 64
    likelihood_batch: int = 4
    likelihood_orders: tuple[int, ...] = (1, 8)
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def configurations(settings: Settings) -> list[tuple[int, str, bool]]:
    """(L, method key, cache) in L-major order, so each length's methods run back to back."""
    return [(L, key, cache) for L in settings.lengths for key, m in METHODS.items()
            for cache in ((True, False) if m.has_cache else (False,))]


_MODELS: dict = {}


def build(method: Method, settings: Settings, length: int, vocab_size: int | None = None):
    """The method's model on the session backbone, in eval mode, float32, on the device (memoized
    for the current length only, so long runs do not keep every model alive)."""
    V = vocab_size or settings.vocab_size
    key = (method.key, length, V, settings.preset, settings.device)
    if key not in _MODELS:
        for k in [k for k in _MODELS if k[1] != length]:
            del _MODELS[k]
        torch.manual_seed(settings.seed)
        model = registry.build(method.model, preset=settings.preset, vocab_size=V, length=length,
                               dropout=0.0, **method.overrides)
        _MODELS[key] = model.to(settings.device).eval()
    return _MODELS[key]


def backbone_summary(model) -> dict:
    c = model.config
    return dict(preset_fields=dict(d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
                                   cond_dim=c.cond_dim, mlp_ratio=c.mlp_ratio),
                vocab_size=c.vocab_size, parameters=model.num_parameters(),
                head_parameters=model.backbone.head.weight.numel() + model.backbone.head.bias.numel())


def sampler(method: Method, model, cache: bool):
    """``run(seed)``: one batch-1 sample at NFE = L with the global RNG seeded by ``seed`` (the
    samplers draw on both the CPU and the device); returns the SampleOutput."""
    def run(seed: int):
        torch.manual_seed(seed)
        return model.sample(1, top_p=1.0, kv_cache=cache, **method.options)
    return run


def round_seeds(settings: Settings):
    """The seed of each round, warm-up rounds first: settings.seed + 1, + 2, ... (the last
    measured round's output is the one a sampling record reports)."""
    return itertools.count(settings.seed + 1)


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of one call of ``fn``, as ``torch.utils.benchmark.Timer`` measures it at
    the current torch thread count, synchronizing the accelerator around the call:
    ``blocked_autorange`` with min_run_time=0 makes one warm-up call (its choice of a block of
    one call) and then times one, whose result this returns."""
    results: list = []
    timer = Timer(stmt="results.append(fn())", globals={"fn": fn, "results": results},
                  num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=0)
    assert m.number_per_run == 1 and len(m.raw_times) == 1, (m.number_per_run, m.raw_times)
    return m.raw_times[0], results[-1]


def load() -> float:
    return round(os.getloadavg()[0], 2)
