"""The on-disk cache of tokenizers and tokenized corpora: where it lives, content hashes,
atomic writes, and the progress lines that say what is being built and where it went."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from esolm.io import atomic_write_bytes, atomic_write_json, content_hash
from esolm.log import printer

# Bump when the way documents become packed ids changes, so old caches are not reused.
FORMAT_VERSION = 1


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$ESOLM_CACHE``, else ``~/.cache/esolm``."""
    if cache_dir is None:
        cache_dir = os.environ.get("ESOLM_CACHE") or Path.home() / ".cache" / "esolm"
    return Path(cache_dir).expanduser()


def digest(*parts) -> str:
    """sha256 hex of a JSON-able description (strings, numbers, lists, dicts)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return content_hash(blob)


def array_digest(array) -> str:
    """sha256 hex of an array's dtype, shape and bytes (numpy or torch)."""
    a = np.ascontiguousarray(array.numpy() if hasattr(array, "numpy") else array)
    return content_hash([f"{a.dtype}{a.shape}", a.tobytes()])


def text_digest(text: str) -> str:
    return content_hash(text)


log = printer("esolm.data")  # one progress line "[esolm.data] ..." on stderr (esolm.log)


def save_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy atomically (temp file + os.replace)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, lambda f: f.write(buf.getbuffer()))


def save_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_json(path: Path, obj) -> None:
    atomic_write_json(path, obj)


def load_json(path: Path):
    return json.loads(Path(path).read_text())


class CorruptCache(Exception):
    """A cached file that cannot be read back (truncated, garbage, the wrong shape)."""


def read_cached(path: Path, read, what: str):
    """``read(path)``, or None when the cached file is corrupt: a warning line names it and says
    it is rebuilt (the caller builds it again and overwrites it atomically). An OSError (a file
    that cannot be opened) is raised as it is."""
    try:
        return read(path)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy, json and tokenizers raise their own kinds for garbage
        reason = str(e)[:200] if isinstance(e, CorruptCache) else f"{type(e).__name__}: {str(e)[:200]}"
        log(f"warning: the cached {what} {path} is corrupt ({reason}); rebuilding it")
        return None


def storage_dtype(vocab_size: int):
    """The smallest integer type that holds every id (uint16 covers GPT-2 and BERT)."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
