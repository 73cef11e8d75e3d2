"""Scale benchmark: a real head, a real driver, and thousands of simulated nodes.

    python scripts/bench_scale.py --nodes 1,100,1000,5000 --slots 64 --tasks 50000 \\
        [--json FILE] [--profile DIR]
    python scripts/bench_scale.py --queued 1000000

For each node count: start a head alone (``python -m cluster.node --head``, as on Slurm's
first node, with its cluster file in a private ``SHOAL_HOME``), start the simulated nodes
(``python -m cluster.node.sim``, --per-process nodes per process; each joins over the
head's node lane as ``clusterctl up``'s daemons do, or with ``--grpc`` over gRPC), and
measure

- ``join_s``: from starting the simulated nodes until the head's status shows all alive;
- ``head_cpu_idle``: head CPU seconds per wall second over --idle-seconds with nothing to
  do (heartbeats only), and ``head_rss_mb``;
- ``status_s``: wall time of ``clusterctl status`` (a fresh process: includes its start-up,
  as a user sees it); ``status_rpc_s``: the Status call alone;
- ``tasks_per_s``: a burst of --tasks no-op apps from one driver (this process), submitted
  at once and waited for, end to end; ``head_us_per_task`` / ``driver_us_per_task``: CPU
  of the head / this process per task during the burst;
- ``p50_ms`` / ``p99_ms``: dispatch latency, submit to result of single no-op apps on an
  otherwise idle cluster (--latency-samples round trips); ``burst_p50_ms`` /
  ``burst_p99_ms``: submit to result of a sample of the burst's tasks (queueing included).

Then the cluster goes down (``clusterctl down``'s teardown: the head tells every node to
stop) and each simulation process reports how many tasks it answered; a row is marked
``ok`` only if every submitted task was answered exactly once. With ``--profile DIR`` the
head is sampled with py-spy while idle and during the burst, and so is this process (the
driver) during the burst; DIR gets the raw stacks and a ``.top.txt`` per profile ranking
functions by cumulative and self share of the samples.

With ``--queued N`` it measures memory instead: a head with no nodes, one driver
submitting N no-op tasks that all stay queued, and the head's and driver's RSS once the
head counts them all (``head_bytes_per_task``).

The default --tasks is the issue's 50000: with packing placement (a burst fills whole
nodes' free slots instead of a few tasks on every node) ``--nodes 1,2000`` runs in about
a minute on a 2-core machine that head, driver and simulated nodes share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
# Our own cluster files, never the user's real clusters (set before cluster code reads it).
HOME = tempfile.mkdtemp(prefix="shoal-bench-scale-")
os.environ["SHOAL_HOME"] = HOME
os.environ.pop("SHOAL_ADDRESS", None)
# No worker lease (api/_lease.py): the latency rows measure the head's dispatch, and a
# simulated node cannot host the lease's actor (its one failed task had every row's
# exactly-once check fail).
os.environ["SHOAL_LEASE"] = "0"

import psutil  # noqa: E402

import api  # noqa: E402
from cluster.common import auth, clusterfile, paths  # noqa: E402
from cluster.slurm import bootstrap  # noqa: E402

COLUMNS = [("nodes", "{:>6}"), ("tasks_per_s", "{:>11.0f}"), ("head_cpu_idle", "{:>13.3f}"),
           ("head_rss_mb", "{:>11.0f}"), ("join_s", "{:>7.2f}"), ("status_s", "{:>8.2f}"),
           ("p50_ms", "{:>7.2f}"), ("p99_ms", "{:>7.2f}"), ("burst_p50_ms", "{:>12.0f}"),
           ("burst_p99_ms", "{:>12.0f}"), ("head_us_per_task", "{:>16.0f}"),
           ("driver_us_per_task", "{:>18.0f}"), ("tasks_per_batch", "{:>15.1f}"),
           ("ok", "{!s:>5}")]


def noop() -> None:
    """The no-op app of the burst."""
    return None


class Profiler:
    """py-spy sampling one process into a raw (collapsed stacks) file until stopped."""

    def __init__(self, pid: int, path: str, rate: int) -> None:
        self.path = path
        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.path.exists(exe):
            raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
        # --nonblocking: do not pause the sampled process (it would slow the very loop
        # we measure); the odd torn stack does not change a ranking.
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--nonblocking", "--output", path], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """End sampling (py-spy writes its file on SIGINT) and rank the functions."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if os.path.exists(self.path):
            with open(self.path + ".top.txt", "w") as f:
                f.write(rank_profile(self.path))


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def rank_profile(path: str, top: int = 40) -> str:
    """Functions of a py-spy raw profile by cumulative share (the function is anywhere on
    the stack) and self share (on top), as a text table."""
    total = 0
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            names = []
            for frame in stack.split(";"):
                match = _FRAME.match(frame)
                if match is None:
                    names.append(frame)  # a thread or process label
                    continue
                file = match["file"].replace(ROOT + "/", "")
                file = re.sub(r".*/site-packages/", "", file)
                names.append(f"{match['fn']} ({file})")
            for name in set(names):
                cumulative[name] += count
            own[names[-1]] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples\n", f"{'cum%':>6} {'self%':>6}  function"]
    for name, count in cumulative.most_common(top):
        lines.append(f"{100 * count / total:6.1f} {100 * own[name] / total:6.1f}  {name}")
    lines.append("\nby self share")
    for name, count in own.most_common(top // 2):
        lines.append(f"{100 * cumulative[name] / total:6.1f} {100 * count / total:6.1f}  {name}")
    return "\n".join(lines) + "\n"


def _env(secret: str) -> dict[str, str]:
    env = bootstrap.child_env(secret)
    env["SHOAL_HOME"] = HOME
    return env


def start_head(cluster_id: str, node_timeout: float) -> tuple[subprocess.Popen,
                                                              clusterfile.ClusterFile]:
    """A head alone, as on Slurm's first node; returns (process, its cluster file)."""
    secret = auth.new_secret()
    log_dir = paths.log_dir(cluster_id)
    cmd = [sys.executable, "-m", "cluster.node", "--head", "--cluster-id", cluster_id,
           "--write-cluster-file", "--host", "127.0.0.1", "--log-dir", log_dir,
           "--node-timeout", str(node_timeout)]
    with open(os.path.join(log_dir, "head.stderr"), "ab") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=_env(secret), start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"the head did not start; see {log_dir}")
    return proc, clusterfile.read(clusterfile.path_for(cluster_id))


