"""``@actor``: classes whose instances live on the cluster and keep their state."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

from api import _errors, _session
from api._futures import AppFuture, format_id, stale_message
from cluster.common import serialization
from cluster.common.protocol import fill, pb


def _dump_args(label: str, args: tuple, kwargs: dict) -> tuple[bytes, list[int]]:
    """Pickle call arguments; refs and futures inside become dependencies."""
    deps: list[int] = []
    try:
        data = serialization.dumps((args, kwargs), deps)
    except _errors.ShoalError:
        raise  # e.g. an actor handle of an earlier session among the arguments
    except Exception as err:
        raise _errors.SerializationError(f"{label}: arguments cannot be pickled: {err}") from err
    if deps:
        _session.check_owned((args, kwargs))
    return data, deps


def _methods(cls: type) -> list[str]:
    return sorted(name for name, value in inspect.getmembers(cls)
                  if callable(value) and not name.startswith("__"))


class ActorHandle:
    """A running actor. ``handle.method(*args)`` returns an AppFuture; calls from one
    caller run in the order they were made. Handles can be passed to apps and to other
    actors, which can call them too (there, ``.result()`` waits for the call)."""

    def __init__(self, actor_id: int, class_name: str, methods: list[str],
                 ready: AppFuture | None = None, client: Any = None) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = list(methods)
        self._ready = ready
        self._client = client   # the session that made or found it (None: passed in)

    def _check_session(self) -> None:
        if _session.is_stale(self._client):
            raise _errors.ShoalError(stale_message(f"actor handle {self!r}"))

    @property
    def actor_id(self) -> int:
        """The cluster-wide id of the actor."""
        return self._actor_id

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._methods:
            raise AttributeError(f"actor {self._class_name} has no method {name!r} "
                                 f"(it has: {', '.join(self._methods) or 'none'})")
        return ActorMethod(self, name)

    def __repr__(self) -> str:
        return f"<ActorHandle {self._class_name} {format_id(self._actor_id)}>"

    def __reduce__(self) -> tuple[Any, ...]:
        self._check_session()  # pickled as an argument: it must be this session's
        return (ActorHandle, (self._actor_id, self._class_name, self._methods))


class ActorMethod:
    """One method of an actor handle; call it to submit a call."""

    def __init__(self, handle: ActorHandle, name: str) -> None:
        self._handle = handle
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from cluster.worker import worker

        if worker.CURRENT is not None:  # inside an app or another actor
            return worker.CURRENT.call_actor(self._handle._actor_id, self._name, args, kwargs)
        self._handle._check_session()
        client = _session.client()
        task_id = client.new_id()
        data, deps = _dump_args(f"{self._handle._class_name}.{self._name}", args, kwargs)
        future = AppFuture(task_id, f"{self._handle._class_name}.{self._name}", client)
        client.call_actor(self._handle._actor_id, self._name, data, deps, future)
        return future


class ActorClass:
    """A class made into an actor. Calling it creates the actor and returns its handle at
    once; ``.options(...)`` overrides options for one creation."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        if not inspect.isclass(cls):
            raise TypeError(f"@api.actor decorates a class, got {type(cls).__name__}")
        self._cls = cls
        self._options = _check_options(options)
        self._blob: bytes | None = None
        self._fn_id = b""
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__

    def options(self, **overrides: Any) -> ActorClass:
        """The same actor class with some options changed, e.g. ``name=`` or ``lifetime=``."""
        return ActorClass(self._cls, {**self._options, **overrides})

    def _function_blob(self) -> tuple[bytes, bytes]:
        if self._blob is None:
            from api._apps import pickle_user_module_by_value

            pickle_user_module_by_value(self._cls)
            try:
                self._blob = serialization.dumps_function(self._cls)
            except Exception as err:
                raise _errors.SerializationError(
                    f"actor class {self._cls.__name__} cannot be pickled: {err}") from err
            self._fn_id = hashlib.blake2b(self._blob, digest_size=16).digest()
        return self._blob, self._fn_id

    def __call__(self, *args: Any, **kwargs: Any) -> ActorHandle:
        client = _session.client()
        blob, fn_id = self._function_blob()
        o = self._options
        request = {"cpus": float(o["num_cpus"]), "gpus": float(o["num_gpus"]),
                   "memory": float(o["memory"]), **{k: float(v) for k, v in
                                                    (o["resources"] or {}).items()}}
        request = {k: v for k, v in request.items() if v}
        actor_id = client.new_id()
        data, deps = _dump_args(f"{self._cls.__name__}(...)", args, kwargs)
        methods = _methods(self._cls)
        spec = pb.TaskSpec(
            task_id=actor_id, kind=pb.ACTOR_CREATE, fn_id=fn_id, name=self._cls.__name__,
            args=data, deps=deps, resources=fill(pb.Resources(), request), cwd=client.cwd,
            actor=pb.ActorOptions(name=o["name"] or "", detached=o["lifetime"] == "detached",
                                  max_restarts=o["max_restarts"],
                                  max_task_retries=o["max_task_retries"],
                                  max_concurrency=o["max_concurrency"],
                                  class_name=self._cls.__name__, methods=methods))
        ready = AppFuture(actor_id, f"{self._cls.__name__}.__init__", client)
        client.direct.learn(actor_id, "", o["max_task_retries"])
        client.submit(spec, blob, ready)
        return ActorHandle(actor_id, self._cls.__name__, methods, ready, client)

    def __repr__(self) -> str:
        return f"<actor class {self._cls.__name__}>"


