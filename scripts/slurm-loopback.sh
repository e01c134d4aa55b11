#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, for tests of the Slurm executor.
#
# Usage:
#   scripts/slurm-loopback.sh up DIR    start munged, slurmctld and slurmd
#   scripts/slurm-loopback.sh down DIR  stop what `up DIR` started
#
# `up` creates DIR (absent or empty; its parent must exist; only letters,
# digits and ._/+- since slurm.conf takes paths unquoted), writes everything
# under it (munge key, socket, pid, log and seed; slurm.conf, cgroup.conf,
# state, spool, logs, pid files), starts the three daemons as root, waits (at
# most 30 s; about 3.5 s here) until the node is idle and slurmctld has made
# its first scheduling pass, and writes DIR/env: export lines to source
# (SLURM_CONF, the munge socket, the bin dirs, the partitions, the ports, the
# PIDs, whether --mem is enforced, whether jobs of other uids can run: every
# directory above DIR must be searchable by others for that). On failure it
# prints the daemons' logs to stderr, stops what it started and exits 1, the
# last line giving the reason.
#
# Partitions: `debug` (the default) runs jobs; `pending` has State=DOWN, so a
# job submitted to it is accepted and stays PENDING with Reason=PartitionDown.
# Memory: where the memory controller is cgroup v1 and this process's memory
# cgroup is writable, task/cgroup enforces --mem (a job over it ends
# OUT_OF_MEMORY); elsewhere --mem is accepted but not enforced
# (SLURM_LOOPBACK_MEM_ENFORCED=0 in DIR/env). Slurm's cgroups go in a child of
# this process's own memory cgroup, never at the hierarchy's root.
#
# Nothing is written to /etc and nothing listens outside 127.0.0.1: both
# daemons bind to what the host name resolves to (NoInAddrAny,
# NoCtldInAddrAny), so the host name must resolve to loopback only; the two
# TCP ports are picked free below the ephemeral range; `up` checks `ss -ltnp`
# before it succeeds. No network namespace: clients on the host reach it.
#
# `down` cancels the cluster's jobs, then stops exactly the PIDs recorded in
# DIR/pids (checking each is still the process `up` started), waits for them
# and removes Slurm's cgroups; calling it again, or on a DIR that never came
# up, does nothing. It leaves DIR for the caller to remove.
#
# Needs root and Debian's `slurm-wlm` and `munge` (see .ci/run).
# SLURM_LOOPBACK_MIN_JOB_AGE (seconds, default 300, at least 2) sets how long
# slurmctld keeps an ended job for `scontrol show job`.
set -euo pipefail

readonly START_TIMEOUT=30 # seconds for all three daemons to come up
readonly STOP_TIMEOUT=15  # seconds for jobs, then each daemon, to go away

prog=slurm-loopback
usage() {
  echo "usage: $0 up DIR | down DIR" >&2
  exit 2
}

# The 22nd field of /proc/PID/stat, the start time in clock ticks: with the
# PID it names one process, so a reused PID is never signalled.
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  local -a field
  read -r -a field <<<"${stat##*) }"
  echo "${field[19]}"
}

# Whether PID still is the process recorded with start time TICKS.
same_process() {
  local now
  now=$(start_time "$1") || return 1
  [ "$now" = "$2" ]
}

# Whether the daemon NAME recorded in PIDS_FILE still runs.
recorded_alive() {
  local name pid ticks
  while read -r name pid ticks; do
    if [ "$name" = "$2" ] && same_process "$pid" "$ticks"; then
      return 0
    fi
  done <"$1"
  return 1
}

