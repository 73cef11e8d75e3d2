"""An actor call's future is a value like any other: passable to tasks and to other
actors, resolved or not, whichever path (direct to the actor, or through the head) the
call took."""

from __future__ import annotations

import time

import pytest

import api


@api.actor
class Box:
    def __init__(self):
        self.log = []

    def v(self, x):
        return x

    def slow(self, seconds, x):
        time.sleep(seconds)
        return x

    def blob(self, n):
        return b"x" * n

    def fail(self):
        raise KeyError("no such thing")

    def add(self, a, b):
        return a + b

    def record(self, label, value):
        self.log.append((label, value))
        return label

    def history(self):
        return self.log


@api.python_app
def plus1(x):
    return x + 1


@api.python_app
def length(x):
    return len(x)


@api.python_app
def total(items):
    return sum(items)


def _ready(box):
    assert box.v(0).result(timeout=60) == 0   # its route is known: calls go direct now
    return box


def test_a_resolved_actor_future_passes_to_tasks_and_actors(cluster):
    box, other = _ready(Box()), _ready(Box())
    f = box.v(7)
    assert f.result(timeout=60) == 7
    assert plus1(f).result(timeout=60) == 8
    assert total([f, f, 1]).result(timeout=60) == 15
    assert other.add(f, 1).result(timeout=60) == 8
    assert box.add(f, 2).result(timeout=60) == 9


def test_an_unresolved_actor_future_passes_to_tasks_and_actors(cluster):
    box, other = _ready(Box()), _ready(Box())
    f = box.slow(0.5, 7)
    task = plus1(f)
    call = other.add(f, 1)
    assert not f.done()
    assert task.result(timeout=60) == 8
    assert call.result(timeout=60) == 8


@pytest.mark.parametrize("resolved", [True, False])
def test_a_large_actor_result_passes_to_a_task(cluster, resolved):
    box = _ready(Box())
    f = box.blob(8_000_000)
    if resolved:
        assert len(f.result(timeout=60)) == 8_000_000
    assert length(f).result(timeout=60) == 8_000_000


def test_a_failed_actor_future_fails_its_dependents(cluster):
    box = _ready(Box())
    f = box.fail()
    with pytest.raises(api.DependencyError, match="KeyError|no such thing"):
        plus1(f).result(timeout=60)
    with pytest.raises(KeyError):
        f.result(timeout=60)
    with pytest.raises(api.DependencyError):
        plus1(f).result(timeout=60)


def test_calls_waiting_for_an_actor_future_keep_the_callers_order(cluster):
    box, slow, quick = _ready(Box()), _ready(Box()), _ready(Box())
    pending = slow.slow(1.0, "p")
    ready = quick.v("r")
    ready.result(timeout=60)
    box.record("first", pending)         # waits for `pending`
    box.record("second", ready)          # must not overtake it
    box.record("third", 3)
    assert box.history().result(timeout=60) == [("first", "p"), ("second", "r"),
                                                ("third", 3)]


@pytest.mark.parametrize("resolved", [True, False])
def test_a_put_may_nest_an_actor_future(cluster, resolved):
    box = _ready(Box())
    f = box.slow(0.3, 7)
    if resolved:
        f.result(timeout=60)
    ref = api.put({"f": f})
    inner = api.get(ref, timeout=30)["f"]
    assert api.get(inner, timeout=30) == 7     # the head holds it (was: ObjectLostError)
