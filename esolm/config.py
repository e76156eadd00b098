"""Typed configs and the one way in for ``key=value``.

Every model has a config dataclass (a subclass of :class:`ModelConfig`); a run name's
configuration is in esolm/runs.py. ``parse_keys`` routes ``key=value`` pairs to the
dataclass ("section") that owns each key, ``make_config`` types and checks them, and
``keys_help`` writes the same fields, with their meanings, for ``--help``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass


class ConfigError(ValueError):
    """Bad user input: the message names the problem and the fix."""


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


@functools.cache
def field_types(cls) -> dict:
    """Field name -> resolved annotation of dataclass ``cls`` (resolved once per class; do not
    modify the returned dict)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _resolve_type(cls, name: str):
    return field_types(cls)[name]


def coerce(value, typ, key: str = "value", *, finite: bool = True):
    """Convert ``value`` (often a CLI string) to the annotated type ``typ``.

    pydantic's lax validation does the typing ("16" -> 16, "false" -> False, Literal
    membership, unions); the command line's own forms are read first: ``none`` / ``null``
    for None, ``a,b,c`` or ``[a,b,c]`` for a list or tuple, JSON for a dict, ``1e6`` for an int.
    With ``finite`` a float that is NaN or infinite (alone or in a list) is refused: no setting
    of the harness means anything with them.
    """
    import pydantic

    value = _cli_form(value, typ)
    try:
        result = _adapter(typ).validate_python(value)
    except pydantic.ValidationError:
        raise ConfigError(f"{key} must be {_describe(typ)}; got {value!r}") from None
    if finite and not _all_finite(result):
        what = "a finite number" if isinstance(result, float) else "finite numbers (no nan or inf)"
        raise ConfigError(f"{key} must be {what}; got {value}")
    return result


def _all_finite(value) -> bool:
    """No float in ``value`` (a float, or a list / tuple of them) is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


@functools.cache
def _adapter(typ):
    import pydantic

    return pydantic.TypeAdapter(typ)


def _members(typ) -> tuple:
    """The members of a union, or the type itself."""
    return typing.get_args(typ) if typing.get_origin(typ) in (typing.Union, types.UnionType) else (typ,)


def _cli_form(value, typ):
    """A command-line string in the form pydantic reads for ``typ`` (other values as they are)."""
    if not isinstance(value, str):
        return value
    members = _members(typ)
    if type(None) in members and value.strip().lower() in ("none", "null"):
        return None
    origins = {typing.get_origin(m) or m for m in members}
    if origins & {dict} and value.lstrip().startswith("{"):
        return json.loads(value)
    if origins & {list, tuple} and str not in members:
        return [v.strip() for v in value.strip().strip("[]()").split(",") if v.strip()]
    if int in members and float not in members and "e" in value.lower():
        return _exponent_int(value)
    return value


def _exponent_int(value: str):
    """``"1e6"`` -> 1000000 (steps=1e6: an integer in exponent notation); else the string."""
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() else value


def _describe(typ) -> str:
    """How an error names a type: "of type int", "one of ['a', 'b']", "of type float or None"."""
    if typing.get_origin(typ) is typing.Literal:
        return f"one of {list(typing.get_args(typ))}"
    names = [getattr(m, "__name__", str(m)) if m is not type(None) else "None" for m in _members(typ)]
    return f"of type {' or '.join(names)}"


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
    ranged = getattr(cls, "FLOAT_RANGES", {})  # floats the class checks itself, naming their range
    for k, v in overrides.items():
        values[k] = coerce(v, _resolve_type(cls, k), k, finite=k not in ranged)
    values = {k: v for k, v in values.items() if k in valid}
    return cls(**values)


def parse_keys(pairs: dict[str, str], sections: dict) -> dict[str, dict]:
    """Route ``{"section.key" or "key": value}`` to the sections (name -> dataclass, or the
    collection of key names it owns) that own the
    keys: a dotted key names its section, a bare key goes to the first section that has the
    field. Returns section -> {field: value}; an unknown key is one error listing the valid ones."""
    owners = {name: set(field_names(cls)) if isinstance(cls, type) else set(cls) for name, cls in sections.items()}
    out: dict[str, dict] = {name: {} for name in sections}
    for key, value in pairs.items():
        section, _, name = key.rpartition(".")
        if section:
            ok = name in owners.get(section, ())
        else:
            section = next((s for s, names in owners.items() if key in names), "")
            ok = bool(section)
        if not ok:
            valid = [f"{s}.{n}" for s, names in owners.items() for n in sorted(names)]
            raise ConfigError(f"unknown key {key!r}; valid keys (a bare key goes to the first section "
                              f"that has it, in this order): {', '.join(valid)}")
        out[section][name] = value
    return out


def field_help(cls) -> dict[str, str]:
    """Field name -> its one-line meaning: the comment on the field's line in the class source."""
    import inspect
    import io
    import tokenize

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names, out = set(field_names(cls)), {}
    line_field: dict[int, str] = {}
    for line_no, line in enumerate(source.splitlines(), 1):
        head = line.strip().split(":", 1)[0]
        if head in names and line.startswith("    ") and not line.startswith("     "):
            line_field[line_no] = head
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            out[line_field[tok.start[0]]] = tok.string.lstrip("# ").strip()
    return out


def keys_help(sections: dict[str, type], defaults: dict[str, object] | None = None) -> str:
    """The ``key=value`` keys of these sections for ``--help``: section.key (type, default) meaning."""
    lines = []
    for section, cls in sections.items():
        meanings, types_ = field_help(cls), field_types(cls)
        instance = (defaults or {}).get(section)
        lines.append(f"  {section}:")
        for f in dataclasses.fields(cls):
            default = getattr(instance, f.name) if instance is not None else (
                f.default if f.default is not dataclasses.MISSING else
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            typ = getattr(types_[f.name], "__name__", None) or str(types_[f.name]).replace("typing.", "")
            lines.append(f"    {section}.{f.name}={default}  ({typ}) {meanings.get(f.name, '')}".rstrip())
    return "\n".join(lines)
