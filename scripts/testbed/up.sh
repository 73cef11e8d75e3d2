#!/usr/bin/env bash
# shellcheck disable=SC2016  # sh -c '...' "$1"...: expanded by the inner sh on purpose
# up.sh [NODES] - bring up a real Slurm (22.05, Debian 12) test cluster on ONE
# machine: slurmctld in the host, and NODES slurmd, each in its own network
# namespace (own IP on a private bridge) and UTS namespace (own hostname).
#
# Needs root (CAP_NET_ADMIN for netns/veth/bridge, CAP_SYS_ADMIN for unshare
# --uts, writes /etc/hosts). No systemd needed. Idempotent: an existing test
# bed (same state dir) is torn down first with down.sh.
#
# Settings (environment variables, all optional):
#   SLURM_TESTBED_DIR       state dir (config, spool, logs, pid files)  [/var/tmp/shoal-testbed]
#   SLURM_TESTBED_SUBNET    first three octets of the bridge's /24        [10.199.77]
#                           host/controller = .1, node i = .(10+i)
#   SLURM_TESTBED_NODE_PREFIX  node i is called PREFIXi                   [node]
#   SLURM_TESTBED_CPUS      CPUs declared per node                        [4]
#   SLURM_TESTBED_MEM_MB    RealMemory declared per node (MB)             [4096]
#   SLURM_TESTBED_GPUS      fake GPUs (gres/gpu) per node, 0 = none       [2]
#   SLURM_TESTBED_PARTITION partition name                                [debug]
#   SLURM_TESTBED_PROCTRACK linuxproc | cgroup                            [linuxproc]
#   SLURM_TESTBED_CTLD_PORT / SLURM_TESTBED_SLURMD_PORT                   [6817 / 6818]
#   SLURM_TESTBED_KILL_WAIT / _MIN_JOB_AGE / _SLURMD_TIMEOUT              [5 / 300 / 60]
#   SLURM_TESTBED_LINK_ETC  1 = symlink /etc/slurm/{slurm,gres,cgroup}.conf
#                           to the generated files (so no SLURM_CONF needed) [1]
#   SLURM_TESTBED_TIMEOUT   seconds to wait for all nodes idle            [60]
#   SLURM_TESTBED_PRIVATE_TMP  1 = each node gets its own /tmp (a mount
#                           namespace binds STATE/nodetmp/<node> on /tmp), as
#                           on a real cluster; files jobs write to /tmp are
#                           then NOT visible in the host's /tmp              [0]
#   SLURM_TESTBED_MPI       1 = also install Open MPI (+ PMIx) so that
#                           `srun --mpi=pmix` runs MPI programs; 0 = skip     [1]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODES="${1:-${SLURM_TESTBED_NODES:-3}}"
STATE="${SLURM_TESTBED_DIR:-/var/tmp/shoal-testbed}"
SUBNET="${SLURM_TESTBED_SUBNET:-10.199.77}"
PREFIX="${SLURM_TESTBED_NODE_PREFIX:-node}"
CPUS="${SLURM_TESTBED_CPUS:-4}"
MEM="${SLURM_TESTBED_MEM_MB:-4096}"
GPUS="${SLURM_TESTBED_GPUS:-2}"
PARTITION="${SLURM_TESTBED_PARTITION:-debug}"
PROCTRACK="${SLURM_TESTBED_PROCTRACK:-linuxproc}"
CTLD_PORT="${SLURM_TESTBED_CTLD_PORT:-6817}"
SLURMD_PORT="${SLURM_TESTBED_SLURMD_PORT:-6818}"
KILL_WAIT="${SLURM_TESTBED_KILL_WAIT:-5}"
MIN_JOB_AGE="${SLURM_TESTBED_MIN_JOB_AGE:-300}"
SLURMD_TIMEOUT="${SLURM_TESTBED_SLURMD_TIMEOUT:-60}"
LINK_ETC="${SLURM_TESTBED_LINK_ETC:-1}"
TIMEOUT="${SLURM_TESTBED_TIMEOUT:-60}"
PRIVATE_TMP="${SLURM_TESTBED_PRIVATE_TMP:-0}"
MPI="${SLURM_TESTBED_MPI:-1}"
# Fixed names (down.sh uses the same ones).
NS_PREFIX="shoal-"        # netns of node i: shoal-<PREFIX>i
BRIDGE="shoalbr0"         # host bridge
VETH_PREFIX="shoalv"      # host end of node i's veth: shoalv<i>
CTL_ADDR="${SUBNET}.1"
CTL_ALIAS="shoal-testbed-ctl"   # extra /etc/hosts name for CTL_ADDR

