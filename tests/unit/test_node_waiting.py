"""Which waiting worker runs a queued task inside its wait (cluster.node.nested): the one
whose waiting task is the task's parent, or at the worker cap any; and past the cap one more
worker only once every worker's task has waited a while."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from cluster.common.protocol import pb
from cluster.node.nested import NestedRelay


def _task(task_id: int, parent: int = 0) -> Any:
    return SimpleNamespace(spec=pb.TaskSpec(task_id=task_id, parent_task=parent),
                           request={"cpus": 1.0})


def _worker(task: Any, *stack: Any) -> Any:
    return SimpleNamespace(task=task, stack=list(stack), waiting=False, closing=False)


def _relay(*workers: Any) -> NestedRelay:
    return NestedRelay(SimpleNamespace(workers=list(workers), free={"cpus": 0.0}, loop=None))


def _waits(relay: NestedRelay, worker: Any) -> None:
    """`worker`'s task blocks in a wait that may run one more task meanwhile."""
    relay.blocked[worker.task.spec.task_id] = 1.0
    worker.waiting = True
    relay.waiting[worker.task.spec.task_id] = worker


def test_a_child_goes_onto_its_waiting_parents_stack():
    parent = _task(1)
    a = _worker(parent)
    relay = _relay(a)
    _waits(relay, a)
    child = _task(2, parent=1)
    assert relay.take_waiting(child, at_cap=False) is a
    assert a.stack == [parent] and a.task is None and not a.waiting
    assert 1 not in relay.waiting


def test_below_the_cap_only_the_parent_takes_it():
    a = _worker(_task(1))
    relay = _relay(a)
    _waits(relay, a)
    for other in (_task(7), _task(8, parent=5)):  # from a driver; a child of a task elsewhere
        assert relay.take_waiting(other, at_cap=False) is None
    assert relay.waiting == {1: a}


def test_at_the_cap_any_waiting_worker_takes_it():
    # (No deadlock: what a waiting task waits for, and what is stacked above it, started
    # after it did; cluster.node.nested says more.)
    root, left, right = _task(1), _task(2, parent=1), _task(3, parent=1)
    a = _worker(left, root)
    b = _worker(right)
    relay = _relay(a, b)
    _waits(relay, a)
    assert relay.take_waiting(_task(4, parent=3), at_cap=True) is a
    assert a.stack == [root, left] and relay.waiting == {}
    assert relay.take_waiting(_task(5), at_cap=True) is None, "nobody waits now"


def test_a_worker_that_goes_on_is_not_taken():
    a = _worker(_task(1))
    relay = _relay(a)
    _waits(relay, a)
    a.closing = True
    assert relay.take_waiting(_task(2, parent=1), at_cap=False) is None
    assert not a.stack


class _Loop:
    """A loop stand-in whose timers the test fires by hand."""

    def __init__(self) -> None:
        self.timers: list[Any] = []

    def call_later(self, delay: float, fn: Any) -> Any:
        timer = SimpleNamespace(delay=delay, fn=fn, cancelled=False)
        timer.cancel = lambda: setattr(timer, "cancelled", True)
        self.timers.append(timer)
        return timer


def test_one_more_worker_only_when_every_worker_has_waited_a_while():
    import cluster.node.nested as nested

    a, b = _worker(_task(1)), _worker(_task(2))
    relay = _relay(a, b)
    loop = relay.daemon.loop = _Loop()
    pumps: list[None] = []
    relay.daemon.pump = lambda: pumps.append(None)
    _waits(relay, a)
    assert not relay.may_grow_past_cap(), "b runs: it will free up"
    assert loop.timers == []
    _waits(relay, b)
    assert not relay.may_grow_past_cap(), "every task waits, but only just"
    assert not relay.may_grow_past_cap()
    assert [t.delay for t in loop.timers] == [nested.STALL_SECONDS], "one timer a spell"
    loop.timers[0].fn()
    assert pumps == [None], "the timer pumps again"
    assert relay.may_grow_past_cap()
    assert not relay.may_grow_past_cap(), "the next spell waits again"
    assert len(loop.timers) == 2


def test_a_task_going_on_ends_the_spell():
    a = _worker(_task(1))
    relay = _relay(a)
    loop = relay.daemon.loop = _Loop()
    relay.daemon.pump = lambda: None
    _waits(relay, a)
    assert not relay.may_grow_past_cap()
    del relay.blocked[1]  # its child ended: it goes on
    assert not relay.may_grow_past_cap()
    assert loop.timers[0].cancelled
    relay.blocked[1] = 1.0
    assert not relay.may_grow_past_cap(), "a new spell: its own timer"
    assert len(loop.timers) == 2 and not loop.timers[1].cancelled
