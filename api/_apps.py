"""``@python_app`` and ``@bash_app``: functions whose calls run on the cluster."""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
import pickle
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle

from api import _cache, _errors, _memo, _session
from api._files import output_futures
from api._futures import AppFuture
from api._retry import RetryState
from cluster.common import serialization
from cluster.common.protocol import fill, pb
from cluster.policy import priority as _priority
from cluster.policy import scheduler


class _AutoLogname:
    """Sentinel: ``stdout=api.AUTO_LOGNAME`` names a per-task file under the run directory."""

    _instance: _AutoLogname | None = None

    def __new__(cls) -> _AutoLogname:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "api.AUTO_LOGNAME"

    def __reduce__(self) -> str:
        return "AUTO_LOGNAME"

    def __shoal_cache_key__(self) -> str:
        # Memoization keys take the sentinel, not the per-task path it becomes.
        return "api.AUTO_LOGNAME"


AUTO_LOGNAME = _AutoLogname()

_SYSTEM_PREFIXES = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                                          sys.exec_prefix)})


def pickle_user_module_by_value(fn: Callable[..., Any]) -> None:
    """Ship the code of the user's own modules by value, so workers need not import them.

    Functions from installed packages stay pickled by reference (the workers have the same
    environment); a function from the user's scripts or test files travels with its code.
    """
    module_name = getattr(fn, "__module__", None)
    if not module_name or module_name == "__main__":
        return
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module is None or not path:
        return
    real = os.path.realpath(path)
    if real.startswith(_SYSTEM_PREFIXES) or "site-packages" in real:
        return
    if module_name.split(".")[0] in ("api", "cluster"):
        return
    try:
        cloudpickle.register_pickle_by_value(module)
    except ValueError:
        pass


