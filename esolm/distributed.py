"""The one distributed start-up (spec 9: data parallel over processes), for every entry point:

    torchrun --nproc_per_node N ...      RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* from torchrun
    a multi-task submitit job            rank 0's host as master, a port derived from the job id
    (Slurm, or submitit's LocalExecutor) below the ephemeral port range (:func:`master_port`)
    a single process                     nothing is initialized: (0, 1, 0)

The backend is NCCL when CUDA is available (each process on GPU ``local_rank``), gloo on CPU.
``fit`` calls :func:`setup_distributed`; so does any job that trains.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0  # a collective that waits longer than this fails (a dead peer, a stuck rank)


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the initialized process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _export_submitit_env() -> bool:
    """In a submitit job of several tasks, export the env:// variables; True when it did."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return False
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return False
    if "MASTER_PORT" not in os.environ:  # a port the user chose is kept
        os.environ["MASTER_PORT"] = str(master_port(env.job_id))
    dist_env = submitit.helpers.TorchDistributedEnvironment()
    dist_env.export(set_cuda_visible_devices=False, overwrite=True)
    if os.environ["SUBMITIT_EXECUTOR"] == "local":  # one machine: the loopback, not a hostname lookup
        os.environ["MASTER_ADDR"] = "127.0.0.1"
    return True


def master_port(job_id: str, range_file: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The rendezvous port of a multi-task job: the same on every task (drawn from the job id)
    and below the kernel's ephemeral port range. submitit's own choice spans 20000-60000, most
    of which is ephemeral: a port there can be held by any outgoing connection of the machine
    (another job's gloo peers, the database of Slurm's accounting), and rank 0 then fails to
    listen (EADDRINUSE; seen once in ten runs of the DDP tests under load)."""
    import random

    try:
        low, high = (int(x) for x in Path(range_file).read_text().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    rng = random.Random(str(job_id))
    if low > 21000:
        return rng.randint(20000, low - 1)
    if high < 64000:  # an ephemeral range that starts low: the ports above it
        return rng.randint(high + 1, 65535)
    return rng.randint(20000, 60000)  # no free band: submitit's range


def setup_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int, int]:
    """(rank, world_size, local_rank): join (or start) the process group of this launch."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    if not _export_submitit_env() and not ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        return 0, 1, 0
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size == 1:
        return 0, 1, local_rank
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"), init_method="env://",
                            rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    return rank, world_size, local_rank


def teardown_distributed() -> None:
    """Wait for every rank, then end the process group (a rank that exits while a peer still
    talks to it makes that peer abort)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
