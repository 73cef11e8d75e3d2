#!/usr/bin/env bash
# shellcheck disable=SC2016  # bash -c '...$VAR...': expanded inside the job on purpose
# selftest.sh [ROUNDS] - up.sh 3 -> multi-node checks -> down.sh, ROUNDS times
# (default 1). Exits non-zero on the first failed check. Needs root, python3.
# Checks: 3 idle nodes; srun -N2 on two hostnames; salloc -N2 nodelist;
# cross-node TCP by node name (server on node1, client on node2, and from the
# host); MPI hello over 2 nodes with srun --mpi=pmix (unless
# SLURM_TESTBED_MPI=0); --overlap steps not blocking each other in salloc and
# in sbatch; one sbatch job per node running on that node; scancel; clean
# teardown (no daemons, no netns).
set -uo pipefail
D="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS="${1:-1}"
STATE="${SLURM_TESTBED_DIR:-/var/tmp/shoal-testbed}"
OUT=$(mktemp -d /var/tmp/shoal-selftest.XXXXXX)   # not /tmp: SLURM_TESTBED_PRIVATE_TMP=1 hides it from jobs
trap 'rm -rf "$OUT"' EXIT
cd "$OUT" || exit 1
ts() { date +%s.%N; }
el() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
fail() { echo "FAIL: $*"; "$D/down.sh" --quiet; exit 1; }
ok() { echo "ok:   $*"; }

