"""Workflow control without processes: the priority policy (pure), and the head's side of
priorities, cancellation (every state), retry_handler decisions (DECIDING) and planned node
stops, each step followed by ``Head.validate()``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import with_sent_back

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import fill, pb
from cluster.head.records import TaskState
from cluster.head.state import Head
from cluster.policy import priority

# ---- the policy ------------------------------------------------------------------------


def test_queue_keys_round_trip_and_plain_shapes_stay_plain():
    for shape in (b"", b"\x0a\x04cpus", bytes(range(40))):
        assert priority.queue_key(shape, 0) == shape
        assert priority.priority_of(shape) == 0
        for level in (priority.LOWEST, -7, 1, 99, priority.HIGHEST):
            key = priority.queue_key(shape, level)
            assert key != shape and priority.priority_of(key) == level


def test_in_order_is_highest_first_and_stable():
    keys = [b"a", priority.queue_key(b"a", 2), b"b", priority.queue_key(b"b", 2),
            priority.queue_key(b"a", -5)]
    assert priority.in_order(keys) == [keys[1], keys[3], b"a", b"b", keys[4]]
    plain = [b"x", b"y", b"z"]
    assert priority.in_order(plain) == plain


def test_insert_keeps_fifo_within_a_priority():
    q: deque[tuple[int, str]] = deque()
    for item in [(0, "a"), (0, "b"), (5, "c"), (0, "d"), (5, "e"), (-1, "f"), (9, "g")]:
        priority.insert(q, item, item[0], lambda x: x[0])
    assert [name for _, name in q] == ["g", "c", "e", "a", "b", "d", "f"]


@pytest.mark.parametrize("bad", [1.5, "1", True, None, 2**31, -(2**31) - 1])
def test_check_refuses_what_is_not_a_priority(bad):
    with pytest.raises(ValueError, match="priority="):
        priority.check(bad, "app 'f'")


# ---- the head ----------------------------------------------------------------------------


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: object) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass

    def tasks(self) -> list[pb.TaskSpec]:
        return [s for m in self.sent for s in getattr(m, "tasks", [])]

    def field(self, name: str) -> list[Any]:
        return [x for m in self.sent for x in getattr(m, name, [])]


class Cluster:
    def __init__(self, head: Head, cpus: tuple[float, ...]) -> None:
        self.head = head
        self.nodes = []
        for i, n in enumerate(cpus):
            register = pb.Register(name=f"n{i}", address="127.0.0.1", store_address=f"s{i}:1")
            fill(register.total, {"cpus": n})
            node = head.node_joined(FakeConn(), register, remote=False)
            node.view.factor = 1.0   # no backlog beyond free slots unless a test says so
            self.nodes.append(node)
        self.driver_conn = FakeConn()
        self.driver = head.driver_joined(self.driver_conn, pb.DriverHello(hostname="h", pid=1))
        self.seq = 0

    def submit(self, deps: list[int] = (), **fields: Any) -> int:
        self.seq += 1
        task_id = self.driver.driver_id << DRIVER_SHIFT | self.seq
        spec = pb.TaskSpec(task_id=task_id, fn_id=b"f", fn_blob=b"fn", name=f"t{self.seq}",
                           deps=deps, kind=pb.PYTHON, **fields)
        fill(spec.resources, {"cpus": 1.0})
        self.head.on_driver_message(self.driver, pb.DriverToHead(submit=[spec]))
        return task_id

    def finish(self, task_id: int, status: int = pb.OK, **fields: Any) -> None:
        node = next(n for n in self.nodes if task_id in n.running)
        result = pb.TaskResult(task_id=task_id, status=status, node=node.name,
                               run_seconds=1.0, **fields)
        self.head.on_node_message(node, pb.NodeToHead(
            results=with_sent_back(self.head.staging.heirs, result)))

    def cancel(self, task_id: int, force: bool = False) -> None:
        self.head.on_driver_message(self.driver, pb.DriverToHead(cancel=[pb.CancelRequest(
            request_id=task_id, task_id=task_id, force=force)]))

    def replies(self) -> dict[int, pb.CancelReply]:
        return {r.task_id: r for r in self.driver_conn.field("cancel_replies")}

    def results(self) -> dict[int, pb.TaskResult]:
        return {r.task_id: r for r in self.driver_conn.field("results")}

    def state(self, task_id: int) -> TaskState | None:
        task = self.head.tasks.get(task_id)
        return task.state if task else None

    async def step(self) -> None:
        await asyncio.sleep(0)
        self.head.validate()


def run(scenario: Callable[[Cluster], Coroutine[Any, Any, None]],
        cpus: tuple[float, ...] = (1.0,)) -> None:
    async def main() -> None:
        head = Head("unit")
        head.attach_loop(asyncio.get_running_loop())
        await scenario(Cluster(head, cpus))

    asyncio.run(main())


def test_ready_tasks_dispatch_highest_priority_first_fifo_within():
    async def scenario(c: Cluster) -> None:
        blocker = c.submit()
        await c.step()
        ids = {c.submit(): "low1", c.submit(priority=7): "high1", c.submit(): "low2",
               c.submit(priority=7): "high2", c.submit(priority=-2): "last"}
        await c.step()
        c.finish(blocker)
        order = []
        for _ in range(len(ids)):
            await c.step()
            (running,) = c.nodes[0].running
            order.append(ids[running])
            c.finish(running)
        assert order == ["high1", "high2", "low1", "low2", "last"]

    run(scenario)


def test_cancel_in_each_state_and_dependents_fail():
    async def scenario(c: Cluster) -> None:
        running = c.submit()
        await c.step()
        queued = c.submit()
        waiting = c.submit([queued])
        dependent = c.submit([waiting])
        await c.step()
        assert c.state(queued) is TaskState.QUEUED and c.state(waiting) is TaskState.WAITING
        c.cancel(waiting)
        await c.step()
        assert c.replies()[waiting].cancelled
        assert c.results()[waiting].status == pb.CANCELLED
        assert c.results()[dependent].status == pb.DEPENDENCY_FAILED
        c.cancel(queued)
        await c.step()
        assert c.replies()[queued].cancelled and c.state(queued) is None
        # Running as far as the head knows: the daemon is asked, and its answer passed on.
        c.cancel(running)
        await c.step()
        node = c.nodes[0]
        assert [r.task_id for r in node.conn.field("cancel_queued")] == [running]
        assert running not in c.replies()
        c.head.on_node_message(node, pb.NodeToHead(cancel_replies=[pb.CancelReply(
            task_id=running, cancelled=False, message="it has started on n0")]))
        await c.step()
        assert not c.replies()[running].cancelled
        assert c.state(running) is TaskState.RUNNING
        c.cancel(running, force=True)
        await c.step()
        assert c.state(running) is TaskState.CANCELLING and running in node.conn.field("cancel")
        c.finish(running, pb.WORKER_CRASHED)     # the killed worker: never retried
        await c.step()
        assert c.results()[running].status == pb.CANCELLED and not c.head.tasks
        assert not node.view.used.get("cpus")

    run(scenario)


def test_force_cancel_of_an_actor_creation_is_refused_and_the_actor_lives():
    """force=True stops app tasks only: a running creation moved to CANCELLING met its OK
    result (CANCELLING -> HOSTING is not a move) and raised InvalidTransition in the head."""
    async def scenario(c: Cluster) -> None:
        c.seq += 1
        task_id = c.driver.driver_id << DRIVER_SHIFT | c.seq
        spec = pb.TaskSpec(task_id=task_id, fn_id=b"f", fn_blob=b"fn", name="Actor",
                           kind=pb.ACTOR_CREATE, actor=pb.ActorOptions(max_concurrency=1))
        fill(spec.resources, {"cpus": 1.0})
        c.head.on_driver_message(c.driver, pb.DriverToHead(submit=[spec]))
        await c.step()
        assert c.state(task_id) is TaskState.RUNNING
        c.cancel(task_id, force=True)
        await c.step()
        assert c.state(task_id) is TaskState.RUNNING
        assert task_id not in c.nodes[0].conn.field("cancel")
        c.finish(task_id)
        await c.step()
        assert c.results()[task_id].status == pb.OK
        assert c.nodes[0].running[task_id].state is TaskState.HOSTING  # it holds its node

    run(scenario)


def test_a_backlogged_task_dropped_by_its_daemon_ends_cancelled():
    async def scenario(c: Cluster) -> None:
        c.nodes[0].view.factor = 2.0
        first, second = c.submit(max_retries=3), c.submit(max_retries=3)
        await c.step()
        assert set(c.nodes[0].running) == {first, second}
        c.cancel(second)
        await c.step()
        node = c.nodes[0]
        c.head.on_node_message(node, pb.NodeToHead(
            results=[pb.TaskResult(task_id=second, status=pb.CANCELLED, node="n0")],
            cancel_replies=[pb.CancelReply(task_id=second, cancelled=True)]))
        await c.step()
        assert c.replies()[second].cancelled and c.results()[second].status == pb.CANCELLED
        assert c.state(second) is None and c.state(first) is TaskState.RUNNING

    run(scenario)


def test_cancel_asked_of_a_node_that_is_lost_is_decided_again():
    async def scenario(c: Cluster) -> None:
        task = c.submit(max_retries=1)
        await c.step()
        c.cancel(task)
        await c.step()
        c.head.node_lost(c.nodes[0], "test")   # the retry queues it: cancelled there
        await c.step()
        assert c.replies()[task].cancelled and c.results()[task].status == pb.CANCELLED

    run(scenario, cpus=(1.0, 1.0))


def test_retry_handler_decides_while_dependents_wait():
    async def scenario(c: Cluster) -> None:
        task = c.submit(retry_handler=True)
        dependent = c.submit([task])
        await c.step()
        c.finish(task, pb.APP_ERROR, message="boom")
        await c.step()
        assert c.state(task) is TaskState.DECIDING and c.results()[task].retry_pending
        assert c.state(dependent) is TaskState.WAITING
        c.head.on_driver_message(c.driver, pb.DriverToHead(retry=[task]))
        await c.step()
        assert c.state(task) is TaskState.RUNNING
        c.finish(task, pb.APP_ERROR, message="boom again")
        await c.step()
        c.head.on_driver_message(c.driver, pb.DriverToHead(give_up=[task]))
        await c.step()
        assert c.state(task) is None and not c.results()[task].retry_pending
        assert c.results()[dependent].status == pb.DEPENDENCY_FAILED

    run(scenario)


def test_a_deciding_task_can_be_cancelled_and_its_driver_leaving_ends_it():
    async def scenario(c: Cluster) -> None:
        a, b = c.submit(retry_handler=True), c.submit(retry_handler=True)
        await c.step()
        await c.step()
        for task in list(c.nodes[0].running):
            c.finish(task, pb.WORKER_CRASHED)
            await c.step()
        await c.step()
        deciding = [t for t in (a, b) if c.state(t) is TaskState.DECIDING]
        assert deciding
        c.cancel(deciding[0])
        await c.step()
        assert c.replies()[deciding[0]].cancelled
        c.head.driver_left(c.driver)
        await c.step()
        assert not c.head.failures.deciding
        assert all(t.state is TaskState.CANCELLING for t in c.head.tasks.values())

    run(scenario)


def test_tasks_on_a_node_stopped_by_plan_rerun_without_using_retries():
    async def scenario(c: Cluster) -> None:
        task = c.submit(max_retries=0)
        await c.step()
        node = next(n for n in c.nodes if task in n.running)
        c.head.on_node_message(node, pb.NodeToHead(leaving=True))
        c.head.node_lost(node, "stream closed")
        await c.step()
        assert c.state(task) is TaskState.RUNNING and task not in node.running
        assert c.head.tasks[task].attempts == 0

    run(scenario, cpus=(1.0, 1.0))


# ---- the driver: a task still in its send buffer ----------------------------------------


class _HeldTransport:
    """Keeps every batch (as a transport whose socket is busy): nothing is sent."""

    def flush(self) -> None:
        pass

    def flush_soon(self) -> None:
        pass


def test_a_task_still_in_the_send_buffer_is_taken_out_and_its_function_kept():
    import concurrent.futures

    from api import TaskCancelledError
    from api._client import Client
    from api._futures import AppFuture

    client = Client(["unix:/nonexistent"], "secret")
    client._transport = _HeldTransport()
    futures = []
    for n in range(3):
        spec = pb.TaskSpec(task_id=client.new_id(), fn_id=b"f", name="t")
        futures.append(AppFuture(spec.task_id, "t", client))
        client.submit(spec, b"body", futures[-1])
    first, second, third = futures
    assert first.cancel() is True and first.cancelled()
    with pytest.raises(TaskCancelledError) as info:
        first.result(timeout=1)
    assert isinstance(info.value, concurrent.futures.CancelledError)
    assert concurrent.futures.wait([first], timeout=1).done == {first}
    message = client._take()
    assert message is not None
    assert [s.task_id for s in message.submit] == [second.task_id, third.task_id]
    assert message.submit[0].fn_blob == b"body", "the function body moved to the next task"
    assert not message.cancel  # the head never hears of it
    client.callbacks.stop()


def test_multi_node_apps_queue_by_priority_too():
    async def scenario(c: Cluster) -> None:
        def gang(**fields: Any) -> int:
            return c.submit(num_nodes=2, **fields)

        first = gang()
        await c.step()
        low, high = gang(), gang(priority=4)
        await c.step()
        assert list(c.head.gangs) == [c.head.tasks[high], c.head.tasks[low]]
        c.finish(first)
        await c.step()
        assert c.state(high) is TaskState.RUNNING and c.state(low) is TaskState.QUEUED

    run(scenario, cpus=(1.0, 1.0))
