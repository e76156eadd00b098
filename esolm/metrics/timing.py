"""Sampling time and NFE (spec 8.5, 8.6): warm-up runs excluded, the device synchronized
around the timed region, N trials reported as median and mean +- std, and a fingerprint
of the machine stored with every timing."""
from __future__ import annotations

import functools
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from esolm.config import ConfigError
from esolm.interface import sync


def time_sampler(fn, *, warmup: int = 1, trials: int = 5, device="cpu", profile: bool = False,
                 what: str | None = None) -> dict:
    """Call ``fn()`` ``warmup`` times untimed, then ``trials`` times timed.

    Each trial is bracketed by device synchronization and ``perf_counter`` (wall mode).
    ``profile=True`` reports instead the seconds ``fn``'s result measured itself, i.e. a
    ``SampleOutput`` of ``model.sample(..., profile=True)``, which times only the network
    passes (spec 8.5). When ``fn`` returns a ``SampleOutput``, NFE, samples/s and tokens/s
    come with the timing; samples/s and tokens/s use the mean seconds (the v4 convention).
    """
    if trials < 1 or warmup < 0:
        raise ConfigError(f"need trials >= 1 and warmup >= 0; got trials={trials}, warmup={warmup}")
    for _ in range(warmup):
        fn()
        sync(device)
    wall, reported, out = [], [], None
    for _ in range(trials):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        wall.append(time.perf_counter() - t0)
        if hasattr(out, "seconds"):
            reported.append(float(out.seconds))
    if profile and len(reported) != trials:
        raise ConfigError("profile timing needs fn to return a SampleOutput timed by the model itself; "
                          "call model.sample(..., profile=True) inside fn")
    seconds = reported if profile else wall
    result = dict(mode="profile: network passes only" if profile else "wall: whole call, device synchronized",
                  what=what, warmup=warmup, **summarize(seconds), wall_seconds=wall)
    tokens = getattr(out, "tokens", None)
    if tokens is not None:
        n, numel = int(tokens.shape[0]), int(tokens.numel())
        result.update(nfe=getattr(out, "nfe", None), num_samples=n, num_tokens=numel,
                      samples_per_second=n / result["mean"] if result["mean"] > 0 else None,
                      tokens_per_second=numel / result["mean"] if result["mean"] > 0 else None)
    result["environment"] = environment_fingerprint(device)
    return result


def summarize(seconds: list[float]) -> dict:
    """median, mean, sample std (0 for one trial), min, max and the trials themselves."""
    seconds = [float(s) for s in seconds]
    return dict(trials=seconds, num_trials=len(seconds), median=statistics.median(seconds),
                mean=statistics.fmean(seconds), std=statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
                min=min(seconds), max=max(seconds))


def environment_fingerprint(device=None) -> dict:
    """CPU model and threads, torch / CUDA versions, GPU name and driver when present,
    Python, platform and the git commit of this checkout."""
    env = dict(cpu=_cpu_model(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
               torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
               platform=platform.platform(), hostname=platform.node(), **_git())
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None and torch.device(device).type == "cuda" else None
        index = torch.cuda.current_device() if index is None else index
        env.update(gpu=torch.cuda.get_device_name(index), gpu_count=torch.cuda.device_count(),
                   gpu_driver=_gpu_driver(), gpu_capability=".".join(map(str, torch.cuda.get_device_capability(index))))
    env["device"] = str(device) if device is not None else None
    return env


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        brand = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if brand:
            return brand
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _gpu_driver() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


@functools.lru_cache(maxsize=1)
def _git() -> dict:
    root = Path(__file__).resolve().parents[2]
    sha = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
    if not sha:
        return dict(git_sha=None, git_dirty=None)
    status = _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    return dict(git_sha=sha.strip(), git_dirty=bool(status and status.strip()))


def _run(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None
