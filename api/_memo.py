"""Memoization: ``@api.python_app(cache=True)`` calls keyed by code and argument values.

**The key** of a call is a BLAKE2b digest of

- the function *by its code*: its code object (bytecode, constants, names, recursively for
  nested functions and lambdas), its defaults, the values of its closure variables, and,
  of the globals it names, those that are plain functions of the user's own modules
  (hashed the same way) or simple constants (numbers, strings, bytes, None); plus its
  qualified name and the app kind. Editing the function (or a helper it calls) changes
  the key; so does another Python version (other bytecode). Modules, classes, builtins
  and functions of installed packages count by name only;
- the arguments *by value*, bound to the function's parameters (``f(1, b=2)`` and
  ``f(1, 2)`` are the same call), leaving out those named in ``ignore_for_cache``. Values
  may be None, bools, numbers, strings, bytes, tuples, lists, dicts, sets, ranges, enums,
  paths, :class:`api.File` (by path), modules and classes (by name), dataclass instances
  (by their fields), numpy arrays and scalars (dtype, shape, bytes), Arrow tables (their
  IPC bytes), functions (as above), objects of a type with a ``__shoal_cache_key__()``
  method (by what it returns), and futures and refs: a **future** counts as the value it
  resolves to (so the lookup waits until it has), an **ObjectRef** as its content
  (fetched once and hashed: ~1 s per GB here; ids would differ in the next run, contents
  do not). A future counts exactly as its value passed directly would.

Anything else (an open file, a lock, an object without value semantics) raises
:class:`CacheKeyError` naming the argument, at the call: a call is never silently run
again because its key could not be made.

**In one driver** identical calls share one future (as Dask's identical keys do): the
second call returns the first call's future, running or finished. A failed call is not
remembered (the next identical call runs). A future with a large result (one kept in a
node store) is remembered only while something else holds it, so the table never pins
object-store memory the user let go of; small results are remembered for the session.
With ``checkpoint_dir``, finished results are also written there (:mod:`api._checkpoint`)
and found by later drivers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import functools
import hashlib
import inspect
import logging
import os
import pathlib
import queue
import struct
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import Any

from api import _errors, _session
from api._checkpoint import CheckpointStore, Record
from api._files import DataFuture, File, output_futures
from api._futures import AppFuture
from cluster.common.serialization import ObjectRef

_log = logging.getLogger("api.memo")

MODES = ("task_exit", "periodic", "manual")


class CacheKeyError(_errors.ShoalError, TypeError):
    """An argument of a ``cache=True`` app cannot be hashed stably, so the call has no
    memoization key. The message names the argument and its type; leave it out with
    ``ignore_for_cache=["name"]``, or pass a value of a supported type.

    >>> @api.python_app(cache=True)           # doctest: +SKIP
    ... def count(lines): ...
    >>> count(open("data.txt"))               # doctest: +SKIP
    api.CacheKeyError: app 'count': argument 'lines' (TextIOWrapper) cannot be hashed ...
    """


_SIMPLE = (type(None), bool, int, float, complex, str, bytes)


class Hasher:
    """Feeds values into one digest, in an unambiguous encoding (type tag + length)."""

    def __init__(self, resolve_ref: Callable[[ObjectRef], Any] | None = None,
                 pending: list[Any] | None = None) -> None:
        self.h = hashlib.blake2b(digest_size=32)
        self._resolve_ref = resolve_ref
        self._pending = pending
        self._functions: set[int] = set()   # functions being hashed (recursion guard)

    def digest(self) -> str:
        """The hex digest of what was fed."""
        return self.h.hexdigest()

    def _tag(self, tag: bytes, payload: bytes = b"") -> None:
        self.h.update(tag + struct.pack("<Q", len(payload)) + payload)

    def _sub(self, value: Any, where: str) -> bytes:
        """The digest of `value` alone (to sort dict items and set members by)."""
        sub = Hasher(self._resolve_ref, self._pending)
        sub._functions = self._functions
        sub.feed(value, where)
        return sub.h.digest()

    def feed(self, value: Any, where: str) -> None:  # noqa: C901 - one branch per type
        """Add `value`; `where` names it in errors (e.g. ``argument 'x'[2]``)."""
        kind = type(value)
        own = getattr(kind, "__shoal_cache_key__", None)
        if own is not None:  # a type that names its own key (e.g. api.AUTO_LOGNAME)
            self._tag(b"own", f"{kind.__module__}.{kind.__qualname__}".encode())
            self.feed(own(value), where)
        elif kind in _SIMPLE:
            if kind is float:
                self._tag(b"f", value.hex().encode())
            elif kind is str:
                self._tag(b"s", value.encode("utf-8", "surrogatepass"))
            elif kind is bytes:
                self._tag(b"b", value)
            else:
                self._tag(kind.__name__.encode(), repr(value).encode())
        elif isinstance(value, AppFuture):
            self._future(value, where)
        elif isinstance(value, DataFuture):
            if not value.parent.done():
                self._wait_for(value.parent, where)
            self._tag(b"File", value.file_obj.path.encode())
        elif isinstance(value, File):
            self._tag(b"File", value.path.encode())
        elif isinstance(value, ObjectRef):
            if self._resolve_ref is None:
                raise CacheKeyError(f"{where}: an ObjectRef cannot be hashed here")
            self.feed(self._resolve_ref(value), f"{where} (the value of {value!r})")
        elif isinstance(value, tuple | list):
            name = kind.__qualname__ if kind not in (tuple, list) else kind.__name__
            self._tag(b"seq", f"{kind.__module__}.{name}:{len(value)}".encode())
            for i, item in enumerate(value):
                self.feed(item, f"{where}[{i}]")
        elif isinstance(value, dict):
            items = sorted((self._sub(k, f"{where} key {k!r}"), self._sub(v, f"{where}[{k!r}]"))
                           for k, v in value.items())
            self._tag(b"dict", str(len(items)).encode())
            for k, v in items:
                self.h.update(k + v)
        elif isinstance(value, set | frozenset):
            members = sorted(self._sub(v, f"{where} member {v!r}") for v in value)
            self._tag(b"set", str(len(members)).encode())
            for m in members:
                self.h.update(m)
        elif isinstance(value, enum.Enum):
            self._tag(b"enum", f"{kind.__module__}.{kind.__qualname__}".encode())
            self.feed(value.value, where)
        elif isinstance(value, pathlib.PurePath):
            self._tag(b"path", str(value).encode())
        elif kind is range:
            self._tag(b"range", repr(value).encode())
        elif isinstance(value, types.FunctionType | functools.partial):
            self._tag(b"fn")
            self.feed_function(value, where)
        elif isinstance(value, types.ModuleType):
            self._tag(b"module", value.__name__.encode())
        elif isinstance(value, types.BuiltinFunctionType | type):
            self._tag(b"name", f"{value.__module__}.{value.__qualname__}".encode())
        elif kind.__module__ == "numpy" or kind.__module__.startswith("numpy."):
            self._numpy(value, where)
        elif kind.__module__.startswith("pyarrow") and kind.__name__ in ("Table", "RecordBatch"):
            import pyarrow as pa

            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, value.schema) as writer:
                writer.write(value)
            self._tag(b"arrow", memoryview(sink.getvalue()).tobytes())
        elif dataclasses.is_dataclass(value):
            self._tag(b"dc", f"{kind.__module__}.{kind.__qualname__}".encode())
            for f in dataclasses.fields(value):
                self._tag(b"field", f.name.encode())
                self.feed(getattr(value, f.name), f"{where}.{f.name}")
        else:
            raise CacheKeyError(
                f"{where} ({kind.__module__}.{kind.__qualname__}) cannot be hashed stably "
                "for the cache key; pass a value of a supported type (numbers, strings, "
                "bytes, containers of them, numpy arrays, api.File, futures, refs, "
                "dataclasses...) or leave it out with ignore_for_cache=[...]")

    def _future(self, fut: AppFuture, where: str) -> None:
        if not fut.done():
            self._wait_for(fut, where)
            return
        if concurrent.futures.Future.exception(fut, 0) is not None:
            raise _DependencyFailed
        self.feed(fut.result(), f"{where} (the result of {fut.name})")

    def _wait_for(self, fut: Any, where: str) -> None:
        if self._pending is None:
            raise CacheKeyError(f"{where}: a future that has not finished")
        self._pending.append(fut)
        self._tag(b"pending")

    def _numpy(self, value: Any, where: str) -> None:
        import numpy as np

        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                self._tag(b"ndarray-object", repr(value.shape).encode())
                self.feed(value.tolist(), where)
                return
            self._tag(b"ndarray", f"{value.dtype.str}{value.shape}".encode())
            self.h.update(np.ascontiguousarray(value).data.cast("B"))
        elif isinstance(value, np.generic):
            self._tag(b"npscalar", value.dtype.str.encode() + value.tobytes())
        else:
            raise CacheKeyError(f"{where} ({type(value).__qualname__}) cannot be hashed "
                                "stably for the cache key; leave it out with "
                                "ignore_for_cache=[...]")

    def feed_function(self, fn: Any, where: str) -> None:
        """Add a function by its code, defaults, closure and the globals it names."""
        if isinstance(fn, functools.partial):
            self.feed_function(fn.func, where)
            self.feed(list(fn.args), f"{where} (partial arguments)")
            self.feed(dict(fn.keywords), f"{where} (partial keywords)")
            return
        name = getattr(fn, "__qualname__", type(fn).__qualname__)
        qualified = f"{getattr(fn, '__module__', '')}.{name}"
        code = getattr(fn, "__code__", None)
        if code is None or (self._functions and _is_library(fn)):
            # Builtins, and functions of installed packages a user function calls, count
            # by name: walking a library's whole call graph would cost more than the
            # call (and its code changes only with its version).
            self._tag(b"named", qualified.encode())
            return
        if id(fn) in self._functions:
            self._tag(b"recursive", qualified.encode())
            return
        self._functions.add(id(fn))
        self._tag(b"function", qualified.encode())
        names: list[str] = []
        self._code(code, names)
        label = f"{where} ({name})"
        self.feed(list(fn.__defaults__ or ()), f"{label} defaults")
        self.feed(dict(fn.__kwdefaults__ or {}), f"{label} keyword defaults")
        for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                content = cell.cell_contents
            except ValueError:
                content = None  # not filled yet
            self._tag(b"cell", var.encode())
            self.feed(content, f"{label} closure variable {var!r}")
        globs = getattr(fn, "__globals__", {})
        for glob in sorted(set(names)):
            if glob not in globs:
                continue
            value = globs[glob]
            wrapped = getattr(value, "__wrapped__", None)
            if not isinstance(value, types.FunctionType) and \
                    isinstance(wrapped, types.FunctionType):
                value = wrapped  # e.g. another app this one calls: by its function's code
            if isinstance(value, types.FunctionType):
                self._tag(b"global", glob.encode())
                self.feed_function(value, f"{label} global {glob!r}")
            elif type(value) in _SIMPLE:
                self._tag(b"global", glob.encode())
                self.feed(value, f"{label} global {glob!r}")

    def _code(self, code: types.CodeType, names: list[str]) -> None:
        self._tag(b"code", code.co_code)
        self._tag(b"sig", repr((code.co_argcount, code.co_posonlyargcount,
                                code.co_kwonlyargcount, code.co_flags, code.co_varnames,
                                code.co_freevars, code.co_cellvars, code.co_names)).encode())
        names.extend(code.co_names)
        for const in code.co_consts:
            self._const(const, names)

    def _const(self, const: Any, names: list[str]) -> None:
        # Not repr(): a frozenset constant (``x in {"a", "b"}``) prints in hash-seed order.
        if isinstance(const, types.CodeType):
            self._code(const, names)
        elif const is Ellipsis:
            self._tag(b"...")
        elif type(const) is tuple:
            self._tag(b"ctuple", str(len(const)).encode())
            for item in const:
                self._const(item, names)
        else:
            self._tag(b"const")
            self.feed(const, "a constant")


_LIBRARY_PREFIXES = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                                           sys.exec_prefix)})


def _is_library(fn: Any) -> bool:
    """True for a function of the standard library or an installed package."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    return real.startswith(_LIBRARY_PREFIXES) or "site-packages" in real


