"""Adapters that run shoal's benchmark workloads on its peers: Ray, Dask and Parsl.

Each adapter starts a local cluster of ``workers`` worker processes bound to
127.0.0.1, following ``shared/PEERS.md`` ("Running each peer fairly"):

* Ray: ``ray.init(num_cpus=workers, include_dashboard=False)``, with
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and usage stats off.
* Dask: ``LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)``.
* Parsl: ``HighThroughputExecutor(max_workers_per_node=workers,
  provider=LocalProvider(...))`` with ``initialize_logging=False``, a small
  ``strategy_period`` and the interpreter's ``bin`` directory on ``PATH``
  (Parsl starts its interchange and worker pool by name).

The peers are optional: nothing here imports ray, dask or parsl at module level,
so this file imports in an interpreter that has none of them.
:func:`available_peers` lists the adapters whose package imports.

Every adapter implements the same workloads (see :class:`Peer`); the caller
times them with ``time.perf_counter``.  The task bodies are plain module-level
functions, so worker processes import them from this module by name; ``start``
puts this module's import root on ``PYTHONPATH`` for the worker processes.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Protocol

LOOPBACK = "127.0.0.1"

# Environment for Ray: stay on loopback and send no usage statistics.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


# ---------------------------------------------------------------------------
# Task bodies, shared by all peers.  Module level so that Parsl (and the
# by-reference pickling of Ray and Dask) can find them in worker processes.
# ---------------------------------------------------------------------------


def timed(fn: Any, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of `fn`, after one warm-up call."""
    fn()
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def noop() -> None:
    """Do nothing: the no-op task."""


class Counter:
    """The actor of the actor workloads: one method that adds and returns."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def inc(x: int) -> int:
    """Return ``x + 1``: one link of a dependent chain."""
    return x + 1


def summed(a: Any) -> tuple[float, float]:
    """(seconds for ``a.sum()`` on the value as the task got it, seconds on a private
    copy): the object workloads' read speed against in-process numpy."""
    import numpy as np

    start = time.perf_counter()
    a.sum()
    mapped = time.perf_counter() - start
    private = np.array(a)
    private.sum()
    start = time.perf_counter()
    private.sum()
    return mapped, time.perf_counter() - start


def made(n: int) -> Any:
    """A large result: ``n`` float64 ones."""
    import numpy as np

    return np.ones(n)


MiB = 2**20


