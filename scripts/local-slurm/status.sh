#!/usr/bin/env bash
# status.sh - is the local cluster up? Daemons recorded by start.sh, node and queue.
# Exit status 0 when the controller answers (`sinfo` works), 1 otherwise. No root needed.
#
#   bash scripts/local-slurm/status.sh
set -uo pipefail
STATE_DIR=/run/local-slurm
for name in munged mariadbd slurmdbd slurmctld slurmd; do
  marker=$STATE_DIR/$name.started
  if [ -f "$marker" ]; then
    read -r _ pid < "$marker"
    if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
      echo "$name: running (pid $pid, started by start.sh)"
    else
      echo "$name: recorded pid $pid is gone"
    fi
  else
    echo "$name: not started by start.sh"
  fi
done
if ! command -v sinfo > /dev/null; then
  echo "sinfo not found: Slurm is not installed; run: sudo bash scripts/local-slurm/start.sh"; exit 1
fi
if ! sinfo -h -o '%P' > /dev/null 2>&1; then
  echo "the Slurm controller does not answer; run: sudo bash scripts/local-slurm/start.sh"; exit 1
fi
echo; sinfo -o '%P %a %T %D %c %m %G'
echo; squeue
if command -v sacct > /dev/null && sacct -n -X -S now-1minutes > /dev/null 2>&1; then
  echo; echo "accounting: on (sacct works)"
else
  echo; echo "accounting: off (sacct fails; submitit cannot notice jobs killed before writing a result)"
fi
