"""Prefetch on a real daemon with real worker processes (cluster/node/prefetch.py): queued
tasks go to busy workers behind short tasks, every one runs once and reports once, and a
prefetched task survives its worker's loss, cancellation and its worker's task waiting.

The daemon runs in this process on its own event loop, with a link that records what it
would send the head; tasks are given to it as the head gives them (``HeadToNode``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import ROOT

from cluster.common import serialization
from cluster.common.messages import CallResult, RunAfter
from cluster.common.protocol import pb
from cluster.node.daemon import Daemon
from cluster.policy.prefetch import PREFETCH_DEPTH, may_prefetch


def job(mode: str, path: str = "") -> str:
    """'quick': returns; 'hold': until `path` exists, its pid written to `path`.pid first;
    'mark': after a moment writes `path`; 'wait': waits for the answer to request 999 the
    way a synchronous actor call inside a task does (the test answers)."""
    if mode == "hold":
        with open(path + ".pid", "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(path):
            time.sleep(0.005)
    elif mode == "mark":
        time.sleep(0.3)
        open(path, "w").close()
    elif mode == "wait":
        from cluster.worker import nested, worker

        nested.wait_reply(worker.CURRENT, 999, "the test", None)
    return mode


FN = serialization.dumps_function(job)


class Link:
    def __init__(self) -> None:
        self.results: dict[int, pb.TaskResult] = {}
        self.reported: list[int] = []
        self.replies: list[pb.CancelReply] = []

    def send(self, message: pb.NodeToHead) -> None:
        for result in message.results:
            self.reported.append(result.task_id)
            self.results[result.task_id] = result
        self.replies.extend(message.cancel_replies)


class Node:
    """A daemon with 2 workers on this process's loop, fed tasks as by the head."""

    def __init__(self, tmp_path: Any) -> None:
        self.daemon = Daemon("n1", {"cpus": 2.0}, str(tmp_path / "logs"))
        self.link = Link()
        self.daemon.link = self.link
        self.next_id = 0

    def submit(self, *calls: tuple[Any, ...]) -> list[int]:
        ids = []
        specs = []
        for args in calls:
            self.next_id += 1
            spec = pb.TaskSpec(task_id=self.next_id, fn_id=b"job", name="job", kind=pb.PYTHON,
                               args=serialization.dumps((args, {}), []), cwd=ROOT)
            spec.resources.cpus = 1
            if self.next_id == 1:
                spec.fn_blob = FN
            specs.append(spec)
            ids.append(self.next_id)
        self.daemon.on_head_message(pb.HeadToNode(tasks=specs))
        return ids

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)

    async def results(self, ids: list[int]) -> list[pb.TaskResult]:
        await self.until(lambda: all(i in self.link.results for i in ids), f"tasks {ids}")
        return [self.link.results[i] for i in ids]

    def value(self, task_id: int) -> Any:
        return serialization.loads(self.link.results[task_id].data)

    def worker_running(self, task_id: int) -> Any:
        return next(w for w in self.daemon.workers
                    if w.task is not None and w.task.spec.task_id == task_id)


def run(tmp_path: Any, body: Callable[[Node], Any]) -> None:
    async def main() -> None:
        node = Node(tmp_path)
        await node.daemon.start()
        try:
            await node.until(lambda: len(node.daemon.idle) == 2, "the workers to start")
            warm = await node.results(node.submit(("quick",), ("quick",)))
            assert [r.status for r in warm] == [pb.OK, pb.OK], warm[0].message
            while not may_prefetch(node.daemon.slowness[b"job"], 0.0, 0):
                await node.results(node.submit(("quick",)))  # (its first runs: imports)
            await body(node)
            assert sorted(node.link.reported) == sorted(set(node.link.reported)), \
                "a task was reported twice"
        finally:
            node.daemon.stop()
            await asyncio.sleep(0.2)

    asyncio.run(main())


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    # (the workers load `job` from this module)
    here = os.path.dirname(__file__)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, here, os.path.dirname(here)]))


def test_a_burst_of_short_tasks_is_prefetched_and_each_runs_once(tmp_path):
    async def body(node: Node) -> None:
        ids = node.submit(*[("quick",)] * 300)
        results = await node.results(ids)
        assert [r.status for r in results] == [pb.OK] * 300
        assert {node.value(i) for i in ids} == {"quick"}
        assert node.daemon.prefetched_total > 0, "nothing was prefetched"
        assert node.daemon.prefetched_count == 0
    run(tmp_path, body)


def test_nothing_is_prefetched_behind_a_function_known_to_be_slow(tmp_path):
    async def body(node: Node) -> None:
        gate = str(tmp_path / "gate")
        open(gate, "w").close()
        await node.results(node.submit(("mark", str(tmp_path / "m0"))))  # 0.3 s: slow
        ids = node.submit(*[("mark", str(tmp_path / f"m{i}")) for i in range(1, 7)])
        await node.results(ids)
        # (the quick runs of the warm-up were of the same function: it is now slow)
        assert node.daemon.prefetched_total == 0
    run(tmp_path, body)


