"""The model registry: names -> model classes, built with presets and overrides.

    from esolm import registry
    model = registry.build("esolm-b", preset="tiny", vocab_size=258, alpha_0=0.25)

Adding a model is one new file with a :class:`~esolm.interface.LanguageModel`
subclass and one line in ``_BUILTIN`` (or a call to :func:`register`).
"""
from __future__ import annotations

import importlib
import importlib.util

from esolm.config import ConfigError, make_config
from esolm.interface import LanguageModel

# name -> "module:Class" (imported lazily, so the registry has no import cycles)
_BUILTIN: dict[str, str] = {
    "ar": "baselines.ar:AR",
    "mdlm": "baselines.mdlm:MDLM",
    "bd3lm": "baselines.bd3lm:BD3LM",
    "esolm-a": "esolm.eso.model:EsoLMA",
    "esolm-b": "esolm.eso.model:EsoLMB",
}
_REGISTERED: dict[str, type[LanguageModel]] = {}


def register(name: str, cls: type[LanguageModel] | str) -> None:
    """Add a model under ``name`` (a class, or a "module:Class" string)."""
    if isinstance(cls, str):
        _BUILTIN[name] = cls
    else:
        _REGISTERED[name] = cls


def _importable(target: str) -> bool:
    module, _ = target.split(":")
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def available() -> list[str]:
    """Names that :func:`build` accepts."""
    names = set(_REGISTERED) | {n for n, t in _BUILTIN.items() if _importable(t)}
    return sorted(names)


def model_class(name: str) -> type[LanguageModel]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILTIN.get(name)
    if target is None or not _importable(target):
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(available())}")
    module, attr = target.split(":")
    cls = getattr(importlib.import_module(module), attr)
    cls.registry_name = name
    return cls


def build_config(name: str, preset: str | None = None, **overrides):
    """The typed config that :func:`build` would use: the backbone of run name ``preset``
    (esolm/runs.py), then ``overrides``."""
    from esolm import runs

    cls = model_class(name)
    base = runs.get(preset).backbone_fields() if preset is not None else {}
    return make_config(cls.config_class, base, **overrides)


def build(name: str, preset: str | None = None, **overrides) -> LanguageModel:
    """Build model ``name`` from the backbone of an optional run name and field overrides."""
    config = build_config(name, preset, **overrides)
    model = model_class(name)(config)
    return model
