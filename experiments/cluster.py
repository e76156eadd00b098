"""Executors for ``--cluster slurm|local|debug``: Slurm parameters, submission with clear
errors, requeue-and-resume on timeout / preemption, torch.distributed from the job
environment, and a status report that never raises (see docs/slurm.md).

    params = slurm_params(preset_dict, ["gpus_per_node=0", "time_min=30"])
    executor = make_executor("slurm", "results/jobs", params)
    job = submit(executor, resumable(train), config)
    print(job_status([job]).summary())
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import submitit
from submitit.core import utils as submitit_utils

from esolm.config import ConfigError, make_config, parse_overrides

CLUSTERS = ("slurm", "local", "debug")


@dataclass
class SlurmParams:
    """Resources of one job; every field can be set from a preset dict or ``key=value``."""

    partition: str | None = None  # None: the cluster's default partition
    time_min: int = 60  # time limit; the job gets USR2 signal_delay_s before it, then requeues
    nodes: int = 1
    tasks_per_node: int = 1  # one process per task (one per GPU for DDP)
    gpus_per_node: int = 0  # 0: no GPU request at all (no --gpus-per-node flag)
    cpus_per_task: int = 1
    mem_gb: float | None = None  # per node; None: the cluster's default
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # node features, e.g. "a100"
    array_parallelism: int = 64  # array tasks running at once
    signal_delay_s: int = 90  # USR2 this long before the time limit (checkpoint, requeue)
    max_num_timeout: int = 3  # requeues after time-outs before the job gives up
    job_name: str = "esolm"
    additional: dict[str, Any] = field(default_factory=dict)  # other sbatch flags (True: bare flag)

    def __post_init__(self):
        for name in ("time_min", "nodes", "tasks_per_node", "cpus_per_task", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("gpus_per_node", "signal_delay_s", "max_num_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ConfigError(f"mem_gb must be positive (or none for the cluster default); got {self.mem_gb}")
        if not isinstance(self.additional, dict):
            raise ConfigError(f"additional must be a dict of sbatch flags; got {self.additional!r}; "
                              f"pass one flag as additional.<flag>=<value>")

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node


def slurm_params(base: Mapping[str, Any] | None = None,
                 overrides: Sequence[str] | Mapping[str, Any] = ()) -> SlurmParams:
    """SlurmParams from a preset dict and ``key=value`` overrides (``additional.<flag>=v`` adds a flag)."""
    values = dict(base or {})
    values.update(parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else overrides)
    additional = dict(values.pop("additional", None) or {})
    for key in [k for k in values if k.startswith("additional.")]:
        additional[key.split(".", 1)[1]] = values.pop(key)
    params = make_config(SlurmParams, None, **values)
    params.additional = {str(k): v for k, v in additional.items()}
    return params


def _as_params(params: SlurmParams | Mapping[str, Any] | None) -> SlurmParams:
    if isinstance(params, SlurmParams):
        return params
    return slurm_params(params or {})


def make_executor(cluster: str, folder: str | Path,
                  params: SlurmParams | Mapping[str, Any] | None = None) -> submitit.Executor:
    """A submitit executor: "slurm" (sbatch), "local" (subprocesses here) or "debug" (in-process)."""
    params = _as_params(params)
    folder = Path(folder)
    if cluster == "slurm":
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise ConfigError("--cluster slurm needs sbatch and srun, which are not installed here; start the "
                              "local cluster with `sudo bash scripts/local-slurm/start.sh` or use --cluster local")
        executor = submitit.SlurmExecutor(folder, max_num_timeout=params.max_num_timeout)
        executor.update_parameters(**_sbatch_parameters(params))
        return executor
    if cluster in ("local", "debug"):
        if params.nodes > 1:
            raise ConfigError(f"--cluster {cluster} runs on this machine only; set nodes=1 "
                              f"(got nodes={params.nodes}) or use --cluster slurm")
        _check_local_gpus(params.gpus_per_node, cluster)
        if cluster == "debug":
            if params.tasks_per_node > 1:
                raise ConfigError(f"--cluster debug runs one task in this process; set tasks_per_node=1 "
                                  f"(got {params.tasks_per_node}) or use --cluster local for several tasks")
            return submitit.DebugExecutor(folder)
        executor = submitit.LocalExecutor(folder, max_num_timeout=params.max_num_timeout)
        local = dict(timeout_min=params.time_min, tasks_per_node=params.tasks_per_node,
                     signal_delay_s=params.signal_delay_s)
        if params.gpus_per_node > 0:
            local["gpus_per_node"] = params.gpus_per_node
        executor.update_parameters(**local)
        return executor
    raise ConfigError(f"unknown cluster {cluster!r}; choose one of {', '.join(CLUSTERS)}")


def _sbatch_parameters(p: SlurmParams) -> dict[str, Any]:
    """SlurmParams -> submitit SlurmExecutor parameters; unset fields send no flag."""
    out: dict[str, Any] = dict(job_name=p.job_name, time=p.time_min, nodes=p.nodes,
                               ntasks_per_node=p.tasks_per_node, cpus_per_task=p.cpus_per_task,
                               array_parallelism=p.array_parallelism, signal_delay_s=p.signal_delay_s)
    if p.gpus_per_node > 0:
        out["gpus_per_node"] = p.gpus_per_node
    if p.mem_gb is not None:
        out["mem"] = f"{max(1, round(p.mem_gb * 1024))}M"
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(p, name):
            out[name] = getattr(p, name)
    if p.additional:
        out["additional_parameters"] = dict(p.additional)
    return out


def _check_local_gpus(gpus: int, cluster: str) -> None:
    if gpus <= 0:
        return
    import torch

    have = torch.cuda.device_count()
    if gpus > have:
        raise ConfigError(f"gpus_per_node={gpus} but this machine has {have} CUDA GPU(s); "
                          f"drop gpus_per_node or lower it to {have} for --cluster {cluster}")


# ----------------------------------------------------------------------------- submission
def submit(executor: submitit.Executor, fn: Callable, *args, **kwargs) -> submitit.Job:
    """``executor.submit`` whose submit-time failures (sbatch rejections) are one ConfigError."""
    with _explained(executor):
        return executor.submit(fn, *args, **kwargs)


def submit_array(executor: submitit.Executor, fn: Callable, *iterables: Iterable) -> list[submitit.Job]:
    """``executor.map_array`` (one Slurm job array) with the same clear submit errors."""
    with _explained(executor):
        return executor.map_array(fn, *iterables)


class _explained:
    """Context manager: turn a failed sbatch into a ConfigError that says what to change.

    submitit prints sbatch's stderr before raising; it is held back here (the ConfigError
    carries it) and passed on only when the submission worked."""

    def __init__(self, executor):
        self.executor = executor
        self.held = io.StringIO()
        self.redirect = contextlib.redirect_stderr(self.held)

    def __enter__(self):
        self.redirect.__enter__()
        return self

    def __exit__(self, kind, error, tb):
        self.redirect.__exit__(kind, error, tb)
        if error is None or not isinstance(error, (submitit_utils.FailedJobError,
                                                   submitit_utils.FailedSubmissionError,
                                                   subprocess.CalledProcessError)):
            sys.stderr.write(self.held.getvalue())
            return False
        raise ConfigError(explain_submit_error(str(error), getattr(self.executor, "parameters", {}))) from None


def slurm_partitions() -> list[str]:
    """Partitions ``sinfo -h -o %P`` reports (the default one marked with a trailing ``*``)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def explain_submit_error(text: str, sbatch: Mapping[str, Any]) -> str:
    """One message naming what Slurm refused and the fix, from sbatch's stderr ``text``."""
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
    said = "; ".join(dict.fromkeys(ln.split("error:", 1)[-1].strip() for ln in lines)) or text.strip()
    partition = sbatch.get("partition")
    where = f"partition {partition!r}" if partition else "the default partition"
    low = text.lower()
    for needles, explain in _SUBMIT_ERRORS:
        if any(n in low for n in needles):
            return explain(sbatch, where, said)
    return f"the job could not be submitted: {said}; check the Slurm parameters ({dict(sbatch)})"


