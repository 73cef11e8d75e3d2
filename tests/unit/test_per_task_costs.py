"""The per-task cost cuts of issue 18 keep their behaviour: AppFuture's light condition
(api._futures.FutureLock) and the local lane's batched submissions (api._transport)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from api import _transport
from api._futures import AppFuture, CallbackThread, FutureLock
from cluster.common import wire
from cluster.common.protocol import pb

pytestmark = pytest.mark.timeout(60)


class _Client:
    """Just enough of a client for futures that are never sent anywhere."""

    closed = False

    def __init__(self) -> None:
        self.callbacks = CallbackThread()

    def release(self, object_id: int) -> None:
        pass

    def wait_inline(self, fut: AppFuture, timeout: float | None) -> float | None:
        return timeout  # (no connection to read: waits are plain ones)


def _future(task_id: int = 1) -> AppFuture:
    return AppFuture(task_id, "t", _Client())


def test_future_lock_waits_times_out_and_wakes_every_waiter():
    lock = FutureLock()
    with lock:
        assert lock.wait(0) is False
        assert lock.wait(0.01) is False
    woken = []

    def waiter() -> None:
        with lock:
            woken.append(lock.wait(30))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while True:  # all three are waiting (each registered under the lock)
        with lock:
            if lock._waiters is not None and len(lock._waiters) == 3:
                lock.notify_all()
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for t in threads:
        t.join(10)
    assert woken == [True, True, True]
    with pytest.raises(RuntimeError):
        lock.wait(0)  # not held


def test_future_lock_is_reentrant_and_wait_releases_every_level():
    lock = FutureLock()
    got = []

    def other() -> None:
        if lock.acquire(timeout=10):
            got.append(True)
            lock.release()

    with lock, lock:  # (AppFuture.when_done calls done() under the lock)
        t = threading.Thread(target=other)
        t.start()
        lock.wait(0.5)  # fully released meanwhile: the other thread takes it
        t.join(10)
        assert lock._lock._is_owned()  # both levels back
    assert got == [True]


def test_app_futures_work_with_concurrent_futures_wait_and_as_completed():
    futs = [_future(i) for i in range(1, 5)]
    assert type(futs[0]._condition) is FutureLock
    threading.Timer(0.05, futs[2].set_result, (3,)).start()
    done, pending = concurrent.futures.wait(futs, timeout=10,
                                            return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {futs[2]} and len(pending) == 3
    for i, f in enumerate(futs):
        if i != 2:
            threading.Timer(0.01 * i, f.set_result, (i + 1,)).start()
    assert sorted(f.result() for f in concurrent.futures.as_completed(futs, timeout=10)) == \
        [1, 2, 3, 4]
    late = _future()
    with pytest.raises(concurrent.futures.TimeoutError):
        late.result(timeout=0.05)
    seen = []
    late.add_done_callback(lambda f: seen.append(f.exception()))
    late.set_exception(ValueError("x"))
    with pytest.raises(ValueError):
        late.result(timeout=1)
    assert late.done() and not late.cancelled()
    deadline = time.monotonic() + 10
    while not seen:  # (callbacks run on the client's callback thread)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert isinstance(seen[0], ValueError)


def test_a_blocked_result_is_woken_by_set_result_from_another_thread():
    fut = _future()
    threading.Timer(0.05, fut.set_result, ("v",)).start()
    assert fut.result(timeout=10) == "v"


# ---- the lane: submissions gathered while tasks are in flight ---------------------------


class _Lane:
    """A head's end of a lane socket: reads the frames a LaneTransport writes."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.buf = bytearray()

    def frames(self, timeout: float) -> list[pb.DriverToHead]:
        self.theirs.settimeout(timeout)
        out = []
        try:
            while True:
                data = self.theirs.recv(1 << 16)
                if not data:
                    break
                self.buf += data
                out += [pb.DriverToHead.FromString(b) for b in wire.split(self.buf)]
        except TimeoutError:
            pass
        return out


def _transport_on(lane: _Lane, pending: list[pb.TaskSpec]) -> _transport.LaneTransport:
    lock = threading.Lock()

    def take() -> pb.DriverToHead | None:
        with lock:
            if not pending:
                return None
            message = pb.DriverToHead(submit=pending)
            pending.clear()
        return message

    transport = _transport.LaneTransport("unix:unused", "secret", take)
    transport._sock = lane.ours
    transport._first = pb.HeadToDriver()
    transport.start(lambda message: None, lambda reason: None)
    return transport


@contextlib.contextmanager
def _open_lane() -> Iterator[tuple[_Lane, list[pb.TaskSpec], _transport.LaneTransport]]:
    """A lane, the client's pending submissions and a started transport on it; closed after."""
    lane = _Lane()
    pending: list[pb.TaskSpec] = []
    transport = _transport_on(lane, pending)
    try:
        yield lane, pending, transport
    finally:
        transport.close()


def test_a_burst_goes_out_in_few_frames_and_nothing_is_left_behind():
    with _open_lane() as (lane, pending, transport):
        transport.flush()  # (a first write: the burst below follows it at once)
        for i in range(1, 2001):
            pending.append(pb.TaskSpec(task_id=i))
            transport.flush_soon()
        frames = lane.frames(timeout=1.0)
        ids = [s.task_id for f in frames for s in f.submit]
        assert ids == list(range(1, 2001))  # every one, in order, none twice
        assert len(frames) < 1000  # gathered (a frame each before)


def test_a_submission_after_a_quiet_moment_is_written_at_once():
    with _open_lane() as (lane, pending, transport):
        time.sleep(2 * _transport.SUBMIT_BATCH_SECONDS)
        pending.append(pb.TaskSpec(task_id=7))
        transport.flush_soon()
        # Written on this thread before flush_soon returned: readable without waiting.
        lane.theirs.setblocking(False)
        data = lane.theirs.recv(1 << 16)
        lane.buf += data
        (frame,) = [pb.DriverToHead.FromString(b) for b in wire.split(lane.buf)]
        assert [s.task_id for s in frame.submit] == [7]


def test_closing_sends_what_was_gathered_and_frees_the_wake_fd():
    lane = _Lane()
    pending: list[pb.TaskSpec] = []
    transport = _transport_on(lane, pending)
    fd = transport._wake_fd
    transport.flush()
    pending.append(pb.TaskSpec(task_id=9))
    transport.flush_soon()
    transport.close()
    frames = lane.frames(timeout=1.0)
    assert 9 in [s.task_id for f in frames for s in f.submit]
    deadline = time.monotonic() + 10
    while transport._wake_fd != -1:  # the reader thread closes it as it ends
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert fd >= 0
    pending.append(pb.TaskSpec(task_id=10))
    transport.flush_soon()  # after the end: no write to the closed (maybe reused) fd
    assert not transport._deferred
