"""Atomic file writes and the one content hash of the harness.

Every file the harness writes for later reading (checkpoints, records, caches, tables) goes
through a temporary file in the same folder, fsync, then ``os.replace``: a reader sees the old
file or the new one, never half of one. Every fingerprint, cache key and record key is the
sha256 of some canonical bytes (``content_hash``); the callers choose the bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


# --------------------------------------------------------------------------- hashing
def hasher():
    """The incremental form of :func:`content_hash` (``update(bytes)``, ``hexdigest()``)."""
    return hashlib.sha256()


def _as_bytes(chunk: bytes | bytearray | memoryview | str) -> bytes:
    return chunk.encode("utf-8", "surrogatepass") if isinstance(chunk, str) else chunk


def content_hash(data: bytes | str | Iterable[bytes | str]) -> str:
    """sha256 hex digest of ``data``: bytes, text (UTF-8), or chunks hashed in order (equal to
    hashing their concatenation)."""
    h = hasher()
    for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview, str)) else data:
        h.update(_as_bytes(chunk))
    return h.hexdigest()


def file_chunks(path: str | Path, size: int = 1 << 20):
    """The bytes of a file in blocks of ``size`` (for hashing large files)."""
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(size), b"")


def file_hash(path: str | Path) -> str:
    """:func:`content_hash` of a file's bytes, read in blocks."""
    return content_hash(file_chunks(path))


# ---------------------------------------------------------------------------- writing
def _temp_beside(path: Path, write) -> str:
    """Write through ``write(f)`` into a fsynced temporary file beside ``path``; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_write_bytes(path: str | Path, write) -> Path:
    """Write ``path`` through ``write(f)`` (a binary file object) atomically: temporary file in
    the same folder, fsync, rename over ``path``."""
    return atomic_write_files([(Path(path), write)])[0]


def atomic_write_files(items: list[tuple[Path, object]]) -> list[Path]:
    """Write several files (``(path, write)`` pairs, or ``(path, bytes)``): every temporary
    file is written and fsynced first, then all are renamed in order, so an interruption
    while writing leaves every old file in place. The last one renamed is the last in the list."""
    temps: list[str] = []
    try:
        for path, write in items:
            data = write
            temps.append(_temp_beside(Path(path), write if callable(write) else lambda f, d=data: f.write(d)))
        for (path, _), tmp in zip(items, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return [Path(p) for p, _ in items]


def json_default(o):
    """JSON for the values records hold besides plain ones: tensors and numpy scalars, paths."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot serialize {type(o).__name__}")


def json_bytes(obj) -> bytes:
    """The harness's JSON file format: indented, keys sorted, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, default=json_default).encode() + b"\n"


def atomic_write_json(path: str | Path, obj) -> Path:
    data = json_bytes(obj)
    return atomic_write_bytes(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    data = text.encode()
    return atomic_write_bytes(path, lambda f: f.write(data))
