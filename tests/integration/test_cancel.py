"""Cancellation end to end (a real 1-slot local cluster): fut.cancel() and api.cancel() of
tasks waiting at the head, in a daemon's backlog, running (force), actor calls; dependents
fail with DependencyError; a cancelled task is never retried."""

from __future__ import annotations

import concurrent.futures
import os
import time

import psutil
import pytest
from helpers import hold, wait_until

import api
from cluster.common.protocol import pb

pytestmark = pytest.mark.timeout(120)


@api.python_app
def inc(x: int) -> int:
    return x + 1


@api.python_app(max_retries=3)
def record_and_hold(log: str, gate: str) -> str:
    with open(log, "a") as f:
        f.write("started\n")
    while not os.path.exists(gate):
        time.sleep(0.02)
    return "finished"


@api.bash_app
def spawner(pidfile: str) -> str:
    return (f"sleep 300 & echo $! >> {pidfile}; (setsid sleep 300 & echo $! >> {pidfile}); "
            "wait")


def _status() -> pb.StatusReply:
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata

    client = api._session.client()
    address = next(t for t in client.targets if not t.startswith("unix:"))
    with grpc.insecure_channel(address) as channel:
        return shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(client.secret), timeout=10)


def _blocked(tmp_path):
    """A task holding the only slot (running), and the file that releases it."""
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    blocker = hold(gate, started)
    wait_until(lambda: os.path.exists(started), 60, "the blocker to start")
    return blocker, gate


def _release(gate: str) -> None:
    open(gate, "w").close()


def _idle() -> bool:
    status = _status()
    return status.tasks_queued == 0 and status.tasks_running == 0


def test_cancel_task_queued_at_head_and_its_dependents(one_slot, tmp_path):
    blocker, gate = _blocked(tmp_path)
    # More than any daemon backlog takes (at most 17 a slot): the last wait at the head.
    queued = [inc(i) for i in range(40)]
    dependent = inc(queued[-1])
    assert queued[-1].cancel() is True
    assert queued[-1].cancelled() and queued[-1].done()
    with pytest.raises(api.TaskCancelledError, match="cancelled") as info:
        queued[-1].result(timeout=10)
    assert isinstance(info.value, concurrent.futures.CancelledError)
    with pytest.raises(api.TaskCancelledError):
        queued[-1].exception(timeout=10)
    with pytest.raises(api.DependencyError, match="CANCELLED"):
        dependent.result(timeout=30)
    done, _ = concurrent.futures.wait([queued[-1]], timeout=10)
    assert queued[-1] in done
    _release(gate)
    assert blocker.result(timeout=60) == "released"
    assert [f.result(timeout=60) for f in queued[:-1]] == list(range(1, 40))
    assert queued[0].cancel() is False  # done: too late, as for any Future
    assert api.cancel(queued[-1]) is True  # cancelled already: still True
    wait_until(_idle, 30, "the cluster to be idle")


def test_cancel_task_waiting_for_a_dependency(one_slot, tmp_path):
    blocker, gate = _blocked(tmp_path)
    waiting = inc(blocker)       # WAITING at the head
    after = inc(waiting)
    later = inc(after)
    # `after` failed (DependencyError) as `waiting` was cancelled, before its own turn.
    assert api.cancel([later, waiting, after]) == [True, True, False]
    _release(gate)
    assert blocker.result(timeout=60) == "released"
    with pytest.raises(api.TaskCancelledError):
        waiting.result(timeout=10)
    with pytest.raises(api.TaskCancelledError):
        later.result(timeout=10)
    with pytest.raises(api.DependencyError):
        after.result(timeout=10)


def test_cancel_task_in_a_daemon_backlog(one_slot, tmp_path):
    for i in range(60):  # short tasks: the head sends the daemon a deep backlog
        assert inc(i).result(timeout=30) == i + 1
    blocker, gate = _blocked(tmp_path)
    backlog = inc(1)
    # The daemon reports its backlog in heartbeats: the task has left the head's queue.
    wait_until(lambda: _status().tasks_queued == 0 and
               sum(n.queued for n in _status().nodes) >= 1, 30,
               "the task to reach the daemon's backlog")
    assert backlog.cancel() is True
    with pytest.raises(api.TaskCancelledError):
        backlog.result(timeout=10)
    assert inc(backlog).exception(timeout=30).__class__ is api.DependencyError
    _release(gate)
    assert blocker.result(timeout=60) == "released"
    assert inc(5).result(timeout=30) == 6
    wait_until(_idle, 30, "the cluster to be idle")