def start_sims(cf: clusterfile.ClusterFile, nodes: int, slots: int, per_process: int,
               extra: list[str], grpc: bool = False) -> list[subprocess.Popen]:
    """ceil(nodes / per_process) simulation processes sharing `nodes` evenly, joining over
    the head's node lane as `clusterctl up`'s daemons do (`grpc`: over gRPC)."""
    count = max(1, math.ceil(nodes / per_process))
    address = cf.address if grpc else f"tcp:{cf.node_lane_address}"
    procs = []
    for i in range(count):
        share = nodes // count + (1 if i < nodes % count else 0)
        cmd = [sys.executable, "-m", "cluster.node.sim", "--head-address", address,
               "--cluster-id", cf.cluster_id, "--nodes", str(share), "--slots", str(slots),
               "--name-prefix", f"sim{i}-", "--log-file",
               os.path.join(cf.log_dir, f"sim{i}.log"), *extra]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, env=_env(cf.secret),
                                      start_new_session=True))
    return procs


def alive_count(cf: clusterfile.ClusterFile) -> int:
    reply = bootstrap.status(cf, 60.0)
    return sum(1 for n in reply.nodes if n.state == "alive")


def wait_joined(cf: clusterfile.ClusterFile, nodes: int, timeout: float,
                sims: list[subprocess.Popen]) -> float:
    """Seconds until the head's status shows `nodes` alive (the clock started by caller)."""
    deadline = time.monotonic() + timeout
    while True:
        if alive_count(cf) >= nodes:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"only {alive_count(cf)} of {nodes} nodes joined in {timeout:g}s")
        if any(p.poll() is not None for p in sims):
            raise SystemExit("a simulation process ended early; see its log in "
                             f"{cf.log_dir}")
        time.sleep(0.25)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def run_row(ns: argparse.Namespace, nodes: int) -> dict[str, Any]:
    """Everything measured for one node count."""
    cluster_id = f"scale{nodes}-{os.getpid()}"
    head, cf = start_head(cluster_id, ns.node_timeout)
    head_ps = psutil.Process(head.pid)
    row: dict[str, Any] = {"nodes": nodes, "slots": ns.slots, "tasks": ns.tasks}
    sims: list[subprocess.Popen] = []
    profilers: list[Profiler] = []
    try:
        t0 = time.monotonic()
        extra = ["--heartbeat", str(ns.heartbeat)]
        sims = start_sims(cf, nodes, ns.slots, ns.per_process, extra, grpc=ns.grpc)
        row["sim_processes"] = len(sims)
        row["join_s"] = wait_joined(cf, nodes, ns.join_timeout, sims) - t0
        time.sleep(2.0)  # let the join's stragglers (node-table broadcasts) settle

        if ns.profile:
            profilers = [Profiler(head.pid, os.path.join(ns.profile, f"head-idle-{nodes}.txt"),
                                  ns.rate)]
        sim_ps = [psutil.Process(p.pid) for p in sims]
        c0, s0, w0 = cpu_seconds(head_ps), sum(map(cpu_seconds, sim_ps)), time.monotonic()
        time.sleep(ns.idle_seconds)
        c1, s1, w1 = cpu_seconds(head_ps), sum(map(cpu_seconds, sim_ps)), time.monotonic()
        for p in profilers:
            p.stop()
        profilers = []
        row["head_cpu_idle"] = (c1 - c0) / (w1 - w0)
        row["sim_cpu_idle"] = (s1 - s0) / (w1 - w0)
        row["head_rss_idle_mb"] = head_ps.memory_info().rss / 2**20

        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "cluster.cli", "status", "--cluster", cluster_id,
                        "--timeout", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, env={**os.environ, "PYTHONPATH": ROOT})
        row["status_s"] = time.monotonic() - start
        rpc = []
        for _ in range(3):
            start = time.monotonic()
            bootstrap.status(cf, 60.0)
            rpc.append(time.monotonic() - start)
        row["status_rpc_s"] = statistics.median(rpc)

        api.init(cf.path, log_to_driver=False)
        app = api.python_app(noop)
        # Warm up: every node gets the function body once (it travels with a node's first
        # task), and the driver's and head's code paths are warm.
        warm = min(ns.tasks, max(500, nodes))
        for fut in [app() for _ in range(warm)]:
            fut.result()
        submitted = warm

        me = psutil.Process()
        stamps: list[float] = []
        done_at: dict[int, float] = {}
        every = max(1, ns.tasks // 2000)
        if ns.profile:
            profilers = [Profiler(head.pid, os.path.join(ns.profile, f"head-burst-{nodes}.txt"),
                                  ns.rate),
                         Profiler(os.getpid(),
                                  os.path.join(ns.profile, f"driver-burst-{nodes}.txt"), ns.rate)]
            time.sleep(0.5)  # py-spy attaches
        c0, d0 = cpu_seconds(head_ps), cpu_seconds(me)
        start = time.perf_counter()
        futs = []
        for i in range(ns.tasks):
            fut = app()
            if i % every == 0:
                stamps.append(time.perf_counter())
                fut.add_done_callback(
                    lambda _f, k=len(stamps) - 1: done_at.__setitem__(k, time.perf_counter()))
            futs.append(fut)
        submit_s = time.perf_counter() - start
        for fut in futs:
            fut.result()
        elapsed = time.perf_counter() - start
        c1, d1 = cpu_seconds(head_ps), cpu_seconds(me)
        for p in profilers:
            p.stop()
        profilers = []
        submitted += ns.tasks
        row["tasks_per_s"] = ns.tasks / elapsed
        row["submit_per_s"] = ns.tasks / submit_s
        row["head_us_per_task"] = 1e6 * (c1 - c0) / ns.tasks
        row["driver_us_per_task"] = 1e6 * (d1 - d0) / ns.tasks
        time.sleep(0.2)  # the last done-callbacks
        burst = [1000 * (done_at[k] - stamps[k]) for k in done_at]
        row["burst_p50_ms"] = percentile(burst, 0.5)
        row["burst_p99_ms"] = percentile(burst, 0.99)
        row["head_rss_mb"] = head_ps.memory_info().rss / 2**20

        latency = []
        for _ in range(ns.latency_samples):
            start = time.perf_counter()
            app().result()
            latency.append(1000 * (time.perf_counter() - start))
        submitted += ns.latency_samples
        row["p50_ms"] = percentile(latency, 0.5)
        row["p99_ms"] = percentile(latency, 0.99)

        reply = bootstrap.status(cf, 60.0)
        row["head_tasks_done"] = reply.tasks_done
        row["head_tasks_failed"] = reply.tasks_failed
        row["nodes_alive_after"] = sum(1 for n in reply.nodes if n.state == "alive")
        api.shutdown()
    finally:
        for p in profilers:
            p.stop()
        api.shutdown()
        bootstrap.teardown(clusterfile.read(cf.path), 10.0)  # what `clusterctl down` does
        if head.poll() is None:
            head.kill()
        head.wait()
        summaries = collect(sims)
    row["sim_tasks"] = sum(s.get("tasks", 0) for s in summaries)
    row["sim_duplicates"] = sum(s.get("duplicates", 0) for s in summaries)
    row["registrations"] = sum(s.get("registrations", 0) for s in summaries)
    row["registration_retries"] = sum(s.get("retries", 0) for s in summaries)
    # Over the whole row (warm-up, burst, latency samples): tasks per message each way.
    batches = sum(s.get("task_batches", 0) for s in summaries)
    answers = sum(s.get("result_batches", 0) for s in summaries)
    row["tasks_per_batch"] = row["sim_tasks"] / batches if batches else 0.0
    row["results_per_batch"] = row["sim_tasks"] / answers if answers else 0.0
    row["ok"] = (row["sim_tasks"] == submitted and row["sim_duplicates"] == 0 and
                 row.get("head_tasks_done") == submitted and row["registrations"] == nodes)
    return row


def run_queued(ns: argparse.Namespace) -> dict[str, Any]:
    """Memory with --queued no-op tasks waiting: a head with no nodes (so nothing runs and
    nothing is refused), one driver submitting them all; the row has the head's and the
    driver's RSS before and once the head's status counts every task queued."""
    cluster_id = f"queued-{os.getpid()}"
    head, cf = start_head(cluster_id, ns.node_timeout)
    head_ps, me = psutil.Process(head.pid), psutil.Process()
    row: dict[str, Any] = {"queued": ns.queued}
    try:
        api.init(cf.path, log_to_driver=False)
        app = api.python_app(noop)
        time.sleep(0.5)
        row["head_rss_before_mb"] = head_ps.memory_info().rss / 2**20
        row["driver_rss_before_mb"] = me.memory_info().rss / 2**20
        start = time.monotonic()
        futs = [app() for _ in range(ns.queued)]
        while bootstrap.status(cf, 60.0).tasks_queued < ns.queued:
            if time.monotonic() - start > 600:
                raise SystemExit("the head did not queue every task in 600 s")
            time.sleep(0.5)
        row["submit_s"] = time.monotonic() - start
        time.sleep(1.0)
        head_rss = head_ps.memory_info().rss
        row["head_rss_mb"] = head_rss / 2**20
        row["driver_rss_mb"] = me.memory_info().rss / 2**20
        row["head_bytes_per_task"] = (head_rss / 2**20 - row["head_rss_before_mb"]) \
            * 2**20 / ns.queued
        del futs
    finally:
        api.shutdown()
        bootstrap.teardown(clusterfile.read(cf.path), 10.0)
        if head.poll() is None:
            head.kill()
        head.wait()
    return row


def collect(sims: list[subprocess.Popen]) -> list[dict[str, Any]]:
    """Each simulation process's JSON summary (they stop when the head says shutdown)."""
    summaries = []
    for proc in sims:
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
        for line in out.decode(errors="replace").splitlines()[::-1]:
            if line.startswith("{"):
                summaries.append(json.loads(line))
                break
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,100,1000,5000",
                        help="comma-separated simulated node counts, one row each")
    parser.add_argument("--slots", type=int, default=64, help="cpus per simulated node")
    parser.add_argument("--tasks", type=int, default=50000, help="no-op tasks in the burst")
    parser.add_argument("--json", default="", help="write the rows here as a JSON list")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--per-process", type=int, default=1000,
                        help="simulated nodes per simulation process")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--node-timeout", type=float, default=10.0,
                        help="the head's heartbeat timeout (s)")
    parser.add_argument("--join-timeout", type=float, default=300.0)
    parser.add_argument("--profile", default="", help="py-spy profiles into this directory")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--grpc", action="store_true",
                        help="simulated nodes join over gRPC (default: the node lane)")
    parser.add_argument("--queued", type=int, default=0,
                        help="instead of the node rows: head (and driver) memory with this "
                             "many tasks queued")
    ns = parser.parse_args()
    if ns.queued:
        try:
            row = run_queued(ns)
        finally:
            shutil.rmtree(HOME, ignore_errors=True)
        print(json.dumps(row), flush=True)
        if ns.json:
            with open(ns.json, "w") as f:
                json.dump([row], f, indent=1)
        return
    if ns.profile:
        os.makedirs(ns.profile, exist_ok=True)
    counts = [int(n) for n in ns.nodes.split(",") if n.strip()]
    print(f"{ns.tasks} no-op tasks per burst, {ns.slots} slots per node, "
          f"{os.cpu_count()} cores", flush=True)
    print(" ".join(f"{name:>{_width(fmt)}}" for name, fmt in COLUMNS), flush=True)
    rows = []
    started = time.monotonic()
    try:
        for nodes in counts:
            row = run_row(ns, nodes)
            rows.append(row)
            print(" ".join(fmt.format(row.get(name, float("nan"))) for name, fmt in COLUMNS),
                  flush=True)
            if ns.json:  # after every row: a run cut short keeps what it measured
                with open(ns.json, "w") as f:
                    json.dump(rows, f, indent=1)
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
    print(f"total {time.monotonic() - started:.0f}s", flush=True)
    if not all(r["ok"] for r in rows):
        sys.exit(1)


def _width(fmt: str) -> int:
    """The field width of a format like '{:>11.0f}'."""
    match = re.search(r">(\d+)", fmt)
    return int(match.group(1)) if match else 8


if __name__ == "__main__":
    main()
