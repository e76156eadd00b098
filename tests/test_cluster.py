"""Executors (experiments/cluster.py): typed Slurm parameters, submit-time errors, failure
reports that keep sibling results, requeue-and-resume (DDP through fit and the job graph:
tests/test_pipeline_ddp.py).

Tests marked ``slurm`` need the local cluster (``sudo bash scripts/local-slurm/start.sh``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from helpers import slurm_up
from submitit.slurm.slurm import _make_sbatch_string

from esolm.config import ConfigError
from experiments.cluster import (
    Checkpointable, explain_submit_error, job_status, make_executor, setup_distributed, slurm_params,
    submit, wait_jobs,
)

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# job functions below live in this test module, which the job process cannot import: ship them by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


SLURM_UP = slurm_up()


def needs_slurm(test):
    reason = "the local Slurm cluster is not running (`sinfo` fails); start it: sudo bash scripts/local-slurm/start.sh"
    return pytest.mark.slurm(pytest.mark.skipif(not SLURM_UP, reason=reason)(test))


# ----------------------------------------------------------------------------- job functions
def square(x):
    return x * x


def explode(tag):
    raise ValueError(f"boom {tag}")


def _save_json(path: Path, obj) -> None:
    """Atomic (write, rename): a kill mid-write leaves the previous state (no torch import in the job)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


class CountSquares(Checkpointable):
    """sum_{i<n} i^2, one step per ``pause`` s, state saved atomically after every step."""

    def __call__(self, path, n, pause):
        path = Path(path)
        state = json.loads(path.read_text()) if path.exists() else {"i": 0, "total": 0, "starts": []}
        state["starts"].append(state["i"])
        _save_json(path, state)
        while state["i"] < n:
            state = dict(state, total=state["total"] + state["i"] ** 2, i=state["i"] + 1)
            time.sleep(pause)
            _save_json(path, state)
        return {"total": state["total"], "starts": state["starts"], "requeues": self.num_requeues}


def _wait_for_step(path: Path, step: int, timeout_s: float = 60.0) -> None:
    start = time.monotonic()
    while not (path.exists() and json.loads(path.read_text())["i"] >= step):
        assert time.monotonic() - start < timeout_s, f"the job never reached step {step}"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- no cluster needed
def test_slurm_params_are_typed_from_preset_and_key_value():
    p = slurm_params({"partition": "gpu", "time_min": "30", "mem_gb": 8},
                     ["gpus_per_node=2", "tasks_per_node=2", "qos=none", "additional.exclusive=user"])
    assert (p.partition, p.time_min, p.gpus_per_node, p.tasks_per_node, p.mem_gb) == ("gpu", 30, 2, 2, 8.0)
    assert p.qos is None and p.additional == {"exclusive": "user"} and p.num_tasks == 2
    with pytest.raises(ConfigError, match="unknown config key"):
        slurm_params({}, ["gpus=1"])
    with pytest.raises(ConfigError, match="nodes must be of type int"):
        slurm_params({}, ["nodes=two"])
    with pytest.raises(ConfigError, match="cpus_per_task must be >= 1"):
        slurm_params({"cpus_per_task": 0})


def test_sbatch_script_requests_gpus_only_when_asked(tmp_path):
    from experiments.cluster import _sbatch_parameters

    def script(**kw):
        return _make_sbatch_string(command="true", folder=tmp_path, **_sbatch_parameters(slurm_params(kw)))

    plain = script(mem_gb=2, account="lab", constraint="a100")
    assert "gpu" not in plain and "--mem=2048M" in plain and "--account=lab" in plain
    assert "--constraint=a100" in plain and "--partition" not in plain
    assert "#SBATCH --gpus-per-node=2" in script(gpus_per_node=2)


