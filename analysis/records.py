"""The records of the results store, verified before they are trusted (docs/results_store.md).

A job writes one record, results/<preset>/records/<stage>/<key>.json, through :func:`seal`:
``record_format`` (2) and the ``sha256`` of the record's canonical JSON without that field
(esolm.io.json_bytes, esolm.io.content_hash). Every reader goes through :func:`load`, which
returns the record or raises :class:`Corrupt` saying why it cannot be trusted:

* not readable, not JSON (a truncated file), not a JSON object;
* a key the readers need missing or of the wrong type (``key, stage, name, finished,
  code_version`` strings; ``row`` an object, or ``rows`` a list of objects each with a ``name``;
  each of a row's ``config, options, metrics, display`` an object where present);
* ``key`` not the file's name or ``stage`` not its folder;
* a checksum that does not match, or a ``record_format`` this code does not know.

Records written before the checksum (format 1: no ``record_format``, no ``sha256``, as the
committed results/tiny and results/cpu) are checked for their shape only.

A record that verifies is *done* only with its outputs: the files a later stage reads (a
training job's checkpoint, experiments/graph.py ``Job.outputs``); :func:`check` says which
of the three a record is. Nothing here imports experiments/ or the models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from analysis.schema import GROUPS
from esolm.io import content_hash, json_bytes

FORMAT = 2  # record_format of the records written now (1: the records before the checksum)
REQUIRED = ("key", "stage", "name", "finished", "code_version")  # strings every reader relies on


class Corrupt(ValueError):
    """A record that does not verify; ``str()`` says why, ``readable`` whether its bytes could be
    read at all (an unreadable file is reported, never removed as corrupt)."""

    def __init__(self, reason: str, readable: bool = True):
        super().__init__(reason)
        self.readable = readable


def checksum(record: dict) -> str:
    """sha256 of the record's canonical JSON without its ``sha256`` field."""
    return content_hash(json_bytes({k: v for k, v in record.items() if k != "sha256"}))


def seal(record: dict) -> dict:
    """The record as it is written: plain JSON values, ``record_format`` and its ``sha256``."""
    plain = json.loads(json_bytes({k: v for k, v in record.items() if k != "sha256"}))
    plain["record_format"] = FORMAT
    plain["sha256"] = checksum(plain)
    return plain


def load(path: str | Path) -> dict:
    """The record at ``path``, verified (see the module's docstring); Corrupt says why not."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise Corrupt(f"cannot read it: {e.strerror}", readable=False) from None
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise Corrupt(f"not valid JSON ({e}; a truncated or damaged file)") from None
    if not isinstance(record, dict):
        raise Corrupt(f"not a JSON object but a {type(record).__name__}")
    _check_shape(record, path)
    _check_sum(record)
    return record


def _check_shape(record: dict, path: Path) -> None:
    wrong = [k for k in REQUIRED if not isinstance(record.get(k), str)]
    if wrong:
        raise Corrupt(f"lacks {', '.join(wrong)} (or not a string)")
    if record["key"] != path.stem:
        raise Corrupt(f"its key {record['key']!r} is not its file name")
    if record["stage"] != path.parent.name:
        raise Corrupt(f"its stage {record['stage']!r} is not its folder {path.parent.name!r}")
    _check_rows(record)


def _check_rows(record: dict) -> None:
    """``row`` an object, or ``rows`` a non-empty list of named objects; their groups objects."""
    rows = record.get("rows") if "rows" in record else [record.get("row")]
    if not isinstance(rows, list) or not rows:
        raise Corrupt("its rows are not a non-empty list")
    for row in rows:
        if not isinstance(row, dict):
            raise Corrupt("a row is not a JSON object")
        if "rows" in record and not isinstance(row.get("name"), str):
            raise Corrupt("a row of its rows has no name")
        bad = [g for g in GROUPS if g in row and row[g] is not None and not isinstance(row[g], dict)]
        if bad:
            raise Corrupt(f"the {', '.join(bad)} of a row are not JSON objects")


def _check_sum(record: dict) -> None:
    fmt = record.get("record_format", 1)
    if fmt not in (1, FORMAT):
        raise Corrupt(f"record_format {fmt!r} is not one this code reads (1 or {FORMAT})")
    if fmt == FORMAT and "sha256" not in record:
        raise Corrupt("its sha256 is missing")
    if "sha256" in record and record["sha256"] != checksum(record):
        raise Corrupt("its sha256 does not match its content (changed after it was written)")


@dataclass
class Check:
    """What a job's record says: ``record`` (None unless it verifies), ``state``: done (verified,
    outputs present), corrupt, no-output (verified, an output gone) or absent; ``reason``."""

    path: Path
    state: str
    record: dict | None = None
    reason: str = ""
    readable: bool = True


def check(path: str | Path, outputs=()) -> Check:
    """The state of the record at ``path`` of a job whose later stages read ``outputs``."""
    path = Path(path)
    try:
        record = load(path)
    except FileNotFoundError:
        return Check(path, "absent")
    except Corrupt as e:
        return Check(path, "corrupt", reason=str(e), readable=e.readable)
    gone = [str(o) for o in outputs if not Path(o).exists()]
    if gone:
        return Check(path, "no-output", record, f"its record is kept but {', '.join(gone)} is gone")
    return Check(path, "done", record)


def done(path: str | Path, outputs=()) -> bool:
    """A record at ``path`` that verifies, with every output present."""
    return check(path, outputs).state == "done"


def scan(results: str | Path, stages=None) -> tuple[list[tuple[Path, dict]], list[Check]]:
    """Every record under results/records (of ``stages``, default all): (path, record) of those
    that verify, and the Check of each that does not."""
    base = Path(results) / "records"
    paths = sorted(p for p in base.glob("*/*.json") if stages is None or p.parent.name in stages)
    good, bad = [], []
    for p in paths:
        c = check(p)
        if c.state == "done":
            good.append((p, c.record))
        elif c.state == "corrupt":
            bad.append(c)
    return good, bad


def warning(c: Check, fix: str = "") -> str:
    """The one line naming a corrupt record."""
    return f"warning: corrupt record {c.path} ({c.reason}); it counts as missing" + (f"; {fix}" if fix else "")


def latest_by_name(records) -> dict[str, dict]:
    """The newest record (by ``finished``) of each job name among ``records``."""
    out: dict[str, dict] = {}
    for r in records:
        if r["name"] not in out or r["finished"] > out[r["name"]]["finished"]:
            out[r["name"]] = r
    return out
