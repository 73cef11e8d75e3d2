"""Copying a large buffer into a store mapping on more than one core.

A slice assignment (``view[a:b] = raw``) copies on one thread holding the GIL: 12.1-12.4
GB/s into a pre-faulted 256 MiB shared mapping here (7.0-7.7 on a busier day), where two
threads reach 15.4-15.5 (12.2-13.5), which is how Ray's put gets ahead of ours.
``ctypes.memmove`` is a foreign call, so it runs without the GIL and the pieces of one
copy run side by side; the buffer addresses come from the buffer protocol
(``PyObject_GetBuffer``), which also serves read-only sources such as ``bytes``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from typing import Any

#: Copies smaller than this stay a slice assignment: a thread costs ~60 us to start and
#: join, a 16 MiB copy ~1.3 ms, so below this the split gains less than noise.
SPLIT_BYTES = 16 << 20
#: At most this many threads share one copy (memory bandwidth, not cores, bounds it).
MAX_THREADS = 4
PAGE = 4096


class _PyBuffer(ctypes.Structure):  # CPython's Py_buffer (stable ABI since 3.11)
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PYBUF_SIMPLE, _PYBUF_WRITABLE = 0, 1


@contextlib.contextmanager
def _address(obj: Any, writable: bool) -> Iterator[tuple[int, int]]:
    """The (address, length) of `obj`'s contiguous bytes, held for the block."""
    view = _PyBuffer()
    _get_buffer(obj, ctypes.byref(view), _PYBUF_WRITABLE if writable else _PYBUF_SIMPLE)
    try:
        yield view.buf or 0, view.len
    finally:
        _release_buffer(ctypes.byref(view))


def threads_for(nbytes: int) -> int:
    """How many threads copy `nbytes`: one below :data:`SPLIT_BYTES`, then one per
    :data:`SPLIT_BYTES` up to the cores this process may run on and :data:`MAX_THREADS`.

    >>> threads_for(1 << 20)
    1
    >>> threads_for(256 << 20) == min(MAX_THREADS, len(os.sched_getaffinity(0)))
    True
    """
    if nbytes < 2 * SPLIT_BYTES:
        return 1
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0)), nbytes // SPLIT_BYTES))


def copy_into(view: memoryview, offset: int, src: Any) -> None:
    """Copy the bytes of `src` (anything with a contiguous buffer) into writable `view`
    at `offset`, like ``view[offset:offset + n] = src`` but on several threads when large.

    >>> out = memoryview(bytearray(8))
    >>> copy_into(out, 2, b"abc")
    >>> bytes(out)
    b'\\x00\\x00abc\\x00\\x00\\x00'
    """
    nbytes = memoryview(src).nbytes
    if threads_for(nbytes) == 1:
        view[offset:offset + nbytes] = src
        return
    with _address(view, True) as (dst, room), _address(src, False) as (source, length):
        if offset < 0 or offset + length > room:
            raise ValueError(f"copy of {length} bytes at offset {offset} does not fit "
                             f"in a {room}-byte view")
        count = threads_for(length)
        step = (-(-length // count) + PAGE - 1) // PAGE * PAGE  # ceiling, whole pages
        pieces = [(dst + offset + at, source + at, min(step, length - at))
                  for at in range(0, length, step)]
        helpers = [threading.Thread(target=ctypes.memmove, args=piece, daemon=True)
                   for piece in pieces[1:]]
        for helper in helpers:
            helper.start()
        try:
            ctypes.memmove(*pieces[0])
        finally:
            _join_all(helpers)


def _join_all(helpers: list[threading.Thread]) -> None:
    """Wait for every helper even through Ctrl-C: the buffers they write must outlive them."""
    interrupted: BaseException | None = None
    for helper in helpers:
        while helper.is_alive():
            try:
                helper.join()
            except BaseException as exc:  # KeyboardInterrupt: finish, then raise it
                interrupted = exc
    if interrupted is not None:
        raise interrupted
