"""``api.Executor``: a :class:`concurrent.futures.Executor` whose calls run on the cluster.

>>> import api
>>> with api.Executor(num_cpus=1) as ex:                 # doctest: +SKIP
...     print(ex.submit(pow, 2, 10).result())
...     print(list(ex.map(abs, [-1, -2, 3], chunksize=2)))
1024
[1, 2, 3]
"""

from __future__ import annotations

import concurrent.futures
import itertools
import pickle
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from api import _cancel, _session
from api._apps import App, pickle_user_module_by_value
from api._futures import AppFuture
from cluster.common import serialization
from cluster.common.protocol import pb

__all__ = ["Executor"]

_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources", "max_retries", "walltime")


#: Functions of map() chunks already loaded in this worker process, by their pickle.
_loaded: dict[bytes, Callable[..., Any]] = {}


def _run_chunk(blob: bytes, chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Run a function (cloudpickled) on each argument tuple of a chunk, in one task."""
    fn = _loaded.get(blob)
    if fn is None:
        if len(_loaded) >= 64:
            _loaded.clear()
        fn = _loaded[blob] = pickle.loads(blob)
    return [fn(*args) for args in chunk]


def cancel(future: concurrent.futures.Future) -> bool:
    """Cancel a call's future (``concurrent.futures.wait`` sees it done). An app's future
    is cancelled in the cluster too (see ``AppFuture.cancel``): a task not started yet
    never runs; one that has started finishes, and its result is dropped."""
    if isinstance(future, AppFuture):
        return future.cancel() or _drop(future)
    if future.cancel():
        future.set_running_or_notify_cancel()
        return True
    return False


def cancel_all(futures: list[Any]) -> None:
    """:func:`cancel` for many futures, asking the cluster once for all of them."""
    apps = [f for f in futures if isinstance(f, AppFuture) and not f.done()]
    for future, cancelled in zip(apps, _cancel.cancel_futures(apps), strict=True):
        if not cancelled:
            _drop(future)
    for future in futures:
        if not isinstance(future, AppFuture):
            cancel(future)


def _drop(future: AppFuture) -> bool:
    """Cancel `future` in the driver only (its task has started): its result is dropped."""
    return future.mark_cancelled()


class _State:
    """What an executor and its ``options()`` views share."""

    def __init__(self, owns_session: bool) -> None:
        self.lock = threading.Lock()
        self.futures: weakref.WeakSet[AppFuture] = weakref.WeakSet()
        self.shutdown = False
        self.owns_session = owns_session


class Executor(concurrent.futures.Executor):
    """Run callables on the cluster through the standard ``concurrent.futures`` interface.

    Each :meth:`submit` is one shoal task and returns an :class:`api.AppFuture` (a
    ``concurrent.futures.Future``, so ``wait``/``as_completed`` work, and the future can be
    passed to other calls as a dependency). ``map`` sends ``chunksize`` calls per task.
    Options apply to every call: ``num_cpus`` (default 1), ``num_gpus``, ``memory``
    (bytes), ``resources``, ``max_retries``, ``walltime``; :meth:`options` gives a view with
    some changed.

    Large results (over ~100 KB) are mapped from the object store without a copy, so numpy
    arrays in them are read-only, as with :func:`api.get`.

    Uses the driver's session; with none, calls ``api.init(address)`` (an embedded local
    cluster for ``address=None``) and disconnects at :meth:`shutdown`.

    >>> with api.Executor() as ex:                             # doctest: +SKIP
    ...     futs = [ex.submit(sum, range(n)) for n in (10, 100)]
    ...     [f.result() for f in futs]
    [45, 4950]
    >>> big = ex.options(num_cpus=2, memory=2**30)             # doctest: +SKIP
    """

    def __init__(self, address: str | None = None, *, num_cpus: float = 1,
                 num_gpus: float = 0, memory: float = 0,
                 resources: dict[str, float] | None = None, max_retries: int = 0,
                 walltime: float | None = None) -> None:
        current, _ = _session.current()
        owns = False
        if current is None or current.closed:
            _session.initialize(address)
            owns = True
        self._state = _State(owns)
        self._options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus,
                                         "memory": memory, "resources": resources,
                                         "max_retries": max_retries, "walltime": walltime}
        self._apps: dict[int, tuple[Callable[..., Any], App]] = {}
        self._chunk_app = self._make_app(_run_chunk)

    def _make_app(self, fn: Callable[..., Any]) -> App:
        name = getattr(fn, "__name__", None) or type(fn).__name__
        return App(fn, pb.PYTHON, name=str(name), **self._options)

    def _app(self, fn: Callable[..., Any]) -> App:
        cached = self._apps.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1]
        app = self._make_app(fn)
        if len(self._apps) > 256:
            self._apps.clear()
        self._apps[id(fn)] = (fn, app)
        return app

    def options(self, **overrides: Any) -> Executor:
        """A view of this executor whose calls use some other options (same session;
        shutting either down shuts down both).

        >>> ex.options(num_gpus=1).submit(train, cfg)      # doctest: +SKIP
        """
        unknown = set(overrides) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"unknown Executor option(s): {', '.join(sorted(unknown))}; "
                            f"options are {', '.join(_OPTIONS)}")
        view = object.__new__(Executor)
        view._state = self._state
        view._options = {**self._options, **overrides}
        view._apps = {}
        view._chunk_app = view._make_app(_run_chunk)
        return view

    def _track(self, future: AppFuture) -> AppFuture:
        with self._state.lock:
            self._state.futures.add(future)
        return future

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AppFuture:
        """Run ``fn(*args, **kwargs)`` as a task; its future.

        Raises RuntimeError after :meth:`shutdown`."""
        if self._state.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._track(self._app(fn)(*args, **kwargs))

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None) -> Iterator[Any]:
        """Like :func:`map`, run on the cluster; results in order.

        ``chunksize`` calls go in each task (fewer, larger messages for small calls).
        ``timeout`` (seconds from this call) raises ``TimeoutError`` from the iterator for
        results not ready by then. ``buffersize`` is accepted for Python 3.14's signature
        and ignored: every chunk is submitted at once.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if self._state.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables, strict=False)
        if chunksize == 1:
            app = self._app(fn)
            futures = [self._track(app(*args)) for args in calls]
        else:
            pickle_user_module_by_value(fn)  # it travels as an argument of each chunk
            blob = serialization.dumps_function(fn)
            futures = []
            while chunk := list(itertools.islice(calls, chunksize)):
                futures.append(self._track(self._chunk_app(blob, chunk)))

        def results() -> Iterator[Any]:
            try:
                futures.reverse()
                while futures:
                    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                    value = futures[-1].result(wait)
                    futures.pop()
                    if chunksize == 1:
                        yield value
                    else:
                        yield from value
            finally:
                cancel_all(futures)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with ``wait``, block until submitted calls finish.

        ``cancel_futures`` cancels the futures of calls not finished yet: tasks not started
        never run; running ones finish and their results are dropped. A cluster this
        executor started (no session before it) stops once the waiting is done."""
        state = self._state
        with state.lock:
            state.shutdown = True
            pending = [f for f in state.futures if not f.done()]
        if cancel_futures:
            cancel_all(pending)
            pending = [f for f in pending if not f.cancelled()]
        if wait and pending:
            concurrent.futures.wait(pending)
        if state.owns_session and (wait or not pending):
            state.owns_session = False
            _session.end_session()
