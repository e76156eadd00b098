"""Data-parallel training through the real paths: a `pareto`-graph train job with
tasks_per_node=2, run by the driver (`run_preset`) on `--cluster local` and on the local Slurm
cluster; requeue mid-way; a rank that crashes. A small AR model (the smoke backbone) on
`synthetic`: its loss has no noise draws, so a 2-process run and a 1-process run of the same
global batch must end at the same weights (to float tolerance).

Slurm cases need the local cluster (``sudo bash scripts/local-slurm/start.sh``)."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import process_ids, slurm_up
import torch

from esolm.checkpoint import read_checkpoint
from experiments import presets as P
from experiments.pipeline import run_preset

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAME = "ddp-check"
# generous bounds: under `nice -n 19` beside other CPU-heavy work a 2-core machine runs these
# jobs tens of times slower (one run of this file took 12 min at load 10); a hang would instead
# wait for the collective timeout (esolm.distributed.DEFAULT_TIMEOUT_S = 600 s)
WAIT_S = 1200
STEPS, CHECKPOINT_EVERY, GLOBAL_BATCH = 8, 2, 8


SLURM_UP = slurm_up()
CLUSTERS = ["local", pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.skipif(
    not SLURM_UP, reason="the local Slurm cluster is not running; sudo bash scripts/local-slurm/start.sh")])]


def preset(tasks: int) -> P.Preset:
    """One AR train job of the pareto graph (nothing else is run: stages={"train"})."""
    from esolm import runs
    from esolm.train import train_config

    run = dataclasses.replace(
        runs.get("smoke"), name=NAME, data=runs.Data("synthetic", length=16),
        train=train_config("smoke", steps=STEPS, batch_size=GLOBAL_BATCH, eval_every=0,
                           checkpoint_every=CHECKPOINT_EVERY, ema=0.0, lr=3e-3, warmup=2),
        long_context=runs.LongContext(lengths=[], trials=1, warmup=0),
        slurm={"default": dict(time_min=10, cpus_per_task=1), "train": dict(tasks_per_node=tasks)})
    return P.Preset(run, models=[P.ModelEntry("ar", "ar", {}, [])], evaluator="source")


@pytest.fixture
def ddp_preset(monkeypatch):
    def use(tasks: int):
        monkeypatch.setitem(P.PRESETS, NAME, lambda: preset(tasks))
    return use


def run(root: Path, cluster: str) -> dict:
    out = run_preset(NAME, cluster=cluster, results_root=root / "results", work_root=root / "runs",
                     poll_s=0.5, stages={"train"})
    return out


def trained(root: Path) -> tuple[dict, Path]:
    """(the checkpoint dict, its path): the one checkpoint of the one train job."""
    ckpts = sorted((root / "runs" / NAME / "train").glob("*/checkpoint.safetensors"))
    assert len(ckpts) == 1, ckpts
    assert not list(ckpts[0].parent.glob(".*.tmp")), "a temporary file was left behind"
    return read_checkpoint(ckpts[0]), ckpts[0]


def records(root: Path) -> list[Path]:
    return sorted((root / "results" / NAME / "records").glob("train/*.json"))


_reference: dict = {}


def reference(tmp_path_factory, ddp_preset) -> dict:
    """The single-process run of the same global batch (in-process: --cluster debug)."""
    if "state" not in _reference:
        ddp_preset(1)
        root = tmp_path_factory.mktemp("single")
        assert run(root, "debug")["failed"] == 0
        _reference["state"], _ = trained(root)
    return _reference["state"]


_uninterrupted: dict = {}


def two_rank_run(cluster: str, root: Path, ddp_preset) -> dict:
    ddp_preset(2)
    result = run(root, cluster)
    assert result["failed"] == 0 and result["submitted"] == 1, result
    state, _ = trained(root)
    assert len(records(root)) == 1
    _uninterrupted.setdefault(cluster, state)
    return state


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_two_task_train_job_is_one_process_group_and_matches_one_process(cluster, tmp_path, tmp_path_factory,
                                                                         ddp_preset):
    single = reference(tmp_path_factory, ddp_preset)
    state = two_rank_run(cluster, tmp_path, ddp_preset)
    m = state["metrics"]
    assert m["world_size"] == 2 and single["metrics"]["world_size"] == 1
    sums = m["rank_parameter_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1], sums  # identical weights on both ranks
    digests = m["rank_data_digests"]
    assert len(digests) == 2 and digests[0] != digests[1], digests  # each rank read its own shard
    assert state["step"] == single["step"] == STEPS
    # float tolerance: the two halves' mean gradients are averaged instead of one mean over the
    # batch; Adam magnifies the rounding on entries whose gradient is ~0 (rare tokens' embeddings)
    assert state["model"].keys() == single["model"].keys()
    for k, p in state["model"].items():
        q = single["model"][k]
        torch.testing.assert_close(p, q, rtol=1e-3, atol=2e-4, msg=lambda s, k=k: f"{k}: {s}")
        assert (p - q).abs().mean() < 1e-6, k


def _interrupt(cluster: str, root: Path) -> None:
    """Preempt the running train job the way the cluster would: USR2 (and SIGTERM first on Slurm)."""
    logs = root / "runs" / NAME / "logs" / "train"
    if cluster == "slurm":
        ids = [p.name[: -len("_submitted.pkl")] for p in logs.glob("*_submitted.pkl")]
        assert len(ids) == 1, ids
        for sig in ("SIGTERM", "USR2"):  # what submitit's SlurmJob._interrupt() sends
            subprocess.run(["scancel", ids[0], "--signal", sig], check=True)
        return
    # --cluster local: the controller sends USR2 to every task near the time limit; do the same
    pids = process_ids("submitit.core._submit", str(logs))
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_requeued_two_task_job_resumes_on_both_ranks_and_ends_as_an_uninterrupted_one(
        cluster, tmp_path, ddp_preset, monkeypatch):
    if cluster not in _uninterrupted:
        two_rank_run(cluster, tmp_path / "uninterrupted", ddp_preset)
    ddp_preset(2)
    root = tmp_path / "interrupted"
    monkeypatch.setenv("ESOLM_FAULT", "sleep=0.4")  # ~3 s of training: time to interrupt it mid-way
    box: dict = {}
    driver = threading.Thread(target=lambda: box.update(result=run(root, cluster)))
    driver.start()
    work = root / "runs" / NAME / "train"
    deadline = time.monotonic() + WAIT_S
    while not list(work.glob("*/checkpoint.safetensors")):
        assert time.monotonic() < deadline and driver.is_alive(), "the job never wrote its first checkpoint"
        time.sleep(0.1)
    _interrupt(cluster, root)
    driver.join(timeout=WAIT_S)
    assert not driver.is_alive(), "the driver did not return"
    assert box["result"]["failed"] == 0, box["result"]
    state, ckpt = trained(root)
    logs = root / "runs" / NAME / "logs" / "train"
    out = "".join(p.read_text() for p in logs.glob("*_0_log.out"))
    assert "resuming ar from" in out, out[-2000:]  # it was requeued and resumed, not restarted
    assert state["step"] == STEPS
    sums = state["metrics"]["rank_parameter_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    ref = _uninterrupted[cluster]["model"]
    assert state["model"].keys() == ref.keys()
    for k, p in state["model"].items():
        assert torch.equal(p, ref[k]), k
    assert len(records(root)) == 1


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_a_crashing_rank_fails_the_job_with_its_error_and_log_not_a_hang(cluster, tmp_path, ddp_preset,
                                                                        monkeypatch, capsys):
    ddp_preset(2)
    monkeypatch.setenv("ESOLM_FAULT", "raise_at=3,rank=1")
    t0 = time.monotonic()
    result = run(tmp_path, cluster)
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert result["failed"] == 1, result
    from esolm.distributed import DEFAULT_TIMEOUT_S

    assert took < DEFAULT_TIMEOUT_S, f"the driver took {took:.0f} s to see the failure: it waited for a timeout"
    failed = [ln for ln in err.splitlines() if "FAILED job" in ln]
    assert len(failed) == 1 and "(task 1)" in failed[0] and "injected fault on rank 1" in failed[0], err
    log_line = err.splitlines()[err.splitlines().index(failed[0]) + 1]
    assert log_line.strip().startswith("log:") and log_line.strip().endswith("_1_log.err"), log_line
    assert Path(log_line.split("log:", 1)[1].strip()).exists()
    assert records(tmp_path) == []  # no record of a failed job
