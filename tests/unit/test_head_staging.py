"""Staged tasks at the head (cluster.head.staging), without processes: a fake daemon that
keeps the daemon's rules (cluster.node.staged), ``Head.validate()`` after every step."""

from __future__ import annotations

from cluster.common.protocol import pb
from cluster.head.records import TaskState
from tests.unit.test_head import Cluster, run


def _sent(c: Cluster, task_id: int) -> list[pb.TaskSpec]:
    return [s for n in c.nodes for s in n.conn.tasks() if s.task_id == task_id]


def _bounce(c: Cluster, task_id: int) -> None:
    """What a daemon reports for a staged task whose input had ended when it came."""
    node = next(n for n in c.nodes if task_id in n.staged or task_id in n.running)
    c.head.on_node_message(node, pb.NodeToHead(results=[pb.TaskResult(
        task_id=task_id, status=pb.BOUNCED, node=node.name)]))


def test_a_chain_is_staged_on_its_first_links_node_and_each_link_takes_over_the_slot():
    async def scenario(c: Cluster) -> None:
        a = c.submit()
        b = c.submit([a])
        d = c.submit([b])
        await c.step()
        node = next(n for n in c.nodes if a in n.running)
        assert c.state(b) is TaskState.STAGED and c.state(d) is TaskState.STAGED
        assert set(node.staged) == {b, d}, "the whole chain goes to a's node"
        sent = [s.task_id for s in node.conn.tasks()]
        assert sent == [a, b, d], "each link after its input"
        assert _sent(c, b)[0].after == a and not _sent(c, b)[0].dep_values
        assert node.view.used["cpus"] == 1.0, "staged links hold nothing"
        c.finish(a, data=b"1")
        await c.step()
        assert c.state(b) is TaskState.RUNNING and b in node.running
        assert node.view.used["cpus"] == 1.0, "b holds the slot a gave back"
        assert c.value(a).data == b"1" and c.driver_conn.results()[a].status == pb.OK
        c.finish(b, data=b"2")
        c.finish(d, data=b"3")
        await c.step()
        assert not c.head.tasks and c.head.done == 3
        assert not node.view.used.get("cpus") and not c.head.staging.heirs
        assert len(_sent(c, b)) == 1, "sent once: no round trip through the head"

    run(scenario)


def test_a_failed_input_fails_its_staged_chain_with_dependency_errors():
    async def scenario(c: Cluster) -> None:
        a = c.submit()
        b = c.submit([a])
        d = c.submit([b])
        await c.step()
        c.finish(a, status=pb.APP_ERROR, message="boom")   # (b and d come back BOUNCED)
        await c.step()
        assert c.value(a).status == pb.APP_ERROR
        assert c.value(b).status == pb.DEPENDENCY_FAILED
        assert c.value(d).status == pb.DEPENDENCY_FAILED and "boom" in c.value(d).message
        assert not c.head.tasks and not any(n.staged for n in c.nodes)

    run(scenario)


def test_a_dependent_sent_back_by_a_failed_input_waits_at_the_head_for_the_retry():
    async def scenario(c: Cluster) -> None:
        a = c.submit(retries=1)
        b = c.submit([a])
        await c.step()
        c.finish(a, status=pb.WORKER_CRASHED)
        assert c.state(a) is TaskState.QUEUED and c.state(b) is TaskState.WAITING
        await c.step()
        assert c.state(a) is TaskState.RUNNING
        assert c.state(b) is TaskState.WAITING, \
            "sent back once: placed through the head from now on"
        c.finish(a, data=b"1")
        await c.step()
        c.finish(b)
        await c.step()
        assert c.value(b).status == pb.OK and not c.head.tasks

    run(scenario)


def test_a_heir_that_arrives_after_its_input_ended_is_placed_again_once():
    async def scenario(c: Cluster) -> None:
        a = c.submit()
        b = c.submit([a])
        await c.step()
        c.finish(a, data=b"1")          # the head reads: b started in a's slot...
        assert c.state(b) is TaskState.RUNNING
        _bounce(c, b)                   # ...but a had ended before b reached the daemon
        assert c.state(b) is TaskState.QUEUED
        await c.step()
        assert c.state(b) is TaskState.RUNNING and len(_sent(c, b)) == 2
        assert not _sent(c, b)[1].after and _sent(c, b)[1].dep_values[0].data == b"1"
        c.finish(b)
        await c.step()
        assert not c.head.tasks and c.head.done == 2

    run(scenario)


