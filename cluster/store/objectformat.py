"""The bytes of one stored object, as a file in a node store or a stream of chunks.

Layout (every offset 64-byte aligned)::

    magic "SHOALOBJ" | kind u8 | pad | nbuf u32 | meta_len u64 | (offset u64, len u64) * nbuf
    | meta | buffers

- ``KIND_PICKLE``: ``meta`` is a protocol-5 pickle whose large buffers (numpy arrays and
  anything else offering out-of-band ``PickleBuffer``s) follow it, each written once and
  read back as a read-only view of the mapping: no copy. Refs and futures inside the value
  are pickle persistent ids, collected while encoding (they are the value's nested refs).
- ``KIND_ARROW``: one buffer, an Arrow IPC stream, read zero-copy; a slice of a table is
  written as the slice (IPC writes only the rows it covers).

The same bytes travel between nodes, so a copy is a byte-for-byte file copy.

Readers take a shared ``flock`` on the file before mapping it. The mapping keeps that lock
(it holds a duplicate of the descriptor) for as long as any array views it, which is how a
store knows whether a deleted object's pages may be reused for the next one.

Workers read through a :class:`MappingCache`: a mapping nobody uses any more is unlocked
but kept, so when the store reuses that file for a new object, the worker's page tables for
it are still there. A first read of a fresh mapping pays a page fault per 4 KiB (a sum over
it runs at about a third of in-process speed here); a read through a warm mapping does not.
"""

from __future__ import annotations

import fcntl
import io
import mmap
import os
import pickle
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from cluster.common import serialization
from cluster.store import bulkcopy

MAGIC = b"SHOALOBJ"
KIND_PICKLE, KIND_ARROW = 1, 2
HEAD = struct.Struct("<8sB3xIQ")
BUF = struct.Struct("<QQ")
ALIGN = 64
#: Values whose encoding is smaller than this travel inline in messages.
INLINE_LIMIT = 100 * 1024


def align(n: int) -> int:
    """`n` rounded up to the alignment of buffers in the file."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def is_arrow(value: Any) -> bool:
    """Whether `value` is a pyarrow Table or RecordBatch (without importing pyarrow)."""
    kind = type(value)
    return kind.__module__.startswith("pyarrow") and kind.__name__ in ("Table", "RecordBatch")


@dataclass
class Encoded:
    """A value ready to be written: its kind, pickle (or nothing), buffers and size."""

    kind: int
    meta: bytes
    buffers: list[memoryview]
    refs: list[int] = field(default_factory=list)
    layout: list[tuple[int, int]] = field(default_factory=list)
    size: int = 0

    def write_into(self, view: memoryview) -> None:
        """Write the whole object into `view` (at least :attr:`size` bytes)."""
        HEAD.pack_into(view, 0, MAGIC, self.kind, len(self.buffers), len(self.meta))
        for i, (offset, length) in enumerate(self.layout):
            BUF.pack_into(view, HEAD.size + i * BUF.size, offset, length)
        start = HEAD.size + BUF.size * len(self.buffers)
        bulkcopy.copy_into(view, start, self.meta)
        for (offset, _), raw in zip(self.layout, self.buffers, strict=True):
            bulkcopy.copy_into(view, offset, raw)

    def parts(self) -> list[memoryview]:
        """The object's bytes as consecutive pieces, the buffers not copied (for sending
        it to a node)."""
        first = self.layout[0][0] if self.layout else self.size
        prefix = bytearray(first)
        with memoryview(prefix) as view:
            HEAD.pack_into(view, 0, MAGIC, self.kind, len(self.buffers), len(self.meta))
            for i, (offset, length) in enumerate(self.layout):
                BUF.pack_into(view, HEAD.size + i * BUF.size, offset, length)
            start = HEAD.size + BUF.size * len(self.buffers)
            view[start:start + len(self.meta)] = self.meta
        out = [memoryview(prefix)]
        for i, ((offset, length), raw) in enumerate(zip(self.layout, self.buffers,
                                                        strict=True)):
            out.append(raw)
            end = self.layout[i + 1][0] if i + 1 < len(self.layout) else self.size
            if end > offset + length:
                out.append(memoryview(bytes(end - offset - length)))
        return out


class _BufferRefCloudPickler(serialization.RefIds, cloudpickle.CloudPickler):
    def __init__(self, file: io.BytesIO, refs: list[int], callback: Any) -> None:
        super().__init__(file, protocol=serialization.PROTOCOL, buffer_callback=callback)
        self._refs = refs


def encode(value: Any) -> Encoded:
    """Encode `value` for the store (raises what pickling raises)."""
    if is_arrow(value):
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write(value)
        payload = sink.getvalue()
        return _laid_out(Encoded(KIND_ARROW, b"", [memoryview(payload).cast("B")]))
    refs: list[int] = []
    buffers: list[pickle.PickleBuffer] = []
    buf = io.BytesIO()
    try:  # plain C pickle first: refs inside record themselves while collecting
        with serialization.collecting(refs):
            pickle.Pickler(buf, serialization.PROTOCOL, buffer_callback=buffers.append
                           ).dump(value)
    except Exception:
        refs.clear()
        buffers.clear()
        buf = io.BytesIO()
        _BufferRefCloudPickler(buf, refs, buffers.append).dump(value)
    raws = [b.raw() for b in buffers]
    return _laid_out(Encoded(KIND_PICKLE, buf.getvalue(), raws, refs))


def _laid_out(enc: Encoded) -> Encoded:
    offset = align(HEAD.size + BUF.size * len(enc.buffers) + len(enc.meta))
    for raw in enc.buffers:
        enc.layout.append((offset, raw.nbytes))
        offset = align(offset + raw.nbytes)
    enc.size = max(offset, 1)
    return enc


def inline_bytes(enc: Encoded, value: Any) -> bytes | None:
    """The value as inline message bytes when it is small enough, else None."""
    if enc.size >= INLINE_LIMIT:
        return None
    if enc.kind == KIND_PICKLE and not enc.buffers:
        return enc.meta
    return serialization.dumps(value)  # small arrays or tables: pickled in-band


def decode(view: memoryview, resolve: Callable[[int], Any] | None = None,
           path: str = "<memory>") -> Any:
    """Load an object from its bytes; arrays and tables view `view` (zero-copy)."""
    magic, kind, nbuf, meta_len = HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError(f"{path} is not a shoal object file")
    layout = [BUF.unpack_from(view, HEAD.size + i * BUF.size) for i in range(nbuf)]
    if kind == KIND_ARROW:
        import pyarrow as pa

        offset, length = layout[0]
        reader = pa.ipc.open_stream(pa.py_buffer(view[offset:offset + length]))
        return reader.read_all()
    start = HEAD.size + BUF.size * nbuf
    meta = view[start:start + meta_len]
    buffers = [view[offset:offset + length] for offset, length in layout]
    resolve = resolve or serialization.as_ref
    with serialization.resolving(resolve):
        return serialization.RefUnpickler(io.BytesIO(meta), resolve, buffers=buffers).load()


def _locked_mapping(fd: int, size: int) -> mmap.mmap:
    """A read-only mapping of the open file `fd`, holding a shared lock on it for as long
    as the mapping lives (the mapping keeps its own duplicate of the descriptor)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)


