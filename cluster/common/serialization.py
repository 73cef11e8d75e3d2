"""How values, arguments, functions and errors become bytes and back.

Pickle protocol 5 first (fast, C); cloudpickle when plain pickle cannot (lambdas, classes
defined in ``__main__``). Object refs and futures found anywhere inside a value are written
as pickle *persistent ids*, so the dependency list of a task is collected during the one
pass that serializes its arguments, and the worker substitutes the values while loading.
"""

from __future__ import annotations

import io
import pickle
import threading
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import cloudpickle

PROTOCOL = 5


class ObjectRef:
    """A reference to a value held by the cluster (made by ``api.put`` or a task).

    Pass it to apps as an argument (anywhere inside lists, dicts, tuples): the app receives
    the value. ``api.get(ref)`` fetches the value into the driver.
    """

    __slots__ = ("_id", "_owner", "__weakref__")
    _shoal_ref = True

    def __init__(self, object_id: int, owner: Any = None) -> None:
        self._id = object_id
        self._owner = owner

    @property
    def id(self) -> int:
        """The cluster-wide id of the object."""
        return self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id:#x})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __del__(self) -> None:
        owner = self._owner
        if owner is not None:
            owner.release(self._id)

    def __reduce__(self) -> tuple:
        # Reached when plain pickle (our fast path, or user code) pickles a ref: the id is
        # recorded as a nested ref if a collector is active, and loads through _load_ref.
        found = getattr(_context, "refs", None)
        if found is not None:
            found.append(self._id)
        return (_load_ref, (self._id,))


_context = threading.local()


def _load_ref(object_id: int) -> Any:
    resolve = getattr(_context, "resolve", None)
    return resolve(object_id) if resolve is not None else ObjectRef(object_id)


class collecting:  # noqa: N801 - a context manager
    """``with collecting(refs)``: refs pickled by plain pickle inside are added to `refs`."""

    def __init__(self, refs: list[int]) -> None:
        self._refs = refs

    def __enter__(self) -> list[int]:
        self._saved = getattr(_context, "refs", None)
        _context.refs = self._refs
        return self._refs

    def __exit__(self, *exc: object) -> None:
        _context.refs = self._saved


class resolving:  # noqa: N801 - a context manager
    """``with resolving(fn)``: refs loaded inside become ``fn(id)``."""

    def __init__(self, resolve: Callable[[int], Any]) -> None:
        self._resolve = resolve

    def __enter__(self) -> None:
        self._saved = getattr(_context, "resolve", None)
        _context.resolve = self._resolve

    def __exit__(self, *exc: object) -> None:
        _context.resolve = self._saved


def ref_id(obj: Any) -> int | None:
    """The object id if `obj` is a ref or a future of ours, else None."""
    if getattr(type(obj), "_shoal_ref", False):
        return obj._id
    return None


class RefIds:
    """persistent_id for our picklers: refs and futures become their ids (collected)."""

    _refs: list[int]

    def persistent_id(self, obj: Any) -> int | None:
        if getattr(type(obj), "_shoal_ref", False):
            self._refs.append(obj._id)
            return obj._id
        return None


class _RefPickler(RefIds, pickle.Pickler):
    def __init__(self, file: io.BytesIO, refs: list[int]) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._refs = refs


class _RefCloudPickler(RefIds, cloudpickle.CloudPickler):
    def __init__(self, file: io.BytesIO, refs: list[int]) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._refs = refs


def dumps(obj: Any, refs: list[int] | None = None) -> bytes:
    """Serialize `obj`; ids of refs/futures inside it are appended to `refs`."""
    found: list[int] = [] if refs is None else refs
    start = len(found)
    buf = io.BytesIO()
    try:
        _RefPickler(buf, found).dump(obj)
    except Exception:
        del found[start:]
        buf = io.BytesIO()
        _RefCloudPickler(buf, found).dump(obj)
    return buf.getvalue()


def dumps_value(obj: Any, refs: list[int] | None = None) -> bytes:
    """Serialize a result: plain pickle when it can (most values), else :func:`dumps`;
    ids of refs inside are appended to `refs`."""
    found: list[int] = [] if refs is None else refs
    start = len(found)
    try:
        with collecting(found):
            return pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:
        del found[start:]
        return dumps(obj, found)


class RefUnpickler(pickle.Unpickler):
    """Unpickler replacing each persistent id by ``resolve(id)``."""

    def __init__(self, file: io.BytesIO, resolve: Callable[[int], Any],
                 buffers: Any = None) -> None:
        super().__init__(file, buffers=buffers)
        self._resolve = resolve

    def persistent_load(self, pid: Any) -> Any:
        return self._resolve(pid)


