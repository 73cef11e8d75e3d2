"""Large copies into store mappings split across threads and stay byte-exact."""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np
import pytest

from cluster.store import bulkcopy, objectformat


@pytest.fixture
def small_split(monkeypatch):
    """Split copies from 8 KiB up, on up to four threads (whatever the cores here), and
    record which threads ran a piece."""
    monkeypatch.setattr(bulkcopy, "SPLIT_BYTES", 8192)
    monkeypatch.setattr(bulkcopy.os, "sched_getaffinity", lambda pid: set(range(8)))
    seen: list[threading.Thread] = []
    real = bulkcopy.ctypes.memmove

    def memmove(dst, src, n):
        seen.append(threading.current_thread())
        return real(dst, src, n)

    monkeypatch.setattr(bulkcopy.ctypes, "memmove", memmove)
    return seen


@pytest.mark.parametrize("nbytes", [16384, 16385, 65536 + 7, 1_000_003])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "readonly view", "array"])
def test_split_copy_is_byte_exact_for_any_source(small_split, nbytes, kind):
    data = os.urandom(nbytes)
    source = {"bytes": data, "bytearray": bytearray(data),
              "readonly view": memoryview(data),
              "array": np.frombuffer(data, dtype=np.uint8).copy()}[kind]
    out = bytearray(b"\xee" * (nbytes + 100))
    bulkcopy.copy_into(memoryview(out), 37, source)
    assert out[:37] == b"\xee" * 37 and out[37 + nbytes:] == b"\xee" * 63
    assert bytes(out[37:37 + nbytes]) == data
    # Page-aligned pieces: as many as threads, or one fewer when rounding leaves no tail.
    assert 1 < len(small_split) <= bulkcopy.threads_for(nbytes)
    assert threading.main_thread() in small_split
    assert len({id(t) for t in small_split}) == len(small_split)


def test_small_copies_stay_on_the_calling_thread(small_split):
    out = bytearray(100)
    bulkcopy.copy_into(memoryview(out), 0, b"x" * 100)
    assert out == b"x" * 100 and small_split == []


def test_threads_follow_size_cores_and_the_cap(monkeypatch):
    monkeypatch.setattr(bulkcopy.os, "sched_getaffinity", lambda pid: {0, 1})
    assert bulkcopy.threads_for(2 * bulkcopy.SPLIT_BYTES - 1) == 1
    assert bulkcopy.threads_for(2 * bulkcopy.SPLIT_BYTES) == 2
    assert bulkcopy.threads_for(1 << 34) == 2
    monkeypatch.setattr(bulkcopy.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert bulkcopy.threads_for(3 * bulkcopy.SPLIT_BYTES) == 3
    assert bulkcopy.threads_for(1 << 34) == bulkcopy.MAX_THREADS


def test_a_copy_past_the_end_is_refused_not_written(small_split):
    out = bytearray(20000)
    with pytest.raises(ValueError, match="does not fit"):
        bulkcopy.copy_into(memoryview(out), 5000, bytes(16384))
    assert out == bytearray(20000) and small_split == []


def test_a_read_only_destination_is_refused(small_split):
    with pytest.raises(BufferError):
        bulkcopy.copy_into(memoryview(bytes(20000)), 0, bytes(16384))


def test_a_large_object_written_into_a_shared_mapping_reads_back(tmp_path):
    """The real path at the real threshold: a store file mapped shared, an array and a
    large bytes value (pickled in-band, so the copy of the pickle is split too)."""
    value = {"array": np.arange(5 << 20, dtype=np.float64),           # 40 MiB
             "blob": os.urandom(1 << 20) * 40}                          # 40 MiB in-band
    enc = objectformat.encode(value)
    assert len(enc.meta) > 2 * bulkcopy.SPLIT_BYTES
    assert enc.buffers[0].nbytes > 2 * bulkcopy.SPLIT_BYTES
    path = tmp_path / "object"
    with open(path, "w+b") as f:
        f.truncate(enc.size)
        with mmap.mmap(f.fileno(), enc.size) as mapping, memoryview(mapping) as view:
            enc.write_into(view)
    got = objectformat.read(str(path))
    assert np.array_equal(got["array"], value["array"]) and got["blob"] == value["blob"]
