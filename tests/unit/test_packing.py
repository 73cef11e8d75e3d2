"""Packing placement (scheduler.FreeSlots and the dispatcher's use of it), without
processes: property tests that every choice is valid and the one packing promises, and the
head's behaviour with fake nodes (every step followed by Head.validate())."""

from __future__ import annotations

import asyncio
import random

from cluster.policy import scheduler
from cluster.policy.scheduler import FreeSlots, NodeView
from tests.unit.test_head import Cluster, run


def _random_nodes(rng: random.Random, count: int) -> dict[int, NodeView]:
    nodes = {}
    for i in rng.sample(range(1, 10 * count), count):
        total = {"cpus": float(rng.choice([1, 2, 4, 8])), "memory": 8.0}
        if rng.random() < 0.3:
            total["gpus"] = float(rng.choice([1, 2]))
        used = {"cpus": rng.choice([0.0, 0.5, 1.0, total["cpus"]])}
        nodes[i] = NodeView(i, total, used, factor=rng.choice([1.0, 3.0, 17.0]),
                            schedulable=rng.random() > 0.1)
    return nodes


def _reserve(node: NodeView, request: dict[str, float]) -> None:
    for key, amount in request.items():
        node.used[key] = node.used.get(key, 0.0) + amount


async def finish_everything(c: Cluster, rounds: int) -> None:
    """Finish every running task, round after round, until none runs (or `rounds`)."""
    for _ in range(rounds):
        running = [t for n in c.nodes for t in n.running]
        if not running:
            return
        for task_id in running:
            c.finish(task_id)
        await c.step()


def test_every_choice_is_the_lowest_node_with_a_free_slot_until_none_has_one():
    rng = random.Random(15)
    requests = [{"cpus": 1.0}, {"cpus": 0.5, "memory": 1.0}, {"cpus": 2.0},
                {"cpus": 1.0, "gpus": 1.0}, {"licence": 1.0}]
    for _ in range(200):
        nodes = _random_nodes(rng, rng.randint(1, 25))
        slots = FreeSlots()
        for node_id in nodes:
            slots.add(node_id)
        for _ in range(3):  # several queues (shapes) in one pass, as the dispatcher does
            request = rng.choice(requests)
            while True:
                fitting = [i for i, n in nodes.items() if scheduler.free_slot(request, n)]
                chosen = slots.take(request, nodes)
                if chosen is None:
                    assert not fitting, f"{request} fits {fitting} but nothing was chosen"
                    break
                assert chosen == min(fitting)
                node = nodes[chosen]
                assert node.schedulable and scheduler.fits_now(request, node)
                _reserve(node, request)
                used = node.used
                assert all(used[k] <= node.total.get(k, 0.0) + 1e-9 for k in request), \
                    "packing never counts the queue allowance"
            slots.end_queue()
        # Nodes forgotten by the index are exactly those without a free cpu (or drained).
        for node_id, node in nodes.items():
            if node.schedulable and not scheduler.cpus_full(node):
                assert node_id in slots


def test_a_node_set_aside_for_one_request_still_serves_another():
    cpu_only = NodeView(1, {"cpus": 4})
    gpu = NodeView(2, {"cpus": 4, "gpus": 1})
    nodes = {1: cpu_only, 2: gpu}
    slots = FreeSlots()
    slots.add(1)
    slots.add(2)
    assert slots.take({"cpus": 1, "gpus": 1}, nodes) == 2
    _reserve(gpu, {"cpus": 1, "gpus": 1})
    assert slots.take({"cpus": 1, "gpus": 1}, nodes) is None
    slots.end_queue()
    assert slots.take({"cpus": 1}, nodes) == 1, "node 1 was only set aside"


def test_a_full_node_comes_back_when_it_gains_room():
    node = NodeView(1, {"cpus": 1}, {"cpus": 1})
    slots = FreeSlots()
    slots.add(1)
    assert slots.take({"cpus": 1}, {1: node}) is None
    assert 1 not in slots
    node.used["cpus"] = 0.0
    assert slots.take({"cpus": 1}, {1: node}) is None, "not back until add()"
    slots.add(1)
    assert slots.take({"cpus": 1}, {1: node}) == 1


