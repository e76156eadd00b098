"""Checkpoints: safetensors weights beside a JSON of metadata, and loading a model back.

A checkpoint ``X.safetensors`` (``run_dir/checkpoint.safetensors`` for a training run) is
three files, none of which is unpickled as code:

    X.safetensors   tensors ``model/<name>`` (the weights) and ``ema/<name>`` (the EMA weights)
    X.json          model_name, model_config, identity, step, data_position, corpus,
                    train_config, metrics, ema_state (decay, updates), imported, and the
                    sha256 of the other two files
    X.state.pt      training state for resumption: optimizer, lr scheduler, RNG states
                    (plain tensors and numbers, read with ``torch.load(weights_only=True)``);
                    absent for an imported checkpoint

A save never leaves a run without a complete checkpoint (``save_checkpoint``): the three new
files are written to fsynced temporaries; the current set is hard-linked to ``X.prev.*`` (the
last good checkpoint); the temporaries are renamed over ``X.*`` (the weights last) and the
folder fsynced; then ``X.prev.*`` is removed. The JSON's sha256s tell a complete set from one
torn by an interruption between the renames; a reader given a torn ``X`` reads ``X.prev``
(saying so in one ``warning:`` line), and the next save keeps ``X.prev`` until its own set is
complete and removes stray temporaries. A checkpoint dict (``read_checkpoint``,
``save_checkpoint``) has the keys of the JSON plus ``model``, ``ema``, ``optimizer``,
``scheduler`` and ``rng``.

Checkpoints of earlier versions (one ``checkpoint.pt`` torch pickle) still load, with
``torch.load(weights_only=True)``; one that holds anything else is refused with the command
that converts it (``python -m esolm.checkpoint OLD.pt``, through the restricted unpickler of
esolm/importers/safe_pickle.py).
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from esolm.config import ConfigError
from esolm.io import atomic_write_files, content_hash, json_bytes, temp_name

NAME = "checkpoint.safetensors"  # a training run's checkpoint inside its run folder
LEGACY_NAME = "checkpoint.pt"  # the one-file torch pickle of earlier versions
FORMAT = "esolm-checkpoint-2"
TENSORS = ("model", "ema")  # the state_dicts stored in the safetensors file, by prefix
TRAINING = ("optimizer", "scheduler", "rng")  # stored in X.state.pt


def companions(path: str | Path) -> tuple[Path, Path, Path]:
    """(weights, metadata JSON, training state) of the checkpoint at ``path`` (any of the three)."""
    p = Path(path)
    stem = p.name
    for suffix in (".safetensors", ".state.pt", ".json", ".pt"):
        stem = stem.removesuffix(suffix)
    return p.with_name(stem + ".safetensors"), p.with_name(stem + ".json"), p.with_name(stem + ".state.pt")


def previous(path: str | Path) -> tuple[Path, Path, Path]:
    """The companions of ``X.prev.safetensors``: the last good set of checkpoint ``X``, kept while a save
    of ``X`` is in flight."""
    weights = companions(path)[0]
    return companions(weights.with_name(weights.name.removesuffix(".safetensors") + ".prev.safetensors"))


def checkpoint_in(folder: str | Path) -> Path | None:
    """The checkpoint in a run folder (the current format first, also when only the previous set of an
    interrupted save is left, then a legacy one), or None."""
    current = Path(folder) / NAME
    if current.is_file() or previous(current)[0].is_file():
        return current
    legacy = Path(folder) / LEGACY_NAME
    return legacy if legacy.is_file() else None


# -------------------------------------------------------------------------- writing
def _flat(prefix: str, state_dict: dict) -> dict[str, torch.Tensor]:
    """``prefix/name`` -> a contiguous CPU tensor; a storage shared by two names is copied
    (safetensors stores each tensor once)."""
    out, seen = {}, set()
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[f"{prefix}/{k}"] = t
    return out


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _files_of(path: Path, state: dict) -> list[tuple[Path, bytes]]:
    """(path, bytes) of each file of checkpoint ``state``, in the order they are renamed into place:
    the training state, the JSON (naming the sha256 of the others), the weights last."""
    from safetensors.torch import save

    weights, meta_path, state_path = companions(path)
    tensors = {}
    for key in TENSORS:
        if state.get(key) is not None:
            tensors.update(_flat(key, state[key]))
    blob = save(tensors, metadata={"format": FORMAT, "model_name": str(state["model_name"])})
    meta = {k: v for k, v in state.items() if k not in TENSORS + TRAINING}
    if meta.get("ema_state"):
        meta["ema_state"] = {k: v for k, v in meta["ema_state"].items() if k != "shadow"}
    meta.update(format=FORMAT, files={"weights": {"name": weights.name, "sha256": content_hash(blob)}})
    items = []
    training = {k: state[k] for k in TRAINING if state.get(k) is not None}
    if training:
        extra = _torch_bytes(training)
        meta["files"]["state"] = {"name": state_path.name, "sha256": content_hash(extra)}
        items.append((state_path, extra))
    return items + [(meta_path, json_bytes(meta)), (weights, blob)]


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` (a checkpoint dict) as ``path`` (``X.safetensors``) and its companions, so
    that an interruption at any point leaves a complete checkpoint (the new one or the last good
    one, module docstring). Returns the weights' path."""
    files = companions(path)
    _remove(_strays(files))  # temporaries of a save that was killed
    atomic_write_files(_files_of(files[0], state), before_rename=lambda: _keep_last_good(files))
    _fsync_dir(files[0].parent)
    _remove(previous(files[0]))
    return files[0]


