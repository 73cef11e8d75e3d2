"""A small workflow: a DAG of python apps, a shared object ref, a bash app, a retry, and
an actor that keeps a running tally.

    python scripts/demo/pipeline.py [ADDRESS]     # no address: an embedded local cluster
"""

import os
import sys
import time

import api


@api.python_app
def simulate(seed: int, params) -> list[float]:
    import random

    rng = random.Random(seed)
    return [rng.gauss(params["mu"], params["sigma"]) for _ in range(params["n"])]


@api.python_app
def mean(*samples: list[float]) -> float:
    values = [x for s in samples for x in s]
    return sum(values) / len(values)


@api.python_app(max_retries=2)
def flaky_check(value: float, path: str) -> str:
    tries = int(open(path).read()) if os.path.exists(path) else 0
    open(path, "w").write(str(tries + 1))
    if tries == 0:
        raise RuntimeError("transient failure (retried automatically)")
    return f"mean {value:.3f} checked after {tries + 1} attempts"


@api.actor
class Tally:
    """Keeps state between calls: a running count of samples seen."""

    def __init__(self) -> None:
        self.samples = 0

    def add(self, values: list[float]) -> int:
        self.samples += len(values)
        return self.samples


@api.bash_app
def report(text: str, stdout=api.AUTO_LOGNAME):
    return f"echo 'report from' $(hostname): {text!r}"


def main() -> None:
    api.init(sys.argv[1] if len(sys.argv) > 1 else None)
    start = time.perf_counter()
    params = api.put({"mu": 1.0, "sigma": 0.5, "n": 20_000})   # shipped once, used by all
    parts = [simulate(seed, params) for seed in range(16)]       # dispatched at once
    avg = mean(*parts)                                           # futures as args: a DAG
    marker = os.path.join(api.init(ignore_reinit_error=True).log_dir or "/tmp",
                          f"flaky-{os.getpid()}")
    checked = flaky_check(avg, marker)
    rep = report(checked)
    tally = Tally()
    counts = [tally.add(part) for part in parts]                 # in order, on one actor
    rep.result()
    print(open(rep.stdout).read().strip())
    print(f"the tally actor saw {counts[-1].result():,} samples")
    print(f"16 simulations + reduce + retry + bash + actor in {time.perf_counter() - start:.2f}s")
    api.shutdown()


if __name__ == "__main__":
    main()