class _DependencyFailed(Exception):
    """A future among the arguments failed: the call runs, and fails as dependents do."""


# ---- the key of a call ------------------------------------------------------------------
_signatures: weakref.WeakKeyDictionary[Any, inspect.Signature] = weakref.WeakKeyDictionary()
_function_keys: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_STREAMS = ("stdout", "stderr")


def function_key(app: Any) -> bytes:
    """The digest of an app's function (computed once per app)."""
    key = _function_keys.get(app)
    if key is None:
        hasher = Hasher()
        hasher.feed(app.kind, "app kind")
        try:
            hasher.feed_function(app.fn, f"app {app.name!r}")
        except CacheKeyError as err:
            raise CacheKeyError(f"app {app.name!r} cannot be memoized: {err}") from None
        key = _function_keys[app] = hasher.h.digest()
    return key


def check_ignored(app: Any, ignore: Any) -> tuple[str, ...]:
    """The validated ``ignore_for_cache`` names of `app` (ValueError naming a bad one)."""
    if ignore is None or (isinstance(ignore, list | tuple) and not ignore):
        return ()
    if isinstance(ignore, str) or not all(isinstance(n, str) for n in ignore):
        raise ValueError(f"app {app.name!r}: ignore_for_cache={ignore!r}; expected a list of "
                         "parameter names")
    names = tuple(ignore)
    params = inspect.signature(app.fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [n for n in names if n not in params and n not in _STREAMS]
        if unknown:
            raise ValueError(f"app {app.name!r}: ignore_for_cache names {unknown}, which are "
                             f"not parameters of the function ({', '.join(params)})")
    return names


def call_key(app: Any, args: tuple, kwargs: dict, pending: list[Any] | None,
             resolve_ref: Callable[[ObjectRef], Any] | None) -> str:
    """The memoization key of ``app(*args, **kwargs)`` (CacheKeyError naming a bad
    argument). Unfinished futures inside are appended to `pending`."""
    sig = _signatures.get(app)
    if sig is None:
        sig = _signatures[app] = inspect.signature(app.fn)
    plain = dict(kwargs)
    streams = {s: plain.pop(s) for s in _STREAMS if s in plain and s not in sig.parameters}
    try:
        bound = sig.bind(*args, **plain)
    except TypeError as err:
        raise TypeError(f"app {app.name!r}: {err}") from None
    hasher = Hasher(resolve_ref, pending)
    hasher.h.update(function_key(app))
    ignore = app.ignore_for_cache
    for name, value in [*bound.arguments.items(), *streams.items()]:
        if name in ignore:
            continue
        param = sig.parameters.get(name)
        if param is not None and param.kind is param.VAR_KEYWORD:
            for k in sorted(value):
                if k in ignore:
                    continue
                hasher._tag(b"arg", k.encode())
                hasher.feed(value[k], f"app {app.name!r}: keyword argument {k!r}")
            continue
        hasher._tag(b"arg", name.encode())
        if param is not None and param.kind is param.VAR_POSITIONAL:
            hasher.feed(list(value), f"app {app.name!r}: argument *{name}")
        else:
            hasher.feed(value, f"app {app.name!r}: argument {name!r}")
    return hasher.digest()


# ---- the memo table of a session --------------------------------------------------------
class Memoizer:
    """A session's memo table, its checkpoint store, and a thread for slow work (hashing
    resolved futures' values, writing results) off the result reader."""

    def __init__(self, client: Any, store: CheckpointStore | None, mode: str,
                 period: float) -> None:
        self.client = client
        self.store = store
        self.mode = mode
        self.period = period
        # key -> its future; once a future finished with a large (stored) value, a weak
        # reference: the table must not keep gigabytes in the object store that the
        # user has let go of (the checkpoint, if any, still has them).
        self._table: dict[str, AppFuture | weakref.ref[AppFuture]] = {}
        # _lock: the table and lookups (user threads, the memo thread; held while a miss
        # is submitted). _idle: the job count and unwritten results; the reader thread
        # takes only this one, never held across anything that blocks.
        self._lock = threading.RLock()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._unwritten: list[Record] = []  # finished, not written yet (periodic, manual)
        self._queued = 0                     # jobs not finished yet
        self._idle = threading.Condition(threading.Lock())
        self.written = 0
        self._closed = False
        if store is not None and mode == "periodic":
            self._start()

    # ---- calls -------------------------------------------------------------------------
    def call(self, app: Any, args: tuple, kwargs: dict) -> AppFuture:
        """A memoized app call: a shared future, a checkpointed value, or a new task."""
        pending: list[Any] = []
        try:
            key = call_key(app, args, kwargs, pending, self._ref_value)
        except _DependencyFailed:
            return app.submit(args, kwargs)  # fails as any dependent does; not remembered
        if pending:
            return self._deferred(app, args, kwargs, pending)
        return self._lookup_or_run(app, key, args, kwargs, None)

    def _ref_value(self, ref: ObjectRef) -> Any:
        _session.check_ref(ref)
        client = self.client
        known = client.put_locations.get(ref.id)
        if known is not None:
            return client.load(known)
        (result,) = client.get_values([ref.id], None)
        if result.status != 0:
            raise client.error_for(result, f"object {ref!r}")
        return client.load(result)

    def _lookup_or_run(self, app: Any, key: str, args: tuple, kwargs: dict,
                       outer: AppFuture | None) -> AppFuture:
        with self._lock:
            shared = self._table.get(key)
            if isinstance(shared, weakref.ref):
                shared = shared()
            if shared is not None and shared.done() and \
                    concurrent.futures.Future.exception(shared, 0) is not None:
                shared = None  # failed: not remembered (its _forget may not have run yet)
            if shared is not None:
                if outer is None:
                    return shared
                self._chain(shared, outer)
                return outer
            entry = self.store.get(key) if self.store is not None else None
            if entry is not None:
                fut = outer
                if fut is None:
                    fut = AppFuture(self.client.new_id(), app.name, self.client,
                                    entry.stdout, entry.stderr)
                    self._with_outputs(fut, kwargs)
                    self.client.track_local(fut)
                else:
                    fut.stdout, fut.stderr = entry.stdout, entry.stderr
                fut.set_result(entry.value)
                self._table[key] = fut
                return fut
            fut = app.submit(args, kwargs, outer)
            self._table[key] = fut
        fut.when_done(lambda done: self._finished(key, app.name, done))
        return fut

    def _with_outputs(self, fut: AppFuture, kwargs: dict) -> None:
        outputs = kwargs.get("outputs")
        if outputs:
            fut.outputs = output_futures(fut, outputs)

    def _deferred(self, app: Any, args: tuple, kwargs: dict, pending: list[Any]) -> AppFuture:
        """A future now; the key (and the lookup) once the futures among the arguments
        are done."""
        client = self.client
        outer = AppFuture(client.new_id(), app.name, client)
        self._with_outputs(outer, kwargs)
        client.track_local(outer)
        left = [len(pending)]
        lock = threading.Lock()

        def one_done(_fut: Any) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._run_job(lambda: self._resolve(app, args, kwargs, outer))

        for fut in pending:
            fut.when_done(one_done)
        return outer

    def _resolve(self, app: Any, args: tuple, kwargs: dict, outer: AppFuture) -> None:
        try:
            try:
                pending: list[Any] = []
                key = call_key(app, args, kwargs, pending, self._ref_value)
                if pending:  # (cannot happen: all were done)
                    raise RuntimeError("a dependency is not done")
            except _DependencyFailed:
                app.submit(args, kwargs, outer)  # it fails as any dependent does
                return
            self._lookup_or_run(app, key, args, kwargs, outer)
        except Exception as err:  # noqa: BLE001 - the call's future fails with it
            if not outer.done():
                outer.set_exception(err)

    def _chain(self, source: AppFuture, target: AppFuture) -> None:
        """Resolve `target` as `source` resolves (its value loaded off the reader)."""
        def copy() -> None:
            err = concurrent.futures.Future.exception(source, 0)
            if err is None:
                try:
                    value = source.result()
                except Exception as failure:  # noqa: BLE001
                    err = failure
            if target.done():
                return
            target.stdout, target.stderr = source.stdout, source.stderr
            if err is not None:
                target.set_exception(err)
            else:
                target.set_result(value)

        source.when_done(lambda _s: self._run_job(copy))

    def _finished(self, key: str, name: str, fut: AppFuture) -> None:
        """On the reader thread: remember success, forget failure, checkpoint."""
        if concurrent.futures.Future.exception(fut, 0) is not None:
            self._run_job(lambda: self._forget(key, fut))
            return
        if fut.stored:
            self._run_job(lambda: self._weaken(key, fut))
        if self.store is None or self._closed:
            return
        if self.mode == "task_exit":
            self._run_job(lambda: self._write([(key, name, fut)]))
        else:
            with self._idle:
                self._unwritten.append(Record(key, name, fut, fut.stdout, fut.stderr))

    def _weaken(self, key: str, fut: AppFuture) -> None:
        with self._lock:
            if self._table.get(key) is fut:
                self._table[key] = weakref.ref(fut)

    def _forget(self, key: str, fut: AppFuture) -> None:
        with self._lock:
            if self._table.get(key) is fut:
                del self._table[key]

    # ---- checkpoints -------------------------------------------------------------------
    def _write(self, items: list[tuple[str, str, AppFuture]]) -> None:
        for key, name, fut in items:
            store = self.store
            if store is None:
                return  # (the session ended)
            try:
                value = fut.result()
            except Exception:  # noqa: BLE001 - e.g. lost: nothing to write
                continue
            if store.write(Record(key, name, value, fut.stdout, fut.stderr)):
                with self._idle:
                    self.written += 1

    def checkpoint(self) -> int:
        """Write every finished, unwritten result now; wait for writes in flight. Returns
        how many results this driver has written in all."""
        with self._idle:
            records, self._unwritten = self._unwritten, []
        if records:
            self._run_job(lambda: self._write([(r.key, r.app, r.value) for r in records]))
        self.drain()
        return self.written

    def drain(self) -> None:
        """Wait until the queued jobs have run."""
        with self._idle:
            while self._queued:
                self._idle.wait(0.5)

    def _run_job(self, job: Callable[[], None]) -> None:
        with self._idle:
            self._queued += 1
            self._start()
        self._jobs.put(job)

    def _start(self) -> None:
        # (Called holding _idle, or from __init__.)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="shoal-memo", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        next_periodic = time.monotonic() + self.period
        while True:
            timeout = None
            if self.mode == "periodic" and self.store is not None:
                timeout = max(0.0, next_periodic - time.monotonic())
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                next_periodic = time.monotonic() + self.period
                with self._idle:
                    records, self._unwritten = self._unwritten, []
                self._write([(r.key, r.app, r.value) for r in records])
                continue
            if job is None:
                return
            try:
                job()
            except Exception:  # noqa: BLE001
                _log.exception("memoization job failed")
            finally:
                job = None  # (it may hold a future: not until the next job comes)
                with self._idle:
                    self._queued -= 1
                    self._idle.notify_all()

    def close(self, final_checkpoint: bool) -> None:
        """At the end of the session: the last checkpoint (unless manual), then stop."""
        if self._closed:
            return
        try:
            if final_checkpoint and self.store is not None and self.mode != "manual":
                self.checkpoint()
            else:
                self.drain()
        finally:
            self._closed = True  # results arriving from now on are not written
            self.drain()
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join(10)
            if self.store is not None:
                self.store.close()
                self.store = None
            self._table.clear()


# ---- the session's memoizer -------------------------------------------------------------
_memoizers: weakref.WeakKeyDictionary[Any, Memoizer] = weakref.WeakKeyDictionary()


def check_options(checkpoint_dir: Any, mode: Any, period: Any) -> None:
    """ValueError naming a bad checkpoint option of ``api.init``."""
    if checkpoint_dir is not None and not (isinstance(checkpoint_dir, str | os.PathLike)
                                           and os.fspath(checkpoint_dir)):
        raise ValueError(f"api.init(checkpoint_dir={checkpoint_dir!r}): expected a directory "
                         "path, or None")
    if mode not in MODES:
        raise ValueError(f"api.init(checkpoint_mode={mode!r}): expected one of "
                         f"{', '.join(repr(m) for m in MODES)}")
    if isinstance(period, bool) or not isinstance(period, int | float) or not period > 0:
        raise ValueError(f"api.init(checkpoint_period={period!r}): expected a number of "
                         "seconds > 0")


def open_store(checkpoint_dir: Any) -> CheckpointStore | None:
    """The checkpoint store of ``api.init(checkpoint_dir=)`` (None: memoize in memory
    only); ``$SHOAL_CHECKPOINT_DIR``, which ``clusterctl run --checkpoint-dir`` sets, is the
    default. ValueError naming the directory when it cannot be used."""
    if checkpoint_dir is None:
        checkpoint_dir = os.environ.get("SHOAL_CHECKPOINT_DIR") or None
    return CheckpointStore(os.fspath(checkpoint_dir)) if checkpoint_dir else None


def configure(client: Any, store: CheckpointStore | None, mode: str, period: float) -> None:
    """Set up memoization for a new session, with the store from :func:`open_store`."""
    _memoizers[client] = Memoizer(client, store, mode, float(period))
    _session.on_end(_end)


def _end(client: Any) -> None:
    memo = _memoizers.pop(client, None)
    if memo is not None:
        memo.close(final_checkpoint=not client.closed)


def memoizer() -> Memoizer:
    """The current session's memoizer (made, in memory only, if api.init made none)."""
    client = _session.client()
    memo = _memoizers.get(client)
    if memo is None:
        memo = _memoizers.setdefault(client, Memoizer(client, None, "task_exit", 60.0))
    return memo


def call(app: Any, args: tuple, kwargs: dict) -> AppFuture:
    """Run a ``cache=True`` app call through the session's memo table."""
    return memoizer().call(app, args, kwargs)


def checkpoint() -> int:
    """``api.checkpoint()``: see its docstring."""
    return memoizer().checkpoint()
