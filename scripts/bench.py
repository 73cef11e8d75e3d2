"""shoal's benchmark suite, run side by side with Ray, Dask and Parsl when they are installed.

    python scripts/bench.py                                   # shoal only
    python scripts/bench.py --peers ray,dask,parsl --peers-python /path/venv/bin/python

Each backend runs in its own subprocess (a fresh interpreter, 2 worker processes) with
1 warm-up and --reps repetitions per workload; we print median (min-max) and each peer's
ratio to shoal measured in the same run. Workloads:

- noop: N no-op tasks submitted at once, then waited for (tasks/s, end to end)
- submit: the submission of N no-op tasks alone (tasks/s)
- sync: submit one task, wait for it, M times (microseconds per round trip)
- chain: an L-link chain, each task taking the previous future (ms per link)
- actor_sync / actor_async: calls on one actor, each waited for / all fired then waited
- memo_miss / memo_hit (shoal only): N calls of a ``cache=True`` app with distinct
  arguments (each a task: the key's cost on top of a no-op), then the same N again (hits)
- cold: a fresh interpreter starts a local cluster and gets one result (s, whole process)
- idle RSS: memory of the idle cluster's processes beside the driver (MB); and PSS, the
  same with pages shared between processes split among them
- history on / off: the no-op burst with the run history written (the default) and with
  ``SHOAL_HISTORY=0``, alternating A/B in fresh clusters (``--history-only`` runs just this)
- tasks that submit tasks (scripts/bench_nested.py, shoal and Ray): recursive fib(16) on
  2 CPUs (s), 5,000 no-ops submitted and waited for inside one task vs. by the driver
  (tasks/s), a ``join_app`` fan-out of 1,000 (s; Ray: a task getting 1,000 it submitted)
- the multi-node path (scripts/bench_cost.py): head and driver CPU per no-op task with the
  daemon joined and the driver connected over gRPC (``head_cpu_task_us``,
  ``driver_cpu_task_us``), that burst's tasks/s; the same burst as ``clusterctl up`` joins
  a daemon (its node lane) and a driver on another host connects (the TCP driver lane):
  ``lane_head_cpu_task_us``, ``lane_driver_cpu_task_us``, ``lane_noop``; and the CPU
  seconds to boot one daemon and its first worker, over the node lane (``boot_cpu_s``)
  and over gRPC (``grpc_boot_cpu_s``)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)


from bench_peers import Counter, inc, noop, timed  # noqa: E402 - the same functions for every peer


class ShoalPeer:
    """shoal, with the same interface as the peers in bench_peers.py."""

    name = "shoal"

    def start(self, workers: int) -> None:
        import api

        self.api = api
        api.init(num_cpus=workers, log_to_driver=False)
        self.noop = api.python_app(noop)
        self.inc = api.python_app(inc)
        self.noop().result()

    def stop(self) -> None:
        self.api.shutdown()

    def noop_burst(self, n: int) -> None:
        self.wait_all(self.submit_only(n))

    def submit_only(self, n: int) -> list:
        f = self.noop
        return [f() for _ in range(n)]

    def wait_all(self, futs: list) -> None:
        for fut in futs:
            fut.result()

    def sync_round_trips(self, n: int) -> None:
        f = self.noop
        for _ in range(n):
            f().result()

    def chain(self, n: int) -> None:
        fut = self.inc(0)
        for _ in range(n - 1):
            fut = self.inc(fut)
        assert fut.result() == n

    def actor_sync(self, n: int) -> None:
        add = self._actor().add
        for _ in range(n):
            add(1).result()

    def actor_async(self, n: int) -> None:
        add = self._actor().add
        for fut in [add(1) for _ in range(n)]:
            fut.result()

    def memo_calls(self, n: int, rep: int) -> tuple[float, float]:
        """(misses/s, hits/s) of a cache=True app over n distinct calls."""
        cached = self.api.python_app(inc, cache=True)
        base = rep * n * 10
        start = time.perf_counter()
        self.wait_all([cached(base + i) for i in range(n)])
        miss = n / (time.perf_counter() - start)
        start = time.perf_counter()
        self.wait_all([cached(base + i) for i in range(n)])
        return miss, n / (time.perf_counter() - start)

    def _actor(self) -> Any:
        if getattr(self, "_counter", None) is None:
            self._counter = self.api.actor(Counter)()
            self._counter.add(0).result()
        return self._counter

    def cold_start_script(self) -> str:
        return (
            f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "import api\n"
            "api.init(num_cpus=2, log_to_driver=False)\n"
            "def one():\n    return 1\n"
            "print(api.python_app(one)().result())\n"
            "api.shutdown()\n"
        )

    def cluster_pids(self) -> list[int]:
        import psutil

        me = psutil.Process()
        return [p.pid for p in me.children(recursive=True)]


def object_figures(reps: int) -> dict[str, list[float]]:
    """Object workloads through the runtime (scripts/bench_objects.py, its own cluster)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bench_objects.py"), str(reps)],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        print(f"object workloads failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cost_figures(reps: int, tasks: int) -> dict[str, list[float]]:
    """CPU per task of the head and the driver over gRPC, and a daemon's boot CPU
    (scripts/bench_cost.py, its own cluster)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bench_cost.py"), str(reps),
                           str(tasks)], capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        print(f"cost workloads failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def history_figures(reps: int, tasks: int) -> dict[str, list[float]]:
    """The no-op burst with the run history on and off, alternating, each in a fresh
    embedded cluster (the env var reaches its head), after one warm-up burst each."""
    import api

    fn = api.python_app(noop)
    out: dict[str, list[float]] = {"noop_history_on": [], "noop_history_off": []}
    for i in range(2 * reps + 2):
        on = i % 2 == 0
        os.environ["SHOAL_HISTORY"] = "1" if on else "0"
        api.init(num_cpus=2, log_to_driver=False)
        try:
            futs = [fn() for _ in range(tasks)]  # warm-up (workers, function cache)
            api.wait(futs, num_returns=len(futs))
            start = time.perf_counter()
            futs = [fn() for _ in range(tasks)]
            api.wait(futs, num_returns=len(futs))
            if i >= 2:
                out["noop_history_on" if on else "noop_history_off"].append(
                    tasks / (time.perf_counter() - start))
        finally:
            api.shutdown()
    os.environ.pop("SHOAL_HISTORY", None)
    return out


def nested_figures(name: str, reps: int) -> dict[str, list[float]]:
    """Tasks that submit tasks (scripts/bench_nested.py, its own cluster; shoal and Ray)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bench_nested.py"), name,
                           str(reps)], capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        print(f"nested workloads failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peer(name: str) -> Any:
    if name == "shoal":
        return ShoalPeer()
    import bench_peers

    peers = bench_peers.available_peers()
    if name not in peers:
        raise SystemExit(f"peer {name!r} is not installed in {sys.executable}")
    return peers[name]()


def _memory_mb(pids: list[int], kind: str = "rss") -> float:
    """The `kind` memory of the processes `pids` summed, in MB: ``rss``, or ``pss`` (a
    page shared by k of the processes counts 1/k in each: forked workers share their
    zygote's pages, which RSS counts in full in every one)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            info = proc.memory_info() if kind == "rss" else proc.memory_full_info()
            total += getattr(info, kind)
        except (psutil.Error, AttributeError):
            pass
    return total / 2**20


def run_one(name: str, ns: argparse.Namespace) -> dict[str, Any]:
    """Run every workload on one backend in this process; returns raw samples."""
    peer = _peer(name)
    results: dict[str, Any] = {}
    cold = []
    script = peer.cold_start_script()
    for i in range(ns.reps + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                       timeout=120, cwd=ROOT)
        if i:
            cold.append(time.perf_counter() - start)
    results["cold"] = cold
    if name in ("shoal", "ray"):
        results.update(nested_figures(name, ns.reps))
    if name == "shoal":
        results.update(history_figures(ns.reps, ns.tasks))
        results.update(object_figures(ns.reps))
        results.update(cost_figures(ns.reps, 2 * ns.tasks))
    peer.start(2)
    try:
        import psutil

        time.sleep(1.0)
        children = [p.pid for p in psutil.Process().children(recursive=True)]
        if hasattr(peer, "detached_pids"):  # processes of its cluster that are no children
            children += [pid for pid in peer.detached_pids() if pid not in children]
        results["rss"] = [_memory_mb(children, "rss")]
        results["pss"] = [_memory_mb(children, "pss")]
        n, m, chain = ns.tasks, ns.sync, ns.chain
        results["noop"] = [n / t for t in timed(lambda: peer.noop_burst(n), ns.reps)]
        subs = []
        for _ in range(ns.reps):
            start = time.perf_counter()
            futs = peer.submit_only(n)
            subs.append(n / (time.perf_counter() - start))
            peer.wait_all(futs)
        results["submit"] = subs
        results["sync"] = [t / m * 1e6 for t in timed(lambda: peer.sync_round_trips(m),
                                                       ns.reps)]
        results["chain"] = [t / chain * 1e3 for t in timed(lambda: peer.chain(chain),
                                                            ns.reps)]
        if hasattr(peer, "memo_calls"):
            memo = [peer.memo_calls(n, r) for r in range(ns.reps)]
            results["memo_miss"] = [m for m, _ in memo]
            results["memo_hit"] = [h for _, h in memo]
        if hasattr(peer, "object_workloads"):
            results.update(peer.object_workloads(ns.reps))
        if hasattr(peer, "actor_sync"):
            a = ns.actor_calls
            results["actor_sync"] = [a / t for t in timed(lambda: peer.actor_sync(a), ns.reps)]
            results["actor_async"] = [a * 5 / t for t in
                                      timed(lambda: peer.actor_async(a * 5), ns.reps)]
    finally:
        peer.stop()
    return results


ROWS = [
    ("noop", "no-op tasks, tasks/s", True),
    ("submit", "submit alone, tasks/s", True),
    ("sync", "sync round trip, us", False),
    ("chain", "chain, ms/link", False),
    ("memo_miss", "cache=True no-op tasks (misses), tasks/s", True),
    ("memo_hit", "cache=True hits in one driver, calls/s", True),
    ("actor_sync", "actor calls 1:1 sync, per s", True),
    ("actor_async", "actor calls fire-then-wait, per s", True),
    ("cold", "cold start to first result, s", False),
    ("obj_put", "put 256 MiB, GB/s", True),
    ("obj_put_1mib", "put 1 MiB, us", False),
    ("obj_get", "get of a 1 GiB put, ms", False),
    ("obj_task_sum", "task sum of put ref, % in-proc", True),
    ("obj_result", "256 MiB result to driver, ms", False),
    ("obj_actor_result", "512 MiB actor result to driver, ms", False),
    ("obj_n2n", "node to node, GB/s", True),
    ("obj_tcp", "raw TCP same addresses, GB/s", True),
    ("obj_remote_put", "remote driver put, GB/s", True),
    ("obj_remote_get", "remote driver get, GB/s", True),
    ("nested_fib", "nested fib(16), 2 CPUs, s", False),
    ("nested_submit", "5,000 submitted in a task, /s", True),
    ("driver_submit", "same 5,000 from the driver, /s", True),
    ("join_fanout", "join_app fan-out of 1,000, s", False),
    ("rss", "idle cluster RSS, MB", False),
    ("pss", "idle cluster PSS, MB", False),
    ("noop_history_on", "no-op tasks/s, history on", True),
    ("noop_history_off", "no-op tasks/s, history off", True),
    ("grpc_noop", "no-op tasks over gRPC, tasks/s", True),
    ("head_cpu_task_us", "head CPU per task (gRPC), us", False),
    ("driver_cpu_task_us", "driver CPU per task (gRPC), us", False),
    ("lane_noop", "no-op tasks, TCP lanes, tasks/s", True),
    ("lane_head_cpu_task_us", "head CPU per task (TCP lanes), us", False),
    ("lane_driver_cpu_task_us", "driver CPU per task (TCP lanes), us", False),
    ("boot_cpu_s", "daemon + worker boot CPU (node lane), s", False),
    ("grpc_boot_cpu_s", "daemon + worker boot CPU (gRPC), s", False),
]


def _fmt(samples: list[float]) -> str:
    med = statistics.median(samples)
    digits = 0 if med >= 100 else 2
    if len(samples) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(samples):,.{digits}f}-{max(samples):,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="", help="comma-separated: ray,dask,parsl")
    parser.add_argument("--peers-python", default=os.environ.get("PEERS_PYTHON", ""),
                        help="interpreter that has the peers installed")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--sync", type=int, default=1_000)
    parser.add_argument("--chain", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--actor-calls", type=int, default=2_000,
                        help="sync actor calls (fire-then-wait uses 5x as many)")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--history-only", action="store_true",
                        help="only the no-op burst with the run history on and off")
    parser.add_argument("--json", default="", help="also write the raw samples here")
    ns = parser.parse_args()
    if ns.history_only:
        figures = history_figures(ns.reps, ns.tasks)
        for key, samples in figures.items():
            print(f"{key:<20} {_fmt(samples)}  {[round(x) for x in samples]}")
        on, off = (statistics.median(figures[k]) for k in ("noop_history_on",
                                                           "noop_history_off"))
        print(f"history on is {100 * (1 - on / off):+.1f}% slower (median of {ns.reps})")
        return
    if ns.one:
        print(json.dumps(run_one(ns.one, ns)))
        return
    names = ["shoal"] + [p for p in ns.peers.split(",") if p]
    all_results: dict[str, dict[str, Any]] = {}
    for name in names:
        python = sys.executable if name == "shoal" or not ns.peers_python else ns.peers_python
        args = [python, os.path.abspath(__file__), "--one", name, "--tasks", str(ns.tasks),
                "--sync", str(ns.sync), "--chain", str(ns.chain), "--reps", str(ns.reps),
                "--actor-calls", str(ns.actor_calls)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
        print(f"running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        if "failed" in proc.stderr:  # a workload that failed: its rows are left out, say why
            print(f"{name}: {proc.stderr[-3000:]}", file=sys.stderr)
        all_results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(all_results, f, indent=1)
    header = f"{'workload':<32}" + "".join(f"{n:>26}" for n in all_results)
    print(f"\n{ns.tasks} tasks, {ns.sync} round trips, {ns.chain}-link chain, "
          f"2 workers, median (min-max) of {ns.reps}\n")
    print(header)
    base = all_results.get("shoal", {})
    for key, label, _ in ROWS:
        row = f"{label:<32}"
        for res in all_results.values():
            row += f"{_fmt(res[key]):>26}" if key in res else f"{'-':>26}"
        print(row)
    if len(all_results) > 1 and base:
        print("\nshoal's advantage (x times better than the peer; >1 means shoal wins):")
        for key, label, higher_better in ROWS:
            parts = []
            for name, res in all_results.items():
                if name == "shoal" or key not in res or key not in base:
                    continue
                ours, theirs = statistics.median(base[key]), statistics.median(res[key])
                ratio = ours / theirs if higher_better else theirs / ours
                parts.append(f"{name} {ratio:.2f}x")
            print(f"  {label:<32}" + ", ".join(parts))


if __name__ == "__main__":
    main()