def _strays(files) -> list[Path]:
    """The temporary files of the checkpoint ``files`` (esolm.io.temp_name: ``.NAME.RANDOM.tmp``) left
    beside them by a save that was killed."""
    heads = {temp_name(f).name.rsplit(".", 2)[0] for f in files}
    return [Path(t) for h in heads for t in glob.glob(str(files[0].parent / f"{glob.escape(h)}.*.tmp"))]


def _remove(paths) -> None:
    """Remove the files ``paths`` that exist."""
    for p in paths:
        if os.path.lexists(p):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def _keep_last_good(files) -> None:
    """Make ``X.prev.*`` the last complete set before ``X.*`` is replaced: hard links to the current set
    (a copy where links are unsupported), unless ``X`` is torn and ``X.prev`` complete (a save was
    interrupted after its first rename: ``X.prev`` is the last good one and stays)."""
    prev = previous(files[0])
    if any(p.exists() for p in prev) and not _complete(files[0]) and _complete(prev[0]):
        return
    _remove(prev)
    for src, dst in zip(files, prev):
        if src.exists():
            _link(src, dst)
    _fsync_dir(files[0].parent)


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable, where the OS lets a folder be fsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -------------------------------------------------------------------------- reading
def _missing(path: Path) -> ConfigError:
    return ConfigError(f"checkpoint {path} does not exist; train one with "
                       f"`python experiments/run.py train ...` or pass the right --checkpoint")


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        found = checkpoint_in(p)
        if found is None:
            raise _missing(p / NAME)
        return found
    if p.name.endswith((".json", ".state.pt")) or (p.suffix == ".pt" and not p.exists()):
        return companions(p)[0]  # a legacy path whose run was retrained keeps working
    return p


def _verified(path: Path, entry: dict | None, role: str) -> bytes:
    """The bytes of ``path``, checked against the sha256 the JSON recorded for them."""
    if not isinstance(entry, dict) or not path.is_file():
        raise ConfigError(f"checkpoint {path.name} ({role}) is missing beside its JSON; the checkpoint is "
                          f"incomplete: delete it and retrain, or copy the whole set of files")
    data = path.read_bytes()
    if content_hash(data) != entry.get("sha256"):
        raise ConfigError(f"checkpoint file {path} ({role}) is corrupt or from another save than its JSON (sha256 "
                          f"differs; a save interrupted between renames, or a partial copy); delete the checkpoint "
                          f"and retrain, or resume from an earlier copy")
    return data