def small_puts(put: Any, reps: int, count: int = 100) -> list[float]:
    """Per repetition, the median time of `count` puts of a 1 MiB array (us), each ref
    dropped before the next: too large to travel inline in any runtime here, so this is
    the cost of getting an object into a store rather than of copying it."""
    import numpy as np

    arr = np.ones(MiB // 8)
    put(arr)  # warm-up
    out = []
    for _ in range(reps):
        times = []
        for _ in range(count):
            start = time.perf_counter()
            ref = put(arr)
            times.append(time.perf_counter() - start)
            del ref
        out.append(sorted(times)[count // 2] * 1e6)
    return out


def object_workloads(put: Any, get: Any, task_sum: Any, make: Any, reps: int,
                     drop: Any = None) -> dict[str, list[float]]:
    """The object workloads shoal's bench runs (scripts/bench_objects.py), for a peer:
    put 256 MiB (GB/s), put 1 MiB (us, see :func:`small_puts`), get of a 1 GiB put (ms),
    a task summing a 256 MiB put (% of in-process), a 256 MiB result fetched by the
    driver (ms, once it is done)."""
    import numpy as np

    out: dict[str, list[float]] = {"obj_put": [], "obj_get": [], "obj_task_sum": [],
                                   "obj_result": []}
    out["obj_put_1mib"] = small_puts(put, reps)
    arr = np.random.default_rng(0).random(32 * MiB)
    get(put(arr))
    for _ in range(reps):
        start = time.perf_counter()
        ref = put(arr)
        out["obj_put"].append(arr.nbytes / 1e9 / (time.perf_counter() - start))
        mapped, private = task_sum(ref)
        out["obj_task_sum"].append(100 * private / mapped)
        del ref
    big = put(np.ones(128 * MiB))
    for _ in range(reps):
        start = time.perf_counter()
        value = get(big)
        out["obj_get"].append((time.perf_counter() - start) * 1e3)
        del value
    del big
    for _ in range(reps):
        fut = make(32 * MiB)          # returns a handle once the result exists
        start = time.perf_counter()
        value = get(fut)
        out["obj_result"].append((time.perf_counter() - start) * 1e3)
        del value, fut
    return out


# ---------------------------------------------------------------------------
# The common interface
# ---------------------------------------------------------------------------


class Peer(Protocol):
    """One peer system, driven through the same workloads as shoal."""

    name: str  # "ray", "dask", "parsl"

    def start(self, workers: int) -> None:
        """Start a local cluster with ``workers`` worker processes."""
        ...

    def stop(self) -> None:
        """Shut the cluster down and leave no process behind."""
        ...

    def noop_burst(self, n: int) -> None:
        """Submit ``n`` no-op tasks at once, then wait for all of them."""
        ...

    def submit_only(self, n: int) -> list:
        """Submit ``n`` no-op tasks and return their futures without waiting.

        The caller times this alone (the "submit alone" rate) and then calls
        :meth:`wait_all` on the result.
        """
        ...

    def wait_all(self, futs: list) -> None:
        """Wait for every future in ``futs`` (as returned by :meth:`submit_only`)."""
        ...

    def sync_round_trips(self, n: int) -> None:
        """``n`` times: submit one no-op task and wait for its result."""
        ...

    def chain(self, n: int) -> None:
        """Run an ``n``-link chain: task i takes task i-1's future, returns x+1."""
        ...

    def cold_start_script(self) -> str:
        """Python source that starts a 2-worker local cluster, runs one task.

        The script prints the task's result and shuts the cluster down; the
        caller times it as a subprocess (``sys.executable -c SOURCE``).
        """
        ...


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _module_import_root() -> Path | None:
    """Return the ``sys.path`` entry from which this module was imported."""
    if __name__ == "__main__":
        return None
    root = Path(__file__).resolve().parent
    for _ in range(__name__.count(".")):
        root = root.parent
    return root


def _prepend_env_path(var: str, entry: str) -> None:
    """Put ``entry`` first on the ``os.pathsep`` list in environment variable ``var``."""
    parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p]
    if entry not in parts:
        os.environ[var] = os.pathsep.join([entry, *parts])


def _export_for_workers() -> None:
    """Let worker processes started from here import this module by name."""
    root = _module_import_root()
    if root is not None:
        _prepend_env_path("PYTHONPATH", str(root))


def _interpreter_bin() -> str:
    """Return the ``bin`` directory of the running interpreter (its venv's, if any)."""
    return os.path.dirname(sys.executable)


def _check_chain(result: int, n: int) -> None:
    """Fail loudly if a chain of ``n`` links did not end at ``n``."""
    if result != n:
        raise AssertionError(f"chain of {n} links returned {result}")


# ---------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------


class RayPeer:
    """Ray: a local cluster started by ``ray.init``; one worker per CPU."""

    name = "ray"

    def __init__(self) -> None:
        self._ray: Any = None
        self._temp_dir: str | None = None
        self._noop: Any = None
        self._inc: Any = None

    def start(self, workers: int) -> None:
        """Start Ray with ``num_cpus=workers`` and no dashboard, on loopback.

        Its session files go to a fresh temp dir that :meth:`stop` removes.
        """
        os.environ.update(RAY_ENV)
        _export_for_workers()
        import ray

        self._temp_dir = tempfile.mkdtemp(prefix="bench-ray-")
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            _temp_dir=self._temp_dir,
            log_to_driver=False,
        )
        self._ray = ray
        self._noop = ray.remote(noop)
        self._inc = ray.remote(inc)

    def stop(self) -> None:
        """Shut Ray down (this stops the raylet, GCS and workers it started)."""
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def noop_burst(self, n: int) -> None:
        """Submit ``n`` no-op tasks, then ``ray.get`` them all."""
        self._ray.get([self._noop.remote() for _ in range(n)])

    def object_workloads(self, reps: int) -> dict[str, list[float]]:
        """Object workloads with ``ray.put``/``ray.get`` and remote functions."""
        ray = self._ray
        summed_r, made_r = ray.remote(summed), ray.remote(made)

        def make(n: int) -> Any:
            ref = made_r.remote(n)
            ray.wait([ref], fetch_local=False)
            return ref

        return object_workloads(ray.put, ray.get, lambda r: ray.get(summed_r.remote(r)),
                                make, reps)

    def actor_sync(self, n: int) -> None:
        """``n`` calls on one actor, each waited for before the next."""
        actor = self._actor()
        for _ in range(n):
            self._ray.get(actor.add.remote(1))

    def actor_async(self, n: int) -> None:
        """``n`` calls on one actor fired at once, then all waited for."""
        actor = self._actor()
        self._ray.get([actor.add.remote(1) for _ in range(n)])

    def _actor(self) -> Any:
        if getattr(self, "_counter", None) is None:
            self._counter = self._ray.remote(Counter).remote()
            self._ray.get(self._counter.add.remote(0))
        return self._counter

    def submit_only(self, n: int) -> list:
        """Submit ``n`` no-op tasks; return their object refs."""
        return [self._noop.remote() for _ in range(n)]

    def wait_all(self, futs: list) -> None:
        """``ray.get`` every object ref."""
        self._ray.get(futs)

    def sync_round_trips(self, n: int) -> None:
        """``n`` times: submit one no-op task and ``ray.get`` it."""
        for _ in range(n):
            self._ray.get(self._noop.remote())

    def chain(self, n: int) -> None:
        """Chain ``n`` tasks, each taking the previous object ref."""
        ref = self._inc.remote(0)
        for _ in range(n - 1):
            ref = self._inc.remote(ref)
        _check_chain(self._ray.get(ref), n)

    def cold_start_script(self) -> str:
        """Source that starts Ray with 2 CPUs, runs one task, prints, shuts down."""
        return textwrap.dedent(
            f"""\
            import os
            import shutil
            import tempfile

            os.environ.update({RAY_ENV!r})
            import ray

            temp_dir = tempfile.mkdtemp(prefix="bench-ray-cold-")
            ray.init(num_cpus=2, include_dashboard=False,
                     _node_ip_address={LOOPBACK!r}, _temp_dir=temp_dir,
                     log_to_driver=False)

            @ray.remote
            def one():
                return 1

            try:
                print(ray.get(one.remote()))
            finally:
                ray.shutdown()
                shutil.rmtree(temp_dir, ignore_errors=True)
            """
        )


# ---------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------


class DaskPeer:
    """Dask distributed: ``LocalCluster`` of single-threaded worker processes."""

    name = "dask"

    def __init__(self) -> None:
        self._cluster: Any = None
        self._client: Any = None
        self._local_dir: str | None = None

    def start(self, workers: int) -> None:
        """Start a ``LocalCluster`` on loopback with ``workers`` processes.

        The scratch space of the scheduler and workers is a fresh temp dir that
        :meth:`stop` removes.
        """
        _export_for_workers()
        import dask
        from dask.distributed import Client, LocalCluster

        self._local_dir = tempfile.mkdtemp(prefix="bench-dask-")
        with dask.config.set({"temporary-directory": self._local_dir}):
            self._cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host=LOOPBACK,
                dashboard_address=None,
                local_directory=self._local_dir,
            )
        self._client = Client(self._cluster)

    def stop(self) -> None:
        """Close the client, then the cluster and its worker processes."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        if self._local_dir is not None:
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = None

    def object_workloads(self, reps: int) -> dict[str, list[float]]:
        """Object workloads with ``scatter(direct=True)`` (its fast path) and futures."""
        client = self._client
        from dask.distributed import wait

        def make(n: int) -> Any:
            fut = client.submit(made, n, pure=False)
            wait([fut])
            return fut

        return object_workloads(
            lambda v: client.scatter(v, direct=True), lambda f: f.result(),
            lambda f: client.submit(summed, f, pure=False).result(), make, reps)

    def actor_sync(self, n: int) -> None:
        """``n`` calls on one Dask actor, each waited for before the next."""
        actor = self._actor()
        for _ in range(n):
            actor.add(1).result()

    def actor_async(self, n: int) -> None:
        """``n`` calls on one Dask actor fired at once, then all waited for."""
        actor = self._actor()
        for fut in [actor.add(1) for _ in range(n)]:
            fut.result()

    def _actor(self) -> Any:
        if getattr(self, "_counter", None) is None:
            self._counter = self._client.submit(Counter, actor=True).result()
        return self._counter

    def submit_only(self, n: int) -> list:
        """Submit ``n`` distinct no-op tasks (``pure=False``); return the futures."""
        submit = self._client.submit
        return [submit(noop, pure=False) for _ in range(n)]

    def wait_all(self, futs: list) -> None:
        """Gather every future's result."""
        self._client.gather(futs)

    def noop_burst(self, n: int) -> None:
        """Submit ``n`` no-op tasks, then gather them all."""
        self.wait_all(self.submit_only(n))

    def sync_round_trips(self, n: int) -> None:
        """``n`` times: submit one no-op task and wait for its result."""
        for _ in range(n):
            self._client.submit(noop, pure=False).result()

    def chain(self, n: int) -> None:
        """Chain ``n`` tasks with ``client.submit(inc, previous_future)``."""
        fut = self._client.submit(inc, 0, pure=False)
        for _ in range(n - 1):
            fut = self._client.submit(inc, fut, pure=False)
        _check_chain(fut.result(), n)

    def cold_start_script(self) -> str:
        """Source that starts a 2-worker ``LocalCluster``, runs one task, prints."""
        return textwrap.dedent(
            f"""\
            import shutil
            import tempfile

            import dask
            from dask.distributed import Client, LocalCluster


            def one():
                return 1


            if __name__ == "__main__":
                local_dir = tempfile.mkdtemp(prefix="bench-dask-cold-")
                with dask.config.set({{"temporary-directory": local_dir}}):
                    cluster = LocalCluster(n_workers=2, threads_per_worker=1,
                                           processes=True, host={LOOPBACK!r},
                                           dashboard_address=None,
                                           local_directory=local_dir)
                client = Client(cluster)
                try:
                    print(client.submit(one, pure=False).result())
                finally:
                    client.close()
                    cluster.close()
                    shutil.rmtree(local_dir, ignore_errors=True)
            """
        )