# Waits until PID (started at TICKS) has gone, for at most SECONDS.
wait_gone() {
  local pid=$1 ticks=$2 deadline=$((SECONDS + $3))
  while same_process "$pid" "$ticks"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# Stops the daemons listed in PIDS_FILE (lines "name pid ticks"), last
# started first: SIGTERM, then SIGKILL after STOP_TIMEOUT seconds.
stop_recorded() {
  local pids_file=$1 name pid ticks
  [ -f "$pids_file" ] || return 0
  tac "$pids_file" | while read -r name pid ticks; do
    same_process "$pid" "$ticks" || continue
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$ticks" "$STOP_TIMEOUT"; then
      echo "$prog: $name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" "$ticks" 5 || echo "$prog: $name (pid $pid) survived SIGKILL" >&2
    fi
  done
}

# Cancels every job while slurmctld still answers and waits until none is
# left (bounded): a slurmstepd outlives slurmd, so jobs must end first.
cancel_jobs() {
  local dir=$1 deadline=$((SECONDS + STOP_TIMEOUT)) ids
  # Only while our slurmctld runs (else squeue would only wait and fail).
  recorded_alive "$dir/pids" slurmctld || return 0
  export SLURM_CONF="$dir/etc/slurm.conf"
  ids=$(timeout 10 squeue -h -o %i 2>/dev/null) || return 0
  [ -n "$ids" ] || return 0
  # shellcheck disable=SC2086 # one id a word
  timeout 10 scancel --full $ids 2>/dev/null || true
  while [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] ||
    [ -n "$(find "$dir/spool" -mindepth 1 -maxdepth 1 -name 'job*' 2>/dev/null)" ]; do
    [ "$SECONDS" -lt "$deadline" ] || {
      echo "$prog: jobs still there after ${STOP_TIMEOUT}s: $ids" >&2
      return 0
    }
    sleep 0.2
  done
}

# Kills what is still in Slurm's cgroups under DIR (task processes that
# outlived their step), then removes those cgroups, deepest first.
remove_cgroups() {
  local base=$1 cg pid
  [ -d "$base" ] || return 0
  while IFS= read -r -d '' cg; do
    while read -r pid; do
      kill -KILL "$pid" 2>/dev/null || true
    done <"$cg/cgroup.procs"
  done < <(find "$base" -depth -type d -print0)
  while IFS= read -r -d '' cg; do
    rmdir "$cg" 2>/dev/null || sleep 0.2
    [ ! -d "$cg" ] || rmdir "$cg" 2>/dev/null ||
      echo "$prog: could not remove cgroup $cg" >&2
  done < <(find "$base" -depth -type d -print0)
}

down() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if [ -f "$dir/pids" ]; then
    cancel_jobs "$dir"
    stop_recorded "$dir/pids"
    mv "$dir/pids" "$dir/pids.stopped"
  fi
  if [ -f "$dir/cgroup.dir" ]; then
    remove_cgroups "$(cat "$dir/cgroup.dir")"
    rm -f "$dir/cgroup.dir" "$dir/cgroup/memory"
  fi
}

# The first TCP port from a random start in [10000, ephemeral start) that no
# socket on this host uses and that is not in ARGS.
free_port() {
  local low high port used tries
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  high=$((low > 11000 ? low : 32768))
  used=$(ss -Htan | awk '{ n = split($4, a, ":"); print a[n] }')
  for ((tries = 0; tries < 200; tries++)); do
    port=$((10000 + (RANDOM * 32768 + RANDOM) % (high - 10000)))
    case " $* " in *" $port "*) continue ;; esac
    grep -qx "$port" <<<"$used" || {
      echo "$port"
      return 0
    }
  done
  return 1
}