def read(path: str, resolve: Callable[[int], Any] | None = None) -> Any:
    """Load an object file (any process on its node) zero-copy, read-only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mapped = _locked_mapping(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return decode(memoryview(mapped), resolve, path)


@dataclass
class _Cached:
    fd: int
    mapping: mmap.mmap
    size: int


class MappingCache:
    """Mappings of store files this process has read, kept while their files live (see
    the module's docstring). Call :meth:`release_idle` when a task is over."""

    def __init__(self, limit_bytes: int = 4 << 30) -> None:
        self.limit_bytes = limit_bytes
        self._entries: dict[tuple[int, int], _Cached] = {}

    def read(self, path: str, resolve: Callable[[int], Any] | None = None) -> Any:
        """Like :func:`read`, through a kept mapping of the same file when there is one."""
        fd = os.open(path, os.O_RDONLY)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        entry = self._entries.get(key)
        if entry is not None and entry.size == st.st_size:
            os.close(fd)
            fcntl.flock(entry.fd, fcntl.LOCK_SH)
            self._entries[key] = self._entries.pop(key)  # most recently used last
        else:
            if entry is not None:
                self._drop(key)
            try:
                mapping = _locked_mapping(fd, st.st_size)
            except BaseException:
                os.close(fd)
                raise
            entry = self._entries[key] = _Cached(fd, mapping, st.st_size)
        return decode(memoryview(entry.mapping), resolve, path)

    def release_idle(self) -> None:
        """Unlock mappings no value uses any more (their files may then be reused); close
        those whose files are gone, and the oldest past the size limit."""
        total = 0
        for key, entry in reversed(list(self._entries.items())):
            # Referenced by the entry and getrefcount's argument only: no view is alive.
            idle = sys.getrefcount(entry.mapping) <= 2
            if not idle:
                total += entry.size
                continue
            fcntl.flock(entry.fd, fcntl.LOCK_UN)
            if os.fstat(entry.fd).st_nlink == 0 or total + entry.size > self.limit_bytes:
                self._drop(key)  # deleted or spilled: let its pages go
            else:
                total += entry.size

    def _drop(self, key: tuple[int, int]) -> None:
        entry = self._entries.pop(key)
        try:
            entry.mapping.close()
        except BufferError:
            pass  # still viewed: the mapping goes when its last view does
        os.close(entry.fd)


def in_use(path: str) -> bool:
    """Whether some process still maps the object file at `path`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