def as_ref(object_id: int) -> ObjectRef:
    """A plain (unowned) ref: how refs inside values load by default."""
    return ObjectRef(object_id)


def loads(data: bytes, resolve: Callable[[int], Any] = as_ref) -> Any:
    """Deserialize; each ref inside is replaced by ``resolve(id)``."""
    # Always set, even to the default: a load nested in another's resolve (a dependency
    # holding refs, loaded while a task's arguments load) must not see the outer resolver.
    with resolving(resolve):
        return RefUnpickler(io.BytesIO(data), resolve).load()


def _reduce_code_keeping_filename(code: types.CodeType) -> Any:
    # cloudpickle blanks co_filename for deterministic payloads; we keep it, so remote
    # tracebacks name the user's file and line (and show the source where it is readable).
    reduced = cloudpickle.cloudpickle._code_reduce(code)
    func, args = reduced[0], reduced[1]
    args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)
    return (func, args, *reduced[2:])


class _FunctionPickler(cloudpickle.CloudPickler):
    dispatch_table = ChainMap({types.CodeType: _reduce_code_keeping_filename},
                              cloudpickle.CloudPickler.dispatch_table)


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Serialize a function with cloudpickle (by value where it is not importable)."""
    buf = io.BytesIO()
    try:
        _FunctionPickler(buf, protocol=PROTOCOL).dump(fn)
    except AttributeError:  # a cloudpickle without _code_reduce: filenames are lost
        return cloudpickle.dumps(fn, protocol=PROTOCOL)
    return buf.getvalue()


def loads_function(blob: bytes) -> Callable[..., Any]:
    """Inverse of :func:`dumps_function`."""
    return pickle.loads(blob)


#: The longest message and traceback text an app's error carries; past them the middle is
#: left out (a traceback's first frames and its last, the original error's, stay). A task
#: that fails because a task it waited for failed carries that one's message and
#: traceback in its own: unbounded (and with the message holding the traceback too), each
#: level of a chain of waiting tasks doubled the text: 3.6 MB at 12 levels, 55 MB of run
#: history behind one failure 140 levels deep, a driver out of memory further down.
MAX_ERROR_MESSAGE = 2 << 10
MAX_ERROR_TRACEBACK = 16 << 10


def clip_text(text: str, limit: int) -> str:
    r"""`text`, or its start and end around a note of what was left out when longer than
    `limit`.

    >>> clip_text("abcdefghij", 20)
    'abcdefghij'
    >>> clip_text("a" * 50 + "b" * 50, 40)
    'aaaaaaaaaaaaaaaaaaaa\n... (60 characters left out) ...\nbbbbbbbbbbbbbbbbbbbb'
    """
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - 2 * half} characters left out) ...\n" \
        f"{text[-half:]}"


def error_message(exc: BaseException) -> str:
    """An app's exception as one message, clipped: for an error of a task it waited for
    (a TaskError), its message without that task's traceback (the traceback text has it)."""
    remote = getattr(exc, "remote_traceback", None)
    text = str(exc.args[0]) if remote is not None and exc.args else str(exc)
    return clip_text(text, MAX_ERROR_MESSAGE)


def describe_error(exc: BaseException, traceback_text: str) -> tuple[bytes, str]:
    """An app's exception as a task's failure carries it: (:func:`dumps_error`'s payload,
    its :func:`error_message`), the message made once for both."""
    message = error_message(exc)
    kind = type(exc)
    try:
        inner: bytes | None = dumps(exc)
    except Exception:
        inner = None
    meta = (inner, kind.__module__, kind.__qualname__, message,
            clip_text(traceback_text, MAX_ERROR_TRACEBACK))
    return pickle.dumps(meta, protocol=PROTOCOL), message


def dumps_error(exc: BaseException, traceback_text: str) -> bytes:
    """Serialize an app's exception with its traceback text (both clipped); never fails.

    The exception object is pickled separately from its description, so a driver that
    cannot load the exception's class still gets the type name, message and traceback.
    """
    return describe_error(exc, traceback_text)[0]


def loads_error(data: bytes) -> tuple[BaseException | None, str, str, str, str]:
    """Returns (exception or None, type module, type name, message, traceback text)."""
    try:
        inner, module, name, message, tb = pickle.loads(data)
    except Exception as err:
        return None, "builtins", "Exception", f"undecodable remote error ({err})", ""
    exc = None
    if inner is not None:
        try:
            exc = loads(inner)
        except Exception:
            exc = None
    return exc, module, name, message, tb