def test_the_two_node_recipe_of_docs_slurm_asks_slurm_for_what_it_says(tmp_path):
    """docs/slurm.md's 2 x 8 GPU recipe, read from the doc and parsed as the CLI parses it: the
    train stage asks for 2 nodes x 8 tasks x 8 GPUs (16 ranks, per-device batch 32 of the global
    512), the second command's stages for one node and one GPU a job. (What a CPU machine can
    check: the scheduler's side and NCCL are docs/slurm.md's "unverified".)"""
    import shlex

    from esolm.train import batch_split
    from experiments import presets as P
    from experiments.cluster import _sbatch_parameters
    from experiments.run import parser

    text = (Path(__file__).resolve().parent.parent / "docs" / "slurm.md").read_text()
    block = text.split("2 nodes x 8 GPUs, the `paper-owt` training jobs only")[1].split("```bash")[1].split("```")[0]
    lines = [line.split("#")[0] for line in block.replace("\\\n", " ").splitlines()]
    cmds = [shlex.split(line.replace("<gpu-partition>", "gpu").replace("<account>", "lab"))
            for line in lines if line.startswith("python experiments/run.py")]
    assert len(cmds) == 2
    parsed = []
    for cmd in cmds:
        args, extra = parser().parse_known_args(cmd[2:])
        assert args.command == "pareto" and args.preset == "paper-owt" and args.cluster == "slurm"
        parsed.append((args, list(args.overrides) + [e for e in extra if "=" in e]))
    (train_args, train_kv), (rest_args, rest_kv) = parsed
    assert train_args.stages == "train" and rest_args.stages is None
    preset = P.get("paper-owt")

    def script(stage, kv):
        params = slurm_params({**preset.run.slurm.get("default", {}), **preset.run.slurm.get(stage, {})}, kv)
        return params, _make_sbatch_string(command="true", folder=tmp_path, **_sbatch_parameters(params))

    params, sbatch = script("train", train_kv)
    for flag in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--account=lab"):
        assert f"#SBATCH {flag}" in sbatch, flag
    world = params.nodes * params.tasks_per_node
    cfg = preset.run.train
    assert world == 16 and batch_split(cfg.batch_size, world, cfg.micro_batch) == (32, 32, 1)
    for stage in ("eval", "sample", "time", "longctx"):
        _, sbatch = script(stage, rest_kv)
        assert "#SBATCH --nodes=1" in sbatch and "#SBATCH --gpus-per-node=1" in sbatch, stage


def test_unknown_cluster_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown cluster 'kube'; choose one of slurm, local, debug"):
        make_executor("kube", tmp_path)


def test_gpu_rejection_message_names_the_fix():
    msg = explain_submit_error("sbatch: error: Invalid generic resource (gres) specification",
                               {"gpus_per_node": 2})
    assert msg.startswith("the cluster has no GPUs (gres)") and "drop gpus_per_node=2" in msg


def test_single_process_without_launcher_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    assert setup_distributed() == (0, 1, 0)


def test_master_port_is_one_per_job_and_below_the_ephemeral_range(tmp_path):
    """Every task of a job derives the same rendezvous port; none is in the range the kernel
    hands to outgoing connections (a port there can be taken by any socket of the machine)."""
    from esolm.distributed import master_port

    ranges = tmp_path / "range"
    ranges.write_text("32768\t60999\n")
    ports = {master_port(str(j), str(ranges)) for j in range(2000)}
    assert all(20000 <= p < 32768 for p in ports) and len(ports) > 1500
    assert master_port("4242_3", str(ranges)) == master_port("4242_3", str(ranges))
    ranges.write_text("1024 50000\n")  # an ephemeral range that starts low: the ports above it
    assert all(50000 < master_port(str(j), str(ranges)) <= 65535 for j in range(100))
    assert 20000 <= master_port("7", str(tmp_path / "missing")) < 32768  # no such file: Linux's default


def test_local_executor_returns_the_result(tmp_path):
    job = submit(make_executor("local", tmp_path, {"time_min": 2}), square, 7)
    assert job.result() == 49