def test_running_task_is_not_cancelled_without_force(one_slot, tmp_path):
    blocker, gate = _blocked(tmp_path)
    assert blocker.cancel() is False
    assert not blocker.cancelled()
    _release(gate)
    assert blocker.result(timeout=60) == "released"


def test_force_cancel_of_a_running_bash_app_ends_its_children(one_slot, tmp_path):
    pidfile = tmp_path / "pids"
    fut = spawner(str(pidfile))
    wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2, 60,
               "the bash app's children to start")
    pids = [int(p) for p in pidfile.read_text().split()]
    assert all(psutil.pid_exists(p) for p in pids)
    assert api.cancel(fut, force=True) is True
    with pytest.raises(api.TaskCancelledError):
        fut.result(timeout=30)

    def gone() -> bool:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return not alive

    wait_until(gone, 30, "the bash app's children to end")
    # The slot was freed and the worker replaced: the next task runs.
    assert inc(41).result(timeout=60) == 42
    wait_until(_idle, 30, "the cluster to be idle")


def test_force_cancelled_task_is_never_retried(one_slot, tmp_path):
    log, gate = tmp_path / "attempts", str(tmp_path / "gate")
    fut = record_and_hold(str(log), gate)
    wait_until(lambda: log.exists(), 60, "the task to start")
    assert api.cancel(fut, force=True) is True
    with pytest.raises(api.TaskCancelledError):
        fut.result(timeout=30)
    wait_until(_idle, 30, "the cancelled task to end")
    assert inc(1).result(timeout=60) == 2  # anything retried would have run by now
    _release(gate)
    assert log.read_text().split() == ["started"], "a cancelled task ran again"


def test_queued_actor_call_is_cancelled(one_slot, tmp_path):
    @api.actor(num_cpus=0)
    class Box:
        def __init__(self):
            self.items = []

        def add(self, item):
            self.items.append(item)
            return len(self.items)

        def items_(self):
            return list(self.items)

    box = Box()
    assert box.add("first").result(timeout=60) == 1
    blocker, gate = _blocked(tmp_path)
    call = box.add(blocker)          # waits at the head for its dependency
    held = box.add("second")         # held in the driver: calls keep their order
    assert held.cancel() is True
    assert call.cancel() is True
    with pytest.raises(api.TaskCancelledError):
        call.result(timeout=10)
    with pytest.raises(api.TaskCancelledError):
        held.result(timeout=10)
    _release(gate)
    assert blocker.result(timeout=60) == "released"
    assert box.add("third").result(timeout=60) == 2
    assert box.items_().result(timeout=60) == ["first", "third"]
    api.kill(box)


def test_an_actor_call_behind_a_running_one_is_not_cancelled_by_its_worker(one_slot):
    @api.actor(num_cpus=0)
    class Slow:
        def wait(self, seconds):
            time.sleep(seconds)
            return "waited"

    slow = Slow()
    assert slow.wait(0).result(timeout=60) == "waited"
    first = slow.wait(1)
    second = slow.wait(0)   # sent straight to the actor's worker: only it holds it
    assert second.cancel() is False
    assert first.result(timeout=60) == "waited" and second.result(timeout=60) == "waited"
    api.kill(slow)


def test_cancel_bad_input(one_slot):
    with pytest.raises(TypeError, match="api.cancel"):
        api.cancel("not a future")
    fut = inc(1)
    with pytest.raises(TypeError, match="force"):
        api.cancel(fut, force="yes")
    assert fut.result(timeout=60) == 2


def test_a_buffered_task_with_a_buffered_dependent_is_cancelled_at_the_head(one_slot, tmp_path):
    # Another thread holding the send lock keeps both in the driver's send buffer: taking
    # the first out there would send its dependent depending on an unknown object.
    from api import _session

    blocker, gate = _blocked(tmp_path)
    client = _session.client()
    with client._transport._send_lock:
        first = inc(1)
        dependent = inc(first)
        assert not client.take_unsent(first.task_id), "left for the head to cancel"
    assert first.cancel()
    with pytest.raises(api.DependencyError, match="CANCELLED"):
        dependent.result(timeout=30)
    _release(gate)
    assert blocker.result(timeout=60) == "released"
