"""The results store as a new user meets it (experiments/store.py): a second driver, a read-only
folder, a full disk, bad counts, a --model that does not match the checkpoint, Ctrl-C, `status`
and `clean`. Each case ends in one `error:` line and leaves every finished result as it was."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults import cli, one_error
from helpers import process_ids

from esolm import registry
from esolm.data import load_corpus
from esolm.train import fit, seed_everything, train_config
from experiments import jobs as J
from experiments import presets as P
from experiments.graph import build_graph, record_path
from experiments.store import DriverLock, submitted_path

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]


def finished_record(root: Path) -> tuple[Path, bytes]:
    """A finished result in results/smoke (a record of an earlier run)."""
    path = root / "results" / "smoke" / "records" / "train" / "0123456789abcdef.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": "0123456789abcdef", "stage": "train", "name": "train/old",
                                "finished": "2026-01-01T00:00:00+00:00", "code_version": "old", "row": {}}))
    return path, path.read_bytes()


def pareto(root: Path, *extra, **kw):
    return cli("pareto", "--preset", "smoke", "--cluster", "local", "--results", root / "results",
               "--work", root / "runs", *extra, **kw)


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount (a real read-only / full file system)")


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        _mount_tmpfs(where, options)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


# ----------------------------------------------------------------------------- drivers
def test_a_second_driver_on_the_same_results_is_refused_at_once(tmp_path):
    record, before = finished_record(tmp_path)
    with DriverLock(tmp_path / "results" / "smoke"):
        t0 = time.monotonic()
        proc = pareto(tmp_path)
        took = time.monotonic() - t0
    one_error(proc, "another driver is already running on", str(tmp_path / "results" / "smoke"), "pid")
    assert took < 60
    assert record.read_bytes() == before
    assert not (tmp_path / "runs" / "smoke" / "logs").exists()  # nothing was submitted
    with DriverLock(tmp_path / "results" / "smoke"):  # released with its holder
        pass


def test_a_read_only_results_folder_is_one_message_before_submitting(tmp_path, tmpfs):
    ro = tmpfs("ro", "size=1m")
    record, before = finished_record(ro)
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    one_error(pareto(ro), "is not writable", "Read-only file system", "--results")
    assert record.read_bytes() == before


def test_a_full_disk_is_one_message_before_submitting_and_while_writing(tmp_path, tmpfs):
    full = tmpfs("full", "size=256k")
    record, before = finished_record(full)
    try:  # fill the disk up
        with open(full / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass
    one_error(pareto(full), "MB free on the disk of", "needs at least", "ESOLM_MIN_FREE_MB")
    assert record.read_bytes() == before
    # past the check (threshold 0), a write that hits the full disk is one message too
    proc = cli("train", "--model", "ar", "--preset", "smoke", "--corpus", "synthetic", "--out", full / "run",
               "--no-progress", "steps=2", "length=16")
    one_error(proc, "the disk is full", "No space left on device")
    assert record.read_bytes() == before


# ----------------------------------------------------------------------------- bad counts
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    corpus = load_corpus("synthetic", length=16)
    out = {}
    for name in ("ar", "mdlm"):
        cfg = train_config("smoke", steps=2)
        seed_everything(cfg.seed)
        model = registry.build(name, preset="smoke", **corpus.model_fields())
        folder = tmp_path_factory.mktemp(name)
        fit(name, model, corpus, cfg, folder, progress=False)
        out[name] = folder / "checkpoint.safetensors"
    return out


@pytest.mark.parametrize("count", ["0", "-2"])
def test_sample_num_samples_below_one_is_one_message(checkpoints, count):
    ckpt = checkpoints["ar"]
    before = ckpt.read_bytes()
    one_error(cli("sample", "--checkpoint", ckpt, "--num-samples", count), "--num-samples must be a positive integer",
              count)
    assert ckpt.read_bytes() == before and not (ckpt.parent / "samples").exists()


def test_eval_batch_size_zero_is_one_message(checkpoints):
    ckpt = checkpoints["ar"]
    before = ckpt.read_bytes()
    one_error(cli("eval", "--checkpoint", ckpt, "batch_size=0"), "batch_size must be a positive integer")
    assert ckpt.read_bytes() == before and not list(ckpt.parent.glob("eval_*.json"))


def test_sample_model_that_does_not_match_the_checkpoint_is_refused(checkpoints):
    ckpt = checkpoints["mdlm"]
    before = ckpt.read_bytes()
    one_error(cli("sample", "--model", "ar", "--checkpoint", ckpt, "--num-samples", "2"),
              "--model ar but", "holds a mdlm model")
    assert ckpt.read_bytes() == before and not (ckpt.parent / "samples").exists()


# ----------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
def test_ctrl_c_in_the_driver_is_one_message_and_stops_its_local_jobs(tmp_path):
    record, before = finished_record(tmp_path)
    err = tmp_path / "driver.err"
    with open(err, "w") as f:
        driver = subprocess.Popen(RUN + ["pareto", "--preset", "smoke", "--cluster", "local", "--results",
                                         str(tmp_path / "results"), "--work", str(tmp_path / "runs")],
                                  stdout=subprocess.DEVNULL, stderr=f, text=True, start_new_session=True)
    notes = tmp_path / "results" / "smoke" / "submitted"
    deadline = time.monotonic() + 240
    while not (notes.exists() and list(notes.glob("*.json"))):
        assert driver.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    driver.wait(timeout=120)
    text = err.read_text()
    assert driver.returncode == 130, text[-3000:]
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "interrupted; stopped" in lines[0], text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    time.sleep(1.0)
    assert process_ids("submitit", str(tmp_path / "runs")) == []  # no job left running behind the user's back
    assert record.read_bytes() == before
    status = cli("status", "--preset", "smoke", "--results", tmp_path / "results", "--work", tmp_path / "runs")
    assert status.returncode == 0 and "0 running" in status.stdout and "failed   train/" in status.stdout, status
    assert "log: " in status.stdout


# ----------------------------------------------------------------------------- status, clean
@pytest.fixture
def store(tmp_path):
    """results/smoke with one done, one stale, one failed and one running job (and the rest missing)."""
    preset = P.get("smoke")
    results, work = tmp_path / "results" / "smoke", tmp_path / "runs" / "smoke"
    graph = build_graph(preset, work, J.code_version())
    trains = [j for j in graph if j.stage == "train"]
    done, stale, failed, running = trains[:4]
    rec = lambda job, key: dict(key=key, stage=job.stage, name=job.name, code_version="x",  # noqa: E731
                                finished="2026-01-01T00:00:00+00:00", row={})
    record_path(results, done).parent.mkdir(parents=True, exist_ok=True)
    record_path(results, done).write_text(json.dumps(rec(done, done.key)))
    old = results / "records" / "train" / "feedfacefeedface.json"
    old.write_text(json.dumps(rec(stale, "feedfacefeedface")))
    (work / "train" / done.key).mkdir(parents=True)
    (work / "train" / done.key / "checkpoint.safetensors").write_bytes(b"done")
    (work / "train" / "feedfacefeedface").mkdir(parents=True)
    for job, pid in ((failed, 2**22 + 1), (running, os.getpid())):
        note = submitted_path(results, job.key)
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps(dict(key=job.key, name=job.name, stage="train", cluster="local", job_id=str(pid),
                                        controller_pid=pid, host=os.uname().nodename,
                                        stderr=str(work / "logs" / "train" / f"{pid}_0_log.err"),
                                        result=str(work / "logs" / "train" / f"{pid}_0_result.pkl"))))
    return dict(tmp=tmp_path, results=results, work=work, done=done, stale=stale, failed=failed, running=running,
                old=old)


def test_status_shows_done_running_failed_with_log_and_stale(store):
    proc = cli("status", "--preset", "smoke", "--results", store["tmp"] / "results", "--work", store["tmp"] / "runs")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    n = sum(j.stage == "train" for j in build_graph(P.get("smoke"), store["work"], J.code_version()))
    assert f"[train] {n} jobs: 1 done, 0 no-output, 1 running, 1 failed, 0 corrupt, 1 stale, {n - 4} missing" in out, out
    assert f"running  {store['running'].name}: job {os.getpid()}" in out, out
    failed = [ln for ln in out.splitlines() if ln.strip().startswith(f"failed   {store['failed'].name}")]
    assert len(failed) == 1 and "ended without writing its record" in failed[0] and "_0_log.err" in failed[0], out


def test_clean_removes_only_what_is_named(store):
    args = ["--preset", "smoke", "--results", store["tmp"] / "results", "--work", store["tmp"] / "runs"]
    done_record = record_path(store["results"], store["done"])
    before = done_record.read_bytes()
    one_error(cli("clean", *args), "clean removes only what you name")
    dry = cli("clean", *args, "--stale", "--dry-run")
    assert dry.returncode == 0 and "would remove 2 path(s)" in dry.stderr, dry.stderr
    assert store["old"].exists()
    proc = cli("clean", *args, "--stale")
    assert proc.returncode == 0 and "removed 2 path(s)" in proc.stderr, proc.stderr
    assert not store["old"].exists() and not (store["work"] / "train" / "feedfacefeedface").exists()
    assert done_record.read_bytes() == before  # the finished result is untouched
    assert (store["work"] / "train" / store["done"].key / "checkpoint.safetensors").read_bytes() == b"done"
    assert submitted_path(store["results"], store["failed"].key).exists()  # not named: kept
    proc = cli("clean", *args, "--failed")
    assert proc.returncode == 0 and not submitted_path(store["results"], store["failed"].key).exists()
    assert submitted_path(store["results"], store["running"].key).exists() and done_record.read_bytes() == before
    with DriverLock(store["results"]):
        one_error(cli("clean", *args, "--logs"), "a driver is running on")


def test_pareto_unknown_stage_is_one_message(tmp_path):
    one_error(pareto(tmp_path, "--stages", "train,nope"), "unknown stage(s) ['nope']", "train")


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, function-level imports included."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
    return out


def test_the_store_and_the_graph_import_nothing_of_the_driver():
    """The graph (experiments/graph.py) and the lanes are read by the store and by the driver
    (experiments/pipeline.py); the store does not import the driver, so the two no longer import
    each other: only the command layer (run.py) imports the driver."""
    importers = {f.name for f in (ROOT / "experiments").glob("*.py") if "experiments.pipeline" in _imports(f)}
    assert importers == {"run.py"}
    assert not {"experiments.store", "experiments.pipeline"} & _imports(ROOT / "experiments" / "graph.py")
    code = ("import sys, experiments.store, experiments.graph, experiments.lanes; "
            "print('experiments.pipeline' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