log() { printf '[up.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
T0=$(now)

[[ $EUID -eq 0 ]] || die "must run as root (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)"
if ! [[ "$NODES" =~ ^[0-9]+$ ]] || (( NODES < 1 || NODES > 200 )); then die "NODES must be 1..200"; fi
[[ "$PROCTRACK" == linuxproc || "$PROCTRACK" == cgroup ]] || die "SLURM_TESTBED_PROCTRACK must be linuxproc or cgroup"
[[ "$STATE" == /* && "$STATE" != / ]] || die "SLURM_TESTBED_DIR must be an absolute path"
if [[ "$PRIVATE_TMP" == 1 && ( "$STATE" == /tmp || "$STATE" == /tmp/* ) ]]; then
  die "SLURM_TESTBED_PRIVATE_TMP=1 needs SLURM_TESTBED_DIR outside /tmp"
fi

# ---------------------------------------------------------------- packages
# Slurm + munge always; with SLURM_TESTBED_MPI=1 also Open MPI (mpicc, and
# libpmix-dev, whose unversioned libpmix.so Slurm's mpi/pmix_v4 plugin dlopens
# from /usr/lib/x86_64-linux-gnu/pmix2/lib). Nothing is installed when every
# needed file is already there (then this costs ~10 ms).
pkgs=()
for c in slurmctld slurmd sinfo srun sbatch; do
  command -v "$c" >/dev/null 2>&1 || { pkgs+=(slurmctld slurmd slurm-client); break; }
done
command -v munged >/dev/null 2>&1 && command -v munge >/dev/null 2>&1 || pkgs+=(munge)
command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1 || pkgs+=(iproute2)
command -v nsenter >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1 || pkgs+=(util-linux)
if [[ "$MPI" == 1 ]]; then
  command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1 || pkgs+=(openmpi-bin libopenmpi-dev)
  compgen -G "/usr/lib/*/pmix2/lib/libpmix.so" >/dev/null || pkgs+=(libpmix-dev)
  command -v gcc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
fi
if (( ${#pkgs[@]} )); then
  log "installing ${pkgs[*]}"
  T_APT=$(now)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
  log "packages installed in $(secs "$T_APT" "$(now)")s"
fi

# ---------------------------------------------------------------- clean slate
# The state dir is wiped; refuse a non-empty dir that up.sh did not make.
if [[ -d "$STATE" && ! -e "$STATE/.shoal-testbed" && -n "$(ls -A "$STATE")" ]]; then
  die "$STATE exists, is not empty and has no .shoal-testbed marker; not wiping it"
fi
"$HERE/down.sh" --quiet || true
# On any failure from here on, undo what was started (logs are kept).
# SLURM_TESTBED_KEEP_ON_FAIL=1 leaves everything as it is for debugging.
rollback() {
  local rc=$?
  if (( rc != 0 )) && [[ "${SLURM_TESTBED_KEEP_ON_FAIL:-0}" != 1 ]]; then
    log "failed (rc=$rc); rolling back with down.sh (logs kept in $STATE/log)"
    "$HERE/down.sh" --quiet || true
  fi
}
trap rollback EXIT
rm -rf "$STATE"
mkdir -p "$STATE"/{etc,ctld,spool,run,log,dev,munge/private}
chmod 755 "$STATE" "$STATE/munge"
chmod 700 "$STATE/munge/private"
touch "$STATE/.shoal-testbed"
echo "$NODES" > "$STATE/nodes.count"

# ---------------------------------------------------------------- preflight
if ip -o -4 addr show 2>/dev/null | grep -qF " ${SUBNET}."; then
  die "an interface already has an address in ${SUBNET}.0/24; set SLURM_TESTBED_SUBNET"
fi
if ss -Hltn "sport = :$CTLD_PORT" 2>/dev/null | grep -q .; then
  die "TCP port $CTLD_PORT is in use (another slurmctld?); set SLURM_TESTBED_CTLD_PORT"
fi

# ---------------------------------------------------------------- munge
# A private munged: own key, own socket (AuthInfo=socket=... in slurm.conf),
# run as root (allowed). It does not touch /etc/munge or /run/munge.
dd if=/dev/urandom of="$STATE/munge/private/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/private/munge.key"
munged --socket="$STATE/munge/munge.socket" \
       --key-file="$STATE/munge/private/munge.key" \
       --log-file="$STATE/log/munged.log" \
       --pid-file="$STATE/run/munged.pid" \
       --seed-file="$STATE/munge/private/munged.seed" \
  || die "munged failed, see $STATE/log/munged.log"
for _ in $(seq 50); do
  munge -S "$STATE/munge/munge.socket" -n 2>/dev/null | unmunge -S "$STATE/munge/munge.socket" >/dev/null 2>&1 && break
  sleep 0.1
done
munge -S "$STATE/munge/munge.socket" -n | unmunge -S "$STATE/munge/munge.socket" >/dev/null \
  || die "munge round trip failed"
log "munged up (pid $(cat "$STATE/run/munged.pid"))"

# ---------------------------------------------------------------- network
# Bridge with the controller address; one netns + veth per node. No default
# route in the namespaces: nodes can reach only the bridge subnet (and their
# own loopback); nothing is forwarded off the machine.
ip link add "$BRIDGE" type bridge
ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
echo "$BRIDGE" > "$STATE/bridge"
: > "$STATE/nodes.tsv"
for i in $(seq 1 "$NODES"); do
  node="${PREFIX}${i}"; ns="${NS_PREFIX}${node}"; addr="${SUBNET}.$((10 + i))"
  ip netns add "$ns"
  echo "$ns" >> "$STATE/netns.list"
  ip link add "${VETH_PREFIX}${i}" type veth peer name eth0 netns "$ns"
  ip link set "${VETH_PREFIX}${i}" master "$BRIDGE" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  printf '%s\t%s\t%s\n' "$node" "$addr" "$ns" >> "$STATE/nodes.tsv"
done

# /etc/hosts: node names -> namespace IPs, so `node2` resolves on every node
# and in the host (no DNS lookups leave the machine for these names).
tmp_hosts=$(mktemp)
sed '/^# >>> shoal-testbed >>>$/,/^# <<< shoal-testbed <<<$/d' /etc/hosts > "$tmp_hosts"
{
  echo "# >>> shoal-testbed >>>"
  echo "$CTL_ADDR $CTL_ALIAS"
  while IFS=$'\t' read -r node addr _; do echo "$addr $node"; done < "$STATE/nodes.tsv"
  echo "# <<< shoal-testbed <<<"
} >> "$tmp_hosts"
cat "$tmp_hosts" > /etc/hosts   # keep the inode (works if /etc/hosts is a bind mount)
rm -f "$tmp_hosts"

# ---------------------------------------------------------------- config
CONF="$STATE/etc/slurm.conf"
node_lines=""
gres=""
if (( GPUS > 0 )); then
  gres=" Gres=gpu:${GPUS}"
  # gres/gpu drops GPUs that have no File=, and File= must be a char/block
  # device: fake ones are aliases of /dev/null (major 1, minor 3).
  for g in $(seq 0 $((GPUS - 1))); do mknod "$STATE/dev/gpu$g" c 1 3; done
fi
while IFS=$'\t' read -r node addr _; do
  node_lines+="NodeName=${node} NodeAddr=${addr} NodeHostname=${node} CPUs=${CPUS} RealMemory=${MEM}${gres} State=UNKNOWN"$'\n'
  mkdir -p "$STATE/spool/$node" "$STATE/nodetmp/$node"
  chmod 1777 "$STATE/nodetmp/$node"   # TmpFS of the node (and its /tmp with PRIVATE_TMP=1)
done < "$STATE/nodes.tsv"
def_mem=$(( MEM / CPUS / 4 )); (( def_mem >= 1 )) || def_mem=1
if [[ "$PROCTRACK" == cgroup ]]; then
  proctrack=proctrack/cgroup; taskplugin=task/cgroup
else
  proctrack=proctrack/linuxproc; taskplugin=task/none
fi
export NODE_LINES="$node_lines"
sed -e "s|@CLUSTER@|testbed|g" \
    -e "s|@CTL_HOST@|$(hostname -s)|g" \
    -e "s|@CTL_ADDR@|$CTL_ADDR|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
    -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    -e "s|@STATE@|$STATE|g" \
    -e "s|@PROCTRACK@|$proctrack|g" \
    -e "s|@TASKPLUGIN@|$taskplugin|g" \
    -e "s|@DEF_MEM_PER_CPU@|$def_mem|g" \
    -e "s|@SLURMD_TIMEOUT@|$SLURMD_TIMEOUT|g" \
    -e "s|@KILL_WAIT@|$KILL_WAIT|g" \
    -e "s|@MIN_JOB_AGE@|$MIN_JOB_AGE|g" \
    -e "s|@PARTITION@|$PARTITION|g" \
    "$HERE/slurm.conf.template" \
  | awk '{ if ($0 == "@NODE_LINES@") printf "%s", ENVIRON["NODE_LINES"]; else print }' > "$CONF"
if (( GPUS > 0 )); then
  gpu_files="$STATE/dev/gpu0"
  (( GPUS > 1 )) && gpu_files="$STATE/dev/gpu[0-$((GPUS - 1))]"
  echo "NodeName=${PREFIX}[1-${NODES}] Name=gpu File=${gpu_files}" > "$STATE/etc/gres.conf"
else
  : > "$STATE/etc/gres.conf"
fi
if [[ "$PROCTRACK" == cgroup ]]; then
  printf 'CgroupPlugin=autodetect\nConstrainRAMSpace=yes\nConstrainCores=no\nConstrainDevices=no\n' > "$STATE/etc/cgroup.conf"
fi
echo "export SLURM_CONF=$CONF" > "$STATE/env.sh"

# Let plain `sinfo`/`sbatch` (and jobs) find the config without SLURM_CONF.
if [[ "$LINK_ETC" == 1 ]]; then
  mkdir -p /etc/slurm
  for f in slurm.conf gres.conf cgroup.conf; do
    [[ -e "$STATE/etc/$f" ]] || continue
    if [[ -L /etc/slurm/$f || ! -e /etc/slurm/$f ]]; then
      ln -sfn "$STATE/etc/$f" "/etc/slurm/$f"
    else
      log "NOTE: /etc/slurm/$f is a real file; left alone. Use: source $STATE/env.sh"
    fi
  done
fi
export SLURM_CONF="$CONF"

# MPI hello (mpi_hello.c beside this script) for tests and selftest.sh:
# STATE/bin/mpi_hello. Every node sees the same file system, so one binary.
if [[ "$MPI" == 1 && -f "$HERE/mpi_hello.c" ]]; then
  mkdir -p "$STATE/bin"
  mpicc -O2 -o "$STATE/bin/mpi_hello" "$HERE/mpi_hello.c" || die "mpicc mpi_hello.c failed"
fi

# ---------------------------------------------------------------- slurmctld
T_CTL=$(now)
slurmctld -f "$CONF" || die "slurmctld failed, see $STATE/log/slurmctld.log"
for _ in $(seq 100); do
  scontrol ping 2>/dev/null | grep -q 'is UP' && break
  sleep 0.1
done
scontrol ping | grep -q 'is UP' || die "slurmctld not answering, see $STATE/log/slurmctld.log"
log "slurmctld up (pid $(cat "$STATE/run/slurmctld.pid"))"

# ---------------------------------------------------------------- slurmd
# nsenter --net (NOT `ip netns exec`: that makes a new mount namespace with a
# fresh /sys, so /sys/fs/cgroup is empty and slurmd's cgroup plugin init fails
# even with proctrack/linuxproc). unshare --uts gives the node its hostname.
# slurmd daemonizes and writes $STATE/run/slurmd-<node>.pid.
echo "$PRIVATE_TMP" > "$STATE/private_tmp"
while IFS=$'\t' read -r node addr ns; do
  if [[ "$PRIVATE_TMP" == 1 ]]; then
    nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation slave \
      sh -c 'hostname "$1" && mount --bind "$3" /tmp && exec slurmd -f "$2" -N "$1"' \
      sh "$node" "$CONF" "$STATE/nodetmp/$node" \
      || die "slurmd for $node failed, see $STATE/log/slurmd-$node.log"
  else
    nsenter --net="/run/netns/$ns" unshare --uts \
      sh -c 'hostname "$1" && exec slurmd -f "$2" -N "$1"' sh "$node" "$CONF" \
      || die "slurmd for $node failed, see $STATE/log/slurmd-$node.log"
  fi
done < "$STATE/nodes.tsv"

# ---------------------------------------------------------------- wait idle
deadline=$(( $(date +%s) + TIMEOUT ))
resumed=0
while :; do
  states=$(sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null || true)
  n_idle=$(awk '$2 == "idle"' <<<"$states" | wc -l)
  (( n_idle == NODES )) && break
  # A node that registered with a bad config stays DRAIN/INVAL; resume once.
  bad=$(awk '$2 ~ /drain|down|inval|fail/ {print $1}' <<<"$states" | sort -u | paste -sd, -)
  if [[ -n "$bad" && $resumed == 0 && $(date +%s) -gt $(( deadline - TIMEOUT + 5 )) ]]; then
    log "resuming $bad"; scontrol update nodename="$bad" state=resume || true; resumed=1
  fi
  if (( $(date +%s) > deadline )); then
    sinfo -N -l >&2 || true
    die "nodes not idle after ${TIMEOUT}s; logs in $STATE/log"
  fi
  sleep 0.2
done
T1=$(now)
log "$NODES node(s) idle; slurmctld start to all idle: $(secs "$T_CTL" "$T1")s, whole up.sh: $(secs "$T0" "$T1")s"
sinfo -N -o '%N %T %c %m %G' >&2
echo "SLURM_CONF=$CONF"
