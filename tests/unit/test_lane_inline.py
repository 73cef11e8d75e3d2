"""The local lane's waiting threads read results themselves (LaneTransport.wait_inline):
the thread that waits is the one that delivers, one thread leads at a time, the reader
thread stands aside meanwhile and takes over after, and a future done elsewhere wakes the
leader. A real Unix socket, with a fake head at its other end."""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

import pytest

from api import _transport
from api._futures import FutureLock
from api._transport import LaneTransport
from cluster.common import wire
from cluster.common.protocol import pb

HANG = 30.0  # a hang guard, never a timing assert


class _Head:
    """Accepts one driver, welcomes it, and sends what the test asks."""

    def __init__(self, path: str) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.conn: socket.socket | None = None
        self.ready = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        conn, _ = self.server.accept()
        buf = bytearray()
        while len(wire.split(bytearray(buf))) < 2:  # the secret and the hello
            buf += conn.recv(65536)
        welcome = pb.HeadToDriver()
        welcome.welcome.driver_id = 1
        conn.sendall(wire.frame(welcome.SerializeToString()))
        self.conn = conn
        self.ready.set()

    def result(self, *task_ids: int) -> None:
        """One batch with a result for each of `task_ids`."""
        message = pb.HeadToDriver()
        for task_id in task_ids:
            message.results.add(task_id=task_id, status=pb.OK)
        assert self.conn is not None
        self.conn.sendall(wire.frame(message.SerializeToString()))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def lane(tmp_path: Any) -> Any:
    path = os.path.join(str(tmp_path), "driver.sock")
    head = _Head(path)
    transport = LaneTransport(f"unix:{path}", "secret", lambda: None)
    transport.connect(pb.DriverToHead(), 10)
    assert head.ready.wait(HANG)
    got: dict[int, int] = {}   # task id -> ident of the thread that delivered it
    arrived = threading.Condition()
    lost: list[str] = []

    def on_message(message: pb.HeadToDriver) -> None:
        with arrived:
            for result in message.results:
                got[result.task_id] = threading.get_ident()
            arrived.notify_all()

    transport.start(on_message, lost.append)
    yield transport, head, got, arrived, lost
    transport.close()
    head.close()


def _wait_for(cond: threading.Condition, check: Any) -> None:
    with cond:
        assert cond.wait_for(check, HANG)


def _until(check: Any) -> None:
    pause = threading.Event()
    for _ in range(int(HANG * 1000)):
        if check():
            return
        pause.wait(0.001)
    raise AssertionError("never happened")


def _send_once_leading(transport: LaneTransport, head: _Head, *task_ids: int) -> None:
    """The head answers once a thread leads (sent earlier, the reader would deliver it)."""
    def send() -> None:
        # Leading and the reader parked: until it parks, the reader may still be in its
        # poll() and read what comes first (correct, but not what these tests look at).
        _until(lambda: transport._leading and transport._parked)
        head.result(*task_ids)
    threading.Thread(target=send, daemon=True).start()


def test_the_waiting_thread_delivers_its_own_result(lane):
    transport, head, got, _, _ = lane
    _send_once_leading(transport, head, 7)
    transport.wait_inline(lambda: 7 in got, HANG)
    assert got[7] == threading.get_ident()


def test_the_reader_takes_over_after_the_leader(lane):
    transport, head, got, arrived, _ = lane
    _send_once_leading(transport, head, 1)
    transport.wait_inline(lambda: 1 in got, HANG)
    assert got[1] == threading.get_ident()
    head.result(2)  # nobody waits now: the reader delivers it, once it is back
    _wait_for(arrived, lambda: 2 in got)
    assert got[2] != threading.get_ident()


def test_one_leader_at_a_time_and_the_others_still_get_theirs(lane):
    transport, head, got, arrived, _ = lane
    lead = threading.Thread(target=transport.wait_inline, args=(lambda: 10 in got, HANG))
    lead.start()
    _until(lambda: transport._leading and transport._parked)  # (see _send_once_leading)
    # A second waiter does not lead: it returns at once and waits as usual.
    transport.wait_inline(lambda: 11 in got, HANG)
    assert 11 not in got
    head.result(11)  # delivered by the leader, which reads everything
    _wait_for(arrived, lambda: 11 in got)
    assert got[11] == lead.ident
    head.result(10)
    lead.join(HANG)
    assert not lead.is_alive() and got[10] == lead.ident
    head.result(12)  # the leader gave the reader back at once (another thread waited)
    _wait_for(arrived, lambda: 12 in got)
    assert got[12] not in (lead.ident, threading.get_ident())


def test_a_future_done_by_another_thread_wakes_the_leader(lane, monkeypatch):
    transport, _, _, _, _ = lane
    monkeypatch.setattr(_transport, "IDLE_FLUSH_SECONDS", 3600.0)  # no periodic wake-up
    done = threading.Event()
    lock = FutureLock()  # the waited future's, as Client.wait_inline passes it
    waiter = threading.Thread(target=transport.wait_inline, args=(done.is_set, None, lock))
    waiter.start()
    _until(lambda: lock.wake is not None)
    done.set()
    with lock:  # as concurrent.futures' set_result does, on this (another) thread
        lock.notify_all()
    waiter.join(HANG)
    assert not waiter.is_alive()
    assert lock.wake is None  # only while that thread led


def test_a_timeout_ends_the_wait(lane):
    transport, _, got, _, _ = lane
    transport.wait_inline(lambda: 99 in got, 0.05)
    assert 99 not in got and not transport._leading


def test_the_head_going_away_while_a_thread_leads(lane):
    transport, head, _, arrived, lost = lane
    waiter = threading.Thread(target=transport.wait_inline, args=(lambda: False, None))
    waiter.start()
    _until(lambda: transport._leading)
    head.close()
    waiter.join(HANG)
    assert not waiter.is_alive()
    _until(lambda: lost)  # the reader thread reports the loss, once
    assert len(lost) == 1


def test_ctrl_c_while_the_main_thread_delivers_comes_after_the_batch(lane):
    # Raised in the middle, it would lose the rest of the batch (or, between recv() and
    # the buffer, desynchronize the stream); raised after, nothing is lost.
    transport, head, got, _, _ = lane
    assert threading.current_thread() is threading.main_thread()
    deliver = transport._on_message
    interrupted: list[bool] = []

    def on_message(message: pb.HeadToDriver) -> None:
        if not interrupted:
            interrupted.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler right after this
        deliver(message)

    transport._on_message = on_message
    _send_once_leading(transport, head, 21, 22, 23)
    with pytest.raises(KeyboardInterrupt):
        transport.wait_inline(lambda: 23 in got, HANG)
    assert interrupted and {21, 22, 23} <= set(got)
    assert not transport._leading  # and the reader has the socket back
    head.result(24)
    _until(lambda: 24 in got)