for round in $(seq 1 "$ROUNDS"); do
  echo "=== round $round"
  t0=$(ts); "$D/up.sh" 3 >"$OUT/up.log" 2>&1 || { cat "$OUT/up.log"; fail "up.sh"; }; t1=$(ts)
  ok "up.sh 3 in $(el "$t0" "$t1")s"
  # shellcheck disable=SC1091
  source "$STATE/env.sh" 2>/dev/null || true

  [[ $(sinfo -h -N -o '%T' | grep -c '^idle$') == 3 ]] || fail "3 idle nodes"; ok "3 idle nodes"

  t0=$(ts); h=$(srun -N2 hostname | sort | paste -sd, -); t1=$(ts)
  [[ "$h" == node1,node2 ]] || fail "srun -N2 hostname gave '$h'"; ok "srun -N2 hostname -> $h in $(el "$t0" "$t1")s"

  nl=$(salloc -N2 bash -c 'echo $SLURM_JOB_NODELIST' 2>/dev/null)
  [[ "$nl" == "node[1-2]" ]] || fail "salloc -N2 nodelist '$nl'"; ok "salloc -N2 -> SLURM_JOB_NODELIST=$nl"

  tcp=$(salloc -N2 bash -c '
    srun --overlap -N1 -n1 -w node1 python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((\"0.0.0.0\", 7777)); s.listen(); s.settimeout(20)
for _ in range(2):
    c, a = s.accept(); c.sendall(socket.gethostname().encode()); c.close()" &
    sleep 1
    srun --overlap -N1 -n1 -w node2 python3 -c "
import socket
s = socket.create_connection((\"node1\", 7777), timeout=5)
print(socket.gethostname(), \"->\", s.getpeername()[0], s.recv(64).decode())"
    python3 -c "
import socket
s = socket.create_connection((\"node1\", 7777), timeout=5)
print(\"host ->\", s.getpeername()[0], s.recv(64).decode())"
    wait' 2>/dev/null | paste -sd';' -)
  [[ "$tcp" == "node2 -> 10.199.77.11 node1;host -> 10.199.77.11 node1" ]] || fail "cross-node TCP: '$tcp'"
  ok "cross-node TCP: $tcp"

  if [[ "${SLURM_TESTBED_MPI:-1}" == 1 ]]; then
    t0=$(ts)
    mpi=$(salloc -N2 --ntasks-per-node=2 srun --overlap -N2 -n4 --mpi=pmix "$STATE/bin/mpi_hello" 2>"$OUT/mpi.err" | sort | paste -sd';' -)
    t1=$(ts)
    want="hello from rank 0 of 4 on node1;hello from rank 1 of 4 on node1;hello from rank 2 of 4 on node2;hello from rank 3 of 4 on node2"
    [[ "$mpi" == "$want" ]] || { cat "$OUT/mpi.err"; fail "MPI hello: '$mpi'"; }
    ok "MPI hello, 4 ranks on node1+node2 (srun --mpi=pmix) in $(el "$t0" "$t1")s"
  fi

  # A long --overlap step must not block a second step of the same job.
  ovl=$(salloc -N2 -c2 bash -c '
    srun --overlap -N2 --ntasks-per-node=1 sleep 30 & long=$!
    sleep 0.5
    t0=$(date +%s%N)
    h=$(timeout 10 srun --overlap -N2 hostname | sort | paste -sd, -)
    echo "$h $(( ($(date +%s%N) - t0) / 1000000 ))"
    kill $long; wait' 2>/dev/null)
  [[ "$ovl" =~ ^node1,node2\ ([0-9]+)$ ]] && (( BASH_REMATCH[1] < 5000 )) || fail "salloc: overlap step: '$ovl'"
  ok "salloc: 2nd srun --overlap beside a running one: ${BASH_REMATCH[1]} ms"
  jid=$(sbatch --parsable -N2 -c2 -o "$OUT/ovl.out" --wrap '
    srun --overlap -N2 --ntasks-per-node=1 sleep 30 & long=$!
    sleep 0.5
    t0=$(date +%s%N)
    h=$(timeout 10 srun --overlap -N2 hostname | sort | paste -sd, -)
    echo "$h $(( ($(date +%s%N) - t0) / 1000000 ))"
    kill $long; wait') || fail "sbatch overlap job"
  for _ in $(seq 300); do [[ -z "$(squeue -h -j "$jid" -o %T 2>/dev/null)" ]] && break; sleep 0.1; done
  ovl=$(grep -E '^node' "$OUT/ovl.out")
  [[ "$ovl" =~ ^node1,node2\ ([0-9]+)$ ]] && (( BASH_REMATCH[1] < 5000 )) || fail "sbatch: overlap step: '$ovl'"
  ok "sbatch: 2nd srun --overlap beside a running one: ${BASH_REMATCH[1]} ms"

  t0=$(ts)
  for n in 1 2 3; do
    sbatch -Q -w "node$n" -o "$OUT/job-node$n.out" --wrap 'hostname; sleep 300' || fail "sbatch node$n"
  done
  for _ in $(seq 150); do
    [[ $(squeue -h -t R -o %i | wc -l) == 3 ]] && break; sleep 0.1
  done
  t1=$(ts)
  [[ $(squeue -h -t R -o %i | wc -l) == 3 ]] || fail "3 sbatch jobs running"
  for n in 1 2 3; do
    for _ in $(seq 50); do [[ -s "$OUT/job-node$n.out" ]] && break; sleep 0.1; done
    [[ "$(cat "$OUT/job-node$n.out")" == "node$n" ]] || fail "job on node$n printed '$(cat "$OUT/job-node$n.out")'"
  done
  ok "3 sbatch jobs (one per node) running in $(el "$t0" "$t1")s"
  t0=$(ts); scancel -u "$(id -un)"
  for _ in $(seq 100); do [[ -z "$(squeue -h -t R,CG -o %i)" ]] && break; sleep 0.05; done; t1=$(ts)
  [[ -z "$(squeue -h -t R,CG -o %i)" ]] || fail "scancel"; ok "scancel -> no jobs in $(el "$t0" "$t1")s"

  t0=$(ts); "$D/down.sh" --quiet; t1=$(ts)
  left=$(ps -eo stat=,comm= | awk '$1 !~ /^Z/ && $2 ~ /^(slurmd|slurmctld|slurmstepd|munged)$/' | wc -l)
  if [[ $left != 0 ]] || ip netns list | grep -q '^shoal-'; then fail "down.sh left $left daemons / netns"; fi
  ok "down.sh in $(el "$t0" "$t1")s, nothing left"
done
echo "selftest: $ROUNDS round(s) passed"