_DEFAULTS: dict[str, Any] = dict(num_cpus=0, num_gpus=0, memory=0, resources=None,
                                 max_restarts=0, max_task_retries=0, name=None, lifetime=None,
                                 max_concurrency=1)


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown actor option(s) {', '.join(sorted(unknown))}; known: "
                        f"{', '.join(_DEFAULTS)}")
    out = {**_DEFAULTS, **options}
    for key in ("num_cpus", "num_gpus", "memory", "max_restarts", "max_task_retries"):
        if out[key] is None or out[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {out[key]!r}")
    if out["max_concurrency"] < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {out['max_concurrency']!r}")
    if out["lifetime"] not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {out['lifetime']!r}")
    if out["name"] is not None and (not isinstance(out["name"], str) or not out["name"]):
        raise ValueError(f"name must be a non-empty string, got {out['name']!r}")
    return out


def actor(cls: type | None = None, **options: Any) -> Any:
    """Make a class an actor: each instance lives in its own worker on the cluster.

    Use bare or with options::

        @api.actor
        class Counter:
            def __init__(self, start=0):
                self.n = start
            def add(self, k):
                self.n += k
                return self.n

        c = Counter(10)               # placed on a daemon; the handle returns at once
        c.add(5).result()             # 15: calls from one caller run in order

    Options: ``num_cpus`` (default 0: an actor holds no CPU slot unless asked), ``num_gpus``,
    ``memory``, ``resources``, ``max_restarts`` (restart after its worker or node dies;
    ``__init__`` runs again), ``max_task_retries`` (re-run calls that were in flight),
    ``name`` (find it with :func:`get_actor`), ``lifetime="detached"`` (outlives its
    driver), ``max_concurrency`` (``async def`` methods run concurrently up to this many).
    """
    if cls is not None:
        return ActorClass(cls, options)
    return lambda c: ActorClass(c, options)


def get_actor(name: str, timeout: float | None = 10.0) -> ActorHandle:
    """The live actor registered under `name` (by any driver of the cluster).

    Raises ValueError naming what to do when there is none.
    """
    client = _session.client()
    reply = client.lookup_actor(name, timeout)
    if not reply.found:
        raise ValueError(f"no live actor named {name!r} in this cluster; create one with "
                         f"MyActor.options(name={name!r})(...)")
    info = reply.actor
    client.direct.learn(info.actor_id, info.route, info.max_task_retries)
    return ActorHandle(info.actor_id, info.class_name, list(info.methods), client=client)


def kill(handle: ActorHandle) -> None:
    """Kill an actor now (no restart); its pending calls fail with ActorDiedError."""
    if not isinstance(handle, ActorHandle):
        raise TypeError(f"api.kill() takes an actor handle, got {type(handle).__name__}")
    handle._check_session()
    _session.client().kill_actor(handle.actor_id)
