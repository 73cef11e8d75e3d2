"""What the run history costs a no-op burst: throughput with the history on and off,
alternating, and the CPU time the head and the history's writer spend per task.

    python scripts/bench_history_cost.py [--rounds 4] [--tasks 10000] [--bursts 3]

Each round starts one embedded cluster with the history on and one with it off (the order
alternates), warms it up, then times `--bursts` bursts of `--tasks` no-op tasks (submitted
at once, then waited for) and keeps the best. CPU time is read from /proc (user + system)
for the head's process, for the writer's, and for everything but the writer (this driver,
the head, its workers), across all bursts, the writer's after it
caught up (its CPU time stopped growing): CPU time is far less sensitive than wall time to
the other processes sharing the machine. Run it from a checkout to measure that checkout
(it imports `api` from its own directory's parent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def noop() -> None:
    return None


def _cpu(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def _writer_pid(head_pid: int) -> int:
    import psutil

    for child in psutil.Process(head_pid).children():
        try:
            if "cluster.head.historywriter" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return 0


def _all_cpu(head: int, writer: int) -> float:
    """CPU seconds of this driver, the head and its workers (not the writer)."""
    import psutil

    own = os.times()
    total = own.user + own.system
    try:
        procs = [psutil.Process(head), *psutil.Process(head).children(recursive=True)]
    except psutil.Error:
        return total
    for p in procs:
        if p.pid != writer:
            total += _cpu(p.pid)
    return total


def one(on: bool, tasks: int, bursts: int) -> dict[str, float]:
    import api
    from api import _session

    os.environ["SHOAL_HISTORY"] = "1" if on else "0"
    api.init(num_cpus=2, log_to_driver=False)
    try:
        fn = api.python_app(noop)
        head = _session._state["process"].pid
        futs = [fn() for _ in range(2000)]  # warm-up: workers, the function cache
        api.wait(futs, num_returns=len(futs))
        time.sleep(0.7)  # the writer has started (WRITER_DELAY) and caught up
        writer = _writer_pid(head)
        head0, writer0 = _cpu(head), _cpu(writer) if writer else 0.0
        all0 = _all_cpu(head, writer)
        rates = []
        for _ in range(bursts):
            start = time.perf_counter()
            futs = [fn() for _ in range(tasks)]
            api.wait(futs, num_returns=len(futs))
            rates.append(tasks / (time.perf_counter() - start))
        head1 = _cpu(head)
        all1 = _all_cpu(head, writer)
        during = (_cpu(writer) if writer else 0.0) - writer0
        writer1 = writer0
        if writer:
            time.sleep(2.5)  # it may keep frames up to 2 s (cluster.head.historypace)
            while True:  # until the writer caught up
                time.sleep(0.3)
                now = _cpu(writer)
                if now - writer1 < 0.005:
                    break
                writer1 = now
        n = tasks * bursts
        return {"rate": max(rates), "head_us": (head1 - head0) / n * 1e6,
                "all_us": (all1 - all0) / n * 1e6,
                "writer_us": (writer1 - writer0) / n * 1e6,
                "writer_during_us": during / n * 1e6}
    finally:
        api.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--bursts", type=int, default=3)
    ns = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for r in range(ns.rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            row = one(on, ns.tasks, ns.bursts)
            rows["on" if on else "off"].append(row)
            print(f"round {r} history {'on ' if on else 'off'}: {row['rate']:7.0f} tasks/s, "
                  f"head {row['head_us']:5.1f} us/task, writer {row['writer_us']:5.1f} us/task, "
                  f"all but the writer {row['all_us']:5.1f} us/task (writer during the "
                  f"bursts {row['writer_during_us']:4.1f})",
                  flush=True)
    out = {}
    for key, values in rows.items():
        out[key] = {k: statistics.median(v[k] for v in values) for k in values[0]}
    on, off = out["on"], out["off"]
    print(f"median on {on['rate']:.0f} / off {off['rate']:.0f} tasks/s: "
          f"{(1 - on['rate'] / off['rate']) * 100:.1f}% slower; head "
          f"+{on['head_us'] - off['head_us']:.1f} us/task, writer {on['writer_us']:.1f} us/task; "
          f"CPU of everything +{(on['all_us'] + on['writer_us']) / off['all_us'] * 100 - 100:.1f}%")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
