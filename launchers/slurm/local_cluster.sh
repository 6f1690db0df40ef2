#!/usr/bin/env bash
# A real one-node Slurm on loopback, for the Slurm tests and for trying the launcher on a laptop.
#
#   sudo bash launchers/slurm/local_cluster.sh up      # install (Debian packages) if missing, start
#   sudo bash launchers/slurm/local_cluster.sh status  # sinfo
#   sudo bash launchers/slurm/local_cluster.sh down    # stop the daemons (packages and config stay)
#
# Runs as root: munged, slurmctld and slurmd with ProctrackType=proctrack/linuxproc and
# TaskPlugin=task/none (no cgroups, so it works in containers), the node line from `slurmd -C`,
# no accounting database (sacct does not work: internlm's launcher asks scontrol instead).
# Everything it writes lives in /etc/slurm/slurm.conf and $STATE (default /var/lib/internlm-slurm).
set -euo pipefail

STATE=${INTERNLM_SLURM_STATE:-/var/lib/internlm-slurm}
CONF=/etc/slurm/slurm.conf
PARTITION=${INTERNLM_SLURM_PARTITION:-debug}
# Job slots: tiny CPU test jobs share cores, so a 2-core laptop can hold a 3-task job and a 2-point
# sweep at once. The node line is slurmd -C's with only the CPU count raised (config_overrides).
SLOTS=${INTERNLM_SLURM_CPUS:-8}

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null && return
  [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root: run this script with sudo"
  command -v apt-get >/dev/null || die "no apt-get: install slurmctld, slurmd, slurm-client and munge with your package manager"
  echo "installing slurmctld slurmd slurm-client munge (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  # The node exactly as slurmd sees it (CPUs, sockets, cores, memory), reachable on loopback.
  local node host
  node=$(slurmd -C | head -n 1)
  local real
  real=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  if [ "$SLOTS" -gt "$real" ]; then
    node=$(sed -e "s/ CPUs=[0-9]*/ CPUs=$SLOTS/" -e "s/ CoresPerSocket=[0-9]*/ CoresPerSocket=$SLOTS/" \
      -e "s/ SocketsPerBoard=[0-9]*/ SocketsPerBoard=1/" -e "s/ ThreadsPerCore=[0-9]*/ ThreadsPerCore=1/" <<<"$node")
  fi
  host=$(hostname -s)
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$STATE/log"
  cat >"$CONF" <<EOF
# Written by internlm launchers/slurm/local_cluster.sh: a one-node cluster on loopback.
ClusterName=internlm-local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
# finished jobs stay visible to scontrol for 10 minutes (there is no sacct without a database)
MinJobAge=600
KillWait=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
${node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n </dev/null >/dev/null 2>&1; then return; fi
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
  else
    /usr/sbin/munged --force
  fi
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged did not start (see /var/log/munge/munged.log)"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  install_packages
  [ "$(id -u)" = 0 ] || die "starting the daemons needs root: run this script with sudo"
  write_config
  start_munge
  pid_alive "$STATE/slurmctld.pid" || slurmctld -i
  pid_alive "$STATE/slurmd.pid" || slurmd
  # Ready when the node takes jobs: idle (or mixed/allocated, when jobs from before are running).
  for _ in $(seq 60); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)
    case "$state" in
      idle|mixed|allocated|completing) echo "slurm is up: partition $PARTITION, node $(hostname -s) ($state)"; return ;;
      drain*|down*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "the node did not become idle; logs: $STATE/log/slurmctld.log, $STATE/log/slurmd.log"
}

stop_pid() {
  local file=$1
  pid_alive "$file" || return 0
  local pid
  pid=$(cat "$file")
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  if command -v scancel >/dev/null && pid_alive "$STATE/slurmctld.pid"; then
    scancel --user="$(id -un)" 2>/dev/null || true
  fi
  stop_pid "$STATE/slurmd.pid"
  stop_pid "$STATE/slurmctld.pid"
  echo "slurm is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo ;;
  *) echo "usage: bash $0 up|down|status" >&2; exit 2 ;;
esac