def _read_meta(weights: Path, meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"checkpoint {weights} is corrupt or incomplete: its metadata {meta_path.name} cannot be "
                          f"read ({type(e).__name__}: {e}); delete it and retrain, or pass a file written by "
                          f"`run.py train`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise ConfigError(f"{meta_path} is not the metadata of an esolm checkpoint (format {FORMAT}); "
                          f"pass a checkpoint written by `run.py train` or `run.py import`")
    return meta


def _complete(weights: Path) -> bool:
    """Do the weights and training state of checkpoint ``weights`` match the sha256s of its JSON?"""
    try:
        _check_set(weights, training_state=True)
    except ConfigError:
        return False
    return True


def _check_set(weights: Path, *, training_state: bool) -> tuple[dict, bytes, bytes | None]:
    """(metadata, weights' bytes, training state's bytes or None) of the set at ``weights``, each file
    read checked against the sha256 its JSON recorded (the training state only with ``training_state``);
    a ConfigError if one differs or is missing."""
    if not weights.is_file():
        raise _missing(weights)
    _, meta_path, state_path = companions(weights)
    meta = _read_meta(weights, meta_path)
    files = meta["files"]
    data = _verified(weights, files.get("weights"), "weights")
    extra = _verified(state_path, files["state"], "training state") if training_state and "state" in files else None
    return meta, data, extra


def _unflatten(tensors: dict[str, torch.Tensor]) -> dict:
    out: dict = {key: None for key in TENSORS}
    for name, t in tensors.items():
        prefix, _, k = name.partition("/")
        if out.get(prefix) is None:
            out[prefix] = {}
        out[prefix][k] = t
    return out


def read_checkpoint(path: str | Path, *, training_state: bool = False, log=None) -> dict:
    """The checkpoint dict at ``path`` (``X.safetensors``, its JSON, a run folder, or a legacy
    ``.pt``); the optimizer, scheduler and RNG states only with ``training_state``. A set torn by an
    interrupted save is read from its complete ``X.prev`` set, told in one ``warning:`` line through
    ``log`` (default: esolm.log.log). A missing, incomplete or corrupt checkpoint is a ConfigError
    naming the fix."""
    weights = _resolve(path)
    if weights.suffix != ".safetensors":
        if not weights.is_file():
            raise _missing(weights)
        return read_legacy(weights)
    try:
        return _read_set(weights, training_state)
    except ConfigError as torn:
        prev = previous(weights)[0]
        if not prev.is_file():
            raise
        try:
            state = _read_set(prev, training_state)
        except ConfigError:
            raise torn from None
    from esolm.log import log as default_log

    (log or default_log)(f"warning: the newest checkpoint {weights} was torn by an interrupted save; using the "
                         f"previous complete one, {prev} (step {state.get('step')})")
    return state


def _read_set(weights: Path, training_state: bool) -> dict:
    """The checkpoint dict of the set at ``weights`` (every file read checked against its JSON)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta, data, extra = _check_set(weights, training_state=training_state)
    try:
        state = {**meta, **_unflatten(load(data))}
    except SafetensorError as e:
        raise ConfigError(f"checkpoint {weights} is corrupt ({e}); delete it and retrain") from None
    if state.get("ema_state") and state.get("ema") is not None:
        state["ema_state"] = {**state["ema_state"], "shadow": state["ema"]}
    if extra is not None:
        state.update(torch.load(io.BytesIO(extra), map_location="cpu", weights_only=True))
    return state


# ------------------------------------------------------------------ earlier versions
def _numpy_globals() -> list:
    """What an RNG state pickled by numpy needs under weights_only (plain arrays and dtypes:
    an array of Python objects would still need globals that stay refused)."""
    core = getattr(np, "_core", None) or np.core
    rebuild = core.multiarray._reconstruct
    return [(rebuild, "numpy.core.multiarray._reconstruct"), (rebuild, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *(getattr(np.dtypes, n) for n in ("UInt32DType", "Int64DType", "Float64DType"))]


def read_legacy(path: Path) -> dict:
    """A ``checkpoint.pt`` of an earlier version, read with ``torch.load(weights_only=True)``."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # pickle garbage rather than a refused class
            raise _corrupt(path, e) from None
        raise ConfigError(f"checkpoint {path} (an earlier version's torch pickle) holds objects that "
                          f"torch.load(weights_only=True) refuses; convert it once with `python -m esolm.checkpoint "
                          f"{path}` (reads it with the restricted unpickler, writes "
                          f"{companions(path)[0].name} and its JSON beside it) and pass the new file") from None
    except Exception as e:  # truncated zip, not a torch file
        raise _corrupt(path, e) from None
    if not isinstance(state, dict) or not {"model_name", "model_config", "model"} <= set(state):
        raise ConfigError(f"checkpoint {path} is not an esolm checkpoint (missing model_name / "
                          f"model_config / model); pass a file written by `run.py train`")
    return state