# ---------------------------------------------------------------------------
# Parsl
# ---------------------------------------------------------------------------


class ParslPeer:
    """Parsl: ``HighThroughputExecutor`` with one local block of workers."""

    name = "parsl"

    def __init__(self, strategy_period: float = 0.5, encrypted: bool = True) -> None:
        """Configure the executor.

        ``strategy_period`` (Parsl's default is 5 s) delays the first block
        and so sets the cold start; ``encrypted`` is HTEX's default (True).
        """
        self.strategy_period = strategy_period
        self.encrypted = encrypted
        self._parsl: Any = None
        self._run_root: str | None = None
        self._noop: Any = None
        self._inc: Any = None

    def _config(self, workers: int, run_root: str) -> Any:
        """Build the Parsl ``Config`` for a local HTEX cluster under ``run_root``.

        The worker pool's ``TMPDIR`` is inside ``run_root``: the pool is ended
        by a signal, which leaves its multiprocessing manager's ``pymp-*`` dir.
        """
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        executor = HighThroughputExecutor(
            label="htex_local",
            address=LOOPBACK,
            loopback_address=LOOPBACK,
            max_workers_per_node=workers,
            encrypted=self.encrypted,
            provider=LocalProvider(
                init_blocks=1,
                min_blocks=1,
                max_blocks=1,
                worker_init=f"export TMPDIR={shlex.quote(run_root)}",
            ),
        )
        return Config(
            executors=[executor],
            run_dir=os.path.join(run_root, "runinfo"),
            strategy_period=self.strategy_period,
            initialize_logging=False,
            usage_tracking=0,
        )

    def start(self, workers: int) -> None:
        """Load a Parsl config whose run dir is under a fresh temp dir."""
        # The interchange and the worker pool are started by name from PATH.
        _prepend_env_path("PATH", _interpreter_bin())
        _export_for_workers()
        import parsl

        self._run_root = tempfile.mkdtemp(prefix="bench-parsl-")
        parsl.load(self._config(workers, self._run_root))
        self._parsl = parsl
        self._noop = parsl.python_app(noop, executors=["htex_local"])
        self._inc = parsl.python_app(inc, executors=["htex_local"])

    def detached_pids(self) -> list[int]:
        """The worker pool's processes: LocalProvider starts them detached, so they are no
        children of this process and an idle-RSS sum over children misses them (31-49 MB
        of Parsl's cluster). They are the processes whose TMPDIR is our run root."""
        import psutil

        pids = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("TMPDIR") == self._run_root:
                    pids.append(proc.pid)
            except psutil.Error:
                pass
        return pids

    def stop(self) -> None:
        """Clean up the DataFlowKernel (stops the block) and remove the run dir."""
        if self._parsl is not None:
            try:
                self._parsl.dfk().cleanup()
            finally:
                self._parsl.clear()
                self._parsl = None
        if self._run_root is not None:
            shutil.rmtree(self._run_root, ignore_errors=True)
            self._run_root = None

    def submit_only(self, n: int) -> list:
        """Invoke the no-op app ``n`` times; return the AppFutures."""
        app = self._noop
        return [app() for _ in range(n)]

    def wait_all(self, futs: list) -> None:
        """Wait for every AppFuture's result."""
        for fut in futs:
            fut.result()

    def noop_burst(self, n: int) -> None:
        """Submit ``n`` no-op tasks, then wait for them all."""
        self.wait_all(self.submit_only(n))

    def sync_round_trips(self, n: int) -> None:
        """``n`` times: invoke the no-op app and wait for its result."""
        for _ in range(n):
            self._noop().result()

    def chain(self, n: int) -> None:
        """Chain ``n`` app calls, each taking the previous AppFuture."""
        fut = self._inc(0)
        for _ in range(n - 1):
            fut = self._inc(fut)
        _check_chain(fut.result(), n)

    def cold_start_script(self) -> str:
        """Source that loads a 2-worker HTEX config, runs one app, prints, cleans up."""
        return textwrap.dedent(
            f"""\
            import os
            import shlex
            import shutil
            import sys
            import tempfile

            bindir = os.path.dirname(sys.executable)
            path = os.environ.get("PATH", "")
            if bindir not in path.split(os.pathsep):
                os.environ["PATH"] = bindir + os.pathsep + path

            import parsl
            from parsl.config import Config
            from parsl.executors import HighThroughputExecutor
            from parsl.providers import LocalProvider


            @parsl.python_app
            def one():
                return 1


            run_root = tempfile.mkdtemp(prefix="bench-parsl-cold-")
            parsl.load(Config(
                executors=[HighThroughputExecutor(
                    label="htex_local", address={LOOPBACK!r},
                    loopback_address={LOOPBACK!r}, max_workers_per_node=2,
                    encrypted={self.encrypted!r},
                    provider=LocalProvider(
                        init_blocks=1, min_blocks=1, max_blocks=1,
                        worker_init="export TMPDIR=" + shlex.quote(run_root)),
                )],
                run_dir=os.path.join(run_root, "runinfo"),
                strategy_period={self.strategy_period!r},
                initialize_logging=False,
                usage_tracking=0,
            ))
            try:
                print(one().result())
            finally:
                parsl.dfk().cleanup()
                parsl.clear()
                shutil.rmtree(run_root, ignore_errors=True)
            """
        )


# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------

# name -> (module, an attribute the real package has, adapter class).  The
# attribute check matters: a stray directory named like the package (Ray leaves
# /tmp/ray behind) imports as an empty namespace package.
_PEERS: dict[str, tuple[str, str, type]] = {
    "ray": ("ray", "init", RayPeer),
    "dask": ("distributed", "LocalCluster", DaskPeer),
    "parsl": ("parsl", "load", ParslPeer),
}


def _package_works(module: str, attr: str) -> bool:
    """Return whether ``module`` imports and has ``attr``."""
    try:
        return hasattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False


def available_peers() -> dict[str, type]:
    """Map peer name to adapter class, for each peer whose package imports here."""
    found: dict[str, type] = {}
    for name, (module, attr, cls) in _PEERS.items():
        if _package_works(module, attr):
            found[name] = cls
    return found
