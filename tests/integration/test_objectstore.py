"""The node object store in isolation: zero-copy reads, Arrow, capacity, spilling, a full
tmpfs, file reuse."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from helpers import ROOT

from cluster.store.objectstore import ObjectStore, StoreFullError, read


@pytest.fixture
def store(tmp_path):
    s = ObjectStore(str(tmp_path / "shm"), str(tmp_path / "spill"), capacity=64 * 2**20)
    yield s
    s.close()


def test_numpy_round_trip_is_zero_copy_and_read_only(store):
    array = np.arange(2_000_000, dtype=np.float64)
    size = store.put(1, {"a": array, "label": "x"})
    assert size > array.nbytes
    got = store.get(1)
    assert got["label"] == "x"
    assert np.array_equal(got["a"], array)
    assert not got["a"].flags.writeable
    with pytest.raises(ValueError):
        got["a"][0] = 1.0
    # Zero-copy: the array's memory lies inside the file's mapping, not a private copy.
    base = got["a"]
    while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
        base = base.base
    assert isinstance(base, memoryview) and base.readonly


def test_another_process_reads_the_same_bytes(store, tmp_path):
    array = np.random.default_rng(0).random(500_000)
    store.put(7, array)
    path = store.path(7)
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[2]);"
            "from cluster.store.objectstore import read; a = read(sys.argv[1]);"
            "print(float(a.sum()), a.flags.writeable)")
    root = ROOT
    out = subprocess.run([sys.executable, "-c", code, path, root], capture_output=True,
                         text=True, check=True).stdout.split()
    assert float(out[0]) == pytest.approx(float(array.sum()))
    assert out[1] == "False"


def test_arrow_table_round_trip_zero_copy_and_slices_stay_small(store):
    table = pa.table({"x": np.arange(1_000_000), "y": np.ones(1_000_000)})
    whole = store.put(2, table)
    got = store.get(2)
    assert got.equals(table)
    small = store.put(3, table.slice(10, 100))
    assert small < whole / 100, "a slice must not drag its whole parent along"
    assert store.get(3).equals(table.slice(10, 100))
    batch = table.to_batches()[0]
    store.put(4, batch)
    assert store.get(4).equals(pa.Table.from_batches([batch]))


def test_small_and_odd_values(store):
    for i, value in enumerate([None, 0, "text", b"bytes", [1, {"a": (2, 3)}], 1.5]):
        store.put(100 + i, value)
        assert store.get(100 + i) == value


def test_spills_past_the_limit_and_restores_on_access(store):
    chunk = np.ones(3 * 2**20)  # 24 MiB each; 64 MiB capacity
    for i in range(5):
        store.put(10 + i, chunk * i)
    stats = store.stats()
    assert stats["bytes"] <= store.capacity and stats["spilled"] > 0
    assert float(store.get(10).sum()) == 0.0  # the oldest was spilled, and comes back
    assert float(store.get(14)[0]) == 4.0
    assert store.stats()["bytes"] <= store.capacity


def test_full_store_with_nothing_spillable_is_a_clear_error(store):
    store.put(1, np.ones(5 * 2**20))   # 40 MiB
    store.pin(1)
    with pytest.raises(StoreFullError, match="nothing left to spill"):
        store.put(2, np.ones(5 * 2**20))
    with pytest.raises(StoreFullError, match="larger than the store's capacity"):
        store.put(3, np.ones(10 * 2**20))
    store.unpin(1)
    store.put(2, np.ones(5 * 2**20))   # now object 1 can spill


def test_deleted_files_are_reused_unless_a_reader_saw_them(store):
    store.put(1, np.ones(2**20))
    path = store._entries[1].path
    inode = os.stat(path).st_ino
    store.delete(1)
    store.put(2, np.zeros(2**20))
    assert os.stat(store._entries[2].path).st_ino == inode, "same-size put reuses the file"
    kept = store.get(2)
    store.delete(2)
    store.put(3, np.ones(2**20))
    assert float(kept.sum()) == 0.0, "a reader's array must not change under it"


def test_delete_and_close_remove_files(store, tmp_path):
    store.put(1, np.ones(1000))
    store.delete(1)
    assert 1 not in store
    store.put(2, np.ones(1000))
    store.close()
    assert not [f for f in os.listdir(store.directory)]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_tmpfs_gives_an_error_not_sigbus(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        small = ObjectStore(str(mount / "store"), str(tmp_path / "spill2"),
                            capacity=64 * 2**20)
        with pytest.raises(StoreFullError, match="file system is full"):
            small.put(1, np.ones(2 * 2**20))  # 16 MiB into an 8 MiB tmpfs
        small.put(2, np.ones(1000))           # and the store still works
        assert float(small.get(2).sum()) == 1000.0
        small.close()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_reading_a_non_object_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "x"
    bogus.write_bytes(b"not an object file at all, just text" * 3)
    with pytest.raises(ValueError, match="not a shoal object file"):
        read(str(bogus))


def test_mapping_cache_keeps_idle_mappings_warm_and_never_shows_stale_bytes(store):
    from cluster.store.objectformat import MappingCache

    cache = MappingCache()
    store.put(1, np.ones(2**20))
    held = cache.read(store.path(1))
    cache.release_idle()                      # `held` still views it: stays locked
    store.delete(1)
    assert not store._free_files, "a file a reader still maps must not be reused"
    del held
    cache.release_idle()
    assert not cache._entries, "the deleted file's mapping is closed, its memory freed"

    store.put(2, np.full(2**20, 2.0))
    assert float(cache.read(store.path(2)).sum()) == 2.0 * 2**20
    cache.release_idle()                      # idle now: unlocked, kept
    store.delete(2)
    assert len(store._free_files) == 1, "an idle mapping does not block reuse"
    store.put(3, np.full(2**20, 3.0))         # into the same file
    (key,) = cache._entries
    got = cache.read(store.path(3))
    assert list(cache._entries) == [key], "the kept mapping is reused"
    assert float(got.sum()) == 3.0 * 2**20 and not got.flags.writeable


def test_concurrent_pulls_of_one_object_transfer_it_once(tmp_path):
    import asyncio

    from cluster.store import transfer
    from cluster.store.objectserver import Puller

    source = ObjectStore(str(tmp_path / "a"), str(tmp_path / "a-spill"), capacity=2**30)
    target = ObjectStore(str(tmp_path / "b"), str(tmp_path / "b-spill"), capacity=2**30)
    source.put(7, np.arange(4 * 2**20, dtype=np.float64))          # 32 MiB: 16 steps
    server = transfer.TransferServer(source, "s3cret", "127.0.0.1")
    served = []
    original = server._send
    server._send = lambda conn, object_id: (served.append(object_id), original(conn, object_id))

    async def pull_twice() -> None:
        puller = Puller(target, "s3cret")
        first = puller.fetch(7, [server.address])
        assert puller.fetch(7, [server.address]) is first, "one transfer for both"
        await asyncio.gather(first, puller.fetch(7, [server.address]))
        with pytest.raises(LookupError, match="not on this node"):
            await puller.fetch(8, [server.address])

    try:
        asyncio.run(pull_twice())
        assert served.count(7) == 1
        assert float(target.get(7)[-1]) == 4 * 2**20 - 1
    finally:
        server.close()
        source.close()
        target.close()


def test_write_mappings_reuse_recycled_files_and_let_deleted_ones_go(store):
    from cluster.store.objectformat import encode
    from cluster.store.objectstore import WriteMappings

    writes = WriteMappings()
    first = encode(np.full(2**20, 1.0))
    path = store.alloc(first.size)
    writes.write(path, first.size, first.write_into)
    store.seal(1, path)
    (key,) = writes._entries
    store.delete(1)                                   # recycled: kept, same file
    second = encode(np.full(2**20, 2.0))
    path = store.alloc(second.size)
    writes.write(path, second.size, second.write_into)
    store.seal(2, path)
    assert list(writes._entries) == [key], "the recycled file's mapping is reused"
    assert float(store.get(2).sum()) == 2.0 * 2**20
    store.recycle_bytes = 0
    store.delete(2)                                   # not recycled: unlinked
    third = encode(np.full(10, 3.0))
    path = store.alloc(third.size)
    writes.write(path, third.size, third.write_into)
    assert key not in writes._entries, "a deleted file's mapping is let go"


def test_parts_are_the_same_bytes_as_the_file():
    from cluster.store.objectformat import decode, encode

    mixed = {"a": np.arange(1000), "b": np.ones(7, dtype=np.int8), "c": "text"}
    table = pa.table({"x": np.arange(100)})
    decoded = []
    for value in (mixed, table, [1, 2, 3]):
        enc = encode(value)
        whole = bytearray(enc.size)
        enc.write_into(memoryview(whole))
        joined = b"".join(bytes(part) for part in enc.parts())
        assert joined == bytes(whole)
        decoded.append(decode(memoryview(joined)))
    assert np.array_equal(decoded[0]["a"], mixed["a"]) and decoded[0]["c"] == "text"
    assert np.array_equal(decoded[0]["b"], mixed["b"])
    assert decoded[1].equals(table) and decoded[2] == [1, 2, 3]
