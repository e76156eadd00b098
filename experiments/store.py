"""The results store, safe to share: one driver per preset folder, a writable folder with room
to spare before anything is submitted, and the run management a user reaches for
(``run.py status`` and ``run.py clean``). See docs/results_store.md.

    results/<preset>/.driver.lock          held (flock) by the driver running on this folder
    results/<preset>/records/<stage>/<key>.json   one record per finished job
    results/<preset>/submitted/<key>.json  where each submitted job runs (job id, logs)
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from esolm.config import ConfigError
from esolm.log import log


class Interrupted(ConfigError):
    """Ctrl-C in a driver: one message, exit status 130."""


MIN_FREE_MB_DEFAULT = 512  # checkpoints, samples and logs of a preset; ESOLM_MIN_FREE_MB overrides


# ----------------------------------------------------------------------------- one driver
class DriverLock:
    """An exclusive ``flock`` on results/<preset>/.driver.lock for as long as the driver runs.
    A second driver on the same folder is refused at once, naming the first one; the lock
    goes with its process (a crashed or killed driver leaves nothing to clean up). Taken again
    inside the same process (a command around ``run_preset``), it is the same lock."""

    _held: dict[tuple, int] = {}  # (folder, thread) -> depth, in this process

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / ".driver.lock"
        self.fd: int | None = None
        self.id = (os.path.realpath(self.folder), threading.get_ident())

    def __enter__(self) -> "DriverLock":
        if DriverLock._held.get(self.id):
            DriverLock._held[self.id] += 1
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            try:
                h = json.loads(holder)
                holder = f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
            except (ValueError, KeyError, TypeError):
                pass
            raise ConfigError(f"another driver is already running on {self.folder} ({holder}); wait for it to "
                              f"finish (`run.py status` shows its progress) or pass another --results") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=_now(),
                                      command=" ".join(sys.argv))).encode(), 0)
        self.fd = fd
        DriverLock._held[self.id] = 1
        return self

    def __exit__(self, *exc) -> None:
        DriverLock._held[self.id] = DriverLock._held.get(self.id, 1) - 1
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def held_by_other(folder: Path) -> bool:
    """True when a driver holds the lock of ``folder`` now."""
    path = Path(folder) / ".driver.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- checks
def check_writable(*folders: Path, min_free_mb: float | None = None) -> None:
    """Each folder exists (created if needed), takes a file, and has ``min_free_mb`` free;
    else one ConfigError saying which folder and what to do."""
    need = float(os.environ.get("ESOLM_MIN_FREE_MB", MIN_FREE_MB_DEFAULT)) if min_free_mb is None else min_free_mb
    for folder in folders:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"{folder} is not writable ({e.strerror}); make it writable or pass a writable "
                              f"--results / --work folder") from None
        free_mb = shutil.disk_usage(folder).free / 2**20
        if free_mb < need:
            raise ConfigError(f"only {free_mb:.0f} MB free on the disk of {folder}; the driver needs at least "
                              f"{need:.0f} MB (checkpoints, samples, logs); free some space or pass --results / "
                              f"--work on another disk (ESOLM_MIN_FREE_MB sets the threshold)")


def explain_os_error(e: OSError) -> str | None:
    """One line for the OS errors a user can fix (full disk, read-only, permissions); None otherwise."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"the disk is full{where}: {e.strerror}; free some space and rerun (finished results are kept)"
    if e.errno in (errno.EACCES, errno.EPERM) and _unreadable(e.filename):
        return (f"cannot read {e.filename}: {e.strerror}; ask its owner to make it readable (chmod a+r, or g+r "
                f"for a group) or pass another --results / --work")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where}: {e.strerror}; make it writable or pass another --results / --work"
    return None


def _unreadable(filename) -> bool:
    """True when ``filename`` exists and this user may not read it (a refused write names a
    file that does not exist yet, or one that can be read: atomic writes never open the target)."""
    return bool(filename) and os.path.lexists(filename) and not os.access(filename, os.R_OK)