def _corrupt(path: Path, e: Exception) -> ConfigError:
    reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if str(e).strip() else ""
    return ConfigError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {reason}); "
                       f"delete it and retrain, or resume from an earlier checkpoint")


def _plain_only(obj):
    """``obj`` with every value the restricted unpickler stubbed replaced by None."""
    from esolm.importers.safe_pickle import Stub

    if isinstance(obj, Stub):
        return None
    if isinstance(obj, dict):
        return {k: _plain_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_only(v) for v in obj)
    return obj


def convert_legacy(path: str | Path, out: str | Path | None = None) -> Path:
    """Rewrite an earlier version's ``checkpoint.pt`` in the current format (``out``, default
    ``X.safetensors`` beside it), reading it with the restricted unpickler (no code runs); a
    value it cannot rebuild (foreign classes) becomes None, and the RNG states are dropped (a
    resumed run draws fresh random streams). Returns the new checkpoint's path."""
    from esolm.importers.safe_pickle import load_lightning

    path = Path(path)
    state = _plain_only(load_lightning(path))
    if not {"model_name", "model_config", "model"} <= set(state):
        raise ConfigError(f"{path} is not an esolm checkpoint (missing model_name / model_config / model)")
    state["rng"] = None
    return save_checkpoint(out or companions(path)[0], state)


def source_summary(path: str | Path) -> dict:
    """What names the weights of the checkpoint at ``path`` (a harness checkpoint or its run folder),
    from its JSON alone (no tensor is read): path, model_name, step and the sha256 of its weights file.
    Another run started from these weights (esolm.train ``init_from``) keeps it in its identity."""
    weights = _resolve(path)
    if weights.suffix != ".safetensors":
        raise ConfigError(f"{weights} is a checkpoint of an earlier version; convert it once with `python -m "
                          f"esolm.checkpoint {weights}` and pass the new {companions(weights)[0].name}")
    if not weights.is_file() and previous(weights)[0].is_file():
        weights = previous(weights)[0]  # an interrupted save left only the previous complete set
    if not weights.is_file():
        raise _missing(weights)
    meta = _read_meta(weights, companions(weights)[1])
    return dict(path=str(weights), model_name=meta["model_name"], step=meta.get("step"),
                weights_sha256=(meta["files"].get("weights") or {}).get("sha256"))


# -------------------------------------------------------------------------- models
def load_model(path: str | Path, *, device="cpu", use_ema: bool = True):
    """(model in eval mode with EMA weights where present, checkpoint dict).

    ``path`` is a checkpoint (``X.safetensors``, its JSON, a run folder, a legacy ``.pt``) or an
    authors' release (a Lightning ``.ckpt``, a Hugging Face folder or ``hf:ORG/NAME``), imported
    in memory (esolm.importers), EMA weights unless ``use_ema`` is False."""
    from esolm import registry
    from esolm.importers import import_checkpoint, is_external
    from esolm.train import resolve_device

    device = resolve_device(str(device))  # an unusable device is one ConfigError, before any reading
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


def main(argv: list[str]) -> int:
    """``python -m esolm.checkpoint OLD.pt [NEW.safetensors]``: convert an earlier checkpoint."""
    if len(argv) not in (1, 2):
        print("usage: python -m esolm.checkpoint OLD.pt [NEW.safetensors]", file=sys.stderr)
        return 2
    try:
        print(convert_legacy(*argv))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
