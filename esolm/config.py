"""Typed configs, backbone presets and ``key=value`` overrides.

Every model has a config dataclass (a subclass of :class:`ModelConfig`); presets are
plain dicts of field values selected by name; the CLI and ``registry.build`` accept
any field as ``key=value`` and convert it to the field's type.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass


class ConfigError(ValueError):
    """Bad user input: the message names the problem and the fix."""


# Backbone presets (spec 2.1). Only architecture lives here; data-dependent fields
# (vocab_size, length, ids) come from the corpus, training budgets from experiments.
BACKBONE_PRESETS: dict[str, dict] = {
    # seconds on a 2-core CPU: for CI and unit tests
    "smoke": dict(d_model=64, n_layers=2, n_heads=4, cond_dim=32, dropout=0.0),
    # the spec's "tiny": 256 wide, 8 layers, 8 heads (d_h = 32), cond 128
    "tiny": dict(d_model=256, n_layers=8, n_heads=8, cond_dim=128, dropout=0.1),
    # every model of the paper: 768 wide, 12 layers, 12 heads (d_h = 64)
    "small": dict(d_model=768, n_layers=12, n_heads=12, cond_dim=128, dropout=0.1),
    "medium": dict(d_model=1024, n_layers=24, n_heads=16, cond_dim=128, dropout=0.1),
}


@dataclass
class ModelConfig:
    """Fields shared by every model: data geometry and the DiT backbone (spec 2)."""

    vocab_size: int = 258  # V, including the mask token
    mask_id: int = -1  # id of [MASK]; -1 means V - 1
    bos_id: int = 0  # first token of every sampled sequence (BOS / [CLS])
    eos_id: int = 0
    length: int = 128  # L: training and maximum sampling length
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 8
    cond_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    adaln: bool = True  # AdaLN-zero conditioning on sigma = 0 (spec 2.4)
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.mask_id == -1:
            self.mask_id = self.vocab_size - 1
        self.validate()

    def validate(self) -> None:
        _check(self.vocab_size >= 3, f"vocab_size must be >= 3; got {self.vocab_size}")
        _check(0 <= self.mask_id < self.vocab_size,
               f"mask_id must lie in [0, vocab_size={self.vocab_size}); got {self.mask_id}")
        for name in ("bos_id", "eos_id"):
            v = getattr(self, name)
            _check(0 <= v < self.vocab_size and v != self.mask_id,
                   f"{name}={v} must be a non-mask token id below vocab_size={self.vocab_size}")
        _check(self.length >= 2, f"length must be >= 2; got {self.length}")
        _check(self.d_model > 0 and self.n_heads > 0 and self.n_layers > 0,
               "d_model, n_heads and n_layers must be positive")
        _check(self.d_model % self.n_heads == 0,
               f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        _check((self.d_model // self.n_heads) % 2 == 0,
               f"the head dimension d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE")
        _check(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1); got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _resolve_type(cls, name: str):
    hints = typing.get_type_hints(cls)
    return hints[name]


def coerce(value, typ, key: str = "value"):
    """Convert ``value`` (often a CLI string) to the annotated type ``typ``."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        errors = []
        for a in args:
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is typing.Literal:
        allowed = typing.get_args(typ)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}; got {value!r}")
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(typ) or (str,)
        if isinstance(value, str):
            value = [v for v in value.strip("[]()").split(",") if v.strip()]
        return origin(coerce(v.strip() if isinstance(v, str) else v, inner, key) for v in value)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be of type {typ.__name__}; got {value!r}") from None
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["alpha_0=0.25", "steps=16"]`` -> ``{"alpha_0": "0.25", "steps": "16"}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def make_config(cls, base: dict | None = None, **overrides):
    """Build dataclass ``cls`` from ``base`` updated with ``overrides``, typed and checked."""
    valid = field_names(cls)
    values = dict(base or {})
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} for {cls.__name__}; valid keys: {', '.join(valid)}"
        )
    for k, v in overrides.items():
        values[k] = coerce(v, _resolve_type(cls, k), k)
    values = {k: v for k, v in values.items() if k in valid}
    return cls(**values)
