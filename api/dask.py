"""Dask on shoal: :func:`get`, a Dask scheduler that runs each graph task as a shoal task.

>>> import dask, dask.array as da
>>> import api.dask
>>> x = da.ones((4000, 4000), chunks=(1000, 1000))
>>> dask.compute(x.sum(), scheduler=api.dask.get)           # doctest: +SKIP
(16000000.0,)
>>> with dask.config.set(scheduler=api.dask.get):           # doctest: +SKIP
...     x.mean().compute()
1.0

Intermediate chunks stay in the cluster's object store: a task's inputs are the futures of
the tasks it depends on, so chunks go worker to worker (or stay on their node) and only
the requested keys' values come back to the driver. Needs the ``dask`` extra:
``pip install -e '.[dask]'``.
"""

from __future__ import annotations

import concurrent.futures
import copy
import pickle
import threading
from collections.abc import Mapping
from typing import Any

from dask._task_spec import Alias, DataNode, convert_legacy_graph
from dask.core import flatten
from dask.local import nested_get

import api
from api._apps import App, pickle_user_module_by_value
from api._errors import DependencyError, TaskError
from api._futures import Stored
from cluster.common import serialization
from cluster.common.protocol import pb

__all__ = ["get"]

_apps: dict[tuple[Any, ...], App] = {}
_apps_lock = threading.Lock()


def _run_node(blob: bytes, data: dict[Any, Any]) -> Any:
    """Run one Dask graph node (cloudpickled) on a worker; ``data`` holds its
    dependencies' values."""
    return pickle.loads(blob)(data)


def _dumps_node(node: Any, seen: set[int]) -> bytes:
    """Pickle a graph node by value where its functions are not importable on workers
    (``__main__``, the user's own modules)."""
    fn = getattr(node, "func", None)
    if fn is not None and id(fn) not in seen:
        seen.add(id(fn))
        pickle_user_module_by_value(fn)
    return serialization.dumps_function(node)


def _app(num_cpus: float, resources: dict[str, float] | None) -> App:
    key = (num_cpus, tuple(sorted((resources or {}).items())))
    with _apps_lock:
        app = _apps.get(key)
        if app is None:
            app = _apps[key] = App(_run_node, pb.PYTHON, num_cpus=num_cpus, num_gpus=0,
                                   memory=0, resources=resources, max_retries=0,
                                   walltime=None, name="dask")
        return app


def _order(dsk: Mapping[Any, Any], wanted: list[Any]) -> list[Any]:
    """The keys that `wanted` needs, dependencies first."""
    done: set[Any] = set()
    out: list[Any] = []
    for root in wanted:
        if root in done:
            continue
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            key, expanded = stack.pop()
            if key in done:
                continue
            if expanded:
                done.add(key)
                out.append(key)
                continue
            node = dsk.get(key)
            if node is None:
                raise ValueError(f"Missing dependency {key!r} in the Dask graph")
            stack.append((key, True))
            stack.extend((dep, False) for dep in node.dependencies if dep not in done)
    return out


def get(dsk: Mapping[Any, Any], keys: Any, *, num_cpus: float = 1,
        resources: dict[str, float] | None = None, writable: bool = True,
        **kwargs: Any) -> Any:
    """Compute `keys` of the Dask graph `dsk` on the cluster; Dask's scheduler contract.

    Returns what ``dask.threaded.get`` returns (a value for a single key, nested tuples
    for nested lists of keys). Each task asks for ``num_cpus`` slots and ``resources``
    (``functools.partial(api.dask.get, num_cpus=2)`` changes them); other keyword
    arguments Dask passes (``num_workers``, ``pool``, ...) are ignored. A task's exception
    is raised here as it was raised in the task (the original type). Uses the driver's
    shoal session, starting an embedded cluster when there is none.

    Large results (numpy arrays, DataFrames) are read from the object store where they stay
    mapped read-only, as with :func:`api.get`; with ``writable`` (the default) the requested
    keys' large values are copied once, so they can be changed in place like the threaded
    scheduler's. ``writable=False`` keeps the zero-copy read-only values.

    >>> dask.compute(total, scheduler=api.dask.get)     # doctest: +SKIP
    """
    del kwargs
    if not api.is_initialized():
        api.init()
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    graph = convert_legacy_graph(dict(dsk))
    wanted = list(flatten(keys)) if isinstance(keys, list) else [keys]
    app = _app(num_cpus, resources)
    futures: dict[Any, Any] = {}
    failures: list[BaseException] = []
    failed = threading.Event()
    seen: set[int] = set()

    def note(future: Any) -> None:
        # (the base class's exception(): AppFuture's would load a stored value here)
        err = concurrent.futures.Future.exception(future)
        if err is not None and not isinstance(err, DependencyError):
            failures.append(err)
            failed.set()

    wanted_set = set(wanted)
    remaining: dict[Any, int] = {}
    order = _order(graph, wanted)
    for key in order:
        for dep in graph[key].dependencies:
            remaining[dep] = remaining.get(dep, 0) + 1
    for key in order:
        node = graph[key]
        if isinstance(node, DataNode):
            value = node()
            futures[key] = value if key in wanted_set else api.put(value)
        elif isinstance(node, Alias):
            futures[key] = futures[node.target]
        else:
            data = {dep: futures[dep] for dep in node.dependencies}
            future = app(_dumps_node(node, seen), data)
            future.add_done_callback(note)
            futures[key] = future
        for dep in node.dependencies:  # the task holds it now: let go of ours
            remaining[dep] -= 1
            if not remaining[dep] and dep not in wanted_set:
                del futures[dep]
    results: dict[Any, Any] = {}
    for key in wanted:
        item = futures[key]
        try:
            stored = False
            if isinstance(item, api.AppFuture):
                concurrent.futures.wait([item])    # (exception() would load the value)
                stored = type(item._result) is Stored
            value = api.get(item) if isinstance(item, api.AppFuture | api.ObjectRef) else item
            results[key] = copy.deepcopy(value) if writable and stored else value
        except DependencyError as err:
            # The failed task's own result is in; its callback may still be on its way.
            failed.wait(10)
            raise (_original(failures[0]) if failures else err) from None
        except TaskError as err:
            raise _original(err) from None
    return nested_get(keys, results)


def _original(err: BaseException) -> BaseException:
    """The exception a task raised, as Dask's schedulers raise it."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err