def test_a_result_holding_refs_sends_its_heir_back_through_the_head():
    async def scenario(c: Cluster) -> None:
        inner = c.new_id()
        c.head.on_driver_message(c.driver, pb.DriverToHead(put=[pb.Value(id=inner, data=b"x")]))
        a = c.submit()
        b = c.submit([a])
        await c.step()
        c.finish(a, data=b"ref", nested=[inner])    # (b comes back BOUNCED)
        await c.step()
        assert c.state(b) is TaskState.RUNNING and len(_sent(c, b)) == 2

    run(scenario)


def test_cancelling_a_staged_task_asks_its_daemon_and_force_stops_it():
    async def scenario(c: Cluster) -> None:
        a = c.submit()
        b = c.submit([a])
        d = c.submit([a])   # (a second dependent waits at the head: one heir per slot)
        await c.step()
        assert c.state(b) is TaskState.STAGED and c.state(d) is TaskState.WAITING
        node = next(n for n in c.nodes if b in n.staged)
        c.head.on_driver_message(c.driver, pb.DriverToHead(cancel=[pb.CancelRequest(
            request_id=1, task_id=b)]))
        await c.step()
        asked = [r.task_id for m in node.conn.sent for r in getattr(m, "cancel_queued", [])]
        assert asked == [b], "only the daemon knows whether it started"
        c.head.on_node_message(node, pb.NodeToHead(
            results=[pb.TaskResult(task_id=b, status=pb.CANCELLED)],
            cancel_replies=[pb.CancelReply(task_id=b, cancelled=True)]))
        await c.step()
        assert c.value(b).status == pb.CANCELLED and c.head.staging.heirs == {}
        c.finish(a)
        await c.step()
        assert c.state(d) is TaskState.RUNNING

    run(scenario)


def test_a_force_cancelled_input_that_still_succeeded_stops_its_started_heir():
    async def scenario(c: Cluster) -> None:
        a = c.submit()
        b = c.submit([a])
        await c.step()
        c.head.on_driver_message(c.driver, pb.DriverToHead(cancel=[pb.CancelRequest(
            request_id=1, task_id=a, force=True)]))
        await c.step()
        c.finish(a)          # it ended before the kill reached it: b started there
        await c.step()
        assert c.value(a).status == pb.CANCELLED
        assert c.state(b) is TaskState.CANCELLING, "its input was cancelled"
        c.finish(b, status=pb.WORKER_CRASHED)
        await c.step()
        assert c.value(b).status == pb.CANCELLED and not c.head.tasks
        assert all(not n.view.used.get("cpus") for n in c.nodes)

    run(scenario)


def test_losing_the_node_places_its_staged_tasks_again():
    async def scenario(c: Cluster) -> None:
        a = c.submit(retries=1)
        b = c.submit([a])
        await c.step()
        lost = next(n for n in c.nodes if b in n.staged)
        c.head.node_lost(lost, "test")
        c.head.validate()
        assert c.state(a) is TaskState.QUEUED, "retried"
        assert c.state(b) is TaskState.WAITING and not lost.staged
        await c.step()
        for _ in range(3):
            for n in c.nodes:
                for task_id in list(n.running):
                    c.finish(task_id)
            await c.step()
        assert c.value(b).status == pb.OK and not c.head.tasks

    run(scenario)


def test_a_dependent_submitted_while_its_input_runs_is_staged():
    async def scenario(c: Cluster) -> None:
        a = c.submit()
        await c.step()
        b = c.submit([a])     # (a driver adding a link to a running chain)
        assert c.state(b) is TaskState.STAGED
        c.finish(a)
        c.finish(b)
        await c.step()
        assert not c.head.tasks and c.head.done == 2

    run(scenario)


def test_what_is_not_staged():
    async def scenario(c: Cluster) -> None:
        a = c.submit()
        other = c.submit(cpus=0.5)
        await c.step()
        wider = c.submit([a], cpus=0.5)         # another shape: a's slot is not its own
        both = c.submit([a, other])             # two arguments missing
        urgent = c.submit([a], priority=5)      # another queue key
        for task_id in (wider, both, urgent):
            assert c.state(task_id) is TaskState.WAITING

    run(scenario, cpus=(4.0,))
