#!/usr/bin/env bash
# A throwaway two-node SLURM cluster on this one machine, for tests and for trying the sbatch templates.
#
#   slurm/local-cluster.sh up      install packages if missing, start munged + slurmctld + 2 slurmd, wait until idle
#   slurm/local-cluster.sh status  daemons and node states
#   slurm/local-cluster.sh env     print the `export SLURM_CONF=...` line client commands need
#   slurm/local-cluster.sh down    cancel jobs, stop the daemons
#
# Needs root on a Debian-like machine (it may be a container: no systemd, no cgroups needed).
# Everything lives in $MPO_SLURM_DIR (default /tmp/mpo-dist-slurm): its own munge key and socket, slurm.conf,
# state, spool and logs, so nothing under /etc is touched except one line in /etc/hosts naming node1/node2.
# Client commands (sbatch, squeue, ...) find the cluster through SLURM_CONF=$MPO_SLURM_DIR/slurm.conf.
set -euo pipefail

STATE_DIR="${MPO_SLURM_DIR:-/tmp/mpo-dist-slurm}"
CTLD_PORT="${MPO_SLURM_CTLD_PORT:-6817}"
# The two slurmd listen on SLURMD_PORT and SLURMD_PORT+1.
SLURMD_PORT="${MPO_SLURM_SLURMD_PORT:-6818}"
UP_TIMEOUT_S="${MPO_SLURM_UP_TIMEOUT_S:-120}"
NODES=(node1 node2)
CONF="$STATE_DIR/slurm.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
export SLURM_CONF="$CONF"
# In stop order: node daemons, controller, then munged which the others need to the end.
DAEMON_PID_FILES=("$STATE_DIR/run/slurmd-node1.pid" "$STATE_DIR/run/slurmd-node2.pid" "$STATE_DIR/run/slurmctld.pid" "$MUNGE_DIR/munged.pid")

die() { echo "local-cluster: $*" >&2; exit 1; }

# Run a command until it succeeds or the deadline passes; polls a condition, never sleeps blindly.
wait_until() {
  local timeout_s="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout_s}s waiting for: $what"
    sleep 0.2
  done
}

pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
process_gone() { ! kill -0 "$1" 2>/dev/null; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) -eq 0 ]] || die "packages ${missing[*]} are missing and installing them needs root"
  command -v apt-get >/dev/null || die "packages ${missing[*]} are missing and apt-get is not available"
  echo "local-cluster: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

add_hosts_entry() {
  local name
  for name in "${NODES[@]}"; do
    getent hosts "$name" >/dev/null && continue
    echo "127.0.0.1 $name  # mpo-dist local SLURM cluster" >>/etc/hosts
  done
}

write_config() {
  mkdir -p "$STATE_DIR"/{ctld,spool,log,run} "$MUNGE_DIR"
  chmod 755 "$MUNGE_DIR"  # munged wants its socket directory reachable by every user
  if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
    dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
  fi
  chmod 600 "$MUNGE_DIR/munge.key"
  local mem_mb
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 4)}' /proc/meminfo)
  cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh; two emulated nodes on one machine.
ClusterName=mpodist
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
# No cgroups in a container: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Look at pending jobs often: a requeued job should restart within seconds, not minutes.
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
# The emulated nodes declare fewer CPUs than the machine has; trust this file, do not drain them.
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=600
NodeName=node[1-2] NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$SLURMD_PORT-$((SLURMD_PORT + 1)) CPUs=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
}

nodes_idle() {
  local states
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
  [[ $(grep -cE '^node[12] idle$' <<<"$states") -eq ${#NODES[@]} ]]
}

cmd_up() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (it starts munged, slurmctld and slurmd)"
  install_packages
  add_hosts_entry
  if ! pid_alive "$STATE_DIR/run/slurmctld.pid"; then
    write_config
  fi
  if ! pid_alive "$MUNGE_DIR/munged.pid"; then
    # --force: tolerate a private parent directory (e.g. pytest's 0700 tmp); only root uses this cluster.
    munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
      --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
    wait_until 30 "munged socket (log: $MUNGE_DIR/munged.log)" test -S "$MUNGE_SOCKET"
  fi
  if ! pid_alive "$STATE_DIR/run/slurmctld.pid"; then
    # -c: a throwaway cluster starts with no jobs left over from an earlier run.
    slurmctld -c -f "$CONF"
    wait_until 60 "slurmctld to answer on port $CTLD_PORT (log: $STATE_DIR/log/slurmctld.log)" scontrol ping
  fi
  local node
  for node in "${NODES[@]}"; do
    if ! pid_alive "$STATE_DIR/run/slurmd-$node.pid"; then
      slurmd -N "$node" -f "$CONF"
    fi
  done
  local deadline=$((SECONDS + UP_TIMEOUT_S))
  until nodes_idle; do
    ((SECONDS < deadline)) || die "timed out after ${UP_TIMEOUT_S}s waiting for node1 and node2 to be idle (logs: $STATE_DIR/log)"
    # Nodes left DOWN or DRAINED by an unclean stop come back once resumed.
    if sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(down|drain|drng)'; then
      scontrol update NodeName=node[1-2] State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.2
  done
  echo "local-cluster: up; export SLURM_CONF=$CONF" >&2
}

cmd_down() {
  # Read the pids first: slurmctld and slurmd delete their pid files while `scontrol shutdown` stops them.
  local pid_file pid pids=()
  for pid_file in "${DAEMON_PID_FILES[@]}"; do
    pid_alive "$pid_file" && pids+=("$(cat "$pid_file")")
  done
  if pid_alive "$STATE_DIR/run/slurmctld.pid"; then
    scancel --quiet --partition=debug 2>/dev/null || true
    wait_until 60 "all jobs to leave the queue" test -z "$(squeue -h -o %i 2>/dev/null)"
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait_until 30 "daemon pid $pid to exit" process_gone "$pid"
  done
  rm -f "${DAEMON_PID_FILES[@]}"
  echo "local-cluster: down" >&2
}

cmd_status() {
  local pid_file
  for pid_file in "${DAEMON_PID_FILES[@]}"; do
    if pid_alive "$pid_file"; then echo "running  $(basename "$pid_file" .pid) (pid $(cat "$pid_file"))"
    else echo "stopped  $(basename "$pid_file" .pid)"; fi
  done
  if pid_alive "$STATE_DIR/run/slurmctld.pid"; then sinfo -N; else return 1; fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: $0 up|down|status|env (state dir: \$MPO_SLURM_DIR, default /tmp/mpo-dist-slurm)" ;;
esac
