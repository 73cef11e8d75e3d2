"""Objects through the whole runtime: puts, stored results, nested refs, lifetime,
spilling, a full store, and objects moving between two daemons on one host (real
processes, real gRPC)."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pyarrow as pa
import pytest
from helpers import head_and_second_daemon

import api
from cluster.common import paths

MB = 2**20


def _store_node(name: str | None = None):
    nodes = [n for n in api._session.client().nodes.values() if n.state == "alive"]
    return next(n for n in nodes if name is None or n.name == name)


def _store_files(node=None) -> list[str]:
    node = node or _store_node()
    return [f for f in os.listdir(node.store_dir) if not f.startswith(".") and
            f != "objects.sock"]


def _wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        _nudge()
        time.sleep(0.05)


@api.python_app(num_cpus=0)
def _noop():
    return None


def _nudge() -> None:
    """Releases and node-table updates ride on batches: send one and wait for its answer."""
    _noop().result(timeout=30)


def _is_zero_copy(array: np.ndarray) -> bool:
    base = array
    while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
        base = base.base
    return isinstance(base, memoryview) and base.readonly


@api.python_app
def total(a):
    return float(np.asarray(a).sum())


@api.python_app
def make(n, value=1.0):
    return np.full(n, value)


@api.python_app
def rows(table):
    return table.num_rows, table.column("x").to_pylist()[:3]


@api.python_app
def describe(x):
    if isinstance(x, np.ndarray):
        return ("array", x.flags.writeable, float(x.sum()))
    return type(x).__name__


def test_put_numpy_round_trip_is_zero_copy_and_read_only(cluster):
    array = np.random.default_rng(1).random(3_000_000)
    ref = api.put(array)
    got = api.get(ref)
    assert np.array_equal(got, array)
    assert not got.flags.writeable and _is_zero_copy(got)
    assert describe(ref).result(timeout=60) == ("array", False, pytest.approx(array.sum()))


def test_arrow_tables_go_through_ipc_and_slices_stay_small(cluster):
    table = pa.table({"x": np.arange(2_000_000), "y": np.ones(2_000_000)})
    ref = api.put(table)
    assert api.get(ref).equals(table)
    assert rows(ref).result(timeout=60) == (2_000_000, [0, 1, 2])
    before = sum(_store_node().store.bytes for _ in [0])
    piece = api.put(table.slice(1_000_000, 5))           # 5 rows: travels inline
    assert api.get(piece).equals(table.slice(1_000_000, 5))
    assert rows(piece).result(timeout=60) == (5, [1_000_000, 1_000_001, 1_000_002])
    _nudge()
    assert _store_node().store.bytes <= before + MB


def test_small_values_travel_inline_and_never_touch_the_store(cluster):
    _wait_until(lambda: not _store_files(), "the store is empty")
    ref = api.put({"small": list(range(100))})
    assert describe(ref).result(timeout=60) == "dict"
    assert api.get(ref)["small"][-1] == 99
    assert not _store_files(), "a small value went into the store"
    big = api.put(np.ones(MB))
    _wait_until(lambda: f"{big.id:x}" in _store_files(), "the large value is in the store")


def test_refs_nested_in_lists_and_dicts(cluster):
    a, b = api.put(np.ones(MB)), api.put(np.full(MB, 2.0))
    @api.python_app
    def add(pair):
        return float(pair[0].sum() + pair[1]["k"].sum())

    assert add([a, {"k": b}]).result(timeout=60) == 3 * MB  # refs in arguments resolve

    box = api.put({"inner": [a, b]})
    a_id = a.id
    del a, b
    inner = api.get(box)["inner"]
    assert [float(api.get(r).sum()) for r in inner] == [MB, 2 * MB]

    @api.python_app
    def passthrough(d):
        return d  # refs inside an argument's value come back as refs

    again = passthrough(box).result(timeout=60)
    assert float(api.get(again["inner"][1])[0]) == 2.0
    del inner, again, box
    _wait_until(lambda: f"{a_id:x}" not in _store_files(),
                "the nested object is deleted once nothing refers to it")


def test_results_stay_in_the_store_and_the_driver_does_not_grow(cluster):
    me = psutil.Process()
    fut = make(40_000_000)                                    # 320 MB
    assert fut.exception(timeout=120) is None
    rss = me.memory_info().rss
    assert total(fut).result(timeout=120) == 40_000_000.0     # moved node-side only
    assert me.memory_info().rss - rss < 64 * MB
    value = fut.result()                                      # mapped, not copied
    assert value.shape == (40_000_000,) and _is_zero_copy(value)
    assert me.memory_info().rss - rss < 64 * MB


def test_objects_are_deleted_when_refs_are_dropped(cluster):
    ref = api.put(np.ones(2 * MB))
    fut = make(3 * MB)
    name_put, name_result = f"{ref.id:x}", f"{fut.task_id:x}"
    fut.result(timeout=60)
    _wait_until(lambda: {name_put, name_result} <= set(_store_files()), "both are stored")
    del ref, fut
    _wait_until(lambda: not {name_put, name_result} & set(_store_files()),
                "both files are gone")


def test_a_driver_without_a_local_store_puts_and_gets_over_the_network(cluster,
                                                                      monkeypatch):
    monkeypatch.setenv("SHOAL_OBJECTS_VIA_NETWORK", "1")
    array = np.random.default_rng(2).random(5 * MB // 8 * 8)      # 40 MiB: 20 chunks
    ref = api.put(array)
    assert describe(ref).result(timeout=60) == ("array", False, pytest.approx(array.sum()))
    got = api.get(ref)
    assert np.array_equal(got, array) and not got.flags.writeable
    fut = make(3 * MB, 7.0)
    assert float(fut.result(timeout=60).sum()) == 21.0 * MB
    table = pa.table({"x": np.arange(1_000_000)})
    assert api.get(api.put(table)).equals(table)


@pytest.fixture
def small_store(no_session, tmp_path):
    api.init(num_cpus=2, object_store_memory=64 * MB, run_dir=str(tmp_path))
    yield
    api.shutdown()


def test_spills_past_the_limit_and_restores_on_access(small_store):
    refs = [api.put(np.full(3 * MB, float(i))) for i in range(5)]   # 5 x 24 MiB, 64 MiB
    node = _store_node()
    spill = os.path.join(paths.spill_root(), os.path.basename(os.path.dirname(node.store_dir)))
    assert len(os.listdir(spill)) >= 2
    in_memory = sum(os.path.getsize(os.path.join(node.store_dir, f)) for f in _store_files())
    assert in_memory <= 64 * MB
    assert [float(api.get(r)[0]) for r in refs] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [total(r).result(timeout=60) for r in refs] == [i * 3 * MB for i in range(5)]


def test_full_store_gives_a_clear_error(small_store, tmp_path):
    with pytest.raises(api.ObjectStoreFullError, match="larger than the store's capacity"):
        api.put(np.ones(10 * MB))                                  # 80 MiB > 64 MiB
    with pytest.raises(api.ObjectStoreFullError, match="larger than the store's capacity"):
        make(10 * MB).result(timeout=60)

    started, release = tmp_path / "started", tmp_path / "release"

    @api.python_app
    def hold(a):  # keeps its argument pinned in memory while it runs
        started.touch()
        while not release.exists():
            time.sleep(0.02)
        return float(a[0])

    held = api.put(np.ones(5 * MB))                               # 40 MiB
    running = hold(held)
    _wait_until(started.exists, "the task runs")
    with pytest.raises(api.ObjectStoreFullError, match="nothing left to spill"):
        api.put(np.ones(5 * MB))
    release.touch()
    assert running.result(timeout=60) == 1.0
    assert float(api.get(api.put(np.full(5 * MB, 2.0)))[0]) == 2.0   # room again


@pytest.fixture
def two_daemons(clusterctl, no_session):
    with head_and_second_daemon(clusterctl, "objects") as pair:
        yield pair[0]


def _on(node: str):
    return {"resources": {f"node:{node}": 0.01}}


def test_two_daemons_move_objects_between_their_stores(two_daemons, clusterctl):
    first = next(n.name for n in api._session.client().nodes.values() if n.name != "second")
    a, b = _store_node(first), _store_node("second")
    assert a.store_dir != b.store_dir and a.store_address != b.store_address

    made = make.options(**_on(first))(4 * MB, 3.0)
    assert total.options(**_on("second"))(made).result(timeout=120) == 12.0 * MB
    made_file = f"{made.task_id:x}"
    _wait_until(lambda: made_file in _store_files(_store_node("second")),
                "the copy is in the second store")
    assert made_file in _store_files(_store_node(first))

    def store_rows() -> dict[str, list[str]]:
        out = clusterctl("status", "--cluster", "objects").stdout
        table = out.split("object store", 1)[1].splitlines()[1:]
        return {line.split()[0]: line.split()[1:] for line in table if line.strip()}

    _wait_until(lambda: store_rows().get("second", ["0"])[0] == "1",
                "clusterctl status shows the copy on the second node")

    ref = api.put(np.full(2 * MB, 5.0))       # into one store, read on both nodes
    for node in (first, "second"):
        assert total.options(**_on(node))(ref).result(timeout=120) == 10.0 * MB

    # Locality: with no node named, the task goes where its argument already is.
    only_second = make.options(**_on("second"))(4 * MB)
    only_second.result(timeout=120)

    @api.python_app
    def where(a):
        return os.getppid()  # the daemon running it

    second_pid = _store_node("second").pid
    assert {where(only_second).result(timeout=60) for _ in range(3)} == {second_pid}

    del made, ref, only_second
    _wait_until(lambda: not _store_files(_store_node(first)) and
                not _store_files(_store_node("second")), "every copy is deleted")


@pytest.mark.slow
def test_a_3gb_object_moves_between_nodes_in_chunks(two_daemons):
    first = next(n.name for n in api._session.client().nodes.values() if n.name != "second")
    n = 3 * 2**30 // 8
    big = make.options(**_on(first))(n, 1.0)
    assert total.options(**_on("second"))(big).result(timeout=300) == float(n)


def test_transfer_server_refuses_a_wrong_secret_and_serves_the_right_one(cluster):
    from cluster.store import transfer

    ref = api.put(np.full(MB, 4.0))
    node = _store_node()
    client = api._session.client()
    for bad in ("", "wrong-secret", "x" * 5000):
        with pytest.raises(OSError):
            transfer.fetch(node.store_address, bad, ref.id, transfer.Buffer)
        with pytest.raises(OSError):
            transfer.push(node.store_address, bad, 12345, [memoryview(b"\0" * 1000)])
    with pytest.raises(transfer.TransferError, match="not on this node"):
        transfer.fetch(node.store_address, client.secret, 999, transfer.Buffer)
    got = transfer.fetch(node.store_address, client.secret, ref.id, transfer.Buffer)
    assert len(got.data) > 8 * MB
    assert float(api.get(ref)[0]) == 4.0


def test_a_1gb_argument_passed_by_value_goes_through_the_store(cluster):
    @api.python_app
    def inspect(big, small, *, scale):
        return big.nbytes, float(big[::4096].sum()) * scale, small, big.flags.writeable

    big = np.ones(2**27)                                           # 1 GiB by value
    nbytes, total_, small, writable = inspect(big, "x", scale=2.0).result(timeout=300)
    assert (nbytes, total_, small) == (2**30, 2.0 * (2**27 // 4096), "x")
    assert writable is False, "a stored argument is read zero-copy, read-only"
    del big
    _wait_until(lambda: not _store_files(), "the argument object is deleted after the task")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_tiny_shared_memory_moves_the_store_to_local_disk(no_session, tmp_path,
                                                            monkeypatch):
    import subprocess

    mount = tmp_path / "shm"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        monkeypatch.setenv("SHOAL_RUNTIME_ROOT", str(mount / "rt"))
        api.init(num_cpus=1)
        node = _store_node()
        assert not node.store_dir.startswith(str(mount))
        ref = api.put(np.ones(5 * MB))                 # 40 MiB: more than the tmpfs holds
        assert total(ref).result(timeout=60) == 5 * MB
        api.shutdown()
        assert not os.path.exists(node.store_dir)
    finally:
        api.shutdown()
        subprocess.run(["umount", str(mount)], check=True)
