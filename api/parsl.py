"""Parsl on shoal: :class:`ShoalExecutor`, a Parsl executor whose tasks run on a shoal cluster.

Only the ``Config`` changes; apps, futures, ``bash_app``, ``AUTO_LOGNAME``, ``stdout``/
``stderr``, retries and dependencies are Parsl's own::

    import parsl
    from parsl import python_app
    from parsl.config import Config
    from api.parsl import ShoalExecutor

    parsl.load(Config(executors=[ShoalExecutor()]))    # embedded cluster; or address="auto"

    @python_app
    def add(a, b):
        return a + b

    print(add(1, 2).result())        # 3
    parsl.dfk().cleanup()

Needs the ``parsl`` extra: ``pip install -e '.[parsl]'``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from parsl.executors.base import ParslExecutor
from parsl.executors.errors import InvalidResourceSpecification
from parsl.utils import RepresentationMixin

import api
from api import _session
from api._apps import App
from api._futures import AppFuture, Stored
from cluster.common.protocol import pb

logger = logging.getLogger(__name__)

__all__ = ["RESOURCE_KEYS", "ShoalExecutor"]

#: Keys of ``parsl_resource_specification`` that ShoalExecutor understands, and what they
#: become. ``memory`` is in MB as in Parsl's WorkQueue/TaskVine executors.
RESOURCE_KEYS = {
    "num_cpus": "num_cpus (worker slots / cores)",
    "cores": "num_cpus",
    "num_gpus": "num_gpus (CUDA_VISIBLE_DEVICES is set)",
    "gpus": "num_gpus",
    "memory": "memory, in MB (shoal's memory= is bytes)",
    "num_nodes": "num_nodes (a multi-node task holds whole nodes)",
    "ranks_per_node": "ranks_per_node",
    "num_ranks": "ranks_per_node = num_ranks / num_nodes",
    "walltime": "walltime, seconds",
    "running_time_min": "walltime, minutes",
    "resources": "resources={name: amount} (custom resources, node:NAME pinning)",
    "max_retries": "shoal-side retries (Parsl's Config(retries=) also works)",
    "priority": "priority, as in HTEX: lower runs first (shoal's priority=-value)",
    "launcher_options": "accepted and ignored: the MPI prefix is shoal's",
}

_MPI_KEYS = ("num_nodes", "ranks_per_node", "num_ranks")


def _app_options(spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Shoal app options for a Parsl resource specification (InvalidResourceSpecification
    naming the keys it does not know)."""
    merged = {**defaults, **spec}
    unknown = set(merged) - set(RESOURCE_KEYS)
    if unknown:
        raise InvalidResourceSpecification(
            unknown, f"ShoalExecutor understands {', '.join(sorted(RESOURCE_KEYS))}")
    opts: dict[str, Any] = {}
    for key, target in (("num_cpus", "num_cpus"), ("cores", "num_cpus"),
                        ("num_gpus", "num_gpus"), ("gpus", "num_gpus"),
                        ("resources", "resources"), ("max_retries", "max_retries")):
        if key in merged:
            opts[target] = merged[key]
    if "memory" in merged:
        opts["memory"] = float(merged["memory"]) * 2**20
    if "running_time_min" in merged:
        opts["walltime"] = float(merged["running_time_min"]) * 60
    if "walltime" in merged:
        opts["walltime"] = float(merged["walltime"])
    nodes = int(merged.get("num_nodes", 1))
    ranks = merged.get("ranks_per_node")
    if ranks is None and "num_ranks" in merged:
        if int(merged["num_ranks"]) % nodes:
            raise InvalidResourceSpecification(
                {"num_ranks"}, f"num_ranks={merged['num_ranks']} is not a multiple of "
                f"num_nodes={nodes}")
        ranks = int(merged["num_ranks"]) // nodes
    opts["num_nodes"] = nodes
    opts["ranks_per_node"] = int(ranks or 1)
    if merged.get("priority") is not None:  # HTEX: lower first; shoal: higher first
        value = merged["priority"]
        if not isinstance(value, int | float) or isinstance(value, bool) or value != int(value):
            raise InvalidResourceSpecification({"priority"}, f"priority={value!r} is not a "
                                               "whole number")
        opts["priority"] = max(-(2**31 - 1), min(2**31 - 1, -int(value)))
    return opts


