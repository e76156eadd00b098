#!/usr/bin/env bash
# stop.sh - stop the daemons that start.sh started, by the PIDs it recorded in
# /run/local-slurm (each checked against its process name); daemons started by
# anything else (systemd, another admin) are left alone. Root: the daemons run as
# root / slurm / munge / mysql. Packages and config stay, so the next start takes ~3 s.
#
#   sudo bash scripts/local-slurm/stop.sh
set -uo pipefail
STATE_DIR=/run/local-slurm
log() { echo "[local-slurm $(date +%T)] $*"; }
[ "$(id -u)" = 0 ] || { log "ERROR: must run as root (the daemons belong to root and system users): sudo bash $0"; exit 1; }

# order: compute node, controller, accounting, database, authentication
for name in slurmd slurmctld slurmdbd mariadbd munged; do
  marker=$STATE_DIR/$name.started
  [ -f "$marker" ] || { log "$name: not started by start.sh, left alone"; continue; }
  read -r pidfile pid < "$marker"
  if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for 30 s, sending SIGKILL"; kill -KILL "$pid"
    fi
    log "stopped $name (pid $pid)"
  else
    log "$name: recorded pid $pid is gone (or now another program), nothing to stop"
  fi
  # remove the pid file only if it still names the pid stopped here
  [ "$(cat "$pidfile" 2>/dev/null)" = "$pid" ] && rm -f "$pidfile"
  rm -f "$marker"
done
