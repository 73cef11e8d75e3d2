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
remembered (the next identical call runs). The table is :mod:`api._cache`; the
checkpoint directory :mod:`api._checkpoint`.
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
import struct
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

from api import _errors
from api._files import DataFuture, File
from api._futures import AppFuture
from cluster.common.serialization import ObjectRef

_log = logging.getLogger("api.memo")

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
        elif isinstance(value, DataFuture):  # (the file's path, once its producer succeeded)
            if not value.parent.done():
                self._wait_for(value.parent, where)
            elif concurrent.futures.Future.exception(value.parent, 0) is not None:
                raise DependencyFailed
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
            raise DependencyFailed
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


class DependencyFailed(Exception):  # noqa: N818 - a signal between modules, not an error
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
