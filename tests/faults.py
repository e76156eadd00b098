"""The fault sweep's one judge: run a command as a user would and say how it ended.

Every fault-injection test (tests/test_faults_*.py, tests/test_store.py) runs its case through
:func:`cli` and judges it with :func:`one_error` (a failure that must be one clear line) or
:func:`one_warning` (a fault the harness repairs, saying so in one line). Each judgement is
one of the sweep's four outcomes:

    clear line    the exit status says what happened, one ``error:`` (or ``warning:``) line
                  names the problem, no traceback, every finished result kept
    traceback     a Python traceback reached the user
    silent wrong  exit status 0 where something failed, no line naming it, or the wrong line
    data lost     a finished result (a file that existed before the command) changed or vanished

A test asserts "clear line". With ``ESOLM_FAULT_SWEEP=FILE`` every judgement is also appended to
FILE as a JSON line (case, outcome, exit status, the line), so that one run of the suite gives
the sweep's counts: ``python -m pytest tests -k "fault or store" ; python tests/faults.py FILE``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]
OUTCOMES = ("clear line", "traceback", "silent wrong", "data lost")


def cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """``experiments/run.py ARGS`` in a subprocess (text output captured)."""
    return subprocess.run(RUN + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), cwd=cwd or ROOT)


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``run.py ARGS`` through ``experiments.run.main`` in this process (faster than :func:`cli`),
    ended as the shell would see it: a traceback that escapes ``main`` is printed to stderr with
    exit status 1, as Python would."""
    import traceback

    from experiments.run import main as run_main

    capsys.readouterr()
    try:
        code = run_main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - judged as the traceback a user would see
        code = 1
        print(traceback.format_exc(), file=sys.stderr)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


class Finished:
    """The bytes of every file under some folders (the finished results a command must keep)."""

    def __init__(self, *roots: Path):
        self.files = {p: p.read_bytes() for r in roots if Path(r).exists()
                      for p in ([Path(r)] if Path(r).is_file() else sorted(Path(r).rglob("*"))) if p.is_file()}

    def lost(self) -> list[str]:
        return [str(p) for p, data in self.files.items() if not p.is_file() or p.read_bytes() != data]


def judge(proc, *needles, kind: str = "error", code: int | None = None, kept: Finished | None = None) -> tuple:
    """(outcome, the line): how ``proc`` ended against the expectation of one ``kind:`` line
    holding every needle, with exit status ``code`` (None: non-zero for an error, 0 for a warning)."""
    text = proc.stderr + proc.stdout
    lines = [ln for ln in text.splitlines() if ln.startswith(f"{kind}:")]
    line = lines[0] if lines else ""
    expected_code = code if code is not None else (0 if kind == "warning" else None)
    if kept is not None and kept.lost():
        return "data lost", f"changed or removed: {kept.lost()[:3]}"
    if "Traceback (most recent call last)" in text:
        return "traceback", text[text.index("Traceback"):][-600:]
    code_ok = proc.returncode != 0 if expected_code is None else proc.returncode == expected_code
    if not code_ok or len(lines) != 1 or not all(n in line for n in needles):
        return "silent wrong", f"exit {proc.returncode}; {kind} lines {lines[:3]}; wanted {needles}"
    return "clear line", line


def _tally(case: str, outcome: str, proc, line: str) -> None:
    path = os.environ.get("ESOLM_FAULT_SWEEP")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(case=case, outcome=outcome, exit=proc.returncode, line=line[:300])) + "\n")


def _case() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]


def one_error(proc, *needles, code: int | None = 2, kept: Finished | None = None) -> str:
    """Assert that ``proc`` failed with exit status ``code`` (None: any non-zero) and exactly one
    ``error:`` line holding every needle, no traceback, nothing in ``kept`` lost; the line."""
    outcome, line = judge(proc, *needles, code=code, kept=kept)
    _tally(_case(), outcome, proc, line)
    assert outcome == "clear line", (outcome, line, proc.stderr[-3000:])
    return line


def one_warning(proc, *needles, kept: Finished | None = None) -> str:
    """Assert that ``proc`` succeeded (exit 0) saying what it repaired in exactly one ``warning:``
    line holding every needle, with no traceback and nothing in ``kept`` lost; the line."""
    outcome, line = judge(proc, *needles, kind="warning", kept=kept)
    _tally(_case(), outcome, proc, line)
    assert outcome == "clear line", (outcome, line, proc.stderr[-3000:])
    return line


def main(argv: list[str]) -> int:
    """``python tests/faults.py SWEEP.jsonl``: the sweep's counts per outcome, and every case not clear."""
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    counts = Counter(r["outcome"] for r in rows)
    print(f"{len(rows)} cases: " + ", ".join(f"{o} {counts.get(o, 0)}" for o in OUTCOMES))
    for r in rows:
        if r["outcome"] != "clear line":
            print(f"  {r['outcome']}: {r['case']}: {r['line']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