def _unknown_partition(sbatch: Mapping[str, Any], where: str, said: str) -> str:
    parts = slurm_partitions()
    listed = ", ".join(p.rstrip("*") + (" (default)" if p.endswith("*") else "") for p in parts)
    return (f"unknown partition {sbatch.get('partition')!r}; the cluster's partitions are: "
            f"{listed or 'none reported'}; set partition=<one of them> or leave it unset for the default")


# (words in sbatch's stderr, lower case; the message from (sbatch parameters, where, what sbatch said)),
# tried in order: the first whose words appear explains the refusal
_SUBMIT_ERRORS: list[tuple[tuple[str, ...], Callable[[Mapping[str, Any], str, str], str]]] = [
    (("contact slurm controller", "connection refused"),
     lambda sb, where, said: "the Slurm controller does not answer; start the local cluster with "
                             "`sudo bash scripts/local-slurm/start.sh` or check `sinfo`"),
    (("invalid partition",), _unknown_partition),
    (("gres", "gpu"),
     lambda sb, where, said: f"the cluster has no GPUs (gres) in {where}; drop gpus_per_node="
                             f"{sb.get('gpus_per_node')} or submit to a GPU partition (sbatch said: {said})"),
    (("memory specification",),
     lambda sb, where, said: f"mem_gb asks for more memory ({sb.get('mem')}) than a node of {where} has; lower "
                             f"mem_gb (`sinfo -o '%P %m'` shows MB per node) (sbatch said: {said})"),
    (("more processors", "cpu count"),
     lambda sb, where, said: f"cpus_per_task={sb.get('cpus_per_task')} x tasks_per_node="
                             f"{sb.get('ntasks_per_node')} is more CPUs than a node of {where} has; lower them "
                             f"(`sinfo -o '%P %c'`) (sbatch said: {said})"),
    (("feature",),
     lambda sb, where, said: f"constraint={sb.get('constraint')!r} names a feature no node of {where} has; drop "
                             f"or fix constraint (`sinfo -o '%P %f'` lists features) (sbatch said: {said})"),
    (("account",),
     lambda sb, where, said: f"account={sb.get('account')!r} is not valid here; fix or drop account "
                             f"(sbatch said: {said})"),
    (("qos",),
     lambda sb, where, said: f"qos={sb.get('qos')!r} is not valid here; fix or drop qos (sbatch said: {said})"),
    (("time limit",),
     lambda sb, where, said: f"time_min={sb.get('time')} exceeds the time limit of {where}; lower time_min "
                             f"(`sinfo -o '%P %l'`) (sbatch said: {said})"),
    (("node count",),
     lambda sb, where, said: f"nodes={sb.get('nodes')} is more than {where} has; lower nodes (sbatch said: {said})"),
]