# ----------------------------------------------------------------------------- submitted jobs
def submitted_path(results: Path, key: str) -> Path:
    return Path(results) / "submitted" / f"{key}.json"


def note_submitted(results: Path, cluster: str, jobs, handles) -> None:
    """Where each job of each submitted group runs (for ``status``, and for the next driver,
    which adopts the Slurm jobs still running); ``controller_start`` and ``driver`` tell a live
    process from a reused pid (experiments/cluster.py ``process_identity``)."""
    from esolm.io import atomic_write_json
    from experiments.cluster import process_identity

    driver = process_identity()
    for group, handle in zip(jobs, handles):
        paths = getattr(handle, "paths", None)
        pid = getattr(getattr(handle, "_process", None), "pid", None)
        controller = process_identity(pid) if pid else None
        for job in group:
            atomic_write_json(submitted_path(results, job.key), dict(
                key=job.key, name=job.name, stage=job.stage, cluster=cluster, job_id=str(handle.job_id),
                controller_pid=pid, controller_start=controller and controller["start"], driver=driver,
                host=socket.gethostname(), submitted=_now(),
                stdout=str(paths.stdout) if paths else None, stderr=str(paths.stderr) if paths else None,
                result=str(paths.result_pickle) if paths else None))


@contextlib.contextmanager
def children_ignore_sigint(enabled: bool):
    """Processes started inside (submitit's local controllers and their tasks) ignore Ctrl-C:
    the driver alone gets it and stops them itself (one message, not one traceback each)."""
    import threading

    if not enabled or threading.current_thread() is not threading.main_thread():
        yield  # a driver run from another thread gets no Ctrl-C: nothing to hand on
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _alive(pid: int | None, start: int | None = None) -> bool:
    """True while process ``pid`` runs (not a zombie), and, given its ``start`` time, is the same
    process and not a later one that reuses the pid."""
    from experiments.cluster import process_alive, process_identity

    if not pid:
        return False
    return process_alive(dict(pid=pid, start=start)) if start is not None else process_identity(pid) is not None


def _slurm_state(job_id: str) -> str | None:
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = [s.strip() for s in out.stdout.splitlines() if s.strip()]
    return states[0] if out.returncode == 0 and states else None


def _failure_reason(note: dict) -> str:
    """The exception line a job's result file holds, or what is known."""
    import pickle

    for result in sorted(Path(note["result"]).parent.glob(f"{note['job_id']}_*_result.pkl")) if note.get("result") \
            else []:
        try:
            with open(result, "rb") as f:
                outcome, value = pickle.load(f)
        except Exception:  # noqa: BLE001 - unreadable: say so below
            continue
        if outcome == "error":
            lines = [ln.strip() for ln in str(value).splitlines() if ln.strip()]
            if lines:
                return lines[-1]
    return "ended without writing its record (killed, cancelled or out of time)"


# ----------------------------------------------------------------------------- status
@dataclass
class JobState:
    stage: str
    name: str
    state: str  # done | running | failed | corrupt | stale | missing
    detail: str = ""


STATES = ("done", "no-output", "running", "failed", "corrupt", "stale", "missing")


def job_states(graph, results: Path) -> list[JobState]:
    """The state of every job of ``graph`` from the store alone (no driver needed): done (its
    record verifies and its outputs, a training job's checkpoint, are there), running, failed,
    corrupt (its record does not verify: analysis/records.py), no-output (a training record
    that verifies, its checkpoint gone: pareto retrains it only when a job that reads it has to
    run), stale or missing."""
    from analysis import records as R
    from experiments.graph import check_job

    good, _ = R.scan(results)
    by_name = R.latest_by_name(rec for _, rec in good)
    return [_job_state(job, check_job(results, job), results, by_name) for job in graph]


