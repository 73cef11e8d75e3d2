"""The head's side of dynamic workflows without processes (cluster/head/nested.py): nested
clients as drivers on a node's stream, CPUs of blocked tasks, children cancelled with a
failed parent or a closed channel, print() lines to the root driver. ``Head.validate()``
after every step (resources and refcounts add up)."""

from __future__ import annotations

import asyncio
from typing import Any

from test_head import Cluster, run

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import fill, pb
from cluster.head.records import TaskState


def _frame(channel: int, batch: pb.DriverToHead | None = None, **fields: Any) -> Any:
    return pb.NestedFrame(channel=channel,
                          payload=batch.SerializeToString() if batch else b"", **fields)


def _nested_driver(c: Cluster, node: Any, channel: int = 1) -> Any:
    hello = pb.DriverToHead(hello=pb.DriverHello(hostname="w", pid=2))
    c.head.on_node_message(node, pb.NodeToHead(nested=[_frame(channel, hello)]))
    return c.head.nested.channels[(node.node_id, channel)]


async def _running_parent_with_client(c: Cluster) -> tuple[Any, int, Any]:
    """A task running on the first node, and the nested client its worker opened."""
    node = c.nodes[0]
    parent = c.submit()
    await c.step()
    return node, parent, _nested_driver(c, node)


def _submit_child(c: Cluster, node: Any, driver: Any, parent: int, seq: int,
                  channel: int = 1) -> int:
    task_id = driver.driver_id << DRIVER_SHIFT | seq
    spec = pb.TaskSpec(task_id=task_id, fn_id=b"f", fn_blob=b"fn", name=f"child{seq}",
                       parent_task=parent)
    fill(spec.resources, {"cpus": 1.0})
    c.head.on_node_message(node, pb.NodeToHead(nested=[_frame(
        channel, pb.DriverToHead(submit=[spec]))]))
    return task_id


def test_blocked_parent_frees_its_cpu_for_its_child_then_takes_it_back():
    async def scenario(c: Cluster) -> None:
        node = c.nodes[0]
        parent = c.submit()
        await c.step()
        assert c.state(parent) is TaskState.RUNNING
        driver = _nested_driver(c, node)
        welcome = [m for m in node.conn.sent if getattr(m, "nested", None)]
        assert welcome, "the welcome goes back on the node's stream"
        assert node.view.used["cpus"] == 1.0
        c.head.on_node_message(node, pb.NodeToHead(blocked=[parent]))
        c.head.on_node_message(node, pb.NodeToHead(blocked=[parent]))  # (idempotent)
        assert node.view.used["cpus"] == 0.0  # the blocked parent holds no CPU
        child = _submit_child(c, node, driver, parent, 1)
        await c.step()
        assert c.state(child) is TaskState.RUNNING and node.view.used["cpus"] == 1.0
        c.finish(child, data=b"1")
        c.head.on_node_message(node, pb.NodeToHead(unblocked=[parent]))
        await c.step()
        assert node.view.used["cpus"] == 1.0
        c.finish(parent, data=b"2")
        await c.step()
        assert not node.view.used.get("cpus") and c.head.nested.live_records() == 1
        c.head.on_node_message(node, pb.NodeToHead(nested=[_frame(1, ended=parent)]))
        assert c.head.nested.live_records() == 0

    run(scenario, cpus=(1.0,))


def test_failed_parent_cancels_queued_and_running_children():
    async def scenario(c: Cluster) -> None:
        node, parent, driver = await _running_parent_with_client(c)
        c.head.on_node_message(node, pb.NodeToHead(blocked=[parent]))
        running = _submit_child(c, node, driver, parent, 1)
        queued = _submit_child(c, node, driver, parent, 2)
        await c.step()
        assert c.state(running) is TaskState.RUNNING
        c.head.on_node_message(node, pb.NodeToHead(
            results=[pb.TaskResult(task_id=parent, status=pb.APP_ERROR, message="boom")],
            nested=[_frame(1, ended=parent, failed=True)]))
        await c.step()
        for child in (running, queued):  # (the head may have sent both to the node)
            assert c.state(child) in (None, TaskState.CANCELLING)
            if c.state(child) is None:
                assert c.value(child).status == pb.CANCELLED
            else:
                assert any(child in getattr(m, "cancel", []) for m in node.conn.sent)
                c.head.on_node_message(node, pb.NodeToHead(results=[pb.TaskResult(
                    task_id=child, status=pb.WORKER_CRASHED, message="killed")]))
                await c.step()
            value = c.value(child)
            assert value.status == pb.CANCELLED and "submitted it failed" in value.message

    run(scenario, cpus=(1.0,))


def test_closed_channel_cancels_everything_it_submitted_and_forgets_it():
    async def scenario(c: Cluster) -> None:
        node, parent, driver = await _running_parent_with_client(c)
        child = _submit_child(c, node, driver, parent, 1)
        c.head.on_node_message(node, pb.NodeToHead(nested=[_frame(1, closed=True)]))
        await c.step()
        assert c.state(child) in (None, TaskState.CANCELLING)  # cancelled (on the node)
        assert driver.driver_id not in c.head.drivers
        assert c.head.nested.live_records() == 0

    run(scenario, cpus=(1.0,))


def test_nested_print_lines_go_to_the_root_driver():
    async def scenario(c: Cluster) -> None:
        node, parent, driver = await _running_parent_with_client(c)
        c.head.on_node_message(node, pb.NodeToHead(blocked=[parent]))
        child = _submit_child(c, node, driver, parent, 1)
        await c.step()
        c.head.on_node_message(node, pb.NodeToHead(logs=[pb.LogLine(
            task_id=child, name="child1", node="n0", text="hi\n")]))
        await c.step()
        await asyncio.sleep(0)
        lines = [line.text for m in c.driver_conn.sent for line in getattr(m, "logs", [])]
        assert lines == ["hi\n"]

    run(scenario, cpus=(1.0,))
