"""A node's shared-memory object store: immutable objects as files, read with ``mmap``.

The daemon owns the store; the bytes of an object are laid out as in
:mod:`cluster.objectformat`. Writers (the daemon itself, its workers, drivers on the host)
ask for room with :meth:`ObjectStore.alloc`, write the file at the path it returns and hand
it back with :meth:`ObjectStore.seal`; readers on the node map the file directly.

- Capacity: a limit (default a fraction of RAM, never more than the tmpfs has free), and
  free space is checked before every allocation, since a full tmpfs means SIGBUS.
- When an allocation would pass the limit, the least recently used unpinned objects spill
  to a node-local disk directory and are restored on access.
- Deleted files are kept for reuse up to a budget, so a new object rewrites pages that are
  already faulted in (33 GB/s here) instead of fresh ones (1.5). A file is reused only if
  no reader still maps it (readers hold a shared ``flock`` for as long as they map it).
"""

from __future__ import annotations

import mmap
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cluster.store import objectformat
from cluster.store.objectformat import read

__all__ = ["ObjectStore", "StoreFullError", "read"]

DEFAULT_FRACTION = 0.3


class StoreFullError(MemoryError):
    """The store cannot take an object: the message says how much was asked, what is
    free, and what to do."""


@dataclass
class _Entry:
    path: str
    size: int
    spilled: bool = False
    pins: int = 0
    last_used: float = 0.0


class ObjectStore:
    """One node's store. Thread-safe; readers in other processes use :func:`read`."""

    def __init__(self, directory: str, spill_dir: str, capacity: int | None = None,
                 recycle_bytes: int | None = None) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.makedirs(spill_dir, mode=0o700, exist_ok=True)
        self.directory = directory
        self.spill_dir = spill_dir
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.capacity = capacity if capacity is not None else int(total * DEFAULT_FRACTION)
        self.recycle_bytes = recycle_bytes if recycle_bytes is not None else self.capacity // 4
        self.used = 0
        self.spilled_bytes = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._free_files: list[tuple[int, str]] = []   # (size, path), for reuse
        self._lock = threading.RLock()
        self._seq = 0
        self._reserved: dict[str, int] = {}   # allocated, not yet sealed: path -> size

    # ---- writing -------------------------------------------------------------------------
    def put(self, object_id: int, value: Any) -> int:
        """Store `value` under `object_id`; returns its size in bytes."""
        return self.put_encoded(object_id, objectformat.encode(value))

    def put_encoded(self, object_id: int, enc: objectformat.Encoded) -> int:
        """Store an encoded value under `object_id`; returns its size."""
        path = self.alloc(enc.size)
        try:
            WriteMappings(limit_bytes=0).write(path, enc.size, enc.write_into)  # one-off
        except BaseException:
            self.abort(path)
            raise
        self.seal(object_id, path)
        return enc.size

    def alloc(self, size: int) -> str:
        """Room for an object of `size` bytes: a file of that size to write, counted as used
        until :meth:`seal` or :meth:`abort`. Raises :class:`StoreFullError`."""
        size = max(size, 1)
        with self._lock:
            self._make_room(size)
            path = self._file_for(size)
            self._reserved[path] = size
            self.used += size
        return path

    def fits(self, size: int) -> bool:
        """Whether :meth:`alloc` of `size` bytes would spill nothing (a quick check)."""
        size = max(size, 1)
        with self._lock:
            return self.used + size <= self.capacity and self._tmpfs_free() >= size

    def seal(self, object_id: int, path: str) -> None:
        """The object written at `path` (from :meth:`alloc`) is complete: it is now
        `object_id`, immutable, readable by every process on the node."""
        with self._lock:
            size = self._reserved.pop(path, None)
            if size is None:
                raise ValueError(f"{path} was not allocated by this store")
            if object_id in self._entries:  # a second copy arrived: keep the first
                self.used -= size
                self._recycle(path, size)
                return
            final = os.path.join(self.directory, f"{object_id:x}")
            os.replace(path, final)
            self._entries[object_id] = _Entry(final, size, last_used=time.monotonic())

    def abort(self, path: str) -> None:
        """Give back an allocation that will not be sealed."""
        with self._lock:
            size = self._reserved.pop(path, None)
            if size is not None:
                self.used -= size
                self._recycle(path, size)

    def _file_for(self, size: int) -> str:
        """A path to write `size` bytes to: a recycled file of that size when we have one."""
        with self._lock:
            for i, (free_size, path) in enumerate(self._free_files):
                if free_size == size:
                    del self._free_files[i]
                    return path
            self._seq += 1
            path = os.path.join(self.directory, f".new-{os.getpid()}-{self._seq}")
            with open(path, "wb") as f:
                f.truncate(size)
            os.chmod(path, 0o600)
            return path

    def _make_room(self, size: int) -> None:
        """Spill LRU objects until `size` fits the limit and the tmpfs; else StoreFullError."""
        if size > self.capacity:
            raise StoreFullError(
                f"object of {size / 2**20:.1f} MiB is larger than the store's capacity "
                f"({self.capacity / 2**20:.1f} MiB); raise the store limit or make the "
                "object smaller")
        for _, entry in list(self._entries.items()):
            if self.used + size <= self.capacity and self._tmpfs_free() >= size:
                break
            if entry.spilled or entry.pins:
                continue
            self._spill(entry)
        if self.used + size > self.capacity:
            raise StoreFullError(
                f"the store is full: {size / 2**20:.1f} MiB asked, {self.used / 2**20:.1f} of "
                f"{self.capacity / 2**20:.1f} MiB in use and nothing left to spill (every "
                "object is in use); release refs you no longer need, or raise the limit")
        self._drop_free_files(size)
        free = self._tmpfs_free()
        if free < size:
            raise StoreFullError(
                f"{self.directory} has {free / 2**20:.1f} MiB free, {size / 2**20:.1f} MiB "
                "asked: the shared-memory file system is full (writing on would crash with "
                "SIGBUS); free /dev/shm or point the store elsewhere")

    def _tmpfs_free(self) -> int:
        st = os.statvfs(self.directory)
        recyclable = sum(s for s, _ in self._free_files)
        return st.f_bavail * st.f_frsize + recyclable

    def _drop_free_files(self, needed: int) -> None:
        st = os.statvfs(self.directory)
        while self._free_files and st.f_bavail * st.f_frsize < needed:
            _, path = self._free_files.pop(0)
            os.unlink(path)
            st = os.statvfs(self.directory)

    def _spill(self, entry: _Entry) -> None:
        target = os.path.join(self.spill_dir, os.path.basename(entry.path))
        shutil.move(entry.path, target)
        entry.path, entry.spilled = target, True
        self.used -= entry.size
        self.spilled_bytes += entry.size

    # ---- reading and deleting ---------------------------------------------------------------
    def get(self, object_id: int) -> Any:
        """The object (zero-copy where the format allows); restores a spilled one."""
        return read(self.path(object_id))

    def path(self, object_id: int) -> str:
        """The object's file in shared memory (restored first if it was spilled), for any
        process on this node to map. Raises KeyError when the store does not hold it."""
        with self._lock:
            entry = self._entries.get(object_id)
            if entry is None:
                raise KeyError(f"object {object_id:#x} is not in this store")
            if entry.spilled:
                self._make_room(entry.size)
                target = os.path.join(self.directory, os.path.basename(entry.path))
                shutil.move(entry.path, target)
                entry.path, entry.spilled = target, False
                self.used += entry.size
                self.spilled_bytes -= entry.size
            entry.last_used = time.monotonic()
            self._entries.move_to_end(object_id)
            return entry.path

    def pin(self, object_id: int) -> None:
        """Keep the object in memory (it is being read or sent): never spilled while pinned."""
        with self._lock:
            self._entries[object_id].pins += 1

    def unpin(self, object_id: int) -> None:
        """Undo one :meth:`pin`."""
        with self._lock:
            entry = self._entries.get(object_id)
            if entry is not None and entry.pins:
                entry.pins -= 1

    def delete(self, object_id: int) -> None:
        """Drop the object; its file is kept for reuse while the recycle budget allows."""
        with self._lock:
            entry = self._entries.pop(object_id, None)
            if entry is None:
                return
            if entry.spilled:
                self.spilled_bytes -= entry.size
                _unlink(entry.path)
                return
            self.used -= entry.size
            self._recycle(entry.path, entry.size)

    def _recycle(self, path: str, size: int) -> None:
        recycled = sum(s for s, _ in self._free_files)
        if recycled + size <= self.recycle_bytes and not objectformat.in_use(path):
            self._seq += 1
            free = os.path.join(self.directory, f".free-{os.getpid()}-{self._seq}")
            os.replace(path, free)
            self._free_files.append((size, free))
        else:
            _unlink(path)  # a reader still maps it: its pages go when the reader lets go

    def __contains__(self, object_id: int) -> bool:
        return object_id in self._entries

    def stats(self) -> dict[str, int]:
        """Objects, bytes in memory, bytes spilled, capacity (for `clusterctl status`)."""
        with self._lock:
            return {"objects": len(self._entries), "bytes": self.used,
                    "spilled": self.spilled_bytes, "capacity": self.capacity}

    def close(self) -> None:
        """Remove every file of this store (objects, recycled files, spills, half-written)."""
        with self._lock:
            paths = [e.path for e in self._entries.values()]
            paths += [p for _, p in self._free_files] + list(self._reserved)
            for path in paths:
                _unlink(path)
            self._entries.clear()
            self._free_files.clear()
            self._reserved.clear()
            self.used = self.spilled_bytes = 0