def _is_amount(value: Any) -> bool:
    """True for a finite number >= 0 (not a bool, not a string)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


#: Argument types that never hold refs or futures (their pickle needs no ref pickler).
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})

#: Arguments whose pickle is larger than this go through the object store.
LARGE_ARGUMENTS = 1 << 20


class App:
    """A function made into an app. Calling it submits a task and returns an AppFuture."""

    def __init__(self, fn: Callable[..., Any], kind: pb.Kind, *, num_cpus: float, num_gpus: float,
                 memory: float, resources: Mapping[str, float] | None, max_retries: int,
                 walltime: float | None, name: str | None, num_nodes: int = 1,
                 ranks_per_node: int = 1, cache: bool = False,
                 ignore_for_cache: list[str] | None = None, priority: int = 0,
                 retry_handler: Callable[[BaseException, int], Any] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"an app must wrap a function, got {type(fn).__name__}")
        label_of = f"app {name or getattr(fn, '__name__', 'app')!r}"
        for label, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus),
                             ("memory", memory)):
            if not _is_amount(value):
                raise ValueError(f"{label_of}: {label}={value!r}; expected a number >= 0")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(f"{label_of}: max_retries={max_retries!r}; expected a whole "
                             "number >= 0")
        if walltime is not None and not (_is_amount(walltime) and walltime > 0):
            raise ValueError(f"{label_of}: walltime={walltime!r}; expected a number of "
                             "seconds > 0, or None for no limit")
        if resources is not None and not isinstance(resources, Mapping):
            raise ValueError(f"{label_of}: resources={resources!r}; expected a dict of "
                             'name: amount, e.g. {"licence": 1}')
        for key, value in (resources or {}).items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{label_of}: resource name {key!r} must be a non-empty "
                                 "string")
            if not _is_amount(value):
                raise ValueError(f"{label_of}: resources[{key!r}]={value!r}; expected a "
                                 "number >= 0")
        for label, count in (("num_nodes", num_nodes), ("ranks_per_node", ranks_per_node)):
            if not isinstance(count, int) or count < 1:
                raise ValueError(f"{label} must be a whole number >= 1, got {count!r}")
        self.priority = _priority.check(priority, label_of)
        if retry_handler is not None and not callable(retry_handler):
            raise ValueError(f"{label_of}: retry_handler={retry_handler!r}; expected a "
                             "function (exception, attempt) -> bool or cost, or None")
        self.retry_handler = retry_handler
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "memory": memory,
                         "resources": resources, "max_retries": max_retries,
                         "walltime": walltime, "name": name, "num_nodes": num_nodes,
                         "ranks_per_node": ranks_per_node, "cache": cache,
                         "ignore_for_cache": ignore_for_cache, "priority": priority,
                         "retry_handler": retry_handler}
        self.num_nodes = num_nodes
        self.ranks_per_node = ranks_per_node
        self.fn = fn
        self.kind = kind
        self.name: str = name if name else getattr(fn, "__name__", "app")
        self.max_retries = int(max_retries)
        self.walltime = float(walltime or 0.0)
        request: dict[str, float] = {}
        if num_cpus:
            request["cpus"] = float(num_cpus)
        if num_gpus:
            request["gpus"] = float(num_gpus)
        if memory:
            request["memory"] = float(memory)
        for key, value in (resources or {}).items():
            if key in ("cpus", "gpus", "memory", "CPU", "GPU"):
                raise ValueError(f"use num_cpus=/num_gpus=/memory= rather than resources[{key!r}]")
            request[key] = float(value)
        self.request = request
        self._resources = fill(pb.Resources(), request)
        self._blob: bytes | None = None
        self._fn_id = b""
        self._lock = threading.Lock()
        self._signature: inspect.Signature | None = None
        self._checked_nodes: int = -1
        self._spec_template: pb.TaskSpec | None = None
        functools.update_wrapper(self, fn)
        if not isinstance(cache, bool):
            raise ValueError(f"{label_of}: cache={cache!r}; expected True or False")
        #: Memoize calls (see api._memo); ``ignore_for_cache``: parameters left out of keys.
        self.cache = cache
        self.ignore_for_cache = _memo.check_ignored(self, ignore_for_cache)

    def _function_blob(self) -> tuple[bytes, bytes]:
        if self._blob is None:
            with self._lock:
                if self._blob is None:
                    pickle_user_module_by_value(self.fn)
                    try:
                        blob = serialization.dumps_function(self.fn)
                    except Exception as err:
                        raise _errors.SerializationError(
                            f"app {self.name!r} cannot be pickled: {err}") from err
                    self._fn_id = hashlib.blake2b(blob, digest_size=16).digest()
                    self._blob = blob
        return self._blob, self._fn_id

    def _template(self, fn_id: bytes, cwd: str) -> pb.TaskSpec:
        """The fields every call of this app shares, as one spec that calls copy: building
        each spec from keywords cost 2.7 us a call, a copy of this 0.8 (upb)."""
        template = self._spec_template
        if template is None or template.cwd != cwd or template.fn_id != fn_id:
            template = pb.TaskSpec(
                fn_id=fn_id, name=self.name, resources=self._resources,
                max_retries=self.max_retries, walltime=self.walltime, kind=self.kind, cwd=cwd,
                num_nodes=self.num_nodes, ranks_per_node=self.ranks_per_node,
                priority=self.priority, retry_handler=self.retry_handler is not None)
            self._spec_template = template
        return template

    def _check_fits(self, client: Any) -> None:
        # Checked once per change of the node table, never per call.
        version = client.nodes_version
        if version == self._checked_nodes:
            return
        nodes = client.node_resources()
        if not nodes:
            return
        reason = scheduler.infeasible(self.request, nodes, self.num_nodes,
                                      client.block_shape if self.num_nodes == 1 else None)
        if reason:
            raise _errors.ResourceUnavailableError(
                f"app {self.name!r} cannot run on this cluster: {reason}; ask for less or "
                "add bigger nodes")
        self._checked_nodes = version

    def _serialize_args(self, args: tuple, kwargs: dict, deps: list[int]) -> bytes:
        if all(type(a) in _PLAIN for a in args) and \
                all(type(v) in _PLAIN for v in kwargs.values()):
            # Nothing in them can be a ref: plain pickle writes the same bytes, without
            # the ref-collecting pickler's per-call set-up (3.0 -> 0.4 us measured).
            return pickle.dumps((args, kwargs), protocol=serialization.PROTOCOL)
        try:
            data = serialization.dumps((args, kwargs), deps)
        except _errors.ShoalError:
            raise  # e.g. an actor handle of an earlier session among the arguments
        except Exception as err:
            for label, value in [*((f"argument {i}", a) for i, a in enumerate(args)),
                                 *((f"keyword argument {k!r}", v) for k, v in kwargs.items())]:
                try:
                    serialization.dumps(value)
                except Exception as inner:
                    raise _errors.SerializationError(
                        f"app {self.name!r}: {label} ({type(value).__name__}) cannot be "
                        f"pickled: {inner}") from inner
            raise _errors.SerializationError(
                f"app {self.name!r}: arguments cannot be pickled: {err}") from err
        if deps:
            _session.check_owned((args, kwargs))
        return data

    def _bash_targets(self, kwargs: dict, task_id: int, run_dir: Any) -> tuple[Any, Any]:
        if self._signature is None:
            self._signature = inspect.signature(self.fn)
        out = []
        for stream in ("stdout", "stderr"):
            if stream in kwargs:
                target = kwargs[stream]
            else:
                param = self._signature.parameters.get(stream)
                target = param.default if param is not None and \
                    param.default is not inspect.Parameter.empty else None
            if target is AUTO_LOGNAME:
                target = run_dir().auto_logname(task_id, self.name, stream)
                if stream in self._signature.parameters or stream in kwargs:
                    kwargs[stream] = target
            elif stream in kwargs and stream not in self._signature.parameters and not any(
                    p.kind is p.VAR_KEYWORD for p in self._signature.parameters.values()):
                kwargs.pop(stream)
            out.append(_normalize_target(target, stream, self.name))
        return out[0], out[1]

    def __call__(self, *args: Any, **kwargs: Any) -> AppFuture:
        if self.cache:
            return _cache.call(self, args, kwargs)
        return self.submit(args, kwargs)

    def stream_paths(self, kwargs: dict, task_id: int) -> tuple[str | None, str | None]:
        """The stdout and stderr paths a bash app call with `kwargs` would have as task
        `task_id` (None when not redirected; `kwargs` is not changed)."""
        if self.kind != pb.BASH:
            return None, None
        stdout, stderr = self._bash_targets(dict(kwargs), task_id, _session.run_dir)
        return stdout[0] if stdout else None, stderr[0] if stderr else None

    def submit(self, args: tuple, kwargs: dict, future: AppFuture | None = None) -> AppFuture:
        """Submit one call as a task. `future`: resolve this future (made earlier by the
        memo table, with :meth:`Client.track_local`) instead of a new one."""
        client = _session.client()
        blob, fn_id = self._function_blob()
        self._check_fits(client)
        task_id = client.new_id() if future is None else future.task_id
        if future is not None:
            kwargs = dict(kwargs)  # (the memo table keeps the caller's)
        stdout = stderr = None
        if self.kind == pb.BASH:
            stdout, stderr = self._bash_targets(kwargs, task_id, _session.run_dir)
        deps: list[int] = []
        data = self._serialize_args(args, kwargs, deps)
        args_ref, keep = 0, None
        # Large arguments go through a node store, not inside the message. They are pickled
        # a second time for it (out of band, no array copied): encoding every call that way
        # measured 15-25% slower for small arguments, the common case.
        if len(data) > LARGE_ARGUMENTS:
            args_ref, deps, keep = client.objects.store_args(args, kwargs)
            deps.append(args_ref)
            data = b""
        spec = pb.TaskSpec()
        spec.CopyFrom(self._template(fn_id, client.cwd))
        spec.task_id = task_id
        spec.args = data
        if deps:
            spec.deps.extend(deps)
        if args_ref:
            spec.args_ref = args_ref
        if stdout:
            spec.stdout, spec.stdout_mode = stdout
        if stderr:
            spec.stderr, spec.stderr_mode = stderr
        if future is None:
            future = AppFuture(task_id, self.name, client, stdout[0] if stdout else None,
                               stderr[0] if stderr else None)
            if "outputs" in kwargs and kwargs["outputs"]:  # (one dict probe per call)
                future.outputs = output_futures(future, kwargs["outputs"])
            if self.retry_handler is not None:  # (set before submit: a result may come at once)
                future.retry = RetryState(self.retry_handler, self.max_retries)
            client.submit(spec, blob, future)
        else:
            future.stdout = stdout[0] if stdout else None
            future.stderr = stderr[0] if stderr else None
            if self.retry_handler is not None:
                future.retry = RetryState(self.retry_handler, self.max_retries)
            client.submit(spec, blob, future, local=True)
        del keep  # the task holds its arguments now
        return future

    def options(self, **overrides: Any) -> App:
        """This app with some options changed (any of the decorator's keywords).

        >>> make.options(resources={"node:gpu07": 0.01})(n)   # doctest: +SKIP
        """
        unknown = set(overrides) - set(self._options)
        if unknown:
            raise TypeError(f"unknown app option(s): {', '.join(sorted(unknown))}; "
                            f"options are {', '.join(self._options)}")
        return App(self.fn, self.kind, **{**self._options, **overrides})

    def __reduce__(self) -> tuple[Any, ...]:
        # An app called inside another app submits a task there (api._nested). The
        # function goes in the same pickle, so a recursive app refers to itself.
        return (_rebuild, (self.fn, self.kind, self._options))

    def __repr__(self) -> str:
        kind = "bash_app" if self.kind == pb.BASH else "python_app"
        return f"<{kind} {self.name}>"


def _rebuild(fn: Callable[..., Any], kind: pb.Kind, options: dict[str, Any]) -> App:
    return App(fn, kind, **options)


def _normalize_target(target: Any, stream: str, name: str) -> tuple[str, str] | None:
    if target is None:
        return None
    if isinstance(target, str | os.PathLike):
        return os.path.abspath(os.fspath(target)), "w"
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], str | os.PathLike):
        mode = target[1]
        if mode not in ("w", "a"):
            raise ValueError(f"bash app {name!r}: {stream} mode must be 'w' or 'a', got {mode!r}")
        return os.path.abspath(os.fspath(target[0])), mode
    raise TypeError(f"bash app {name!r}: {stream}= takes a path, (path, mode) or "
                    f"api.AUTO_LOGNAME, got {target!r}")


def _decorator(kind: pb.Kind, fn: Callable[..., Any] | None, options: dict[str, Any]) -> Any:
    def wrap(f: Callable[..., Any]) -> App:
        return App(f, kind, **options)

    if fn is not None:
        return wrap(fn)
    return wrap


def python_app(fn: Callable[..., Any] | None = None, *, num_cpus: float = 1,
               num_gpus: float = 0, memory: float = 0,
               resources: Mapping[str, float] | None = None, max_retries: int = 0,
               walltime: float | None = None, name: str | None = None, cache: bool = False,
               ignore_for_cache: list[str] | None = None, priority: int = 0,
               retry_handler: Callable[[BaseException, int], Any] | None = None) -> Any:
    """Make a function an app: each call runs it on the cluster and returns an AppFuture.

    Use bare or with options::

        @api.python_app
        def add(a, b):
            return a + b

        @api.python_app(num_cpus=2, max_retries=2, walltime=60)
        def simulate(seed): ...

        total = add(add(1, 2), 3)     # futures as arguments build the DAG
        total.result()                # 6

    Options: ``num_cpus`` (default 1), ``num_gpus`` (the app sees only its GPUs in
    ``CUDA_VISIBLE_DEVICES``), ``memory`` (bytes), ``resources`` (custom, e.g.
    ``{"licence": 1}``), ``max_retries`` (re-run after any failure), ``walltime``
    (seconds; the app is killed and raises :class:`AppTimeout`), ``priority`` (an int:
    higher runs first among ready tasks, FIFO within one; default 0), ``retry_handler``
    (``fn(exception, attempt)`` run in the driver after each failure: ``True``/``False``
    to retry or not, or a number, the failure's cost: retried while the costs add up to
    less than ``max_retries``, as in Parsl).

    ``cache=True`` memoizes: a call whose function code and argument values hash to an
    earlier call's reuses that result instead of running (also across drivers, with
    ``api.init(checkpoint_dir=...)``); ``ignore_for_cache=["arg"]`` leaves arguments out
    of the key. A call with an argument that cannot be hashed raises
    :class:`CacheKeyError` naming it. ``outputs=[api.File(...)]`` (when the function takes
    ``outputs``) gives the future ``.outputs``, one :class:`DataFuture` per file::

        @api.python_app(cache=True, ignore_for_cache=["verbose"])
        def simulate(seed, verbose=False): ...
    """
    return _decorator(pb.PYTHON, fn, dict(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory,
                                          resources=resources, max_retries=max_retries,
                                          walltime=walltime, name=name, cache=cache,
                                          ignore_for_cache=ignore_for_cache, priority=priority,
                                          retry_handler=retry_handler))


def bash_app(fn: Callable[..., Any] | None = None, *, num_cpus: float | None = None,
             num_gpus: float = 0,
             memory: float = 0, resources: Mapping[str, float] | None = None,
             max_retries: int = 0, walltime: float | None = None,
             name: str | None = None, num_nodes: int = 1, ranks_per_node: int = 1,
             cache: bool = False, ignore_for_cache: list[str] | None = None,
             priority: int = 0,
             retry_handler: Callable[[BaseException, int], Any] | None = None) -> Any:
    """Make a function that returns a command line an app run with ``bash -c`` on a worker.

    ``stdout=``/``stderr=`` (as call keywords or parameter defaults) take a path, a
    ``(path, mode)`` tuple or :data:`AUTO_LOGNAME`; the future's ``.stdout``/``.stderr``
    give the paths. A non-zero exit raises :class:`BashExitFailure` (``.exitcode``)::

        @api.bash_app
        def echo(msg, stdout=api.AUTO_LOGNAME):
            return f"echo {msg}"

        fut = echo("hello")
        fut.result()                  # 0
        open(fut.stdout).read()       # "hello\\n"

    Options as for :func:`python_app` (``num_cpus`` defaults to ``ranks_per_node`` for a
    one-node app with several ranks, else 1), plus, for MPI apps, ``num_nodes`` and
    ``ranks_per_node``: the app holds every slot of `num_nodes` whole nodes and runs on the
    first, with ``$CLUSTER_NODELIST`` (comma-separated hosts) and ``$CLUSTER_MPI_PREFIX``
    (an ``srun --overlap`` line for num_nodes * ranks_per_node ranks) in its environment::

        @api.bash_app(num_nodes=2, ranks_per_node=4)
        def mpi_hello():
            return "$CLUSTER_MPI_PREFIX ./mpi_hello"

    ``cache``/``ignore_for_cache`` as for :func:`python_app` (a hit's ``.stdout`` names
    the file the original run wrote). Files: ``inputs=[...]`` and ``outputs=[...]``
    (:class:`File`); each output becomes a :class:`DataFuture` in ``fut.outputs``, and an
    app given one waits for it::

        @api.bash_app
        def gen(outputs=()):
            return f"seq 3 > {outputs[0]}"

        @api.bash_app
        def double(inputs=(), outputs=()):
            return f"sed p {inputs[0]} > {outputs[0]}"

        raw = gen(outputs=[api.File("raw.txt")]).outputs[0]
        double(inputs=[raw], outputs=[api.File("twice.txt")]).outputs[0].result()
    """
    if num_cpus is None:  # a one-node MPI app holds a slot per rank
        one_node_ranks = num_nodes == 1 and isinstance(ranks_per_node, int) and \
            ranks_per_node > 1
        num_cpus = ranks_per_node if one_node_ranks else 1
    return _decorator(pb.BASH, fn, dict(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory,
                                        resources=resources, max_retries=max_retries,
                                        walltime=walltime, name=name, num_nodes=num_nodes,
                                        ranks_per_node=ranks_per_node, cache=cache,
                                        ignore_for_cache=ignore_for_cache, priority=priority,
                                        retry_handler=retry_handler))
