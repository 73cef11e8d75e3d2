"""The head's status snapshot (``clusterctl status``), built from its public state."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Protocol

from cluster.common.protocol import fill, pb
from cluster.head.directory import ObjectDirectory
from cluster.head.records import Driver, Node, Task, TaskState
from cluster.head.staging import Staging
from cluster.policy import scheduler


class _Actors(Protocol):
    def status(self) -> list[pb.ActorInfo]: ...


class Reportable(Protocol):
    """What a status snapshot reads of the head."""

    cluster_id: str
    started: float
    nodes: dict[int, Node]
    drivers: dict[int, Driver]
    tasks: dict[int, Task]
    leased_running: dict[int, int]
    staging: Staging
    objects: ObjectDirectory
    done: int
    failed: int
    alive_nodes: int

    @property
    def actor_table(self) -> _Actors: ...

    def blocks_info(self) -> list[pb.BlockInfo]: ...


def status_reply(head: Reportable, node_limit: int = 0) -> pb.StatusReply:
    """The snapshot: at most `node_limit` node records (0: all; at 5,000 nodes building
    every record took 0.4 s), and totals over every alive node."""
    running = sum(1 for t in head.tasks.values()
                  if t.state in (TaskState.RUNNING, TaskState.CANCELLING))
    leased = len(head.leased_running)  # (not in head.tasks: not among the queued either)
    objects, object_bytes = head.objects.stats()
    nodes = list(head.nodes.values())
    if node_limit:
        nodes = nodes[:node_limit]
    total: dict[str, float] = {}
    used: dict[str, float] = {}
    for node in head.nodes.values():
        if node.alive:
            for key, value in node.view.total.items():
                if not key.startswith("node:"):
                    total[key] = total.get(key, 0.0) + value
            for key, value in node.view.used.items():
                if value > 1e-9:
                    used[key] = used.get(key, 0.0) + value
    reply = pb.StatusReply(
        cluster_id=head.cluster_id, nodes_total=len(head.nodes), nodes_alive=head.alive_nodes,
        nodes=[n.info() for n in nodes],
        tasks_queued=len(head.tasks) - running, tasks_running=running + leased,
        tasks_done=head.done, tasks_failed=head.failed, drivers=len(head.drivers),
        objects=objects, object_bytes=object_bytes,
        uptime=time.time() - head.started, head_pid=os.getpid(),
        blocks=head.blocks_info(), actors=head.actor_table.status(),
        tasks_staged=head.staging.started,
        tasks_prefetched=sum(n.heartbeat.prefetched for n in head.nodes.values()))
    fill(reply.total, total)
    fill(reply.used, used)
    return reply


def demand(nodes: dict[int, Node], queues: Iterable[Iterable[Task]],
           block_shape: dict[str, float]) -> tuple[int, float, float, bool]:
    """(queued tasks, their CPUs, CPUs assigned to nodes, whether a queued task fits only
    a block node): what the autoscaler's policy needs from the head."""
    queued = 0
    queued_cpus = 0.0
    unmet = False
    alive = [n.view for n in nodes.values() if n.alive and not n.draining]
    for queue in queues:
        first = None
        for task in queue:
            first = first or task
            queued += 1
            queued_cpus += task.request.get("cpus", 0.0)
        if first is not None and block_shape:
            request = first.request
            if not any(scheduler.can_ever_fit(request, v.total) for v in alive) and \
                    scheduler.can_ever_fit(request, block_shape):
                unmet = True
    running = sum(n.view.used.get("cpus", 0.0) for n in nodes.values() if n.alive)
    return queued, queued_cpus, running, unmet


def drain_nodes(nodes: dict[int, Node], node_ids: list[int]) -> None:
    """No new work for these nodes; what runs there finishes."""
    for node_id in node_ids:
        node = nodes.get(node_id)
        if node is not None:
            node.draining = True
            node.view.schedulable = False


def stop_daemon(nodes: dict[int, Node], node_id: int) -> None:
    """Tell a node's daemon to exit."""
    node = nodes.get(node_id)
    if node is not None and node.alive:
        node.conn.send(pb.HeadToNode(shutdown=True))