class WriteMappings:
    """Writable mappings of store files this process has written, kept so that writing the
    next object into a recycled file needs no new page tables (for a 256 MiB put here:
    ~17 ms of a ~45 ms write). Mappings of files that were deleted or spilled are closed
    at the next write, so they never hold memory for long; at most `limit_bytes` are kept.
    """

    def __init__(self, limit_bytes: int = 1 << 30) -> None:
        self.limit_bytes = limit_bytes
        self._entries: OrderedDict[tuple[int, int], tuple[int, mmap.mmap]] = OrderedDict()
        self._lock = threading.Lock()

    def write(self, path: str, size: int, fill: Any) -> None:
        """Call ``fill(view)`` with a writable view of the `size`-byte file at `path`."""
        fd = os.open(path, os.O_RDWR)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None and len(entry[1]) == size:
            os.close(fd)
        else:
            if entry is not None:
                entry[1].close()
                os.close(entry[0])
            try:
                if st.st_size != size:
                    os.ftruncate(fd, size)
                # Prefault the whole mapping in one go: far cheaper than a fault per page.
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                entry = (fd, mmap.mmap(fd, size, flags=flags))
            except BaseException:
                os.close(fd)
                raise
        try:
            with memoryview(entry[1]) as view:
                fill(view)
        finally:
            with self._lock:
                self._entries[key] = entry
                self._trim()

    def _trim(self) -> None:
        total = 0
        for key, (fd, mapping) in reversed(list(self._entries.items())):
            total += len(mapping)
            if os.fstat(fd).st_nlink == 0 or total > self.limit_bytes:
                del self._entries[key]
                mapping.close()
                os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