# ----------------------------------------------------------------------------- the driver's jobs
# A driver killed outright (kill -9, an OOM kill) runs no clean-up. Its local jobs stop by
# themselves (watch_driver); its Slurm jobs run on and the next driver adopts them (adopt_slurm_job).
def process_identity(pid: int | None = None) -> dict | None:
    """``{pid, start}`` of a live process (this one by default); ``start`` is its start time in
    clock ticks since boot (/proc/<pid>/stat), so that a reused pid is never taken for it.
    None when the process is gone or a zombie."""
    pid = os.getpid() if pid is None else int(pid)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return dict(pid=pid, start=int(fields[19]))


def process_alive(identity: Mapping[str, int] | None) -> bool:
    """True while the process ``identity`` (from :func:`process_identity`) still runs."""
    if not identity:
        return False
    now = process_identity(identity["pid"])
    return now is not None and now["start"] == identity["start"]


def watch_driver(driver: Mapping[str, int] | None, poll_s: float = 0.5):
    """In a ``--cluster local`` job: a daemon thread that stops this job as soon as the driver
    ``driver`` (its :func:`process_identity`) is gone, so that a killed driver leaves no job
    behind. None (a Slurm or in-process job, or the driver is this process): no thread."""
    import threading

    if not driver or driver["pid"] == os.getpid():
        return None

    def watch():
        while process_alive(driver):
            time.sleep(poll_s)
        _stop_orphan(driver)

    thread = threading.Thread(target=watch, name="esolm-driver-watchdog", daemon=True)
    thread.start()
    return thread


