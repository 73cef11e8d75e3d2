"""The driver's leased worker (api._lease), end to end: one-at-a-time tasks go straight to
a worker the driver leases, with the same results, errors, output, large values,
dependencies, cancels and crashes as through the head; the lease is given back when a
burst begins and when it sits idle."""

from __future__ import annotations

import os
import time

import pytest

import api
from api import _lease, _session

pytestmark = pytest.mark.timeout(180)


@api.python_app
def pid_of():
    return os.getpid()


@api.python_app
def square(x):
    return x * x


@api.python_app
def boom(text):
    raise KeyError(text)


@api.python_app
def chatty(text):
    print(text)
    return len(text)


@api.python_app
def big(n):
    return b"x" * n


@api.python_app
def length(blob):
    return len(blob)


@api.python_app
def die():
    os._exit(3)


@api.python_app
def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


@api.python_app
def meet(path, me, other):
    """Returns once the other task of the pair has started too (both must run at once)."""
    open(os.path.join(path, me), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(path, other)):
        if time.monotonic() > deadline:
            raise TimeoutError("the other task never started")
        time.sleep(0.01)
    return me


@api.python_app
def outer(x):
    return square(x).result() + 1


def _lease_obj() -> _lease.TaskLease:
    return _session.client().lease


def _until(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _leased() -> _lease.TaskLease:
    """Sync round trips until the driver holds a connected lease."""
    lease = _lease_obj()
    deadline = time.monotonic() + 60
    while not lease.ready:
        assert time.monotonic() < deadline, "no lease after a minute of sync round trips"
        assert square(3).result(timeout=60) == 9
    return lease


def test_sync_loop_runs_on_one_leased_worker(cluster):
    lease = _leased()
    before = lease.sent
    pids = [pid_of().result(timeout=60) for _ in range(40)]
    # Every one went straight to the leased worker.
    assert (lease.sent - before, set(pids)) == (40, {pids[0]}), pids
    assert os.getpid() not in pids
    assert [square(i).result(timeout=60) for i in range(20)] == [i * i for i in range(20)]


def test_errors_and_output_are_as_through_the_head(cluster, capfd):
    lease = _leased()
    before = lease.sent
    with pytest.raises(KeyError, match="no such key"):
        boom("no such key").result(timeout=60)
    assert chatty("hello from a leased worker").result(timeout=60) == 26
    assert lease.sent - before == 2
    seen = ""

    def printed() -> bool:
        nonlocal seen
        seen += capfd.readouterr().out
        return "hello from a leased worker" in seen

    _until(printed, "the task's print() reached the driver")
    assert "(chatty task=" in seen


def test_large_result_stays_in_the_store_and_feeds_a_dependent(cluster):
    lease = _leased()
    before = lease.sent
    n = 3 * 1024 * 1024
    fut = big(n)
    assert fut.result(timeout=60) == b"x" * n
    assert lease.sent - before == 1
    # Its future as an argument: the task goes through the head, which must know it.
    assert length(fut).result(timeout=60) == n
    small = square(7)
    assert square(small).result(timeout=60) == 49 * 49


@api.python_app
def total_of(values):
    return sum(values)


def test_a_held_task_keeps_its_other_dependencies_until_it_is_sent(cluster):
    # `slow` runs leased, so total_of waits in the driver until the head knows slow's
    # value. square(4) goes through the head, ends, and its future is dropped meanwhile:
    # its release must reach the head after total_of does (else the head has dropped the
    # value total_of needs: OBJECT_LOST, seen once in a clean-clone run).
    lease = _leased()
    before = lease.sent
    slow = sleep_for(1.0)
    assert lease.sent - before == 1, "the slow task did not run leased"
    fut = total_of([slow, square(4)])
    assert fut.result(timeout=60) == 17.0
    client = _session.client()  # the release held back went out once total_of was sent
    assert not client._pinned and not client._late_releases


def test_a_burst_s_first_task_runs_leased_the_rest_through_the_head(cluster, tmp_path):
    lease = _leased()
    before, actor = lease.sent, lease.actor_id
    pair = [meet(str(tmp_path), "a", "b"), meet(str(tmp_path), "b", "a")]
    assert sorted(f.result(timeout=90) for f in pair) == ["a", "b"]
    assert lease.sent - before == 1 and lease.actor_id == actor


def test_an_idle_leased_worker_gives_its_cpu_back(cluster, tmp_path, monkeypatch):
    # The pair needs both CPUs at once, through the head: it runs only if the idle
    # lease, kept (not given back: its idle time is an hour here), holds no CPU.
    monkeypatch.setattr(_lease, "IDLE_SECONDS", 3600.0)
    lease = _leased()
    actor = lease.actor_id
    pair_meet = meet.options(max_retries=1)  # (not for the lease: through the head)
    pair = [pair_meet(str(tmp_path), "a", "b"), pair_meet(str(tmp_path), "b", "a")]
    assert sorted(f.result(timeout=90) for f in pair) == ["a", "b"]
    assert lease.actor_id == actor
    assert square(4).result(timeout=60) == 16  # and it takes the CPU again for a task


def test_an_idle_lease_is_given_back(cluster):
    lease = _leased()
    _until(lambda: not lease.actor_id, "the idle lease was given back",
           seconds=_lease.IDLE_SECONDS * 30)
    assert not lease.ready


def test_a_leased_worker_that_dies_fails_its_task_and_a_new_lease_follows(cluster):
    lease = _leased()
    first = lease.actor_id
    with pytest.raises(api.WorkerCrashedError, match="die"):
        die().result(timeout=60)
    assert lease.actor_id != first
    assert _leased().actor_id not in (0, first)
    assert square(5).result(timeout=60) == 25


def test_cancel_a_running_leased_task(cluster):
    lease = _leased()
    before = lease.sent
    fut = sleep_for(60)
    assert lease.sent - before == 1
    assert fut.cancel() is False  # running: not stopped without force, as through the head
    assert api.cancel([fut], force=True) == [True]
    assert fut.cancelled()
    with pytest.raises(api.TaskCancelledError):
        fut.result(timeout=5)
    assert square(6).result(timeout=60) == 36


def test_a_leased_task_that_submits_tasks(cluster):
    lease = _leased()
    before = lease.sent
    assert [outer(i).result(timeout=60) for i in range(5)] == [i * i + 1 for i in range(5)]
    assert lease.sent - before == 5


def test_tasks_the_lease_does_not_take_go_through_the_head(cluster):
    lease = _leased()
    before = lease.sent
    assert square.options(num_cpus=0.5)(4).result(timeout=60) == 16
    assert square.options(max_retries=1)(4).result(timeout=60) == 16
    assert square.options(walltime=30)(4).result(timeout=60) == 16
    assert lease.sent == before


@api.python_app
def inc(x):
    return x + 1


def test_a_chain_starting_with_a_leased_task(cluster):
    # The second link waits in the driver until the head knows the first (leased) one's
    # value; the third depends on that held second one and must reach the head after it.
    _leased()
    fut = square(3)
    for _ in range(30):
        fut = inc(fut)
    assert fut.result(timeout=60) == 9 + 30


def test_a_chain_after_a_failed_leased_task_fails_as_a_dependency(cluster):
    _leased()
    first = inc(boom("x"))
    second = inc(first)
    with pytest.raises(api.DependencyError):
        first.result(timeout=60)
    with pytest.raises(api.DependencyError):
        second.result(timeout=60)
    assert inc(inc(square(2))).result(timeout=60) == 6


@api.actor
class Counter:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n


def test_a_chain_starting_with_a_direct_actor_call(cluster):
    counter = Counter()
    assert counter.bump().result(timeout=60) == 1
    fut = counter.bump()  # direct: the head learns its value only when a task needs it
    for _ in range(10):
        fut = inc(fut)
    assert fut.result(timeout=60) == 2 + 10


def test_cancelling_a_held_link_fails_what_is_held_behind_it(cluster):
    _leased()
    first = sleep_for(0.5)   # leased, running
    second = inc(first)      # held in the driver until the head knows first's value
    third = inc(second)      # held behind second
    assert second.cancel() is True
    with pytest.raises(api.DependencyError, match="cancelled"):
        third.result(timeout=60)
    assert first.result(timeout=60) == 0.5
    assert second.cancelled()


@api.python_app
def wrap_put(x):
    return [api.put(x)]  # a ref made inside the task, in its result


def test_a_leased_result_with_a_ref_inside_keeps_the_ref(cluster):
    lease = _leased()
    before = lease.sent
    held = [wrap_put(i).result(timeout=60) for i in range(5)]
    assert lease.sent - before == 5
    time.sleep(0.3)  # (the worker's releases, had they overtaken the driver's puts)
    assert [api.get(refs[0]) for refs in held] == list(range(5))


def test_a_direct_actor_call_whose_result_holds_a_ref(cluster):
    maker = Maker()
    assert maker.make(0).result(timeout=60)  # (the route is known from here on)
    held = [maker.make(i).result(timeout=60) for i in range(5)]
    time.sleep(0.3)
    assert [api.get(refs[0]) for refs in held] == list(range(5))


@api.actor
class Maker:
    def make(self, x):
        return [api.put(x)]


def _status():
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata
    from cluster.common.protocol import pb

    client = _session.client()
    with grpc.insecure_channel(client.targets[-1]) as channel:
        return shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(client.secret), timeout=10)


def test_a_long_leased_task_counts_as_running_in_the_status(cluster):
    lease = _leased()
    _until(lambda: _status().tasks_running == 0, "nothing running")
    before, done_before = lease.sent, _status().tasks_done
    fut = sleep_for(2)
    assert lease.sent - before == 1
    _until(lambda: _status().tasks_running == 1, "the leased task shows as running")
    assert fut.result(timeout=60) == 2
    _until(lambda: _status().tasks_running == 0, "it no longer shows as running")
    _until(lambda: _status().tasks_done > done_before, "it counts as done")
