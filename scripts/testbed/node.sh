#!/usr/bin/env bash
# shellcheck disable=SC2016  # sh -c '...' "$1"...: expanded by the inner sh on purpose
# node.sh ACTION NODE [CMD...] - failure injection and access for one node of
# the test bed started by up.sh (optional helper; up.sh/down.sh do not need it).
#
#   stop NODE    SIGTERM that node's slurmd (jobs' processes keep running).
#                slurmctld marks it DOWN after SlurmdTimeout (60 s by default).
#   start NODE   start slurmd again in the node's netns with hostname NODE;
#                with ReturnToService=2 the node is back to idle at once.
#   cut NODE     take the node's link down: nothing reaches it, it reaches
#                nothing (simulated network partition; slurmd keeps running).
#   heal NODE    bring the link back up.
#   exec NODE CMD...  run CMD "on" the node: in its netns and, while its slurmd
#                runs, in its UTS namespace (so `hostname` prints NODE).
#   ip NODE      print the node's address.
set -euo pipefail
STATE="${SLURM_TESTBED_DIR:-/var/tmp/shoal-testbed}"
VETH_PREFIX="shoalv"
action="${1:?usage: node.sh stop|start|cut|heal|exec|ip NODE [CMD...]}"
node="${2:?node name missing}"
shift 2
line=$(awk -F'\t' -v n="$node" '$1 == n' "$STATE/nodes.tsv" 2>/dev/null) || true
[[ -n "$line" ]] || { echo "node.sh: no node $node in $STATE/nodes.tsv (is the test bed up?)" >&2; exit 1; }
IFS=$'\t' read -r _ addr ns <<<"$line"
idx=$(awk -F'\t' -v n="$node" '$1 == n { print NR }' "$STATE/nodes.tsv")
CONF="$STATE/etc/slurm.conf"
pidfile="$STATE/run/slurmd-$node.pid"

slurmd_pid() {
  local pid
  [[ -f "$pidfile" ]] || return 1
  pid=$(tr -dc '0-9' < "$pidfile") || return 1
  [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurmd ]] || return 1
  [[ "$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
  echo "$pid"
}

case "$action" in
  stop)
    if pid=$(slurmd_pid); then
      kill -TERM "$pid"
      for _ in $(seq 100); do slurmd_pid >/dev/null || break; sleep 0.05; done
    fi ;;
  start)
    if slurmd_pid >/dev/null; then echo "node.sh: slurmd of $node already running" >&2; exit 0; fi
    if [[ "$(cat "$STATE/private_tmp" 2>/dev/null)" == 1 ]]; then
      nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation slave \
        sh -c 'hostname "$1" && mount --bind "$3" /tmp && exec slurmd -f "$2" -N "$1"' \
        sh "$node" "$CONF" "$STATE/nodetmp/$node"
    else
      nsenter --net="/run/netns/$ns" unshare --uts \
        sh -c 'hostname "$1" && exec slurmd -f "$2" -N "$1"' sh "$node" "$CONF"
    fi ;;
  cut)  ip link set "${VETH_PREFIX}${idx}" down ;;
  heal) ip link set "${VETH_PREFIX}${idx}" up ;;
  exec)
    if pid=$(slurmd_pid); then
      exec nsenter --target "$pid" --net --uts --mount -- "$@"
    else
      exec nsenter --net="/run/netns/$ns" unshare --uts \
        sh -c 'hostname "$1"; shift; exec "$@"' sh "$node" "$@"
    fi ;;
  ip) echo "$addr" ;;
  *) echo "node.sh: unknown action $action" >&2; exit 2 ;;
esac
