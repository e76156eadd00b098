#!/usr/bin/env bash
# start.sh - start a real one-node Slurm cluster on this machine (see docs/slurm.md).
#
#   sudo bash scripts/local-slurm/start.sh        # ~15 s the first time, ~3 s after
#   bash scripts/local-slurm/status.sh            # what is running
#   sudo bash scripts/local-slurm/stop.sh         # stop what this script started
#
# Debian / Ubuntu, no systemd needed (containers, CI runners, laptops). Idempotent:
# it installs what is missing, (re)writes the config, starts only the daemons that
# are not running and waits until the node accepts jobs. Every daemon it starts is
# recorded as "pidfile pid" in $STATE_DIR/<name>.started, so that stop.sh stops only
# those, by PID.
#
# Why root: apt-get installs the packages; the config lives in /etc/slurm and
# /etc/munge; the daemons switch to the 'slurm' / 'munge' / 'mysql' users and write
# pid files under /run; slurmd runs as root so it can start jobs as the submitting user.
#
# Environment knobs:
#   LOCAL_SLURM_ACCOUNTING=1   1 (default): slurmdbd + MariaDB so that `sacct` works;
#                              submitit needs it to notice a job that died before
#                              writing its result (scancel, OOM, node failure);
#                              0: no accounting (such a job then waits forever).
#   LOCAL_SLURM_CLUSTER=localci      cluster name
#   LOCAL_SLURM_PARTITION=debug      the one partition (the default partition)
#   LOCAL_SLURM_CPUS=<n>       CPUs the node advertises (default: what the hardware
#                              has, at least 8); more than the hardware lets several
#                              1-CPU jobs run side by side. The node has no GPUs.
set -euo pipefail

ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-1}
CLUSTER=${LOCAL_SLURM_CLUSTER:-localci}
PARTITION=${LOCAL_SLURM_PARTITION:-debug}
STATE_DIR=/run/local-slurm
LOGDIR=/var/log/slurm
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
DBPASS=localslurm   # password of the MariaDB user 'slurm'; the database listens on localhost only
MARKER="# written by esolm scripts/local-slurm/start.sh"

T_START=$(date +%s%N)
log() { echo "[local-slurm $(date +%T)] $*"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts system daemons): sudo bash $0"
command -v apt-get > /dev/null || die "apt-get not found: this script supports Debian and Ubuntu only"
H=$(hostname -s)
[ -n "$H" ] || die "hostname -s is empty"

