"""Atomic file writes and the one content hash of the harness.

Every file the harness writes for later reading (checkpoints, records, caches, tables) goes
through a temporary file in the same folder, fsync, then ``os.replace``: a reader sees the old
file or the new one, never half of one. Files are created with mode 0o666 less the umask (as
``open`` creates them), so a umask of 0o022 gives 0644 and 0o077 gives 0600; a temporary name
keeps at most 32 bytes of the final one, so any valid final name works. Every fingerprint, cache key and record key is the
sha256 of some canonical bytes (``content_hash``); the callers choose the bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
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
TEMP_PREFIX_BYTES = 32  # of the final name kept in a temporary one: any valid final name fits in 255 bytes


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<at most 32 bytes of its name>.<random>.tmp``,
    short enough for any valid final name, recognisable as the temporary of ``path``."""
    stem = os.fsencode(path.name)[:TEMP_PREFIX_BYTES].decode(errors="ignore") if path.name else "file"
    return path.parent / f".{stem}.{secrets.token_hex(6)}.tmp"


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new temporary file beside ``path`` with mode 0o666 less the umask (what a plain
    ``open(..., "w")`` gives, so that a shared store is as readable as the umask says); its fd
    and name. An error names ``path`` (what the caller writes), not the temporary."""
    while True:
        tmp = temp_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:  # a name drawn twice: draw again
            continue
        except OSError as e:
            raise type(e)(e.errno, e.strerror, str(path)) from None


def _temp_beside(path: Path, write) -> str:
    """Write through ``write(f)`` into a fsynced temporary file beside ``path``; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        os.unlink(tmp)
        named(e, path)  # a full disk names the file it was writing
        raise
    return str(tmp)


def named(error: BaseException, path: str | Path) -> BaseException:
    """``error`` with ``path`` as its file name when it is an OSError that names none (a write to an
    open file that fails on a full disk names no file), so that the one-line message names it."""
    if isinstance(error, OSError) and error.filename is None:
        error.filename = str(path)
    return error


def atomic_write_bytes(path: str | Path, write) -> Path:
    """Write ``path`` through ``write(f)`` (a binary file object) atomically: temporary file in
    the same folder, fsync, rename over ``path``."""
    return atomic_write_files([(Path(path), write)])[0]


def atomic_write_files(items: list[tuple[Path, object]], before_rename=None) -> list[Path]:
    """Write several files (``(path, write)`` pairs, or ``(path, bytes)``): every temporary
    file is written and fsynced first, then ``before_rename()`` runs (esolm/checkpoint.py keeps
    the last good set there), then all are renamed in order, so an interruption while writing
    leaves every old file in place. The last one renamed is the last in the list."""
    temps: list[str] = []
    try:
        for path, write in items:
            data = write
            temps.append(_temp_beside(Path(path), write if callable(write) else lambda f, d=data: f.write(d)))
        if before_rename is not None:
            before_rename()
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
