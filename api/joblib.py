"""joblib on shoal: a ``"shoal"`` backend for :class:`joblib.Parallel`.

>>> import joblib, math
>>> import api.joblib
>>> api.joblib.register()
>>> with joblib.parallel_config(backend="shoal"):              # doctest: +SKIP
...     joblib.Parallel(n_jobs=-1)(joblib.delayed(math.sqrt)(i) for i in range(4))
[0.0, 1.0, 1.4142135623730951, 1.7320508075688772]

joblib batches small calls itself (``batch_size="auto"``: batches grow until one takes
about 0.2 s); each batch is one shoal task. Needs the ``joblib`` extra:
``pip install -e '.[joblib]'``.
"""

from __future__ import annotations

import concurrent.futures
import copy
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

from joblib import register_parallel_backend  # type: ignore[import-untyped]
from joblib._parallel_backends import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    ParallelBackendBase,
)

import api
from api._apps import App, pickle_user_module_by_value
from api._errors import TaskError
from api._futures import AppFuture, Stored
from api.executor import cancel_all
from cluster.common import serialization
from cluster.common.protocol import pb

__all__ = ["ShoalBackend", "register"]


def _run_batch(blob: bytes) -> Any:
    """Run one joblib batch (cloudpickled BatchedCalls) on a worker."""
    return pickle.loads(blob)()


class ShoalBackend(AutoBatchingMixin, ParallelBackendBase):
    """A joblib backend whose batches run as shoal tasks.

    ``n_jobs=-1`` means every CPU slot of the cluster (its nodes' ``cpus``); ``n_jobs``
    is how many batches joblib keeps in flight. ``num_cpus`` and ``resources`` go with
    each task. Uses the driver's session, starting an embedded cluster when there is none.

    >>> with joblib.parallel_config(backend="shoal", num_cpus=2):   # doctest: +SKIP
    ...     joblib.Parallel(n_jobs=4)(joblib.delayed(fit)(p) for p in grid)
    """

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, num_cpus: float = 1, resources: dict[str, float] | None = None,
                 nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self.num_cpus = num_cpus
        self.resources = resources
        self._app: App | None = None
        self._futures: weakref.WeakSet[AppFuture] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._seen: set[int] = set()

    def _cluster_cpus(self) -> int:
        if not api.is_initialized():
            api.init()
        from api import _session

        nodes = _session.client().node_resources()
        return max(1, int(sum(n.get("cpus", 0) for n in nodes) // self.num_cpus))

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches run at once: ``n_jobs``, or the cluster's slots for -1."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            total = self._cluster_cpus()
            return max(1, total + 1 + (n_jobs or -1))
        return int(n_jobs)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any
                  ) -> int:
        """Connect (if needed) and say how many batches run at once."""
        self.parallel = parallel
        if not api.is_initialized():
            api.init()
        if self._app is None:
            self._app = App(_run_batch, pb.PYTHON, num_cpus=self.num_cpus, num_gpus=0,
                            memory=0, resources=self.resources, max_retries=0,
                            walltime=None, name="joblib")
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
               ) -> AppFuture:
        """Run one batch (a ``BatchedCalls``) as a task."""
        for item in getattr(func, "items", ()):
            fn = item[0]
            if id(fn) not in self._seen:
                self._seen.add(id(fn))
                pickle_user_module_by_value(fn)
        if self._app is None:
            self.configure(self.effective_n_jobs(-1))
        assert self._app is not None
        future = self._app(serialization.dumps_function(func))
        with self._lock:
            self._futures.add(future)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: AppFuture) -> Any:
        """The batch's results (raises what a call raised, with the remote traceback
        as its cause, as joblib's loky backend does)."""
        return self.retrieve_result(out)

    def retrieve_result(self, out: AppFuture, timeout: float | None = None) -> Any:
        """The batch's results, waiting up to ``timeout`` seconds."""
        concurrent.futures.wait([out], timeout)
        stored = type(out._result) is Stored   # large: mapped read-only from the store
        try:
            value = out.result(0)  # (waited above: TimeoutError now if it is not done)
        except TaskError as err:
            cause = err.cause
            if isinstance(cause, BaseException):
                raise cause from err
            raise
        # joblib's other backends hand back the driver's own objects: so does this one.
        return copy.deepcopy(value) if stored else value

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the batches not finished (tasks already running finish on their own)."""
        with self._lock:
            pending = [f for f in self._futures if not f.done()]
        cancel_all(pending)


def register(name: str = "shoal", make_default: bool = False) -> None:
    """Register :class:`ShoalBackend` with joblib under `name`.

    >>> api.joblib.register()
    >>> with joblib.parallel_config(backend="shoal"):        # doctest: +SKIP
    ...     joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(3))
    [0, 1, 2]
    """
    register_parallel_backend(name, ShoalBackend, make_default=make_default)
