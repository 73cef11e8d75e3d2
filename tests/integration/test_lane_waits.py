"""Waiting threads read the local lane themselves (api._transport.LaneTransport.wait_inline):
end to end through the public API, with the reader thread's periodic wake-up turned off,
so a wait that nobody ends would hang (caught by the timeout) instead of passing late."""

from __future__ import annotations

import threading
import time

import pytest

import api
from api import _transport

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def no_idle_wakeups(monkeypatch):
    monkeypatch.setattr(_transport, "IDLE_FLUSH_SECONDS", 3600.0)


@api.python_app
def square(x):
    return x * x


@api.python_app
def slow_one():
    time.sleep(0.2)
    return 1


@api.python_app(cache=True)
def plus_one(x):
    return x + 1


def test_sync_calls_from_several_threads_at_once(cluster, no_idle_wakeups):
    # One thread leads at a time; the others get their results from it or the reader.
    errors: list[BaseException] = []

    def loop(base: int) -> None:
        try:
            for i in range(150):
                assert square(base + i).result(timeout=60) == (base + i) ** 2
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=loop, args=(1000 * k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not errors and not any(t.is_alive() for t in threads)


def test_a_future_resolved_on_the_callback_thread_ends_the_wait(cluster, no_idle_wakeups):
    # A cache=True call on a future is resolved by the driver itself (its callback
    # thread), not by a result off the lane. Whether the leading waiter is then in its
    # poll() is a race here; tests/unit/test_lane_inline.py wakes one deterministically.
    assert plus_one(slow_one()).result(timeout=60) == 2


def test_a_timed_out_wait_leaves_the_result_to_arrive(cluster, no_idle_wakeups):
    fut = slow_one()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.01)
    assert fut.result(timeout=60) == 1