def test_the_head_packs_lowest_nodes_first_then_uses_queue_allowances():
    async def scenario(c: Cluster) -> None:
        n1, n2, n3 = c.nodes
        ids = [c.submit() for _ in range(4)]
        await c.step()
        assert [len(n.running) for n in c.nodes] == [2, 2, 0], "packed: node 3 stays idle"
        # All real slots full: the queue allowance (factor 3 before any task ran) is used,
        # spread least loaded, node 3 first.
        more = [c.submit() for _ in range(2)]
        await c.step()
        assert len(n3.running) == 2
        for task_id in ids + more:
            c.finish(task_id)
        await c.step()
        assert c.head.done == 6
    run(scenario, cpus=(2.0, 2.0, 2.0))


def test_a_finished_slot_is_refilled_before_a_fresh_node_is_touched():
    async def scenario(c: Cluster) -> None:
        first = [c.submit() for _ in range(2)]
        await c.step()
        c.finish(first[0])
        await c.step()
        later = c.submit()
        await c.step()
        assert later in c.nodes[0].running
        assert not c.nodes[1].running
    run(scenario, cpus=(2.0, 2.0))


def test_stored_arguments_still_pull_a_task_to_their_node():
    async def scenario(c: Cluster) -> None:
        n1, n2 = c.nodes
        # A big result stored on node 2 (node 1 busy meanwhile).
        hold = c.submit(cpus=2.0)
        producer = c.submit()
        await c.step()
        assert producer in n2.running
        c.finish(producer, size=50_000_000)
        c.finish(hold)
        await c.step()
        consumer = c.submit(deps=[producer])
        await c.step()
        assert consumer in n2.running, "locality beats packing"
    run(scenario, cpus=(2.0, 2.0))


def test_priorities_and_resources_still_rule_under_packing():
    async def scenario(c: Cluster) -> None:
        n1, n2 = c.nodes
        blocker = c.submit(cpus=4.0)  # node 2, the only node with 4 cpus
        await c.step()
        assert blocker in n2.running
        low = c.submit(priority=0)
        high = c.submit(priority=5)
        await c.step()
        # One really free slot (node 1's): the higher priority gets it; the other waits
        # in a queue allowance.
        assert high in n1.running
        assert low in n1.running or low in n2.running
        assert [s.task_id for s in n1.conn.tasks()][0] == high
    run(scenario, cpus=(1.0, 4.0))


def test_a_drained_node_gets_nothing_new():
    async def scenario(c: Cluster) -> None:
        c.head.drain([c.nodes[0].node_id])
        task_id = c.submit()
        await c.step()
        assert task_id in c.nodes[1].running
        c.finish(task_id)
        await c.step()
        assert c.head.done == 1
        assert c.head.tasks == {}
    run(scenario, cpus=(2.0, 2.0))


def test_many_nodes_many_tasks_every_task_placed_once_and_accounting_adds_up():
    async def scenario(c: Cluster) -> None:
        ids = [c.submit(cpus=random.Random(i).choice([0.5, 1.0, 2.0])) for i in range(300)]
        await c.step()
        await finish_everything(c, rounds=50)
        assert c.head.done == len(ids)
        for node in c.nodes:
            assert all(abs(v) < 1e-6 for v in node.view.used.values())
    run(scenario, cpus=tuple(float(c) for c in (2, 4, 8, 1, 2, 4, 16, 2)))


def test_tasks_taking_no_cpu_go_to_the_least_loaded_node_not_the_first():
    async def scenario(c: Cluster) -> None:
        n1, n2 = c.nodes
        busy = c.submit(cpus=1.0)
        await c.step()
        assert busy in n1.running, "packed"
        free = c.submit(cpus=0)  # e.g. a 0-cpu actor: to the idler node
        await c.step()
        assert free in n2.running
        for task_id in (busy, free):
            c.finish(task_id)
        await c.step()
        assert c.head.done == 2
    run(scenario, cpus=(2.0, 2.0))


def test_compacted_queued_tasks_run_with_their_specs_intact(monkeypatch):
    from cluster.head import state

    monkeypatch.setattr(state, "COMPACT_AFTER", 2)

    async def scenario(c: Cluster) -> None:
        ids = [c.submit() for _ in range(8)]  # no node until later: all queued
        queued = [t for q in c.head.ready.values() for t in q]
        assert len(queued) == 8 and sum(t.msg is None for t in queued) == 6
        await c.step()
        sent = {s.task_id: s for n in c.nodes for s in n.conn.tasks()}
        for task_id in ids:
            if task_id in sent:
                assert sent[task_id].name and sent[task_id].resources.cpus == 1.0
        await finish_everything(c, rounds=10)
        assert c.head.done == 8
        assert {s.task_id for n in c.nodes for s in n.conn.tasks()} == set(ids)
    run(scenario, cpus=(1.0,))


