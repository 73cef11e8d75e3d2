#!/usr/bin/env bash
# down.sh [--quiet] - tear down the test bed that up.sh started.
#
# Stops, by the pid files up.sh/Slurm wrote under the state dir: slurmd (one
# per node), slurmctld, the private munged. Then ends whatever is still
# running inside the node network namespaces up.sh created (job steps and
# processes that jobs daemonized, which proctrack/linuxproc cannot follow),
# deletes those namespaces, the bridge, the /etc/hosts block and the
# /etc/slurm symlinks. Safe to run twice, or when nothing is up.
# Logs are kept in $SLURM_TESTBED_DIR/log for post-mortems.
set -uo pipefail

STATE="${SLURM_TESTBED_DIR:-/var/tmp/shoal-testbed}"
NS_PREFIX="shoal-"
BRIDGE="shoalbr0"
VETH_PREFIX="shoalv"
QUIET=0
[[ "${1:-}" == "--quiet" ]] && QUIET=1

log() { (( QUIET )) || printf '[down.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
T0=$(date +%s.%N)

[[ $EUID -eq 0 ]] || { echo "down.sh: must run as root" >&2; exit 1; }

# Running and not a zombie. (PID 1 here is not a real init and reaps
# orphans late, so `kill -0` alone would report dead daemons as alive.)
alive() {
  local st
  st=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

# wait_gone SECONDS PID... : wait until none of the PIDs is alive.
wait_gone() {
  local limit=$1; shift
  local end=$(( $(date +%s%N) + limit * 1000000000 )) p any
  while :; do
    any=0
    for p in "$@"; do alive "$p" && any=1; done
    (( any == 0 )) && return 0
    (( $(date +%s%N) > end )) && return 1
    sleep 0.05
  done
}

# stop_pidfile FILE COMM : TERM (then KILL) the process in FILE if it is COMM.
stop_pidfile() {
  local file=$1 comm=$2 pid
  [[ -f "$file" ]] || return 0
  pid=$(tr -dc '0-9' < "$file")
  if [[ -n "$pid" ]] && alive "$pid"; then
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm"* ]]; then
      log "stopping $comm (pid $pid)"
      kill -TERM "$pid" 2>/dev/null
      if ! wait_gone 10 "$pid"; then
        log "$comm (pid $pid) ignored SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null; wait_gone 5 "$pid"
      fi
    else
      log "pid $pid in $file is not $comm any more; not touching it"
    fi
  fi
  rm -f "$file"
}

CONF="$STATE/etc/slurm.conf"

# 1. Cancel all jobs while the controller is still there (bounded wait).
if [[ -f "$CONF" && -f "$STATE/run/slurmctld.pid" ]] && alive "$(tr -dc '0-9' < "$STATE/run/slurmctld.pid")"; then
  export SLURM_CONF="$CONF"
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | paste -sd' ' -)
  if [[ -n "$jobs" ]]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null
    for _ in $(seq 50); do
      [[ -z "$(timeout 5 squeue -h -t PD,R,CG,CF,S -o %A 2>/dev/null)" ]] && break
      sleep 0.2
    done
  fi
fi

# 2. slurmd, 3. slurmctld.
for f in "$STATE"/run/slurmd-*.pid; do
  [[ -e "$f" ]] && stop_pidfile "$f" slurmd
done
stop_pidfile "$STATE/run/slurmctld.pid" slurmctld

# 4. Node namespaces: end what is left inside (job steps, daemonized job
#    processes), then delete them. Namespaces are ours by name prefix.
ns_list=$( { cat "$STATE/netns.list" 2>/dev/null; ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NS_PREFIX}"; } | sort -u)
for ns in $ns_list; do
  [[ -e "/run/netns/$ns" ]] || continue
  pids=$(ip netns pids "$ns" 2>/dev/null | paste -sd' ' -)
  if [[ -n "$pids" ]]; then
    log "ending processes left in $ns: $pids"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    # shellcheck disable=SC2086
    if ! wait_gone 5 $pids; then
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null; wait_gone 5 $pids
    fi
  fi
  ip netns del "$ns" 2>/dev/null && log "deleted netns $ns"
done
rm -f "$STATE/netns.list"

# 5. Bridge and any host-side veth left behind.
for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^(${VETH_PREFIX}[0-9]+|${BRIDGE})$"); do
  ip link del "$l" 2>/dev/null && log "deleted link $l"
done

# 5b. Empty per-node cgroup dirs left by SLURM_TESTBED_PROCTRACK=cgroup
#     (Slurm names them slurm_<node>); rmdir only removes empty cgroups.
if [[ -f "$STATE/nodes.tsv" ]]; then
  while IFS=$'\t' read -r node _; do
    for d in /sys/fs/cgroup/*/"slurm_$node"; do
      [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done < "$STATE/nodes.tsv"
fi

# 6. Private munged.
stop_pidfile "$STATE/run/munged.pid" munged

# 7. /etc/hosts block and /etc/slurm symlinks that point into the state dir.
if grep -q '^# >>> shoal-testbed >>>$' /etc/hosts 2>/dev/null; then
  tmp_hosts=$(mktemp)
  sed '/^# >>> shoal-testbed >>>$/,/^# <<< shoal-testbed <<<$/d' /etc/hosts > "$tmp_hosts"
  cat "$tmp_hosts" > /etc/hosts
  rm -f "$tmp_hosts"
fi
for f in slurm.conf gres.conf cgroup.conf; do
  if [[ -L "/etc/slurm/$f" && "$(readlink "/etc/slurm/$f")" == "$STATE/"* ]]; then
    rm -f "/etc/slurm/$f"
  fi
done

# 8. Keep only the logs (and the marker that says up.sh made this dir).
if [[ -e "$STATE/.shoal-testbed" ]]; then
  find "$STATE" -mindepth 1 -maxdepth 1 ! -name log ! -name .shoal-testbed -exec rm -rf {} +
fi
log "down in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')s"
exit 0
