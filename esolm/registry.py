"""The model registry: names -> model classes, built with presets and overrides.

    from esolm import registry
    model = registry.build("esolm-b", preset="tiny", vocab_size=258, alpha_0=0.25)

Where the names come from, in order of precedence:

1. ``esolm/models.toml``: the built-in models, one ``name = "module:Class"`` line each. It is data:
   no job's code version depends on it, so adding a built-in model stales only that model's jobs.
2. The ``esolm.models`` entry-point group of installed packages (a plugin's ``pyproject.toml``:
   ``[project.entry-points."esolm.models"] my-model = "my_pkg.model:MyModel"``). Entry points are
   read by every process (local workers, Slurm jobs, torchrun ranks), so a plugin reaches all of them.
   A plugin may not shadow a built-in name.
3. :func:`register`: this process only (tests, notebooks); it reaches no worker process.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import tomllib
from pathlib import Path

from esolm.config import ConfigError
from esolm.config import make_config
from esolm.interface import LanguageModel

BUILTIN_TABLE = Path(__file__).with_name("models.toml")
ENTRY_POINT_GROUP = "esolm.models"

_REGISTERED: dict[str, type[LanguageModel] | str] = {}  # register(): this process only


@functools.lru_cache(maxsize=None)
def builtin() -> dict[str, str]:
    """The built-in table: name -> "module:Class"."""
    with open(BUILTIN_TABLE, "rb") as f:
        table = tomllib.load(f).get("models", {})
    for name, target in table.items():
        _check_target(name, target, str(BUILTIN_TABLE))
    return dict(table)


@functools.lru_cache(maxsize=None)
def plugins() -> dict[str, str]:
    """Models of installed packages' ``esolm.models`` entry points: name -> "module:Class"."""
    out, builtins = {}, builtin()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name!r} of {ep.dist.name if ep.dist else 'an installed package'}"
        if ep.name in builtins:
            raise ConfigError(f"{where} shadows the built-in model {ep.name!r}; rename the plugin's model "
                              f"(in its [project.entry-points.\"{ENTRY_POINT_GROUP}\"] table)")
        _check_target(ep.name, ep.value, where)
        out[ep.name] = ep.value
    return out


def _check_target(name: str, target, where: str) -> None:
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise ConfigError(f"{where}: model {name!r} must name its class as \"module:Class\"; got {target!r}")


def refresh() -> None:
    """Read the built-in table and the entry points again (after installing a plugin)."""
    builtin.cache_clear()
    plugins.cache_clear()


def register(name: str, cls: type[LanguageModel] | str) -> None:
    """Add a model under ``name`` in this process only (a class, or a "module:Class" string).
    Worker processes do not see it: a model that jobs run belongs in models.toml or an entry point."""
    if isinstance(cls, str):
        _check_target(name, cls, "register()")
    _REGISTERED[name] = cls


def unregister(name: str) -> None:
    """Drop a model added with :func:`register` (tests)."""
    _REGISTERED.pop(name, None)


def targets() -> dict[str, type[LanguageModel] | str]:
    """Every known name -> its class or "module:Class" (registered over plugins over built-ins)."""
    return {**builtin(), **plugins(), **_REGISTERED}


def _importable(target) -> bool:
    if not isinstance(target, str):
        return True
    module = target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def available() -> list[str]:
    """Names that :func:`build` accepts."""
    return sorted(name for name, target in targets().items() if _importable(target))


def model_class(name: str) -> type[LanguageModel]:
    target = targets().get(name)
    if target is None or not _importable(target):
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(available())} "
                          f"(a plugin's models appear once its package is installed)")
    if isinstance(target, str):
        module, attr = target.split(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except AttributeError:
            raise ConfigError(f"model {name!r} names {target!r}, but {module} has no {attr}; fix the "
                              f"registration") from None
    else:
        cls = target
    if not (isinstance(cls, type) and issubclass(cls, LanguageModel)):
        raise ConfigError(f"model {name!r} ({target!r}) is not a LanguageModel subclass")
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
    return model_class(name)(config)