def _stop_orphan(driver: Mapping[str, int]) -> None:
    """The driver is gone: SIGKILL submitit's local controller above this task (so it starts no
    other attempt), every process below it, then leave."""
    import signal

    print(f"[cluster] the driver (pid {driver['pid']}) is gone; stopping this job (pid {os.getpid()}); "
          f"rerun the driver to continue", file=sys.stderr, flush=True)
    parent = os.getppid()
    with contextlib.suppress(OSError):
        if b"submitit.local._local" in Path(f"/proc/{parent}/cmdline").read_bytes():
            os.kill(parent, signal.SIGKILL)
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os._exit(1)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        children = _child_pids(todo.pop())
        out += children
        todo += children
    return out


def adopt_slurm_job(folder: str | Path, job_id: str, tasks: int = 1) -> submitit.Job | None:
    """The handle of a Slurm job an earlier driver submitted (its logs under ``folder``), when
    Slurm still has it pending or running (``squeue``); None when it has ended (or Slurm cannot tell)."""
    from experiments.store import _slurm_state

    if _slurm_state(str(job_id)) is None:
        return None
    return submitit.SlurmJob(folder=Path(folder), job_id=str(job_id), tasks=tuple(range(max(1, tasks))))


# ----------------------------------------------------------------------------- requeue
class Checkpointable(submitit.helpers.Checkpointable):
    """A job whose time-out or preemption requeues the same call; ``__call__`` must save its own
    checkpoint file as it goes and resume from it when it starts (``num_requeues`` counts restarts)."""

    num_requeues = 0

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        self.num_requeues += 1
        print(f"[cluster] requeueing {type(self).__name__} (requeue #{self.num_requeues}); "
              f"it resumes from its last checkpoint", flush=True)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class Resumable(Checkpointable):
    """Wrap a plain function that saves and resumes its own checkpoint, so it is requeued."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def resumable(fn: Callable) -> Resumable:
    return Resumable(fn)


# ----------------------------------------------------------------------------- distributed
# The one start-up lives in esolm/distributed.py (``fit`` calls it); these forward to it
# lazily, so that importing this module does not import torch.
def setup_distributed(*args, **kwargs) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): see :func:`esolm.distributed.setup_distributed`."""
    from esolm.distributed import setup_distributed as setup

    return setup(*args, **kwargs)


def teardown_distributed() -> None:
    from esolm.distributed import teardown_distributed as teardown

    teardown()


# ----------------------------------------------------------------------------- status
_TRACE_RULE = "----------------------"
_FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                  "DEADLINE", "PREEMPTED", "INTERRUPTED")


@dataclass
class JobFailure:
    """One failed job: its id, what went wrong (exception text) and where its stderr log is."""

    job_id: str
    error: str
    stderr: Path | None
    state: str = ""

    @property
    def reason(self) -> str:
        """The exception line of the job's traceback (submitit frames it between rules)."""
        parts = self.error.split(_TRACE_RULE)
        body = parts[1] if len(parts) >= 3 else self.error
        lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
        return lines[-1] if lines else self.state

    def __str__(self) -> str:
        return f"job {self.job_id} failed: {self.reason} (log: {self.stderr})"


@dataclass
class JobsStatus:
    """Counts of finished / unfinished / failed jobs and the failures' details."""

    done: int = 0
    running: int = 0
    failed: int = 0
    failures: list[JobFailure] = field(default_factory=list)

    def summary(self) -> str:
        head = f"{self.done} done, {self.running} running, {self.failed} failed"
        return "\n".join([head] + [f"  {f}" for f in self.failures])


