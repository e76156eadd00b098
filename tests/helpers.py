"""Helpers that several test files share (pytest puts tests/ on sys.path)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def slurm_up() -> bool:
    """Whether the local Slurm cluster answers (`sinfo` succeeds)."""
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def process_ids(*needles: str) -> list[int]:
    """Ids of the processes whose command line contains every one of ``needles``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if all(n in cmd for n in needles):
            pids.append(int(proc.name))
    return pids
