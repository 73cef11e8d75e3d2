"""``api.join_app``: Parsl's join apps on shoal (dynamic workflows).

A join app runs in a worker like a python app, but returns an :class:`AppFuture` (or a
list of them) of apps it called; its own future resolves to the inner value (or the list
of inner values). While it waits for them its CPUs are given back to its node, as any task
blocked inside :func:`api.get` does. An inner failure fails it with
:class:`api.DependencyError` naming the inner task (arriving as a :class:`TaskError` that
is also a ``DependencyError``, as every app's exception does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from api import _errors
from api._apps import App, pickle_user_module_by_value
from api._futures import AppFuture, block, format_id
from cluster.common.protocol import pb


class Joined:
    """The function a join app's task runs: the user's, then a wait on what it returned."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        # (Not "fn": App copies this __dict__ into its own, as functools.wraps does.)
        self.joined_fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.joined_fn(*args, **kwargs)
        if isinstance(out, AppFuture):
            return _inner([out])[0]
        if isinstance(out, list | tuple) and out and all(isinstance(f, AppFuture)
                                                        for f in out):
            return _inner(list(out))
        return out  # Parsl: a join app that returns a plain value returns that value


def _inner(futures: list[AppFuture]) -> list[Any]:
    block(futures, len(futures), None)  # (inside a worker: CPUs given back meanwhile)
    try:
        return [f.result() for f in futures]
    except Exception:
        pass
    for fut in futures:  # name the first inner task that failed
        err = fut.exception()
        if err is not None:
            first = str(err).split("\n", 1)[0]
            raise _errors.DependencyError(
                f"inner app {fut.name!r} (task {format_id(fut.task_id)}) failed: {first}",
                dependency=fut.name) from err
    raise AssertionError("unreachable")  # pragma: no cover


def join_app(fn: Callable[..., Any] | None = None, *, num_cpus: float = 1,
             num_gpus: float = 0, memory: float = 0,
             resources: Mapping[str, float] | None = None, max_retries: int = 0,
             walltime: float | None = None, name: str | None = None) -> Any:
    """Make a function a join app (Parsl's ``join_app``): it runs on the cluster, calls
    other apps and returns their future (or a list of futures); its own future resolves
    to their value (or the list of values)::

        @api.join_app
        def fib(n):
            if n < 2:
                return add(n, 0)           # any app's future
            return add(fib(n - 1), fib(n - 2))

        fib(10).result()                   # 55

    Options are those of :func:`python_app`. An inner failure raises
    :class:`DependencyError` naming the inner task.
    """
    options: dict[str, Any] = dict(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory,
                                   resources=resources, max_retries=max_retries,
                                   walltime=walltime)

    def wrap(f: Callable[..., Any]) -> App:
        pickle_user_module_by_value(f)
        return App(Joined(f), pb.PYTHON, name=name or getattr(f, "__name__", "join_app"),
                   **options)

    return wrap(fn) if fn is not None else wrap
