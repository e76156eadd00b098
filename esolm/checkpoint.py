"""Atomic checkpoints and JSON records, and loading a trained model back.

A checkpoint is one ``torch.save`` dict:
    model_name, model_config (dict), model (state_dict), ema (state_dict or None),
    optimizer, step, rng, data_position, corpus (the kwargs of ``load_corpus``),
    train_config (dict), metrics (dict)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from esolm.config import ConfigError


def atomic_write_bytes(path: str | Path, write) -> Path:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    data = json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()
    return atomic_write_bytes(path, lambda f: f.write(data + b"\n"))


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot serialize {type(o).__name__}")


def save_checkpoint(path: str | Path, state: dict) -> Path:
    return atomic_write_bytes(path, lambda f: torch.save(state, f))


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict; a missing or corrupt file is a ConfigError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; train one with "
                          f"`python experiments/run.py train ...` or pass the right --checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, wrong file type ...
        raise ConfigError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {e}); "
                          f"delete it and retrain, or resume from an earlier checkpoint") from None
    if not isinstance(state, dict) or not {"model_name", "model_config", "model"} <= set(state):
        raise ConfigError(f"checkpoint {path} is not an esolm checkpoint (missing model_name / "
                          f"model_config / model); pass a file written by `run.py train`")
    return state


def load_model(path: str | Path, *, device="cpu", use_ema: bool = True):
    """(model in eval mode with EMA weights where present, checkpoint dict).

    ``path`` may also be an authors' release (a Lightning ``.ckpt``, a Hugging Face folder or
    ``hf:ORG/NAME``): it is imported in memory (esolm.importers), EMA weights unless ``use_ema``
    is False."""
    from esolm import registry
    from esolm.importers import import_checkpoint, is_external

    if is_external(path):
        state, _ = import_checkpoint(str(path), ema=None if use_ema else False)
    else:
        state = read_checkpoint(path)
    model = registry.build(state["model_name"], **state["model_config"])
    weights = state.get("ema") if use_ema and state.get("ema") else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint {path} does not match model {state['model_name']}: {e}") from None
    return model.to(device).eval(), state
