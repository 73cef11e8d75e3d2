"""The head's lineage rules without processes: a node holding the only copy of a result is
lost while a task that needs it is queued."""

from __future__ import annotations

import asyncio

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import fill, pb
from cluster.head.state import Head


class _Conn:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message: object) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass


def _spec(task_id: int, deps: list[int] = ()) -> pb.TaskSpec:
    spec = pb.TaskSpec(task_id=task_id, fn_id=b"f", fn_blob=b"fn", name=f"t{task_id}",
                       deps=deps, kind=pb.PYTHON)
    fill(spec.resources, {"cpus": 1})
    return spec


def _queued(head: Head) -> set[int]:
    return {t.spec.task_id for queue in head.ready.values() for t in queue}


def test_a_queued_task_waits_again_when_its_argument_is_being_rebuilt():
    async def scenario() -> None:
        head = Head("unit")
        head.attach_loop(asyncio.get_running_loop())
        # Not staged behind the rebuild: this is about where the consumer fetches from.
        head.staging.enabled = False
        nodes = []
        for name in ("one", "two"):
            register = pb.Register(name=name, address="127.0.0.1", store_address="x:1")
            fill(register.total, {"cpus": 1})
            nodes.append(head.node_joined(_Conn(), register, remote=False))
        one, two = nodes
        driver = head.driver_joined(_Conn(), pb.DriverHello(hostname="h", pid=1))
        base = driver.driver_id << DRIVER_SHIFT
        made, consumer = base | 1, base | 2

        one.view.schedulable = False          # `made` runs on node two
        head.on_driver_message(driver, pb.DriverToHead(submit=[_spec(made)]))
        await asyncio.sleep(0)
        assert made in two.running
        head.on_node_message(two, pb.NodeToHead(results=[pb.TaskResult(
            task_id=made, status=pb.OK, size=5 << 20, node="two")]))
        assert head.objects.get(made).holders == {two.node_id}

        two.view.schedulable = False          # nobody can take the consumer yet
        head.on_driver_message(driver, pb.DriverToHead(submit=[_spec(consumer, [made])]))
        await asyncio.sleep(0)
        assert consumer in _queued(head)

        head.node_lost(two, "killed")
        assert made in head.tasks, "the lost result is being rebuilt"
        assert made in _queued(head) and consumer not in _queued(head)
        assert head.tasks[consumer].pending == 1, "the consumer waits for the rebuild"

        one.view.schedulable = True
        await asyncio.sleep(0)
        assert made in one.running and consumer not in one.running
        head.on_node_message(one, pb.NodeToHead(results=[pb.TaskResult(
            task_id=made, status=pb.OK, size=5 << 20, node="one")]))
        await asyncio.sleep(0)
        assert consumer in one.running, "the consumer runs once its argument is back"
        sent = [s for m in one.conn.sent for s in getattr(m, "tasks", [])
                if s.task_id == consumer]
        assert sent and sent[0].dep_values[0].sources == ["x:1"]

    asyncio.run(scenario())
