"""Read the authors' Lightning ``.ckpt`` pickles without running their code.

A Lightning checkpoint is a ``torch.save`` zip whose pickle names classes from omegaconf (the
Hydra config), transformers and tokenizers (the tokenizer) and Lightning itself. Unpickling it
the ordinary way imports those packages and calls whatever the pickle names. Here the unpickler
resolves only an allow-list of plain constructors (containers, numbers, tensor rebuilders); every
other name becomes an inert :class:`Stub` that only records the arguments and state the pickle
gives it. Nothing outside the allow-list is imported or called, so no omegaconf / transformers
is needed and a hostile file cannot execute code through ``find_class``.

    state = load_lightning("esolm-b.ckpt")        # plain dicts, lists and tensors
    config = plain(state["hyper_parameters"]["config"])   # the omegaconf tree as nested dicts
"""
from __future__ import annotations

import collections
import pickle
import types

import torch

from esolm.config import ConfigError

# (module, name) -> the object the pickle may call. Storage types are resolved by torch.load's
# own wrapper before find_class is reached.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "int"): int,
    ("builtins", "float"): float, ("builtins", "complex"): complex, ("builtins", "bool"): bool,
    ("builtins", "str"): str, ("builtins", "bytes"): bytes, ("builtins", "bytearray"): bytearray,
    ("builtins", "slice"): slice, ("builtins", "range"): range,
    ("__builtin__", "dict"): dict, ("__builtin__", "list"): list, ("__builtin__", "long"): int,
    ("__builtin__", "set"): set, ("__builtin__", "tuple"): tuple,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
}


def _encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: text in, bytes out, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode(encoding)


class Stub:
    """Stands in for a class the pickle names but we do not trust or need: it keeps the
    pickle's constructor arguments (``args``) and state (``state``) and does nothing else."""

    _module = _name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __setstate__(self, state):
        self.state = state

    # containers built with APPENDS / SETITEMS on a stub (rare) are recorded, not executed
    def append(self, item):
        self.__dict__.setdefault("items", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("items", []).extend(items)

    def __setitem__(self, key, value):
        self.__dict__.setdefault("mapping", {})[key] = value

    def __repr__(self):
        return f"<stub {self._module}.{self._name}>"


_STUBS: dict[tuple[str, str], type] = {}


def _stub(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(name, (Stub,), {"_module": module, "_name": name})
    return _STUBS[key]


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) == ("_codecs", "encode"):
            return _encode
        if module.startswith("torch") and hasattr(torch, name) and isinstance(getattr(torch, name), torch.dtype):
            return getattr(torch, name)  # dtypes pickled by name (torch.float32)
        return _stub(module, name)


# torch.load takes a "pickle module": anything with an Unpickler (and load) attribute
restricted = types.SimpleNamespace(Unpickler=RestrictedUnpickler, load=pickle.load, __name__="restricted_pickle")


def load_lightning(path) -> dict:
    """The checkpoint dict of a Lightning ``.ckpt`` with foreign classes stubbed (CPU tensors)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
    except Exception as e:  # truncated zip, not a torch file, pickle garbage
        raise ConfigError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); the file may be "
                          f"truncated (re-download it and compare its size / sha256) or not a .ckpt") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a checkpoint dict; pass a Lightning "
                          f".ckpt written by the authors' trainer")
    return state


def plain(obj, depth: int = 0):
    """Turn stubbed omegaconf containers (and everything inside) into dicts, lists and values.

    DictConfig / ListConfig keep their children in ``_content``; value nodes keep ``_val``.
    Unresolved interpolations (``${...}``) stay strings. Other stubs become their repr."""
    if depth > 64:
        return None
    if isinstance(obj, Stub):
        st = obj.state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):  # (dict_state, slot_state)
            st = {**(st[0] or {}), **st[1]}
        if isinstance(st, dict):
            if "_content" in st:
                return plain(st["_content"], depth + 1)
            if "_val" in st:
                return plain(st["_val"], depth + 1)
        return repr(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    return obj