def _job_state(job, check, results: Path, by_name: dict) -> JobState:
    if check.state == "done":
        return JobState(job.stage, job.name, "done")
    note = _read_note(submitted_path(results, job.key))
    submitted = _submitted_state(job, note) if note is not None else None
    if submitted is not None and submitted.state == "running":
        return submitted
    if check.state == "corrupt":
        return JobState(job.stage, job.name, "corrupt", f"{check.path}: {check.reason}")
    if check.state == "no-output":
        clean = run_command("clean", results.name, results, None, "--job", job.name)
        return JobState(job.stage, job.name, "no-output", f"{check.reason}; pareto retrains it when a job that "
                                                          f"reads it has to run (`{clean}` retrains it at the next "
                                                          f"pareto)")
    if submitted is not None:
        return submitted
    if job.name in by_name:
        return JobState(job.stage, job.name, "stale", f"record of code version {by_name[job.name]['code_version']} "
                                                      f"(another code version or configuration)")
    return JobState(job.stage, job.name, "missing")


def _read_note(path: Path) -> dict | None:
    """A submission note, None when there is none (or it cannot be read: nothing to follow)."""
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) and {"cluster", "job_id"} <= set(note) else None


def failure_detail(results: Path, job) -> str | None:
    """Why a submitted job that is not running ended without its record, with its log; None when
    it was never submitted (or runs)."""
    note = _read_note(submitted_path(results, job.key))
    state = _submitted_state(job, note) if note is not None else None
    return state.detail if state is not None and state.state == "failed" else None


def _submitted_state(job, note: dict) -> JobState:
    """running or failed, from the job's submission note."""
    if note["cluster"] == "slurm":
        state = _slurm_state(note["job_id"])
        running = state is not None
    elif note["cluster"] == "local" and note.get("host") == socket.gethostname():
        running, state = _alive(note.get("controller_pid"), note.get("controller_start")), "RUNNING"
    else:
        running, state = False, None
    if running:
        return JobState(job.stage, job.name, "running", f"job {note['job_id']} {state.lower()}; "
                                                        f"log: {note.get('stderr')}")
    return JobState(job.stage, job.name, "failed", f"job {note['job_id']}: {_failure_reason(note)}; "
                                                   f"log: {note.get('stderr')}")


