"""Futures as concurrent.futures.Futures: done-callbacks run on a callback thread of their
own (a callback may wait on another future), a stored result that cannot be loaded is the
same SerializationError for exception() and result(), and ids print as messages print them."""

from __future__ import annotations

import re
import threading
import time

import pytest

import api


@api.python_app
def nap(seconds, value):
    time.sleep(seconds)
    return value


@api.python_app
def boom():
    raise ValueError("boom")


@api.python_app
def echo(x):
    return x


@api.python_app
def ghost(size):
    import sys
    import types

    module = types.ModuleType("shoal_ghost_module")

    class Ghost:
        pass

    Ghost.__module__ = "shoal_ghost_module"
    Ghost.__qualname__ = "Ghost"
    module.Ghost = Ghost
    sys.modules["shoal_ghost_module"] = module   # the worker can pickle it by reference
    return [Ghost(), b"x" * size]


def test_a_done_callback_may_wait_on_another_future(cluster):
    first = nap(0.5, 1)
    second = nap(1.5, 2)
    seen: dict = {}
    done = threading.Event()

    def callback(fut):
        seen["first"] = fut.result()
        seen["second"] = second.result(timeout=30)  # used to stall every result delivery
        seen["thread"] = threading.current_thread().name
        done.set()

    first.add_done_callback(callback)
    assert second.result(timeout=20) == 2
    assert done.wait(30)
    assert seen["first"] == 1 and seen["second"] == 2
    assert "reader" not in seen["thread"]


def test_callbacks_run_in_order_and_survive_a_raising_callback(cluster):
    futs = [nap(0.2, i) for i in range(4)]
    order: list = []
    last = threading.Event()

    def bad(fut):
        raise RuntimeError("a broken callback")

    def record(fut):
        order.append(fut.result())
        if len(order) == len(futs):
            last.set()

    for fut in futs:
        fut.add_done_callback(bad)
        fut.add_done_callback(record)
    assert last.wait(30)
    assert sorted(order) == [0, 1, 2, 3]
    late = []
    futs[0].add_done_callback(late.append)          # already done: runs at once, here
    assert late == [futs[0]]


@pytest.mark.parametrize("size", [10, 1_000_000])
def test_an_unloadable_result_is_one_serialization_error(cluster, size):
    fut = ghost(size)
    err = fut.exception(timeout=60)
    assert isinstance(err, api.SerializationError), err
    assert "shoal_ghost_module" in str(err)
    with pytest.raises(api.SerializationError) as info:
        fut.result()
    assert info.value is err
    assert fut.exception() is err


def test_a_task_id_in_a_message_is_the_one_the_future_shows(cluster):
    bad = boom()
    dependent = echo(bad)
    with pytest.raises(api.DependencyError) as info:
        dependent.result(timeout=60)
    shown = re.search(r"task=(\S+)", repr(bad)).group(1)
    assert shown == f"{bad.task_id:#x}"
    assert f"(task {shown})" in str(info.value)
    assert f"task={dependent.task_id:#x}" in repr(dependent)


@api.actor
class Slow:
    def v(self, x):
        return x

    def blob_after(self, seconds, dep, n):
        time.sleep(seconds)
        return b"x" * n


def test_a_callback_may_call_an_actor_while_a_call_through_the_head_finishes(cluster):
    actor = Slow()
    assert actor.v(0).result(timeout=60) == 0
    through_head = actor.blob_after(1.0, echo(1), 1_000_000)   # a dependency: via the head
    other = nap(0.2, 0)
    got: dict = {}
    done = threading.Event()

    def callback(fut):
        got["v"] = actor.v(5).result(timeout=30)   # held until through_head is done
        done.set()

    other.add_done_callback(callback)
    assert len(through_head.result(timeout=20)) == 1_000_000
    assert done.wait(20) and got["v"] == 5
