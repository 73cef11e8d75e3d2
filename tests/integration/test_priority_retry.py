"""Priorities and retry policies end to end (real processes): a blocked 1-slot cluster runs
high-priority tasks first; retry_handler decides retries in the driver (True/False/cost,
raising); a task whose node stopped by plan (SIGTERM, as at a Slurm walltime) re-runs
without using up its retries."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import head_and_second_daemon, hold, wait_until

import api

pytestmark = pytest.mark.timeout(120)


@api.python_app
def note(log: str, label: str) -> str:
    with open(log, "a") as f:
        f.write(label + "\n")
    return label


def _block(tmp_path):
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    blocker = hold(gate, started)
    wait_until(lambda: os.path.exists(started), 60, "the blocker to start")
    return blocker, gate


def _status():
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata
    from cluster.common.protocol import pb

    client = api._session.client()
    address = next(t for t in client.targets if not t.startswith("unix:"))
    with grpc.insecure_channel(address) as channel:
        return shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(client.secret), timeout=10)


@api.python_app
def pause(seconds: float) -> None:
    time.sleep(seconds)


def test_priorities_reorder_the_head_queue(one_slot, tmp_path):
    pause(0.2).result(timeout=60)  # tasks this long: the node takes no backlog
    log = str(tmp_path / "order")
    blocker, gate = _block(tmp_path)
    futs = [note(log, "low-1"), note(log, "low-2"),
            note.options(priority=10)(log, "high-1"), note(log, "low-3"),
            note.options(priority=10)(log, "high-2"), note.options(priority=5)(log, "mid"),
            note.options(priority=-1)(log, "lowest")]
    wait_until(lambda: _status().tasks_queued == len(futs), 30, "all to queue at the head")
    open(gate, "w").close()
    assert blocker.result(timeout=60) == "released"
    for fut in futs:
        fut.result(timeout=60)
    order = open(log).read().split()
    assert order == ["high-1", "high-2", "mid", "low-1", "low-2", "low-3", "lowest"], order


def test_priorities_reorder_a_daemon_backlog(one_slot, tmp_path):
    # The daemon takes a backlog only while its tasks' mean run time is short enough (see
    # scheduler.queue_factor: four queued behind the blocker on one slot need ~0.5 ms a
    # task); on a loaded machine it may not be, so the setup is tried again, the order is
    # checked only on a run where all four reached the daemon.
    for attempt in range(4):
        here = tmp_path / str(attempt)
        here.mkdir()
        for i in range(60):  # no-op tasks: the head then sends the daemon a deep backlog
            note(str(here / "warm"), str(i)).result(timeout=30)
        log = str(here / "order")
        blocker, gate = _block(here)
        futs = [note(log, "low-1"), note.options(priority=3)(log, "high"),
                note(log, "low-2"), note.options(priority=1)(log, "mid")]
        deadline = time.monotonic() + 15
        while not (reached := _status().tasks_queued == 0 and
                   sum(n.queued for n in _status().nodes) == len(futs)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        open(gate, "w").close()
        assert blocker.result(timeout=60) == "released"
        for fut in futs:
            fut.result(timeout=60)
        if reached:
            break
    else:
        pytest.fail("the daemon never took all four into its backlog in 4 tries")
    order = open(log).read().split()
    assert order == ["high", "mid", "low-1", "low-2"], order


def test_priority_bad_input(one_slot):
    with pytest.raises(ValueError, match="priority=1.5"):
        api.python_app(priority=1.5)(lambda: 1)
    with pytest.raises(ValueError, match="priority="):
        note.options(priority=2**40)


@api.python_app
def flaky(counter: str, failures: int) -> int:
    runs = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    with open(counter, "w") as f:
        f.write(str(runs))
    if runs <= failures:
        raise OSError(f"transient failure {runs}")
    return runs


def _runs(counter) -> int:
    return int(counter.read_text())


def test_retry_handler_true_retries_beyond_max_retries(one_slot, tmp_path):
    seen = []

    def handler(err, attempt):
        seen.append((type(err.cause).__name__, attempt))
        return isinstance(err, OSError)

    counter = tmp_path / "runs"
    fut = flaky.options(retry_handler=handler)(str(counter), 2)
    dependent = api.python_app(lambda x: x * 10)(fut)   # waits while the driver decides
    assert fut.result(timeout=60) == 3
    assert dependent.result(timeout=60) == 30
    assert seen == [("OSError", 1), ("OSError", 2)]


def test_retry_handler_false_stops_retries(one_slot, tmp_path):
    counter = tmp_path / "runs"
    fut = flaky.options(max_retries=5, retry_handler=lambda err, n: False)(str(counter), 9)
    with pytest.raises(OSError, match="transient failure 1"):
        fut.result(timeout=60)
    assert _runs(counter) == 1


def test_retry_handler_cost_counts_against_max_retries(one_slot, tmp_path):
    counter = tmp_path / "runs"
    # Costs 0.5 each, max_retries=1: retried while the total is <= 1 (as in Parsl).
    fut = flaky.options(max_retries=1, retry_handler=lambda err, n: 0.5)(str(counter), 99)
    with pytest.raises(api.TaskError, match="transient failure 3"):
        fut.result(timeout=60)
    assert _runs(counter) == 3


def test_retry_handler_that_raises_fails_the_future_with_its_error(one_slot, tmp_path):
    def handler(err, attempt):
        raise RuntimeError("handler broke")

    fut = flaky.options(max_retries=3, retry_handler=handler)(str(tmp_path / "runs"), 9)
    with pytest.raises(RuntimeError, match="handler broke") as info:
        fut.result(timeout=60)
    assert isinstance(info.value.__context__, OSError)
    assert _runs(tmp_path / "runs") == 1


def test_retry_handler_bad_input(one_slot):
    with pytest.raises(ValueError, match="retry_handler"):
        flaky.options(retry_handler="yes")


@pytest.mark.timeout(180)
def test_task_on_a_node_stopped_by_plan_reruns_without_using_retries(clusterctl, no_session,
                                                                      tmp_path):
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    with head_and_second_daemon(clusterctl, "plannedstop") as (_cf, daemon):
        first = next(n.name for n in api._session.client().nodes.values()
                     if n.name != "second")

        # The head's own node is busy, so the task goes to "second".
        blocker = hold.options(resources={f"node:{first}": 0.01})(gate, started)
        wait_until(lambda: os.path.exists(started), 60, "the blocker to start")
        marks = tmp_path / "marks"

        @api.python_app(max_retries=0)
        def long_job(path: str, gate: str) -> str:
            with open(path, "a") as f:
                f.write(f"run {os.getpid()}\n")
            while not os.path.exists(gate):
                time.sleep(0.02)
            return "done"

        fut = long_job(str(marks), gate + "2")
        wait_until(lambda: marks.exists(), 60, "the job to start on the second node")
        # What Slurm does at the walltime: SIGTERM to every process of the step, the
        # task's worker (which dies of it) as well as the daemon.
        os.kill(int(marks.read_text().split()[1]), signal.SIGTERM)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        open(gate, "w").close()
        assert blocker.result(timeout=60) == "released"
        wait_until(lambda: marks.read_text().count("run") == 2, 60, "the job to run again")
        open(gate + "2", "w").close()
        assert fut.result(timeout=60) == "done"