class _MPICall:
    """Runs a Parsl task with Parsl's MPI environment ($PARSL_MPI_PREFIX and friends)
    made from shoal's ($CLUSTER_MPI_PREFIX, $CLUSTER_NODELIST)."""

    def __init__(self, fn: Callable[..., Any], ranks_per_node: int) -> None:
        # (not .fn: App copies a callable's __dict__ onto itself, as functools.wraps does)
        self._target = fn
        self._ranks = ranks_per_node
        self.__name__ = getattr(fn, "__name__", "mpi_app")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from cluster.slurm.commands import mpi_prefix

        nodes = os.environ.get("CLUSTER_NODELIST") or socket.gethostname()
        names = nodes.split(",")
        prefix = os.environ.get("CLUSTER_MPI_PREFIX") or \
            mpi_prefix(names, self._ranks, os.environ.get("SHOAL_MPI", ""))
        env = {"PARSL_MPI_PREFIX": prefix, "PARSL_SRUN_PREFIX": prefix,
               "PARSL_MPI_NODELIST": nodes, "PARSL_NUM_NODES": str(len(names)),
               "PARSL_RANKS_PER_NODE": str(self._ranks),
               "PARSL_NUM_RANKS": str(len(names) * self._ranks)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return self._target(*args, **kwargs)
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


class ShoalExecutor(ParslExecutor, RepresentationMixin):
    """A Parsl executor that runs each Parsl task as a shoal task.

    ``address``: ``None`` uses the driver's shoal session when ``api.init`` was already
    called, and otherwise connects as ``api.init()`` does (``$SHOAL_ADDRESS``, this Slurm
    job's cluster, else an embedded local cluster with ``num_cpus`` slots);
    ``"auto"``, a cluster file's path or ``"host:port"`` connect to that cluster.
    ``slurm``: the block keys of ``clusterctl up --config`` (Parsl's SlurmProvider
    names: ``partition``, ``nodes_per_block``, ``cores_per_node``, ``walltime``,
    ``worker_init``, ``init_blocks``, ``min_blocks``, ``max_blocks``, ``max_idletime``...);
    :meth:`start` then runs ``clusterctl up`` with them and :meth:`shutdown` runs
    ``clusterctl down``. shoal's head does the scaling, so Parsl's strategy is not used.

    ``default_resource_specification`` applies to every app (a per-app
    ``parsl_resource_specification`` overrides it); see :data:`RESOURCE_KEYS`.

    Large results (over ~100 KB) stay in shoal's object store and are mapped here without a
    copy, so numpy arrays in them are read-only; a read-only array (or an Arrow table)
    result passed on to another app goes by reference, worker to worker, not through the
    driver again. ``writable_results=True`` gives the driver its own changeable copy of
    each large result instead (as HTEX's deserialized results are), passed on by value.

    >>> import parsl
    >>> from parsl.config import Config
    >>> from api.parsl import ShoalExecutor
    >>> parsl.load(Config(executors=[ShoalExecutor(num_cpus=2)]))   # doctest: +SKIP
    >>> parsl.load(Config(executors=[ShoalExecutor(address="auto")]))  # doctest: +SKIP
    """

    def __init__(self, label: str = "shoal", address: str | None = None, *,
                 num_cpus: int | None = None, num_gpus: int | None = None,
                 resources: dict[str, float] | None = None,
                 object_store_memory: int | None = None, timeout: float = 10.0,
                 log_to_driver: bool = True, slurm: dict[str, Any] | None = None,
                 default_resource_specification: dict[str, Any] | None = None,
                 writable_results: bool = False,
                 storage_access: list[Any] | None = None, working_dir: str | None = None,
                 remote_monitoring_radio: Any = None) -> None:
        ParslExecutor.__init__(self)
        self.label = label
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = resources
        self.object_store_memory = object_store_memory
        self.timeout = timeout
        self.log_to_driver = log_to_driver
        self.slurm = slurm
        self.default_resource_specification = default_resource_specification
        self.writable_results = writable_results
        self.storage_access = storage_access
        self.working_dir = working_dir
        self.remote_monitoring_radio = remote_monitoring_radio
        if slurm is not None:
            from cluster.slurm import config as slurm_config

            try:  # the checks of `clusterctl up --config`, made now rather than at start()
                slurm_config.from_mapping(slurm)
            except slurm_config.ConfigError as err:
                raise ValueError(f"ShoalExecutor(slurm=...): {err}") from None
        _app_options(default_resource_specification or {}, {})  # checked now, not per task
        self._owns_session = False
        self._cluster_id: str | None = None
        self._apps: collections.OrderedDict[tuple[Any, ...], App] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._outstanding = 0
        self._by_ref: dict[int, weakref.ref[AppFuture]] = {}

    # ---- Parsl's executor contract ----------------------------------------------------
    def start(self) -> None:
        """Connect to (or start) the cluster."""
        if self.slurm is not None:
            path = self._clusterctl_up()
            api.init(path, timeout=self.timeout, log_to_driver=self.log_to_driver,
                     run_dir=self.run_dir)
            self._owns_session = True
            return
        if api.is_initialized() and self.address is None:
            return  # the driver's own session
        api.init(self.address, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                 resources=self.resources, object_store_memory=self.object_store_memory,
                 timeout=self.timeout, log_to_driver=self.log_to_driver,
                 run_dir=self.run_dir, ignore_reinit_error=True)
        self._owns_session = True

    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any],
               *args: Any, **kwargs: Any) -> AppFuture:
        """Run ``func(*args, **kwargs)`` as a shoal task; a future of its value.

        The returned future carries ``parsl_executor_task_id`` (the shoal task id)."""
        app = self._app_for(func, resource_specification or {})
        if self._by_ref:
            args = tuple(self._as_ref(a) for a in args)
            kwargs = {k: self._as_ref(v) for k, v in kwargs.items()}
        future = app(*args, **kwargs)
        future.parsl_executor_task_id = future.task_id  # type: ignore[attr-defined]
        with self._lock:
            self._outstanding += 1
        future.add_done_callback(self._finished)
        return future

    def shutdown(self) -> None:
        """Disconnect; an embedded (or ``slurm=``) cluster this executor started stops."""
        if self._owns_session:
            api.shutdown()
            self._owns_session = False
        if self._cluster_id is not None:
            subprocess.run([sys.executable, "-m", "cluster.cli", "down", "--cluster",
                            self._cluster_id], capture_output=True, text=True, timeout=120)
            self._cluster_id = None
        super().shutdown()

    def monitor_resources(self) -> bool:
        """Parsl's per-task resource monitoring works: each task runs in a worker process."""
        return True

    # ---- scaling hooks ------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Tasks submitted and not finished (Parsl's scaling strategy's measure of load)."""
        return self._outstanding

    @property
    def connected_workers(self) -> int:
        """Worker slots (CPUs) of the cluster's nodes."""
        client = _session.client()
        return int(sum(n.get("cpus", 0) for n in client.node_resources()))

    # ---- internals ------------------------------------------------------------------------
    def slurm_toml(self) -> str:
        """The ``clusterctl up --config`` file for ``slurm=`` (TOML)."""
        lines = []
        for key, value in (self.slurm or {}).items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = json.dumps(str(value))  # a TOML basic string
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"

    def _clusterctl_up(self) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(self.slurm_toml())
        cmd = [sys.executable, "-m", "cluster.cli", "up", "--config", f.name]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        os.unlink(f.name)
        if proc.returncode != 0:
            raise api.ConnectionError(f"`{shlex.join(cmd)}` failed: "
                                      f"{proc.stderr.strip() or proc.stdout.strip()}")
        for line in proc.stdout.splitlines():
            if line.strip().startswith("cluster file:"):
                path = line.split(":", 1)[1].strip()
                self._cluster_id = os.path.splitext(os.path.basename(path))[0]
                return path
        raise api.ConnectionError(f"`clusterctl up` did not name its cluster file: "
                                  f"{proc.stdout}")

    def _app_for(self, func: Callable[..., Any], spec: dict[str, Any]) -> App:
        key = (id(func), tuple(sorted((k, repr(v)) for k, v in spec.items())))
        with self._lock:
            app = self._apps.get(key)
            if app is not None and (app.fn is func or getattr(app.fn, "_target", None) is func):
                self._apps.move_to_end(key)
                return app
        opts = _app_options(spec, self.default_resource_specification or {})
        fn: Callable[..., Any] = func
        if any(k in spec or k in (self.default_resource_specification or {})
               for k in _MPI_KEYS):
            fn = _MPICall(func, opts["ranks_per_node"])
        name = getattr(func, "__name__", None) or getattr(
            getattr(func, "func", None), "__name__", "parsl_app")
        app = App(fn, pb.PYTHON, num_cpus=opts.get("num_cpus", 1),
                  num_gpus=opts.get("num_gpus", 0), memory=opts.get("memory", 0),
                  resources=opts.get("resources"), max_retries=opts.get("max_retries", 0),
                  walltime=opts.get("walltime"), name=str(name),
                  num_nodes=opts["num_nodes"], ranks_per_node=opts["ranks_per_node"],
                  priority=opts.get("priority", 0))
        with self._lock:
            self._apps[key] = app
            while len(self._apps) > 512:
                self._apps.popitem(last=False)
        return app

    def _as_ref(self, value: Any) -> Any:
        """A large result of an earlier task, passed on by reference (its future)."""
        ref = self._by_ref.get(id(value))
        future = ref() if ref is not None else None
        if future is not None and future._result is value:
            return future
        return value

    def _finished(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._outstanding -= 1
        if not (isinstance(future, AppFuture) and type(future._result) is Stored):
            return
        # A large result, still in the object store, mapped here on first use.
        try:
            value = future.result()
        except Exception:  # noqa: BLE001 - Parsl's callback reports it
            return
        if self.writable_results:
            future._result = copy.deepcopy(value)  # the driver's own, changeable copy
            return
        if not _immutable(value):
            return  # it could be changed here before it is passed on: pass it by value
        key = id(value)

        def forget(_ref: weakref.ref[AppFuture], key: int = key) -> None:
            self._by_ref.pop(key, None)

        self._by_ref[key] = weakref.ref(future, forget)


def _immutable(value: Any) -> bool:
    """True for values the driver cannot change in place: read-only numpy arrays (as a
    large result is mapped), Arrow tables and batches, bytes and str."""
    if isinstance(value, bytes | str):
        return True
    kind = type(value)
    module = kind.__module__
    if module.startswith("numpy") and kind.__name__ == "ndarray":
        return not value.flags.writeable
    return module.startswith("pyarrow") and kind.__name__ in ("Table", "RecordBatch")
