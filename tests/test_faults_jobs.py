"""Faults around a driver's jobs and the files they write (issue 26, items 3, 6 and 7):
a killed driver leaves no job process behind and the next one completes the store with each
job run once; never two processes on one job folder; Slurm jobs of a killed driver are adopted;
every file honours the umask; "cannot read" is told apart from "cannot write"; a temporary
name fits any valid output name."""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers import process_ids, slurm_up

from analysis import records as R
from esolm import registry
from esolm.data import load_corpus
from esolm.io import atomic_write_json, atomic_write_text
from esolm.train import fit, seed_everything, train_config
from experiments import jobs as J
from experiments import pipeline
from experiments import presets as P
from experiments.cluster import process_alive, process_identity
from experiments.graph import build_graph, record_path
from experiments.store import explain_os_error, submitted_path

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def wait_until(check, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_pids(folder: Path) -> list[int]:
    """The live submitit processes (controllers and tasks) whose command line names ``folder``."""
    return [pid for pid in process_ids("submitit", str(folder)) if process_identity(pid) is not None]


# ----------------------------------------------------------------------------- umask
def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_records_tables_and_checkpoints_are_created_as_the_umask_says(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "records" / "train" / "k.json", {"key": "k"})
        atomic_write_text(tmp_path / "results.csv", "a,b\n1,2\n")
        corpus = load_corpus("synthetic", length=16)
        cfg = train_config("smoke", steps=2)
        seed_everything(cfg.seed)
        model = registry.build("ar", preset="smoke", **corpus.model_fields())
        fit("ar", model, corpus, cfg, tmp_path / "train", progress=False)
    finally:
        os.umask(old)
    found = modes(tmp_path)
    assert "results.csv" in found and any("checkpoint" in name for name in found), found
    assert {name: oct(m) for name, m in found.items() if m != mode} == {}


# ----------------------------------------------------------------------------- temporary names
@pytest.mark.parametrize("name", ["a" * 255, "é" * 127, "x" * 240 + ".jsonl"])
def test_a_temporary_name_fits_any_valid_final_name(tmp_path, name):
    path = atomic_write_text(tmp_path / name, "done\n")
    assert path.read_text() == "done\n"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_sample_out_with_a_246_character_name_writes_the_samples(tmp_path):
    corpus = load_corpus("synthetic", length=16)
    cfg = train_config("smoke", steps=2)
    seed_everything(cfg.seed)
    fit("ar", registry.build("ar", preset="smoke", **corpus.model_fields()), corpus, cfg, tmp_path / "ar",
        progress=False)
    out = tmp_path / ("s" * 240 + ".jsonl")
    assert len(out.name) == 246
    proc = subprocess.run(RUN + ["sample", "--checkpoint", str(tmp_path / "ar" / "checkpoint.safetensors"),
                                 "--num-samples", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- cannot read / write
def _meet(secret: Path, target: Path) -> tuple[OSError, OSError]:
    """The errors of reading ``secret`` and of writing ``target`` (root may read and write
    anything: there, the errors are the ones the kernel gives another user, and os.access answers
    as it would for that user)."""
    errors = []
    for action in (lambda: secret.read_text(), lambda: atomic_write_text(target, "x")):
        try:
            if os.geteuid() == 0:
                raise PermissionError(errno.EACCES, "Permission denied", str(secret if not errors else target))
            action()
        except OSError as e:
            errors.append(e)
    return errors[0], errors[1]


def test_an_unreadable_file_is_cannot_read_and_an_unwritable_folder_cannot_write(tmp_path, monkeypatch):
    shared = tmp_path / "shared"  # a colleague's store: the folder readable, not writable; a record 0600
    shared.mkdir()
    secret = shared / "record.json"
    secret.write_text("{}")
    os.chmod(secret, 0o000)
    os.chmod(shared, 0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(secret) else real(p, m))
    try:
        read, write = (explain_os_error(e) for e in _meet(secret, shared / "results.csv"))
    finally:
        os.chmod(shared, 0o755)
    assert read.startswith(f"cannot read {secret}: Permission denied; ask its owner to make it readable"), read
    assert write.startswith(f"cannot write ({shared / 'results.csv'}): Permission denied"), write


def test_a_full_disk_and_a_read_only_folder_keep_their_messages(tmp_path):
    assert explain_os_error(OSError(errno.ENOSPC, "No space left on device", "x")).startswith("the disk is full (x)")
    assert explain_os_error(OSError(errno.EROFS, "Read-only file system", str(tmp_path))).startswith("cannot write")


# ----------------------------------------------------------------------------- one process per job folder
def payload(tmp_path: Path, stage: str = "fake") -> dict:
    return dict(stage=stage, name=f"{stage}/one", key="k", record=str(tmp_path / "records" / stage / "k.json"),
                work=str(tmp_path / "work" / "k"))


def write_record(p: dict, **extra) -> None:
    """The record a finished job writes (it verifies: analysis/records.py)."""
    atomic_write_json(p["record"], R.seal(dict(key=p["key"], stage=p["stage"], name=p["name"], code_version="x",
                                                finished="2026-01-01T00:00:00+00:00", row={}, **extra)))


def test_a_second_process_on_a_job_folder_waits_and_skips_a_job_the_first_finished(tmp_path, monkeypatch, capsys):
    ran = []

    def fake(p):
        ran.append(os.getpid())
        write_record(p)

    monkeypatch.setitem(J.JOB_FUNCTIONS, "fake", fake)
    p = payload(tmp_path)
    with J.job_lock(p):  # the job of a killed driver, still running in the folder
        second = threading.Thread(target=pipeline.run_group, args=([dict(p)],))
        second.start()
        wait_until(lambda: "is in use by another process" in capsys.readouterr().out, 30, "the waiting line")
        assert second.is_alive() and ran == []  # it waits: it does not run beside the first
        write_record(p, by="the first process")
    second.join(timeout=30)
    assert not second.is_alive() and ran == []  # the record it waited for is there: not run again
    assert json.loads(Path(p["record"]).read_text())["by"] == "the first process"


def test_a_job_whose_first_process_died_without_a_record_runs_once_after_it(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setitem(J.JOB_FUNCTIONS, "fake", lambda p: (ran.append(1), write_record(p)))
    p = payload(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({p['work'] + '/.job.lock'!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    Path(p["work"]).mkdir(parents=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = threading.Thread(target=pipeline.run_group, args=([dict(p)],))
        second.start()
        time.sleep(1.0)
        assert second.is_alive() and ran == []
        holder.send_signal(signal.SIGKILL)  # dies without its record: the lock goes with it
        second.join(timeout=30)
        assert ran == [1] and Path(p["record"]).exists()
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- a killed driver's local jobs
DRIVER = """
import os, sys, time
from experiments.cluster import make_executor, process_identity, submit

def job(driver, mark):
    from experiments.cluster import watch_driver
    watch_driver(driver, poll_s=0.2)
    open(mark, "w").write(str(os.getpid()))
    time.sleep(600)

executor = make_executor("local", sys.argv[1], {"time_min": 10})
handle = submit(executor, job, process_identity(), sys.argv[2])
print(handle.job_id, flush=True)
time.sleep(600)
"""


def test_kill_9_of_a_driver_stops_its_local_controller_and_task(tmp_path):
    folder, mark = tmp_path / "logs", tmp_path / "task.pid"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(folder), str(mark)], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        controller = int(driver.stdout.readline())
        task = int(wait_until(lambda: mark.exists() and mark.read_text(), 120, "the task to start"))
        assert process_identity(controller) and process_identity(task) and job_pids(folder)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_until(lambda: job_pids(folder) == [], 20, "the orphaned job processes to stop")
        assert process_identity(task) is None and process_identity(controller) is None
    finally:
        for pid in job_pids(folder):
            os.kill(pid, signal.SIGKILL)
        driver.kill()


def test_a_job_never_stops_while_its_driver_lives_and_a_reused_pid_is_not_its_driver():
    me = process_identity()
    assert process_alive(me)
    assert not process_alive(dict(me, start=me["start"] + 1))  # same pid, another start: another process
    assert not process_alive(dict(pid=2 ** 22 + 1, start=0)) and not process_alive(None)


def _train_steps(work: Path) -> dict[str, list[int]]:
    out = {}
    for log in work.glob("train/*/train_log.jsonl"):
        out[log.parent.name] = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.strip()]
    return out


@pytest.mark.slow
def test_kill_9_of_the_driver_mid_smoke_leaves_no_job_and_the_next_driver_runs_each_job_once(tmp_path):
    results, work = tmp_path / "results", tmp_path / "runs"
    args = ["pareto", "--preset", "smoke", "--cluster", "local", "--results", str(results), "--work", str(work)]
    err = tmp_path / "first.err"
    with open(err, "w") as f:
        driver = subprocess.Popen(RUN + args, stdout=subprocess.DEVNULL, stderr=f, env=ENV, start_new_session=True)
    try:
        # kill it once training has written a checkpoint (jobs are running and have work to lose)
        wait_until(lambda: driver.poll() is None and list((work / "smoke" / "train").glob("*/checkpoint*")),
                   400, "a training checkpoint: " + err.read_text()[-2000:])
        assert job_pids(work)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_until(lambda: job_pids(work) == [], 30, "the killed driver's jobs to stop")
    finally:
        for pid in job_pids(work):
            os.kill(pid, signal.SIGKILL)
    kept = {p: p.read_bytes() for p in (results / "smoke" / "records").rglob("*.json")}
    second = subprocess.run(RUN + args, capture_output=True, text=True, timeout=1800, env=ENV)
    assert second.returncode == 0 and "Traceback" not in second.stderr, second.stderr[-3000:]
    logs = "".join(p.read_text() for p in (work / "smoke" / "logs").rglob("*_log.err"))
    assert f"the driver (pid {driver.pid}) is gone; stopping this job" in logs  # the jobs stopped themselves
    graph = build_graph(P.get("smoke"), work / "smoke")
    assert [j.name for j in graph if not record_path(results / "smoke", j).exists()] == []
    assert {p: p.read_bytes() for p in kept} == kept  # a finished result is never run or written again
    for key, steps in _train_steps(work / "smoke").items():  # one process trained each folder: no step twice
        assert steps == sorted(set(steps)), (key, steps)
    assert job_pids(work) == []


# ----------------------------------------------------------------------------- Slurm: adopted, not resubmitted
def long_micro() -> P.Preset:
    """tests/test_pipeline.py's micro preset with a training long enough to kill a driver in."""
    import dataclasses

    from test_pipeline import micro

    p = micro()
    p.run.train = dataclasses.replace(p.run.train, steps=300, checkpoint_every=50)
    return p


SLURM_DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from test_faults_jobs import long_micro
from experiments import presets as P
from experiments.pipeline import run_preset

P.PRESETS["micro"] = long_micro
run_preset("micro", cluster="slurm", results_root=Path(sys.argv[1]), work_root=Path(sys.argv[2]), poll_s=0.5,
           stages={"train"})
"""


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(not slurm_up(), reason="the local Slurm cluster is not running (`sinfo` fails); start it: "
                                          "sudo bash scripts/local-slurm/start.sh")
def test_a_new_driver_adopts_the_running_slurm_jobs_of_a_killed_one(tmp_path, monkeypatch):
    results, work = tmp_path / "res", tmp_path / "work"
    driver = subprocess.Popen([sys.executable, "-c", SLURM_DRIVER, str(results), str(work)], cwd=ROOT, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    notes = results / "micro" / "submitted"
    wait_until(lambda: driver.poll() is None and list((work / "micro" / "train").glob("*/checkpoint*")), 300,
               "a training checkpoint under Slurm")
    ids = {p.name: json.loads(p.read_text())["job_id"] for p in notes.glob("*.json")}
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    monkeypatch.setitem(P.PRESETS, "micro", long_micro)
    out = pipeline.run_preset("micro", cluster="slurm", results_root=results, work_root=work, poll_s=0.5,
                              stages={"train"})
    assert out["failed"] == 0 and out["adopted"] >= 1, out
    assert out["submitted"] + out["adopted"] <= len(ids)
    after = {p.name: json.loads(p.read_text())["job_id"] for p in notes.glob("*.json")}
    adopted = [name for name in ids if after[name] == ids[name]]
    assert adopted, (ids, after)
    for key, steps in _train_steps(work / "micro").items():
        assert steps == sorted(set(steps)), (key, steps)
    graph = build_graph(long_micro(), work / "micro")
    for job in graph:
        if job.stage == "train":
            assert record_path(results / "micro", job).exists()
            assert submitted_path(results / "micro", job.key).exists()