# The directory of this process's own memory cgroup, if the memory
# controller is cgroup v1 (Slurm 22.05's cgroup/v2 needs systemd).
own_memory_cgroup() {
  local rel mnt root
  rel=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3; exit }' /proc/self/cgroup)
  [ -n "$rel" ] || return 1
  read -r root mnt < <(awk '{
      for (i = 7; $i != "-"; i++) ;
      if ($(i + 1) == "cgroup" && $(i + 3) ~ /(^|,)memory(,|$)/) { print $4, $5; exit }
    }' /proc/self/mountinfo) || return 1
  [ -n "$mnt" ] || return 1
  [ "$root" = / ] && root=
  case $rel in "$root" | "$root"/*) ;; *) return 1 ;; esac
  echo "$mnt${rel#"$root"}"
}

up() {
  local dir=$1
  [ "$(id -u)" = 0 ] || { echo "$prog: up needs root (the daemons run as root)" >&2; exit 1; }
  local cmd
  for cmd in munged munge unmunge slurmctld slurmd sinfo sbatch scontrol squeue scancel ss; do
    command -v "$cmd" >/dev/null || {
      echo "$prog: $cmd not found: install slurm-wlm and munge (see .ci/run)" >&2
      exit 1
    }
  done
  local host addrs
  host=$(hostname -s)
  # NoInAddrAny binds every daemon to what gethostname() resolves to.
  addrs=$(getent ahostsv4 "$(hostname)" | awk '{ print $1 }' | sort -u)
  if [ -z "$addrs" ] || grep -qv '^127\.' <<<"$addrs"; then
    echo "$prog: host name $(hostname) resolves to '${addrs//$'\n'/ }', not only 127.x: the daemons would listen there" >&2
    exit 1
  fi
  # slurm.conf takes paths unquoted, and Slurm expands % in some of them.
  case $dir in *[!A-Za-z0-9._/+-]*)
    echo "$prog: $dir: only letters, digits and ._/+- are allowed in DIR" >&2
    exit 1
    ;;
  esac
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    echo "$prog: $dir exists and is not empty" >&2
    exit 1
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  # Jobs of other uids exec their batch script from DIR/spool: DIR and every
  # directory above it must be searchable by others.
  chmod 0755 "$dir"
  local other_uids=1 p=$dir
  while [ "$p" != / ]; do
    p=$(dirname "$p")
    if (($(stat -c '0%a' "$p") & 1)); then continue; fi
    echo "$prog: warning: $p is not searchable by others: jobs of uids other than root will fail (exit code 13)" >&2
    other_uids=0
    break
  done
  # munge/ must be searchable by all for the socket; the key is 0400.
  mkdir -m 0755 "$dir/munge" "$dir/etc" "$dir/state" "$dir/spool" "$dir/log" "$dir/run" "$dir/cgroup"
  : >"$dir/pids"

  set -o errtrace
  local pid_munged="" pid_slurmctld="" pid_slurmd=""
  # On any failure: the logs, then stop what was started, then the reason.
  fail() {
    local f
    trap - ERR
    for f in "$dir"/munge/munged.log "$dir"/log/*; do
      [ -s "$f" ] || continue
      echo "===== $f" >&2
      tail -n 60 "$f" >&2
    done
    down "$dir" >&2 || true
    echo "$prog: up failed: $*" >&2
    exit 1
  }
  trap 'fail "command failed at line $LINENO"' ERR

  # Starts a daemon in the background with a clean environment and records
  # it; NAME must be the process's comm.
  spawn() {
    local name=$1 pid ticks
    shift
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SLURM_CONF="$dir/etc/slurm.conf" \
      "$@" </dev/null >"$dir/log/$name.out" 2>&1 &
    pid=$!
    ticks=$(start_time "$pid") || fail "$name exited at once"
    echo "$name $pid $ticks" >>"$dir/pids"
    printf -v "pid_$name" %s "$pid"
  }
  # Fails unless the recorded daemon NAME is still running.
  alive() {
    recorded_alive "$dir/pids" "$1" || fail "$1 exited (see its log above)"
  }

  # munge: a key of our own; clients find the socket through AuthInfo.
  local sock="$dir/munge/munge.socket"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$dir/munge/munge.key"
  spawn munged munged -F --force --socket="$sock" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed"
  local deadline=$((SECONDS + START_TIMEOUT))
  until munge -S "$sock" -n 2>/dev/null | unmunge -S "$sock" >/dev/null 2>&1; do
    alive munged
    [ "$SECONDS" -lt "$deadline" ] || fail "munged did not answer on $sock within ${START_TIMEOUT}s"
    sleep 0.1
  done

  local ctld_port slurmd_port
  ctld_port=$(free_port) || fail "no free TCP port for slurmctld"
  slurmd_port=$(free_port "$ctld_port") || fail "no free TCP port for slurmd"

  # Memory enforcement: task/cgroup on v1, rooted in a child of our own
  # memory cgroup (CgroupMountpoint/memory is a symlink to it).
  local mem_enforced=0 own cg="" min_job_age=${SLURM_LOOPBACK_MIN_JOB_AGE:-300}
  if own=$(own_memory_cgroup) && [ -w "$own" ]; then
    cg="$own/slurm-loopback.$(basename "$dir").$$"
    if mkdir "$cg" 2>/dev/null; then
      echo "$cg" >"$dir/cgroup.dir"
      ln -s "$cg" "$dir/cgroup/memory"
      mem_enforced=1
    fi
  fi
  # The node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory):
  # a node configured bigger than it is would be drained.
  local hw
  hw=$(slurmd -C | sed -n '1s/^NodeName=[^ ]* //p')
  grep -q 'RealMemory=[0-9]' <<<"$hw" || fail "slurmd -C did not describe the node: $hw"

  {
    cat <<EOF
# Written by scripts/slurm-loopback.sh: a one-node cluster on loopback.
ClusterName=loopback
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/etc/plugstack.conf
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
SchedulerType=sched/backfill
# Batch jobs start at the next scheduler pass (about 1 s) rather than up to
# 3 s (the default batch_sched_delay) after the last one.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
ReturnToService=2
KillWait=5
MinJobAge=$min_job_age
EOF
    if [ "$mem_enforced" = 1 ]; then
      cat <<EOF
TaskPlugin=task/cgroup
SelectTypeParameters=CR_Core_Memory
# Without a default a job without --mem would be given the whole node.
DefMemPerNode=1024
EOF
    else
      cat <<EOF
TaskPlugin=task/none
SelectTypeParameters=CR_Core
EOF
    fi
    cat <<EOF
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host $hw State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
# State=DOWN: jobs are queued but never started (Reason=PartitionDown).
PartitionName=pending Nodes=$host Default=NO MaxTime=INFINITE State=DOWN
EOF
  } >"$dir/etc/slurm.conf"
  cat >"$dir/etc/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=$dir/cgroup
CgroupAutomount=no
ConstrainCores=no
ConstrainDevices=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
EOF
  : >"$dir/etc/plugstack.conf"
  export SLURM_CONF="$dir/etc/slurm.conf"

  spawn slurmctld slurmctld -D -i -f "$SLURM_CONF"
  until scontrol ping 2>/dev/null | grep -q 'is UP'; do
    alive slurmctld
    [ "$SECONDS" -lt "$deadline" ] || fail "slurmctld did not answer scontrol ping within ${START_TIMEOUT}s"
    sleep 0.1
  done
  spawn slurmd slurmd -D -N "$host" -f "$SLURM_CONF"
  local state=""
  until [ "$state" = idle ]; do
    alive slurmctld
    alive slurmd
    [ "$SECONDS" -lt "$deadline" ] ||
      fail "node $host is '$state', not idle, after ${START_TIMEOUT}s ($(sinfo -h -N -o %E 2>&1 | head -n 1))"
    sleep 0.1
    state=$(sinfo -h -p debug -o %T 2>/dev/null || true)
  done

  # slurmctld's first scheduling pass comes about 3 s after it starts (it logs
  # SchedulerParameters then); a job submitted before waits for it. Waiting
  # here gives the first job the same latency (about 1 s) as the others.
  until grep -q 'SchedulerParameters=' "$dir/log/slurmctld.log"; do
    alive slurmctld
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$prog: warning: slurmctld has not logged its first scheduling pass; continuing" >&2
      break
    fi
    sleep 0.1
  done

  # Nothing of ours may listen outside loopback.
  local listening bad
  listening=$(ss -Hltnp | grep -E "pid=($pid_munged|$pid_slurmctld|$pid_slurmd)," || true)
  bad=$(awk '$4 !~ /^127\./' <<<"$listening")
  [ -z "$bad" ] || fail "a daemon listens outside loopback: $bad"
  grep -q "127.0.0.1:$ctld_port " <<<"$listening" || fail "slurmctld does not listen on 127.0.0.1:$ctld_port"
  grep -q "127.0.0.1:$slurmd_port " <<<"$listening" || fail "slurmd does not listen on 127.0.0.1:$slurmd_port"

  trap - ERR
  {
    echo "# Source this file: the loopback Slurm cluster started by scripts/slurm-loopback.sh."
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
    printf 'export SLURM_LOOPBACK_DIR=%q\n' "$dir"
    printf 'export SLURM_LOOPBACK_MUNGE_SOCKET=%q\n' "$sock"
    printf 'export SLURM_LOOPBACK_BIN=%q\n' "$(dirname "$(command -v sbatch)")"
    printf 'export SLURM_LOOPBACK_SBIN=%q\n' "$(dirname "$(command -v slurmctld)")"
    printf 'export SLURM_LOOPBACK_NODE=%q\n' "$host"
    printf 'export SLURM_LOOPBACK_PARTITION=debug\n'
    printf 'export SLURM_LOOPBACK_PENDING_PARTITION=pending\n'
    printf 'export SLURM_LOOPBACK_CTLD_PORT=%s\n' "$ctld_port"
    printf 'export SLURM_LOOPBACK_SLURMD_PORT=%s\n' "$slurmd_port"
    printf 'export SLURM_LOOPBACK_MUNGED_PID=%s\n' "$pid_munged"
    printf 'export SLURM_LOOPBACK_SLURMCTLD_PID=%s\n' "$pid_slurmctld"
    printf 'export SLURM_LOOPBACK_SLURMD_PID=%s\n' "$pid_slurmd"
    printf 'export SLURM_LOOPBACK_MEM_ENFORCED=%s\n' "$mem_enforced"
    printf 'export SLURM_LOOPBACK_MIN_JOB_AGE=%s\n' "$min_job_age"
    printf 'export SLURM_LOOPBACK_OTHER_UIDS=%s\n' "$other_uids"
    printf 'export SLURM_LOOPBACK_JOBCOMP_LOG=%q\n' "$dir/log/jobcomp.log"
  } >"$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}

[ "$#" = 2 ] || usage
case $1 in
  up) up "$2" ;;
  down) down "$2" ;;
  *) usage ;;
esac
