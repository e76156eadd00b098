"""Benchmark session (issue 8): options, the session-wide store of measurements, and the report
printed and written to results/bench/ at the end of the run.

    pytest --benchmark-only                       # CPU, L in {256, 1024}: a few minutes
    pytest tests/bench --benchmark-only --bench-quick
    pytest tests/bench --benchmark-only --bench-device cuda          # L in {2048, 8192}
    pytest tests/bench --benchmark-only --bench-lengths 256,1024,2048 --bench-out /tmp/b.json

The --bench-* options are declared in tests/conftest.py (pytest reads options only from the
conftests it meets at start-up), so they work from the repository root too. A plain ``pytest``
skips all of this (pyproject's addopts has --benchmark-skip).
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import protocol
import report
from protocol import STORE


def settings_from(config) -> protocol.Settings:
    opt = config.getoption
    device = opt("--bench-device")
    cuda = device.startswith("cuda")
    quick = opt("--bench-quick")
    s = protocol.Settings(device=device)
    if cuda:  # the paper's lengths; full runs up to 2048, larger passes and batches
        s.lengths, s.full_upto = (2048, 8192), 2048
        s.train_length, s.train_batch = 1024, 16
        s.likelihood_length, s.likelihood_batch, s.likelihood_orders = 1024, 8, (1, 8, 64)
    if quick:
        s.lengths, s.rounds, s.train_length, s.train_batch = (256,), 1, 128, 4
        s.likelihood_length, s.likelihood_batch, s.likelihood_orders = 32, 2, (1, 4)
    if opt("--bench-lengths"):
        s.lengths = tuple(int(x) for x in opt("--bench-lengths").split(",") if x.strip())
    for name, attr in [("--bench-full-upto", "full_upto"), ("--bench-rounds", "rounds"),
                       ("--bench-warmup", "warmup"), ("--bench-threads", "threads"),
                       ("--bench-vocab", "vocab_size"), ("--bench-alt-vocab", "alt_vocab_size"),
                       ("--bench-preset", "preset")]:
        if opt(name) is not None:
            setattr(s, attr, opt(name))
    return s


@dataclass
class Session:
    settings: protocol.Settings
    quick: bool
    out: str | None
    # the report's tables (report.TABLES) -> the records the benchmarks measured for it
    records: dict = field(default_factory=lambda: {table: [] for table in report.TABLES})
    notes: list = field(default_factory=list)  # lines of the report's notes
    written: list = field(default_factory=list)  # the report files written
    text: str = ""  # the terminal summary
    load_start: float = 0.0

    def add(self, table: str, record: dict):
        """File one measured record under the report's table ``table``."""
        self.records[table].append(record)


def pytest_configure(config):
    config.stash[STORE] = Session(settings_from(config), config.getoption("--bench-quick"),
                                  config.getoption("--bench-out"))


@pytest.fixture(scope="session")
def bench(request):
    """The session store; sets the thread count while the benchmarks run."""
    session = request.config.stash[STORE]
    s = session.settings
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        pytest.exit("--bench-device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False)", 4)
    threads = torch.get_num_threads()
    session.load_start = protocol.load()
    cores = os.cpu_count() or 1
    if request.config.getoption("--bench-threads") is None and not s.device.startswith("cuda"):
        # two spinning threads per process on a busy 2-core machine run many times slower
        s.threads = cores if session.load_start < cores / 2 else 1
        if s.threads < cores:
            session.notes.append(f"the machine was busy (load {session.load_start} on {cores} cores): "
                                 f"1 thread; rerun when it is idle for numbers to keep")
    torch.set_num_threads(s.threads)
    yield session
    torch.set_num_threads(threads)


def pytest_sessionfinish(session, exitstatus):
    store: Session = session.config.stash.get(STORE, None)
    if store is None or not any(store.records[table] for table in report.MEASURED):
        return
    s = store.settings
    store.notes += [
        f"load average (1 min) at the start {store.load_start}, at the end {protocol.load()}; "
        f"{s.threads} torch threads on {os.cpu_count()} cores",
        f"L > {s.full_upto}: MDLM and the uncached samplers are subsampled estimates (tests/bench/estimate.py):"
        f" about {s.timed_calls} network calls per kind computed, the rest charged by interpolation; "
        "everything else in the sampler runs for real",
    ]
    doc = report.build(s, store.records, store.notes)
    device = "cuda" if s.device.startswith("cuda") else "cpu"
    folder = report.ROOT / "results" / "bench"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    path = Path(store.out) if store.out else folder / f"{device}-{stamp}{'-quick' if store.quick else ''}.json"
    measured = {(r["length"], r["method"], r["cache"]) for r in store.records["sampling"] if r["vocab_size"] == s.vocab_size}
    complete = measured >= set(protocol.configurations(s))  # -k or -x runs never replace "latest"
    latest = folder / f"{device}-latest.json" if complete and not (store.quick or store.out) else None
    store.written = report.write(doc, path, latest)
    store.text = report.text(doc)


def pytest_terminal_summary(terminalreporter):
    store: Session = terminalreporter.config.stash.get(STORE, None)
    if store is None or not store.text:
        return
    terminalreporter.section("esolm benchmark report")
    terminalreporter.write_line(store.text)
    for p in store.written:
        terminalreporter.write_line(f"wrote {p}")