def job_status(jobs: Sequence[submitit.Job]) -> JobsStatus:
    """Done / running / failed counts for submitted jobs, without raising or waiting on a result."""
    status = JobsStatus()
    for job in jobs:
        failure = _failure(job)
        if failure is None:
            status.running += 1
        elif failure is False:
            status.done += 1
        else:
            status.failed += 1
            status.failures.append(failure)
    return status


def wait_jobs(jobs: Sequence[submitit.Job], poll_s: float = 1.0, timeout_s: float | None = None) -> JobsStatus:
    """Poll :func:`job_status` until no job is running (or ``timeout_s`` passes)."""
    start = time.monotonic()
    while True:
        status = job_status(jobs)
        if status.running == 0 or (timeout_s is not None and time.monotonic() - start > timeout_s):
            return status
        time.sleep(poll_s)


def _failure(job: submitit.Job) -> JobFailure | bool | None:
    """None while running, False when it succeeded, else the JobFailure. In a job of several
    tasks (DDP) the failure reported is the task that failed first on its own (not a rank that
    only lost its peer), with that task's log; a task that fails while the others still run
    cancels the job, so that they do not wait on it until the collective times out."""
    stderr = getattr(getattr(job, "paths", None), "stderr", None)
    try:
        if isinstance(job, submitit.DebugJob):
            error = job.exception()  # runs the job in this process; never opens pdb
        else:
            tasks = _task_failures(job)
            if not job.done():
                root = [f for f in tasks if not _is_peer_error(f.error)]
                if not root:
                    return None
                cancel_job(job)
                return root[0]
            if tasks:
                return tasks[0]
            state = str(job.state)
            if not _has_results(job) and state.split()[0].upper() in _FAILED_STATES:
                return JobFailure(job.job_id, f"the job ended as {state} before writing its result "
                                              f"(killed, cancelled or out of time)", stderr, state)
            error = job.exception()
    except Exception as e:  # the status helper never raises: a driver carries on
        return JobFailure(str(job.job_id), f"{type(e).__name__}: {e}", stderr, "UNKNOWN")
    if error is None:
        return False
    return JobFailure(str(job.job_id), f"{type(error).__name__}: {error}", stderr, "FAILED")


def cancel_job(job: submitit.Job) -> bool:
    """Stop a job now; True when it was still running. Slurm: scancel. --cluster local: SIGKILL
    to its tasks and controller (they ignore Ctrl-C, see store.children_ignore_sigint, and
    submitit's tasks ignore SIGTERM)."""
    import signal

    if isinstance(job, submitit.DebugJob):
        return False
    proc = getattr(job, "_process", None)
    if proc is not None:  # a LocalJob
        if proc.poll() is not None:
            return False
        for pid in _child_pids(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return True
    if hasattr(job, "cancel") and not job.done():
        job.cancel(check=False)
        return True
    return False


def _child_pids(parent: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


# what a rank raises when another rank of its process group died: a consequence, not a cause
_PEER_ERRORS = ("connection closed by peer", "connection reset by peer", "broken pipe", "distbackenderror",
                "nccl communicator was aborted", "socket timeout", "timed out in", "connection refused",
                "read error", "ProcessGroupGloo", "watchdog caught collective operation timeout")


def _is_peer_error(text: str) -> bool:
    low = text.lower()
    return any(p.lower() in low for p in _PEER_ERRORS)


def _task_failures(job: submitit.Job) -> list[JobFailure]:
    """The tasks of a multi-task job that wrote an error result, root causes first."""
    found = []
    for k, sub in enumerate(getattr(job, "_sub_jobs", None) or []):
        if not sub.paths.result_pickle.exists():
            continue
        try:
            outcome, trace = sub._get_outcome_and_result()
        except Exception:  # noqa: BLE001 - half-written or unreadable: not a failure yet
            continue
        if outcome == "error":
            found.append(JobFailure(f"{job.job_id} (task {k})", str(trace), sub.paths.stderr, "FAILED"))
    return sorted(found, key=lambda f: _is_peer_error(f.error))


def _has_results(job: submitit.Job) -> bool:
    sub_jobs = getattr(job, "_sub_jobs", None) or [job]
    return all(j.paths.result_pickle.exists() for j in sub_jobs)