# ---------------------------------------------------------------- 1. packages
PKGS=(munge slurmctld slurmd slurm-client)
[ "$ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  t=$(date +%s%N)
  # Package scripts would try to start the daemons (through systemd, which may be
  # absent); a deny-all policy-rc.d stops that. Add one only if there is none, and
  # remove only the one added here.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; added_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    > /tmp/local-slurm-apt.log 2>&1 || { tail -20 /tmp/local-slurm-apt.log; die "apt-get install failed"; }
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "installed ${missing[*]} in $(ms_since "$t") ms"
else
  log "packages already installed"
fi

# ---------------------------------------------------------------- 2. dirs, munge key
mkdir -p "$STATE_DIR"
install -d -o munge -g munge -m 0755 /run/munge
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld "$LOGDIR"
install -d -o root  -g root  -m 0755 /var/spool/slurmd
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey > /dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key
  else  # munge < 0.5.14
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key

# ---------------------------------------------------------------- 3. config
# Node shape from the hardware; RealMemory a bit below what is detected (a node that
# advertises more memory than it has is drained).
read -r -a HW <<< "$(slurmd -C | head -1)"
hw() { local k; for k in "${HW[@]}"; do [[ $k == "$1="* ]] && { echo "${k#*=}"; return; }; done; }
CPUS=$(hw CPUs); SOCK=$(hw SocketsPerBoard); CORES=$(hw CoresPerSocket); THR=$(hw ThreadsPerCore)
MEM=$(hw RealMemory); MEM=$(( MEM * 90 / 100 ))
WANT_CPUS=${LOCAL_SLURM_CPUS:-$(( CPUS > 8 ? CPUS : 8 ))}
NODE_SHAPE="CPUs=$CPUS Boards=1 SocketsPerBoard=$SOCK CoresPerSocket=$CORES ThreadsPerCore=$THR"
EXTRA=""
if [ "$WANT_CPUS" != "$CPUS" ]; then
  NODE_SHAPE="CPUs=$WANT_CPUS"   # Slurm picks the layout
  EXTRA="SlurmdParameters=config_overrides"   # accept a shape unlike the hardware
fi

ACCT_LINES="AccountingStorageType=accounting_storage/none"
if [ "$ACCOUNTING" = 1 ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
fi

# KillWait=5: a cancelled job is killed 5 s after SIGTERM (default 30 s; submitit's job
# process ignores SIGTERM). cred_expire=10: a requeued job may start again after 10 s
# (default 120 s), so preemption / timeout requeues are quick to test.
NEW_CONF="$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$H(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
# no cgroups: plain process tracking, no task binding, memory not enforced
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
KillWait=5
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# reject at submit what the node cannot offer (GPUs, too much memory, too many CPUs)
EnforcePartLimits=ALL
$ACCT_LINES
$EXTRA
NodeName=$H NodeAddr=127.0.0.1 $NODE_SHAPE RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$H Default=YES MaxTime=INFINITE State=UP
"
mkdir -p /etc/slurm
if [ -f "$CONF" ] && [ "$(head -1 "$CONF")" != "$MARKER" ] && [ ! -e "$CONF.before-local-slurm" ]; then
  cp -p "$CONF" "$CONF.before-local-slurm"   # someone else's config: keep it
  log "kept the previous $CONF as $CONF.before-local-slurm"
fi
CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$(printf '%s' "$NEW_CONF")" ]; then
  printf '%s' "$NEW_CONF" > "$CONF"; chmod 644 "$CONF"; CONF_CHANGED=1
  log "wrote $CONF (CPUs=$WANT_CPUS, RealMemory=$MEM MB, partition $PARTITION)"
fi

if [ "$ACCOUNTING" = 1 ]; then
  NEW_DBD="$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
"
  if [ ! -f "$DBDCONF" ] || [ "$(cat "$DBDCONF")" != "$(printf '%s' "$NEW_DBD")" ]; then
    printf '%s' "$NEW_DBD" > "$DBDCONF"; log "wrote $DBDCONF"
  fi
  chown slurm:slurm "$DBDCONF"; chmod 600 "$DBDCONF"   # slurmdbd refuses a readable file
fi

# ---------------------------------------------------------------- 4. daemons
# alive NAME PIDFILE -> prints the pid if PIDFILE names a live process called NAME
alive() {
  local pid; pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ] && echo "$pid"
}
# start_daemon NAME PIDFILE CMD... : start unless running, wait for its pid file, record it
start_daemon() {
  local name=$1 pidfile=$2 pid t; shift 2
  if pid=$(alive "$name" "$pidfile"); then log "$name already running (pid $pid)"; return 0; fi
  rm -f "$pidfile"; t=$(date +%s%N)
  "$@"
  for _ in $(seq 1 150); do pid=$(alive "$name" "$pidfile") && break; sleep 0.2; done
  [ -n "${pid:-}" ] || die "$name did not start; see $LOGDIR"
  echo "$pidfile $pid" > "$STATE_DIR/$name.started"
  log "started $name (pid $pid) in $(ms_since "$t") ms"
}
# stop_ours NAME : stop NAME only if this script started it (used on a config change)
stop_ours() {
  local name=$1 pidfile pid
  [ -f "$STATE_DIR/$name.started" ] || return 0
  read -r pidfile pid < "$STATE_DIR/$name.started"
  if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
    kill "$pid"; for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$STATE_DIR/$name.started"
}

start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
munge -n | unmunge > /dev/null || die "munge self-test failed"

if [ "$ACCOUNTING" = 1 ]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    INSTALL_DB=$(command -v mariadb-install-db || command -v mysql_install_db)
    "$INSTALL_DB" --user=mysql --datadir=/var/lib/mysql > /tmp/local-slurm-mariadb-install.log 2>&1
  fi
  # mariadbd does not daemonize itself: detach it, log to a file
  MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  start_daemon mariadbd /run/mysqld/mysqld.pid \
    bash -c "setsid $MARIADBD --user=mysql --pid-file=/run/mysqld/mysqld.pid >> $LOGDIR/mariadbd.log 2>&1 < /dev/null &"
  for _ in $(seq 1 150); do mysqladmin ping > /dev/null 2>&1 && break; sleep 0.2; done
  mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  start_daemon slurmdbd /run/slurmdbd.pid /usr/sbin/slurmdbd
  t=$(date +%s%N)
  for _ in $(seq 1 150); do sacctmgr -n list cluster > /dev/null 2>&1 && break; sleep 0.2; done
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" > /dev/null
    log "registered cluster $CLUSTER in slurmdbd"
  fi
  log "slurmdbd answering after $(ms_since "$t") ms"
fi

if [ "$CONF_CHANGED" = 1 ]; then
  # the config changed under running daemons: restart the ones this script started,
  # ask any other running controller to reread it
  stop_ours slurmd; stop_ours slurmctld
  if alive slurmctld /run/slurmctld.pid > /dev/null; then scontrol reconfigure || true; fi
fi
start_daemon slurmctld /run/slurmctld.pid /usr/sbin/slurmctld
start_daemon slurmd    /run/slurmd.pid    /usr/sbin/slurmd

# ---------------------------------------------------------------- 5. wait for the node
t=$(date +%s%N); resumed=0
while :; do
  st=$(sinfo -h -n "$H" -o '%T' 2>/dev/null || true)
  case "$st" in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|fail*)
      if [ "$resumed" = 0 ]; then
        log "node state '$st' ($(sinfo -h -n "$H" -o '%E')), resuming it"
        scontrol update NodeName="$H" State=RESUME || true; resumed=1
      fi ;;
  esac
  [ "$(ms_since "$t")" -lt 60000 ] || { tail -20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log"; die "node not ready (state '$st')"; }
  sleep 0.2
done
log "node $H is $st after $(ms_since "$t") ms; total $(ms_since "$T_START") ms; logs in $LOGDIR"
sinfo