def test_local_gpu_request_fails_clearly_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="gpus_per_node=1 but this machine has 0 CUDA GPU"):
        make_executor("local", tmp_path, {"gpus_per_node": 1})


def test_debug_failure_is_reported_without_raising_or_pdb(tmp_path):
    executor = make_executor("debug", tmp_path)
    bad, good = submit(executor, explode, "dbg"), submit(executor, square, 3)
    status = job_status([bad, good])
    assert (status.done, status.running, status.failed) == (1, 0, 1)
    assert status.failures[0].reason == "ValueError: boom dbg" and good.result() == 9


# ----------------------------------------------------------------------------- the local Slurm cluster
@needs_slurm
def test_slurm_job_returns_the_result(tmp_path):
    job = submit(make_executor("slurm", tmp_path, {"time_min": 5}), square, 12)
    assert job.result() == 144


@needs_slurm
def test_failing_job_reports_error_and_log_while_sibling_result_is_kept(tmp_path):
    executor = make_executor("slurm", tmp_path, {"time_min": 5})
    bad, good = submit(executor, explode, 42), submit(executor, square, 5)
    status = wait_jobs([bad, good], timeout_s=120)
    assert (status.done, status.running, status.failed) == (1, 0, 1), status.summary()
    failure = status.failures[0]
    assert failure.job_id == bad.job_id and "ValueError: boom 42" in failure.error
    assert failure.stderr == bad.paths.stderr and "boom 42" in failure.stderr.read_text()
    assert failure.reason == "ValueError: boom 42"
    assert f"job {bad.job_id} failed: ValueError: boom 42 (log: {bad.paths.stderr})" in status.summary()
    assert good.result() == 25


@needs_slurm
def test_gpu_request_fails_at_submit_with_one_clear_message(tmp_path):
    executor = make_executor("slurm", tmp_path, {"gpus_per_node": 1})
    with pytest.raises(ConfigError, match=r"the cluster has no GPUs \(gres\).*drop gpus_per_node=1"):
        submit(executor, square, 2)


@needs_slurm
def test_unknown_partition_fails_at_submit_listing_the_partitions(tmp_path):
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    executor = make_executor("slurm", tmp_path, {"partition": "no-such-partition"})
    with pytest.raises(ConfigError, match="unknown partition 'no-such-partition'") as err:
        submit(executor, square, 2)
    assert all(p.rstrip("*") in str(err.value) for p in partitions)


@needs_slurm
def test_preempted_job_requeues_and_resumes_from_its_checkpoint(tmp_path):
    n, expected = 8, sum(i * i for i in range(8))
    path = tmp_path / "count.json"
    job = submit(make_executor("slurm", tmp_path / "jobs", {"time_min": 5}), CountSquares(), str(path), n, 0.3)
    _wait_for_step(path, 2)
    job._interrupt()  # submitit's preemption: SIGTERM, then USR2 -> checkpoint() -> scontrol requeue
    out = job.result()
    assert out["total"] == expected == CountSquares()(tmp_path / "ref.json", n, 0)["total"]
    assert out["requeues"] == 1 and out["starts"][0] == 0 and 2 <= out["starts"][1] < n


@needs_slurm
def test_cancelled_job_is_reported_and_resumes_on_resubmit(tmp_path):
    n, path = 40, tmp_path / "count.json"  # 10 s of work: scancel's SIGKILL (KillWait=5 s) comes first
    executor = make_executor("slurm", tmp_path / "jobs", {"time_min": 5})
    job = submit(executor, CountSquares(), str(path), n, 0.25)
    _wait_for_step(path, 2)
    job.cancel()
    status = wait_jobs([job], timeout_s=120)
    assert status.failed == 1 and status.failures[0].state.startswith("CANCELLED"), status.summary()
    out = submit(executor, CountSquares(), str(path), n, 0.0).result()
    assert out["total"] == sum(i * i for i in range(n))
    assert out["starts"][0] == 0 and 2 <= out["starts"][1] < n and out["requeues"] == 0
