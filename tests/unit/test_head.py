"""The head's state machine without processes: fake connections, every step followed by
``Head.validate()`` (every task where its state says, resources and refcounts adding up)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import with_sent_back

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import fill, pb
from cluster.head.records import InvalidTransition, Task, TaskState
from cluster.head.state import Head
from cluster.policy import liveness


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.closed = False

    def send(self, message: object) -> None:
        self.sent.append(message)

    def close(self) -> None:
        self.closed = True

    def tasks(self) -> list[pb.TaskSpec]:
        return [s for m in self.sent for s in getattr(m, "tasks", [])]

    def results(self) -> dict[int, pb.TaskResult]:
        return {r.task_id: r for m in self.sent for r in getattr(m, "results", [])}


class Cluster:
    """A head with fake nodes and one fake driver; `step()` runs the loop and validates."""

    def __init__(self, head: Head, cpus: tuple[float, ...] = (1.0, 1.0)) -> None:
        self.head = head
        self.nodes = []
        for i, n in enumerate(cpus):
            register = pb.Register(name=f"n{i}", address="127.0.0.1", store_address=f"s{i}:1")
            fill(register.total, {"cpus": n})
            self.nodes.append(head.node_joined(FakeConn(), register, remote=False))
        self.driver_conn = FakeConn()
        self.driver = head.driver_joined(self.driver_conn, pb.DriverHello(hostname="h", pid=1))
        self.seq = 0
        head.validate()

    def new_id(self) -> int:
        self.seq += 1
        return self.driver.driver_id << DRIVER_SHIFT | self.seq

    def submit(self, deps: list[int] = (), cpus: float = 1.0, retries: int = 0,
               kind: int = pb.PYTHON, **fields: Any) -> int:
        task_id = self.new_id()
        spec = pb.TaskSpec(task_id=task_id, fn_id=b"f", fn_blob=b"fn", name=f"t{self.seq}",
                           deps=deps, kind=kind, max_retries=retries, **fields)
        fill(spec.resources, {"cpus": cpus} if cpus else {})
        self.head.on_driver_message(self.driver, pb.DriverToHead(submit=[spec]))
        return task_id

    def finish(self, task_id: int, status: int = pb.OK, **fields: Any) -> None:
        node = next((n for n in self.nodes if task_id in n.running), None) or \
            next(n for n in self.nodes if n.alive and self._has_call(n, task_id))
        result = pb.TaskResult(task_id=task_id, status=status, node=node.name, **fields)
        self.head.on_node_message(node, pb.NodeToHead(
            results=with_sent_back(self.head.staging.heirs, result)))

    def _has_call(self, node: Any, task_id: int) -> bool:
        return any(s.task_id == task_id for s in node.conn.tasks())

    def state(self, task_id: int) -> TaskState | None:
        task = self.head.tasks.get(task_id)
        return task.state if task else None

    def value(self, task_id: int) -> Any:
        return self.head.objects.get(task_id)

    async def step(self) -> None:
        await asyncio.sleep(0)
        self.head.validate()


def run(scenario: Callable[[Cluster], Coroutine[Any, Any, None]],
        cpus: tuple[float, ...] = (1.0, 1.0)) -> None:
    async def main() -> None:
        head = Head("unit")
        head.attach_loop(asyncio.get_running_loop())
        await scenario(Cluster(head, cpus))

    asyncio.run(main())


def test_a_chain_moves_through_waiting_queued_running_done():
    async def scenario(c: Cluster) -> None:
        c.head.staging.enabled = False  # (the path of a dependent that is not staged)
        a = c.submit()
        b = c.submit([a])
        assert c.state(a) is TaskState.QUEUED and c.state(b) is TaskState.WAITING
        await c.step()
        assert c.state(a) is TaskState.RUNNING and c.state(b) is TaskState.WAITING
        c.finish(a, data=b"1")
        assert c.state(b) is TaskState.QUEUED and c.value(a).data == b"1"
        await c.step()
        c.finish(b, data=b"2")
        await c.step()
        assert not c.head.tasks and set(c.driver_conn.results()) >= {a, b}
        assert all(not n.view.used.get("cpus") for n in c.nodes)

    run(scenario)


def test_more_tasks_than_slots_queue_and_all_finish():
    async def scenario(c: Cluster) -> None:
        ids = [c.submit() for _ in range(40)]
        for _ in range(200):
            await c.step()
            running = [t for n in c.nodes for t in list(n.running)]
            if not running:
                break
            for task_id in running:
                c.finish(task_id)
        assert c.head.done == 40 and not c.head.tasks
        assert set(c.driver_conn.results()) == set(ids)

    run(scenario)


def test_a_failed_task_is_retried_then_fails_its_dependents():
    async def scenario(c: Cluster) -> None:
        a = c.submit(retries=1)
        b = c.submit([a])
        await c.step()
        c.finish(a, status=pb.APP_ERROR, message="boom")
        assert c.state(a) is TaskState.QUEUED, "retried"
        await c.step()
        c.finish(a, status=pb.APP_ERROR, message="boom again")
        await c.step()
        assert c.value(a).status == pb.APP_ERROR
        assert c.value(b).status == pb.DEPENDENCY_FAILED and not c.head.tasks

    run(scenario)


def test_losing_a_node_retries_its_tasks_elsewhere():
    async def scenario(c: Cluster) -> None:
        a, b = c.submit(retries=1), c.submit(retries=0)
        await c.step()
        lost = next(n for n in c.nodes if a in n.running)
        other = next(n for n in c.nodes if n is not lost)
        c.head.node_lost(lost, "test")
        c.head.validate()
        assert c.state(a) in (TaskState.QUEUED, TaskState.RUNNING)
        if b in lost.running or c.value(b) is not None:
            assert c.value(b) is None or c.value(b).status == pb.NODE_LOST
        for task_id in list(other.running):
            c.finish(task_id)
        await c.step()
        for task_id in list(other.running):
            c.finish(task_id)
        await c.step()
        assert c.value(a).status == pb.OK

    run(scenario)


def test_a_departing_driver_cancels_its_queued_and_waiting_tasks():
    async def scenario(c: Cluster) -> None:
        first = c.submit(retries=3)
        queued = [c.submit() for _ in range(5)]
        waiting = c.submit([first])
        await c.step()
        running = [t for n in c.nodes for t in n.running]
        staged = [t for n in c.nodes for t in n.staged]
        assert first in running and staged == [waiting], "sent ahead behind `first`"
        c.head.driver_left(c.driver)
        c.head.validate()
        for task_id in [*queued, waiting]:
            assert c.state(task_id) in (None, TaskState.CANCELLING)
        assert not c.head.ready
        assert all(t.state is not TaskState.WAITING for t in c.head.waiters.get(first, []))
        await c.step()
        cancels = {t for n in c.nodes for m in n.conn.sent for t in getattr(m, "cancel", [])}
        assert cancels == {*running, *staged}, "its running and staged tasks are stopped"
        for node in c.nodes:
            for task_id in list(node.running):
                c.finish(task_id, status=pb.WORKER_CRASHED)   # what a killed worker reports
        await c.step()
        assert not c.head.tasks, "cancelled, not retried"
        assert all(not n.view.used.get("cpus") for n in c.nodes)
        assert not c.head.objects.refs, "nothing the driver held is left"

    run(scenario)


def test_actor_lifecycle_calls_restart_and_kill():
    async def scenario(c: Cluster) -> None:
        actor = c.submit(kind=pb.ACTOR_CREATE, actor=pb.ActorOptions(
            class_name="A", max_restarts=1, max_task_retries=1))
        call = c.submit(kind=pb.ACTOR_CALL, actor_id=actor, cpus=0, method="m")
        await c.step()
        assert c.state(call) is TaskState.QUEUED, "waits for the actor"
        c.finish(actor)
        await c.step()
        assert c.head.nodes[c.head.actor_table.actors[actor].node_id].running[actor].state \
            is TaskState.HOSTING
        assert c.state(call) is TaskState.RUNNING
        c.head.actor_table.died(actor, "worker died")       # restart; the call is retried
        c.head.validate()
        assert c.state(actor) is TaskState.QUEUED and c.state(call) is TaskState.QUEUED
        await c.step()
        c.finish(actor)
        await c.step()
        assert c.state(call) is TaskState.RUNNING
        c.finish(call, data=b"ok")
        await c.step()
        assert c.value(call).data == b"ok"
        c.head.actor_table.kill(actor)
        c.head.validate()
        assert all(not n.view.used.get("cpus") for n in c.nodes), "the kill freed its cpus"
        late = c.submit(kind=pb.ACTOR_CALL, actor_id=actor, cpus=0, method="m")
        await c.step()
        assert c.value(late).status == pb.ACTOR_DIED

    run(scenario)


def test_an_actor_that_fits_nowhere_any_more_dies_instead_of_hanging():
    async def scenario(c: Cluster) -> None:
        actor = c.submit(kind=pb.ACTOR_CREATE, cpus=2, actor=pb.ActorOptions(
            class_name="A", max_restarts=3, max_task_retries=1))
        await c.step()
        c.finish(actor)
        await c.step()
        call = c.submit(kind=pb.ACTOR_CALL, actor_id=actor, cpus=0, method="m")
        big = next(n for n in c.nodes if n.view.total["cpus"] == 2)
        c.head.node_lost(big, "test")
        await c.step()
        assert c.value(call).status == pb.ACTOR_DIED
        assert "its creation failed" in c.value(call).message

    run(scenario, cpus=(2.0, 1.0))


def test_a_dependency_failing_drops_the_waiting_actor_call_from_its_queue():
    async def scenario(c: Cluster) -> None:
        actor = c.submit(kind=pb.ACTOR_CREATE, actor=pb.ActorOptions(class_name="A"))
        dep = c.submit()
        call = c.submit([dep], kind=pb.ACTOR_CALL, actor_id=actor, cpus=0, method="m")
        after = c.submit(kind=pb.ACTOR_CALL, actor_id=actor, cpus=0, method="m")
        await c.step()
        c.finish(actor)
        await c.step()
        assert c.state(after) is TaskState.QUEUED, "held back behind the waiting call"
        c.finish(dep, status=pb.APP_ERROR, message="no")
        await c.step()
        assert c.value(call).status == pb.DEPENDENCY_FAILED
        assert c.state(after) is TaskState.RUNNING

    run(scenario, cpus=(2.0,))


def test_illegal_transitions_raise():
    async def scenario(c: Cluster) -> None:
        a = c.submit()
        await c.step()
        c.finish(a)
        assert c.head.objects.get(a) is not None
        done = Task(pb.TaskSpec(task_id=1), {}, b"", state=TaskState.DONE)
        with pytest.raises(InvalidTransition):
            c.head.set_state(done, TaskState.RUNNING)

    run(scenario)


def test_validate_notices_a_task_in_two_queues_and_leaked_resources():
    async def scenario(c: Cluster) -> None:
        c.nodes[0].view.schedulable = c.nodes[1].view.schedulable = False
        a = c.submit()
        task = c.head.tasks[a]
        c.head.ready[b"other"] = deque([task])
        with pytest.raises(AssertionError, match="queues"):
            c.head.validate()
        del c.head.ready[b"other"]
        c.head.validate()
        c.nodes[0].view.used["cpus"] = 0.5
        with pytest.raises(AssertionError, match="in use"):
            c.head.validate()

    run(scenario)


def test_dropping_a_100000_link_chain_of_nested_refs_does_not_recurse():
    async def scenario(c: Cluster) -> None:
        previous = None
        puts = []
        for _ in range(100_000):
            object_id = c.new_id()
            nested = [previous] if previous is not None else []
            puts.append(pb.Value(id=object_id, data=b"x", nested=nested))
            if previous is not None:
                puts.append(None)
            previous = object_id
        values = [p for p in puts if p is not None]
        releases = [v.id for v in values[:-1]]
        c.head.on_driver_message(c.driver, pb.DriverToHead(put=values, release=releases))
        assert len(c.head.objects.values) == 100_000
        c.head.on_driver_message(c.driver, pb.DriverToHead(release=[values[-1].id]))
        assert not c.head.objects.values and not c.head.objects.refs

    run(scenario)


def test_a_100000_link_chain_whose_first_link_fails_fails_every_link_once():
    async def scenario(c: Cluster) -> None:
        c.nodes[0].view.schedulable = c.nodes[1].view.schedulable = False
        first = c.submit()
        ids = [first]
        specs = []
        for _ in range(100_000):
            task_id = c.new_id()
            spec = pb.TaskSpec(task_id=task_id, fn_id=b"f", name="link", deps=[ids[-1]],
                               kind=pb.PYTHON)
            specs.append(spec)
            ids.append(task_id)
        c.head.on_driver_message(c.driver, pb.DriverToHead(submit=specs))
        c.nodes[0].view.schedulable = True
        await c.step()
        c.finish(first, status=pb.APP_ERROR, message="root cause")
        await c.step()
        assert not c.head.tasks and not c.head.waiters
        last = c.value(ids[-1])
        assert last.status == pb.DEPENDENCY_FAILED
        assert last.message.count("root cause") == 1 and len(last.message) < 200

    run(scenario)


def test_dropping_the_last_of_a_chain_of_stored_results_releases_every_link():
    async def scenario(c: Cluster) -> None:
        ids = []
        for _ in range(1500):
            task_id = c.submit([ids[-1]] if ids else [], cpus=0)
            await c.step()
            c.finish(task_id, size=1 << 20)       # stored: lineage keeps its argument
            if ids:
                c.head.on_driver_message(c.driver, pb.DriverToHead(release=[ids[-1]]))
            ids.append(task_id)
        await c.step()
        assert len(c.head.objects.values) == 1500, "each link is kept by the next's lineage"
        c.head.on_driver_message(c.driver, pb.DriverToHead(release=[ids[-1]]))
        await c.step()
        assert not c.head.objects.values and not c.head.objects.refs
        deletes = {d for n in c.nodes for m in n.conn.sent for d in getattr(m, "delete", [])}
        assert deletes == set(ids), "every stored copy is deleted"

    run(scenario)


def test_feasibility_is_rechecked_when_a_bigger_node_joins():
    async def scenario(c: Cluster) -> None:
        big = c.submit(cpus=4)
        await c.step()
        assert c.value(big).status == pb.UNSCHEDULABLE, "no node has 4 cpus"
        register = pb.Register(name="big", address="127.0.0.1", store_address="s:1")
        fill(register.total, {"cpus": 4})
        c.nodes.append(c.head.node_joined(FakeConn(), register, remote=False))
        again = c.submit(cpus=4)
        await c.step()
        assert c.state(again) is TaskState.RUNNING, "the cached verdict was dropped"

    run(scenario)


def test_heartbeats_are_spaced_out_as_the_cluster_grows():
    async def scenario(c: Cluster) -> None:
        conns = []
        for i in range(1000):
            register = pb.Register(name=f"r{i}", address="127.0.0.1")
            fill(register.total, {"cpus": 1})
            conn = FakeConn()
            c.head.node_joined(conn, register, remote=True)
            conns.append(conn)
        told = [max(m.heartbeat_interval for m in conn.sent) for conn in conns]
        wanted = 1002 / liveness.BEATS_PER_SECOND  # 1,002 nodes at the cluster's budget
        assert wanted / 1.5 <= c.head.heartbeat_interval <= wanted
        assert min(told) >= c.head.heartbeat_interval / 1.5, "every node hears the new pace"
        assert told[0] > 1.0, "the first nodes were told again as the cluster grew"
        for node in list(c.head.nodes.values())[2:980]:
            c.head.node_lost(node, "test")
        c.head.validate()
        assert c.head.heartbeat_interval < 1.5, "a shrinking cluster beats faster again"

    run(scenario)
