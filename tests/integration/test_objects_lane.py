"""A node store's objects lane (cluster/store/objectserver.py, api/_storelane.py): the
real server on its Unix socket, real clients, some in processes of their own."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import ROOT

import api
from api._storelane import StoreLane
from cluster.common import wire
from cluster.common.protocol import pb
from cluster.store import objectformat, objectserver
from cluster.store.objectstore import ObjectStore

SECRET = "lane-secret"


@pytest.fixture
def served(tmp_path):
    """A store and its objects lane, served by an event loop on a thread of this process."""
    store = ObjectStore(str(tmp_path / "shm"), str(tmp_path / "spill"), capacity=8 << 20)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: list[objectserver.ObjectServers] = []

    async def serve() -> None:
        holder.append(await objectserver.start(store, SECRET, "127.0.0.1"))
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    assert started.wait(10)
    yield store, os.path.join(store.directory, objectserver.SOCKET_NAME)
    asyncio.run_coroutine_threadsafe(holder[0].stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    store.close()


def _eventually(check, what: str) -> None:
    deadline = time.monotonic() + 10  # a hang guard, not a timing assert
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_allocate_write_seal_makes_a_readable_object(served):
    store, path = served
    lane = StoreLane(path, SECRET, "n1")
    enc = objectformat.encode(np.arange(10_000))
    where = lane.allocate(enc.size)
    with open(where, "r+b") as f:
        whole = bytearray(enc.size)
        enc.write_into(memoryview(whole))
        f.write(whole)
    lane.seal(42, where, enc.size)
    assert np.array_equal(store.get(42), np.arange(10_000))
    lane.close()


def test_store_full_and_bad_seals_are_clear_errors(served):
    store, path = served
    lane = StoreLane(path, SECRET, "n1")
    with pytest.raises(api.ObjectStoreFullError, match="larger than the store's capacity"):
        lane.allocate(64 << 20)
    with pytest.raises(api.ConnectionError, match="node n1.*not allocated by this store"):
        lane.seal(1, "/etc/passwd", 10)
    assert os.path.exists("/etc/passwd") and 1 not in store
    # The connection survives refusals: the next request is answered.
    assert lane.allocate(100)


def test_an_abort_gives_the_room_back_and_only_its_own(served):
    store, path = served
    lane, other = StoreLane(path, SECRET, "n1"), StoreLane(path, SECRET, "n1")
    mine = lane.allocate(1 << 20)
    assert store.used >= 1 << 20
    other.abort(mine)                      # another connection's allocation: ignored
    assert store.used >= 1 << 20
    lane.abort(mine)
    assert store.used == 0


def test_a_client_killed_between_allocate_and_seal_leaks_nothing(served):
    store, path = served
    code = (f"import sys, time; sys.path.insert(0, {ROOT!r})\n"
            "from api._storelane import StoreLane\n"
            f"lane = StoreLane({path!r}, {SECRET!r}, 'n1')\n"
            "print(lane.allocate(4 << 20), flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        allocated = proc.stdout.readline().strip()
        assert allocated and store.used >= 4 << 20
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _eventually(lambda: store.used == 0, "a dead writer's allocation was not given back")
    assert store.alloc(4 << 20)            # and the room is usable again


def test_a_wrong_secret_is_refused_before_any_request_is_read(served):
    store, path = served
    request = pb.ObjectsRequest(allocate=pb.AllocRequest(size=1000)).SerializeToString()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(wire.frame(b"wrong") + wire.frame(request))
        assert sock.recv(100) == wire.frame(b"UNAUTHENTICATED")
        assert sock.recv(100) == b"", "the daemon must close the connection"
    assert store.used == 0, "a refused connection allocated"
    with pytest.raises(api.ConnectionError, match="refused our secret"):
        StoreLane(path, "not-it", "n1").allocate(1000)


def test_a_malformed_request_closes_only_that_connection(served):
    store, path = served
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(wire.frame(SECRET.encode()) + wire.frame(b"\xff\xff\xff"))
        assert sock.recv(100) == b""
    assert StoreLane(path, SECRET, "n1").allocate(1000)


def test_a_dead_daemon_is_a_connection_error_naming_the_node(tmp_path):
    lane = StoreLane(str(tmp_path / "objects.sock"), SECRET, "node-7")
    with pytest.raises(api.ConnectionError, match="could not store the object on node node-7"):
        lane.allocate(1000)


def test_requests_from_many_threads_take_turns(served):
    store, path = served
    lane = StoreLane(path, SECRET, "n1")
    paths: list[str] = []

    def work(base: int) -> None:
        for i in range(20):
            where = lane.allocate(1000)
            lane.seal(base + i, where, 1000)
            paths.append(where)

    threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(paths)) == 80 and all(base + i in store for base in range(0, 400, 100)
                                         for i in range(20))