def format_status(states: list[JobState], verbose: bool = False) -> str:
    """Per stage, the count of each state; the jobs running, failed, corrupt, without their
    output or missing for a reason always, every job not done with ``verbose``."""
    lines, stages = [], list(dict.fromkeys(s.stage for s in states))
    for stage in stages:
        mine = [s for s in states if s.stage == stage]
        counts = ", ".join(f"{sum(s.state == k for s in mine)} {k}" for k in STATES)
        lines.append(f"[{stage}] {len(mine)} jobs: {counts}")
        for s in mine:
            if s.state in ("running", "failed", "corrupt", "no-output") or (s.state != "done" and (verbose or s.detail and
                                                                                       s.state == "missing")):
                lines.append(f"  {s.state:8s} {s.name}" + (f": {s.detail}" if s.detail else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- clean
def clean_targets(graph, results: Path, work: Path, *, stages=(), names=(), stale=False, failed=False,
                  logs=False, corrupt=False) -> list[Path]:
    """What ``clean`` removes for the given selectors (nothing else):
    stages / names (globs): those jobs' records, submission notes and work folders (they rerun);
    stale: records of jobs not in the current graph version (another code version or config);
    failed: the submission notes and work folders (partial checkpoints) of failed jobs;
    corrupt: the records that do not verify (analysis/records.py; their jobs rerun);
    logs: the job logs folder."""
    import fnmatch

    targets: list[Path] = []
    for job in graph:
        if job.stage in stages or any(fnmatch.fnmatch(job.name, n) for n in names):
            targets += _job_paths(job, results, work)
    if failed:
        targets += _failed_targets(graph, results, work)
    if stale:
        targets += _stale_targets(graph, results, work)
    if corrupt:
        targets += [c.path for c in _corrupt(results) if c.readable]
    if logs:
        targets.append(work / "logs")
    return [p for p in dict.fromkeys(targets) if p.exists()]


def _job_paths(job, results: Path, work: Path) -> list[Path]:
    """A job's record, its submission note and its work folder."""
    from experiments.graph import record_path

    return [record_path(results, job), submitted_path(results, job.key), work / job.stage / job.key]


def _failed_targets(graph, results: Path, work: Path) -> list[Path]:
    """The submission notes and work folders of the jobs whose state is "failed"."""
    bad = {s.name for s in job_states(graph, results) if s.state == "failed"}
    return [p for job in graph if job.name in bad for p in _job_paths(job, results, work)[1:]]


def _stale_targets(graph, results: Path, work: Path) -> list[Path]:
    """Records that verify (and their work folders) whose key is not in the current graph."""
    from analysis import records as R

    current = {job.key for job in graph}
    good, _ = R.scan(results)
    return [p for path, r in good if r["key"] not in current for p in (path, work / r["stage"] / r["key"])]


def _corrupt(results: Path) -> list:
    """The Check of every record under ``results`` that does not verify."""
    from analysis import records as R

    return R.scan(results)[1]


def warn_corrupt(results: Path, clean: str) -> int:
    """One ``warning:`` line per record of ``results`` that does not verify (``clean``: the command
    that removes them); their count."""
    from analysis import records as R

    bad = _corrupt(results)
    for c in bad:
        log(R.warning(c, f"pareto reruns its job; `{clean}` removes it" if c.readable else
                      "make it readable (chmod a+r) or pass another --results"))
    return len(bad)


def remove(paths: list[Path]) -> list[tuple[Path, str]]:
    """Remove each path; those that could not be removed, with why (nothing is said removed
    that was not)."""
    failed = []
    for p in paths:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as e:
            failed.append((p, e.strerror or str(e)))
    return failed


def require_store(results: Path, preset: str) -> None:
    """One ConfigError when ``results`` (results/<preset>) is no store: a mistyped --results, or a
    preset that has not run there."""
    if Path(results).is_dir():
        return
    root = Path(results).parent
    there = sorted(p.name for p in root.iterdir() if (p / "records").is_dir()) if root.is_dir() else []
    where = (f"{root} does not exist" if not root.is_dir() else
             f"the stores under {root} are: {', '.join(there)}" if there else f"{root} holds no store")
    raise ConfigError(f"no store for preset {preset} at {results} ({where}); pass the --results root that holds it, "
                      f"or run `python experiments/run.py pareto --preset {preset}` first")


def run_command(command: str, preset: str, results: Path, work: Path | None = None, *extra: str) -> str:
    """The exact ``run.py`` command line for this store (--results / --work when not the defaults)."""
    import shlex

    words = ["python", "experiments/run.py", command, "--preset", preset]
    if str(Path(results).parent) != "results":
        words += ["--results", str(Path(results).parent)]
    if work is not None and str(Path(work).parent) != "runs":
        words += ["--work", str(Path(work).parent)]
    return " ".join(shlex.quote(w) for w in [*words, *extra])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- commands
def add_store_commands(sub) -> None:
    """`run.py status` and `run.py clean`."""
    from experiments import presets as P

    for name, helptext in (("status", "per stage and job: done, running, failed (with its log), corrupt, stale, "
                                      "missing"),
                           ("clean", "remove only what you name: --stage, --job, --stale, --failed, --corrupt, "
                                     "--logs")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--preset", default="tiny", help=f"one of: {', '.join(P.PRESETS)} (default: tiny)")
        p.add_argument("--results", default="results", help="results root (default: results/)")
        p.add_argument("--work", default="runs", help="checkpoints, samples and job logs (default: runs/)")
        if name == "status":
            p.add_argument("-v", "--verbose", action="store_true", help="list every job that is not done")
            p.set_defaults(handler=cmd_status)
        else:
            p.add_argument("--stage", action="append", default=[], help="a stage whose jobs rerun (repeatable)")
            p.add_argument("--job", action="append", default=[], metavar="GLOB",
                           help="jobs by name, e.g. 'train/mdlm' or 'sample/esolm-b*' (repeatable)")
            p.add_argument("--stale", action="store_true", help="records of other code versions or configurations")
            p.add_argument("--failed", action="store_true", help="notes and partial work of failed jobs")
            p.add_argument("--corrupt", action="store_true",
                           help="records that do not verify (truncated, wrong shape, checksum mismatch): they rerun")
            p.add_argument("--logs", action="store_true", help="the job logs folder")
            p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
            p.set_defaults(handler=cmd_clean)


def _graph(args):
    from experiments import jobs as J
    from experiments import presets as P
    from experiments.graph import build_graph

    preset = P.get(args.preset)
    results, work = Path(args.results) / preset.name, Path(args.work) / preset.name
    return build_graph(preset, work, J.code_version()), results, work


def cmd_status(args) -> int:
    graph, results, work = _graph(args)
    require_store(results, args.preset)
    warn_corrupt(results, run_command("clean", args.preset, results, None, "--corrupt"))
    running = " (a driver is running on it now)" if held_by_other(results) else ""
    print(f"preset {args.preset}: {len(graph)} jobs; results {results}{running}")
    print(format_status(job_states(graph, results), verbose=args.verbose))
    return 0


def cmd_clean(args) -> int:
    graph, results, work = _graph(args)
    _check_clean_args(args, graph, results)
    targets = clean_targets(graph, results, work, stages=set(args.stage), names=args.job, stale=args.stale,
                            failed=args.failed, logs=args.logs, corrupt=args.corrupt)
    if args.dry_run:
        for p in targets:
            log(f"would remove {p}")
        log(f"would remove {len(targets)} path(s)")
        return 0
    failed = remove(targets)
    for p in targets:
        if p not in dict(failed):
            log(f"removed {p}")
    log(f"removed {len(targets) - len(failed)} path(s)")
    if failed:
        raise ConfigError(f"could not remove {len(failed)} of {len(targets)} path(s): "
                          + ", ".join(f"{p} ({why})" for p, why in failed[:3]) + (" ..." if len(failed) > 3 else "")
                          + "; make them writable and rerun the same clean command")
    return 0


def _check_clean_args(args, graph, results: Path) -> None:
    """clean needs a selector, a store, known stages, job globs that match and no driver running
    on ``results``."""
    in_store = any((args.stage, args.job, args.stale, args.failed, args.corrupt))  # selectors of the results folder
    if not (in_store or args.logs):
        raise ConfigError("clean removes only what you name: pass --stage STAGE, --job GLOB, --stale, --failed, "
                          "--corrupt and/or --logs (add --dry-run to see the list first)")
    if in_store:
        require_store(results, args.preset)
    stages = {j.stage for j in graph}
    bad = [s for s in args.stage if s not in stages]
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}; the stages of {args.preset} are: {', '.join(sorted(stages))}")
    _check_job_globs(args.job, graph, args.preset)
    if held_by_other(results):
        raise ConfigError(f"a driver is running on {results}; clean after it has finished")


def _check_job_globs(globs: list[str], graph, preset: str) -> None:
    """Every --job glob matches a job of the graph; else one ConfigError naming how names read."""
    import fnmatch

    unmatched = [g for g in globs if not any(fnmatch.fnmatch(j.name, g) for j in graph)]
    if not unmatched:
        return
    stages = list(dict.fromkeys(j.stage for j in graph))
    labels = list(dict.fromkeys(j.label for j in graph if j.label))
    examples = [next(j.name for j in graph if j.stage == s) for s in stages]
    glob = next((f"{j.stage}/{j.label}*" for j in graph if j.label and j.stage != "train"), "train/*")
    raise ConfigError(f"--job {unmatched[0]!r} matches none of the {len(graph)} jobs of {preset}; a job is named "
                      f"STAGE/LABEL/...: stages {', '.join(stages)}; labels {', '.join(labels)}; e.g. "
                      f"{', '.join(repr(e) for e in examples)} (quote a glob: --job '{glob}'; "
                      f"`run.py status --preset {preset} -v` lists the jobs not done)")