def _two_held_then(node: Node, tmp_path: Any, *calls: tuple[Any, ...]) -> tuple[
        int, int, list[int], str, str]:
    """Both workers run a held task ('hold' is known to be short: it ran with its gate
    open), and `calls` queue behind them: prefetched PREFETCH_DEPTH to a worker, to the one
    whose task started first first."""
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    ids = node.submit(("hold", first), ("hold", second), *calls)
    return ids[0], ids[1], ids[2:], first, second


async def _warm_hold(node: Node, tmp_path: Any) -> None:
    open(tmp_path / "open", "w").close()
    await node.results(node.submit(("hold", str(tmp_path / "open"))))


def test_tasks_prefetched_to_a_worker_that_dies_run_on_another(tmp_path):
    async def body(node: Node) -> None:
        await _warm_hold(node, tmp_path)
        depth = PREFETCH_DEPTH
        first, second, rest, first_gate, second_gate = _two_held_then(
            node, tmp_path, *[("quick",)] * (2 * depth))
        doomed, other = node.worker_running(first), node.worker_running(second)
        assert [t.spec.task_id for t in doomed.prefetched] == rest[:depth]
        assert [t.spec.task_id for t in other.prefetched] == rest[depth:]
        assert node.daemon.stats()[1] == 2 * depth, "prefetched tasks count as queued"
        await node.until(lambda: os.path.exists(first_gate + ".pid"), "the held task")
        os.kill(doomed.pid, signal.SIGKILL)  # with tasks prefetched to it
        results = await node.results([first, *rest[:depth]])  # (others wait behind second)
        assert results[0].status == pb.WORKER_CRASHED
        assert [r.status for r in results[1:]] == [pb.OK] * depth, "a prefetched task was lost"
        open(second_gate, "w").close()
        results = await node.results([second, *rest[depth:]])
        assert [r.status for r in results] == [pb.OK] * (depth + 1)
    run(tmp_path, body)


def test_a_cancelled_prefetched_task_ends_cancelled_and_never_completes(tmp_path):
    async def body(node: Node) -> None:
        await _warm_hold(node, tmp_path)
        marks = [str(tmp_path / f"mark{i}") for i in range(2 * PREFETCH_DEPTH)]
        first, second, rest, first_gate, second_gate = _two_held_then(
            node, tmp_path, *[("mark", m) for m in marks])
        held = node.worker_running(second)
        victim = held.prefetched[0].spec.task_id
        node.daemon.on_head_message(pb.HeadToNode(
            cancel_queued=[pb.CancelRequest(task_id=victim)]))
        await node.until(lambda: node.link.replies, "the answer to the cancel")
        assert [(r.task_id, r.cancelled) for r in node.link.replies] == [(victim, True)]
        open(first_gate, "w").close()
        open(second_gate, "w").close()
        results = await node.results([first, second, *rest])
        statuses = {r.task_id: r.status for r in results}
        assert statuses.pop(victim) == pb.CANCELLED
        assert set(statuses.values()) == {pb.OK}
        await asyncio.sleep(0.5)  # (what a started victim would have written by now)
        assert not os.path.exists(marks[rest.index(victim)]), "the cancelled task ran"
    run(tmp_path, body)


def test_a_worker_whose_task_waits_hands_its_prefetched_tasks_back(tmp_path):
    async def body(node: Node) -> None:
        waiter, _, *behind = node.submit(("wait",), ("quick",), ("quick",), ("quick",))
        worker = node.worker_running(waiter)
        assert [t.spec.task_id for t in worker.prefetched] == behind
        # They cannot run behind the waiting task: they run elsewhere while it waits.
        results = await node.results(behind)
        assert [r.status for r in results] == [pb.OK, pb.OK]
        assert waiter not in node.link.results and not worker.prefetched
        worker.send(CallResult(999, pb.OK, serialization.dumps(1, []), ""))
        await node.results([waiter])
        assert node.value(waiter) == "wait"
    run(tmp_path, body)


def test_the_worker_runs_a_prefetched_task_after_a_failed_one(tmp_path):
    # (unlike a staged task sent ahead, whose input must succeed: test_worker_presend)
    from test_worker_presend import WorkerProcess, _fields, _step

    from cluster.common.messages import Done, Fn, Run

    w = WorkerProcess()
    try:
        w.send(Fn(b"step", serialization.dumps_function(_step)))
        w.send(Run(*_fields(1, b"step", -1)))
        w.send(RunAfter(0, _fields(2, b"step", 1)))
        done = [w.read() for _ in range(2)]
        assert [type(d) for d in done] == [Done, Done]
        assert [(d.task_id, d.status) for d in done] == [(1, pb.APP_ERROR), (2, pb.OK)]
    finally:
        w.close()


def test_shoal_prefetch_0_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_PREFETCH", "0")

    async def body(node: Node) -> None:
        results = await node.results(node.submit(*[("quick",)] * 100))
        assert [r.status for r in results] == [pb.OK] * 100
        assert node.daemon.prefetched_total == 0
    run(tmp_path, body)