def test_a_busy_remote_node_gets_small_batches_gathered_an_idle_one_at_once():
    from cluster.common.protocol import fill, pb
    from cluster.head import dispatch
    from tests.unit.test_head import FakeConn

    async def scenario(c: Cluster) -> None:
        register = pb.Register(name="remote", address="127.0.0.1")
        fill(register.total, {"cpus": 8})
        conn = FakeConn()
        node = c.head.node_joined(conn, register, remote=True)
        c.nodes.append(node)
        c.head.drain([n.node_id for n in c.nodes[:-1]])   # everything to the remote node

        def batches() -> list[int]:
            return [len(m.tasks) for m in conn.sent if m.tasks]

        first = c.submit()
        await c.step()
        assert batches() == [1], "idle: sent at once"
        second = [c.submit() for _ in range(3)]
        await c.step()
        assert batches() == [1], "busy: held for the node's answer"
        c.finish(first)
        await c.step()
        await c.step()
        assert batches() == [1, 3], "its answer releases the held batch"
        third = c.submit()
        await c.step()
        await asyncio.sleep(3 * dispatch.HOLD_SECONDS)
        c.head.validate()
        assert batches() == [1, 3, 1], "never held longer than HOLD_SECONDS"
        full = [c.submit() for _ in range(4)]
        await c.step()
        assert batches() == [1, 3, 1, 4], "the last batch is long answered for: at once"
        for task_id in [*second, third, *full]:
            c.finish(task_id)
        await c.step()
        assert c.head.done == 9
    run(scenario, cpus=(1.0,))


def test_a_busy_head_gathers_even_an_answered_nodes_batches_a_quiet_one_does_not():
    from cluster.head.dispatch import HOLD_SECONDS, hold_batch
    from cluster.head.records import Node

    view = NodeView(7, {"cpus": 64})
    node = Node(7, "n7", "a", 1, conn=None, view=view)  # type: ignore[arg-type]
    node.outbox = [object()] * 3  # type: ignore[list-item]
    node.sent_at = 100.0
    node.awaiting = False                                   # it answered its last batch
    assert not hold_batch(node, 100.001), "quiet: sent at once (sync round trips)"
    assert hold_batch(node, 100.001, busy=True), "busy: gathered"
    assert not hold_batch(node, 100.0 + 1.01 * HOLD_SECONDS, busy=True), "never past HOLD"
    node.outbox = [object()] * 64  # type: ignore[list-item]
    assert not hold_batch(node, 100.001, busy=True), "a full batch goes at once"
    node.outbox = [object()] * 3  # type: ignore[list-item]
    node.cancels = [1]
    assert not hold_batch(node, 100.001, busy=True), "cancellations are never held"
    node.cancels = []
    node.remote = False
    assert not hold_batch(node, 100.001, busy=True), "the in-process daemon: no gRPC"


def test_busy_is_a_sending_rate_over_the_last_window():
    from cluster.common.protocol import fill, pb
    from cluster.head import dispatch
    from tests.unit.test_head import FakeConn

    async def scenario(c: Cluster) -> None:
        register = pb.Register(name="remote", address="127.0.0.1")
        fill(register.total, {"cpus": 100_000})
        node = c.head.node_joined(FakeConn(), register, remote=True)
        c.nodes.append(node)
        c.head.drain([n.node_id for n in c.nodes[:-1]])
        d = c.head.dispatch
        now = [1000.0]
        d.clock = lambda: now[0]  # stepped by hand: real sleeps on a loaded machine drift
        for _ in range(3):  # a trickle: never busy
            c.submit()
            await c.step()
            now[0] += 2 * dispatch.HOLD_SECONDS
        c.submit()
        await c.step()
        assert not d.busy
        for _ in range(int(dispatch.BUSY_RATE * dispatch.HOLD_SECONDS) * 4):
            c.submit()
        await c.step()  # held: the trickle's last batch is not answered yet
        for _ in range(2):  # the first flush sends the burst, the next one rates it
            now[0] += 2 * dispatch.HOLD_SECONDS
            c.submit()
            await c.step()
        assert d.busy, "a burst far above BUSY_RATE"
    run(scenario, cpus=(1.0,))


def test_reading_a_compact_tasks_deps_leaves_it_compact():
    from cluster.common.protocol import pb
    from cluster.head.records import Task

    task = Task(pb.TaskSpec(task_id=5, deps=[7, 8], name="t"), {"cpus": 1.0}, b"")
    task.compact()
    assert task.msg is None and task.deps() == [7, 8] and task.msg is None
    assert task.task_id == 5 and task.spec.name == "t" and task.msg is not None
