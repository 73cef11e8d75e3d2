"""Benchmarks of the adapters against what users would run otherwise, on this machine.

    .venv/bin/python scripts/bench_adapters.py                 # everything, one run
    .venv/bin/python scripts/bench_adapters.py --only parsl --tasks 2000

- Parsl: N no-op python apps on ShoalExecutor vs on HighThroughputExecutor (configured as
  /work/shared/PEERS.md says: LocalProvider, max_workers_per_node=2, no encryption,
  initialize_logging=False), each in its own subprocess, timed from the first submit to
  the last result after a warm-up app (so the HTEX block and the shoal cluster are up).
  Parsl's ThreadPoolExecutor (2 threads) is run too: no-op apps there cost only Parsl's
  own DataFlowKernel, the ceiling for any executor.
- api.Executor.map vs concurrent.futures.ProcessPoolExecutor.map (2 workers), chunksize
  1 and 100.
- A dask.array reduction on api.dask.get vs dask's threaded scheduler and
  dask.distributed (LocalCluster(n_workers=2, threads_per_worker=1, processes=True)).

Each figure is the median of --repeat runs (default 3) unless said otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def noop() -> None:
    return None


def small(x: int) -> int:
    return x * 2 + 1


# ---- Parsl -----------------------------------------------------------------------------------
def parsl_run(which: str, tasks: int) -> dict:
    """One Parsl run in this process: no-op apps/second on `which` executor."""
    import parsl
    from parsl.config import Config

    if which == "shoal":
        from api.parsl import ShoalExecutor

        executor = ShoalExecutor(num_cpus=2, log_to_driver=False)
    elif which == "threads":
        from parsl.executors.threads import ThreadPoolExecutor

        executor = ThreadPoolExecutor(max_threads=2)
    else:
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        executor = HighThroughputExecutor(
            label="htex", max_workers_per_node=2, encrypted=False,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    run_dir = tempfile.mkdtemp(prefix=f"bench-parsl-{which}-")
    dfk = parsl.load(Config(executors=[executor], run_dir=run_dir, initialize_logging=False,
                            strategy="simple" if which == "htex" else "none"))

    @parsl.python_app
    def nop():
        return None

    start = time.perf_counter()
    nop().result()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    futures = [nop() for _ in range(tasks)]
    submitted = time.perf_counter() - start
    for f in futures:
        f.result()
    elapsed = time.perf_counter() - start
    dfk.cleanup()
    return {"executor": which, "tasks": tasks, "seconds": elapsed,
            "tasks_per_s": tasks / elapsed, "submit_s": submitted, "first_app_s": warm}


PARSL_EXECUTORS = ("shoal", "htex", "threads")


def bench_parsl(tasks: int, repeat: int) -> dict:
    """Runs interleaved (shoal, htex, threads, shoal, ...), so load from elsewhere on the
    machine falls on all alike."""
    out: dict = {}
    all_runs: dict[str, list[dict]] = {which: [] for which in PARSL_EXECUTORS}
    for _ in range(repeat):
        for which in PARSL_EXECUTORS:
            proc = subprocess.run([sys.executable, __file__, "--parsl-child", which,
                                   "--tasks", str(tasks)], capture_output=True, text=True,
                                  timeout=1800, cwd=tempfile.gettempdir(),
                                  env={**os.environ, "PATH": os.path.dirname(sys.executable)
                                       + os.pathsep + os.environ.get("PATH", "")})
            if proc.returncode != 0:
                raise RuntimeError(f"parsl on {which} failed:\n{proc.stderr[-3000:]}")
            all_runs[which].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for which, runs in all_runs.items():
        out[which] = {"tasks_per_s": statistics.median(r["tasks_per_s"] for r in runs),
                      "seconds": statistics.median(r["seconds"] for r in runs),
                      "first_app_s": statistics.median(r["first_app_s"] for r in runs),
                      "runs": [round(r["tasks_per_s"]) for r in runs]}
    out["speedup"] = out["shoal"]["tasks_per_s"] / out["htex"]["tasks_per_s"]
    return out


# ---- concurrent.futures ----------------------------------------------------------------------
def bench_executor(calls: int, repeat: int) -> dict:
    import concurrent.futures

    import api
    from api.executor import Executor

    out: dict = {}
    api.init(num_cpus=2, log_to_driver=False)
    try:
        with Executor() as ex:
            list(ex.map(small, range(100)))            # warm the workers
            list(ex.map(small, range(1000), chunksize=100))
            for chunksize in (1, 100):
                times = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    assert sum(ex.map(small, range(calls), chunksize=chunksize)) == calls**2
                    times.append(time.perf_counter() - start)
                out[f"shoal chunksize={chunksize}"] = calls / statistics.median(times)
    finally:
        api.shutdown()
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(small, range(100)))
        list(pool.map(small, range(1000), chunksize=100))
        for chunksize in (1, 100):
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                assert sum(pool.map(small, range(calls), chunksize=chunksize)) == calls**2
                times.append(time.perf_counter() - start)
            out[f"ProcessPool chunksize={chunksize}"] = calls / statistics.median(times)
    return {"calls": calls, "calls_per_s": out}


# ---- Dask ------------------------------------------------------------------------------------
def bench_dask(size: int, chunk: int, repeat: int) -> dict:
    import dask
    import dask.array as da

    import api
    import api.dask

    x = da.random.default_rng(0).random((size, size), chunks=(chunk, chunk))
    expr = (x + x.T).mean(axis=0).sum()
    ntasks = len(expr.__dask_graph__())
    out: dict = {}

    def timed(**kw: object) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            dask.compute(expr, **kw)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    out["threads"] = timed(scheduler="threads", num_workers=2)
    api.init(num_cpus=2, log_to_driver=False)
    try:
        dask.compute(expr, scheduler=api.dask.get)     # warm the workers
        out["shoal"] = timed(scheduler=api.dask.get)
    finally:
        api.shutdown()
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        dask.compute(expr, scheduler=client.get)
        out["distributed"] = timed(scheduler=client.get)
    return {"array": f"{size}x{size} float64, chunks {chunk}x{chunk}", "graph_tasks": ntasks,
            "seconds": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["parsl", "executor", "dask"], action="append")
    parser.add_argument("--tasks", type=int, default=10_000, help="Parsl apps per run")
    parser.add_argument("--calls", type=int, default=10_000, help="Executor.map calls")
    parser.add_argument("--size", type=int, default=8000, help="dask array side")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--parsl-child", choices=PARSL_EXECUTORS, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.parsl_child:
        print(json.dumps(parsl_run(ns.parsl_child, ns.tasks)))
        return 0
    parts = ns.only or ["parsl", "executor", "dask"]
    results: dict = {"cpus": os.cpu_count()}
    if "parsl" in parts:
        results["parsl"] = bench_parsl(ns.tasks, ns.repeat)
    if "executor" in parts:
        results["executor"] = bench_executor(ns.calls, ns.repeat)
    if "dask" in parts:
        results["dask"] = bench_dask(ns.size, ns.chunk, ns.repeat)
    if ns.json:
        print(json.dumps(results, indent=1))
        return 0
    if "parsl" in results:
        p = results["parsl"]
        print(f"Parsl, {ns.tasks} no-op apps (median of {ns.repeat} runs):")
        for which in PARSL_EXECUTORS:
            r = p[which]
            print(f"  {which:<7} {r['tasks_per_s']:>9.0f} apps/s  ({r['seconds']:.2f} s; "
                  f"first app {r['first_app_s']:.2f} s; runs {r['runs']})")
        print(f"  ShoalExecutor / HTEX throughput: {p['speedup']:.1f}x (threads: Parsl's own "
              "ThreadPoolExecutor, the DFK's ceiling for no-op apps)")
    if "executor" in results:
        e = results["executor"]
        print(f"Executor.map, {e['calls']} small calls:")
        for name, rate in e["calls_per_s"].items():
            print(f"  {name:<28} {rate:>9.0f} calls/s")
    if "dask" in results:
        d = results["dask"]
        print(f"dask.array (x + x.T).mean(axis=0).sum(), {d['array']}, "
              f"{d['graph_tasks']} graph tasks:")
        for name, secs in d["seconds"].items():
            print(f"  {name:<12} {secs:>7.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
