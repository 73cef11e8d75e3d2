"""Dynamic-workflow workloads (tasks that submit tasks), for scripts/bench.py.

    python scripts/bench_nested.py shoal|ray REPS

Runs in its own interpreter on a 2-CPU local cluster of the backend (Ray: ``ray.init
(num_cpus=2)``, its nested ``.remote()`` calls), 1 warm-up and REPS repetitions each, and
prints one JSON line of samples:

- ``nested_fib``: recursive fib(16), each level submitting two tasks and waiting (3,193
  tasks, 16 deep), seconds
- ``nested_submit``: one task submits 5,000 no-ops and waits for them, tasks/s; and
  ``driver_submit``, the same 5,000 no-ops submitted and waited for by the driver
- ``join_fanout``: shoal's ``join_app`` returning 1,000 futures (Ray: a task that
  submits 1,000 and gets them), seconds
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

from bench_peers import timed  # (this script's folder is on sys.path when it runs)

FIB = 16
NESTED = 5_000
FANOUT = 1_000


def noop() -> None:
    return None


def shoal_samples(reps: int) -> dict[str, list[float]]:
    import api

    api.init(num_cpus=2, log_to_driver=False)
    nop = api.python_app(noop)

    @api.python_app
    def fib(n: int) -> int:
        if n < 2:
            return n
        a, b = fib(n - 1), fib(n - 2)
        return a.result() + b.result()

    @api.python_app
    def submitter(n: int) -> int:
        futs = [nop() for _ in range(n)]
        api.get(futs)
        return n

    @api.join_app
    def fan(n: int) -> Any:
        return [nop() for _ in range(n)]

    try:
        return _run(lambda: fib(FIB).result(), lambda: submitter(NESTED).result(),
                    lambda: [f.result() for f in [nop() for _ in range(NESTED)]],
                    lambda: fan(FANOUT).result(), reps)
    finally:
        api.shutdown()


def ray_samples(reps: int) -> dict[str, list[float]]:
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                       "RAY_USAGE_STATS_ENABLED": "0"})
    import ray

    temp = tempfile.mkdtemp(prefix="bench-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=temp, log_to_driver=False)
    nop = ray.remote(noop)

    @ray.remote
    def fib(n: int) -> int:
        if n < 2:
            return n
        return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))

    @ray.remote
    def submitter(n: int) -> int:
        ray.get([nop.remote() for _ in range(n)])
        return n

    try:
        return _run(lambda: ray.get(fib.remote(FIB)), lambda: ray.get(submitter.remote(NESTED)),
                    lambda: ray.get([nop.remote() for _ in range(NESTED)]),
                    lambda: ray.get(submitter.remote(FANOUT)), reps)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _run(fib: Any, nested: Any, driver: Any, fanout: Any, reps: int) -> dict[str, list[float]]:
    assert fib() == 987
    return {
        "nested_fib": timed(fib, reps),
        "nested_submit": [NESTED / t for t in timed(nested, reps)],
        "driver_submit": [NESTED / t for t in timed(driver, reps)],
        "join_fanout": timed(fanout, reps),
    }


def main() -> None:
    backend, reps = sys.argv[1], int(sys.argv[2])
    samples = shoal_samples(reps) if backend == "shoal" else ray_samples(reps)
    print(json.dumps(samples))


if __name__ == "__main__":
    main()
