"""Dispatch: choosing nodes for ready tasks, reserving their resources, and sending them
(with their arguments' values or locations) to the daemons.

A mixin of :class:`cluster.head.Head`, kept apart so the head's module holds the state
machine and this one the way work leaves it. The choice itself is the pure functions of
:mod:`cluster.scheduler`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cluster.common.protocol import pb
from cluster.policy import scheduler

if TYPE_CHECKING:
    from collections import deque

    from cluster.head.directory import ObjectDirectory
    from cluster.head.state import _Node, _Task


class Dispatcher:
    """Placement and sending, for the head."""

    nodes: dict[int, _Node]
    tasks: dict[int, _Task]
    ready: dict[bytes, deque[_Task]]
    gangs: deque[_Task]
    objects: ObjectDirectory
    functions: dict[bytes, bytes]

    def _schedule(self) -> None:
        if not (self.ready or self.gangs):
            return
        views = [n.view for n in self.nodes.values() if n.alive]
        if not views:
            return
        nodes = self.nodes
        while self.gangs:
            task = self.gangs[0]
            chosen = scheduler.place_gang(task.request, views, task.spec.num_nodes)
            if chosen is None:
                break
            self.gangs.popleft()
            self._assign_gang(task, [nodes[i] for i in chosen])
        place = scheduler.place
        for key in list(self.ready):
            queue = self.ready[key]
            while queue:
                task = queue[0]
                if task.spec.task_id not in self.tasks:
                    queue.popleft()  # cancelled while queued (e.g. a killed actor)
                    continue
                local = self._local_bytes(task) if task.spec.deps else None
                node_id = place(task.request, views, local)
                if node_id is None:
                    break
                queue.popleft()
                self._assign(task, nodes[node_id])
            if not queue:
                del self.ready[key]

    def _local_bytes(self, task: _Task) -> dict[int, int] | None:
        """Bytes of the task's stored arguments on each node (for locality)."""
        held: dict[int, int] = {}
        values = self.objects.values
        for dep in set(task.spec.deps):
            value = values.get(dep)
            if value is not None and value.size:
                for node_id in value.holders:
                    held[node_id] = held.get(node_id, 0) + value.size
        return held or None

    def _reserve(self, task: _Task, node: _Node, amounts: dict[str, float]) -> None:
        used = node.view.used
        for key, amount in amounts.items():
            used[key] = used.get(key, 0.0) + amount
        task.reserved[node.node_id] = amounts

    def _unreserve(self, task: _Task) -> None:
        for node_id, amounts in task.reserved.items():
            node = self.nodes.get(node_id)
            if node is not None:
                used = node.view.used
                for key, amount in amounts.items():
                    used[key] = used.get(key, 0.0) - amount
        task.reserved = {}

    def _assign_gang(self, task: _Task, gang: list[_Node]) -> None:
        """A multi-node app holds every slot of its nodes and runs on the first one, with
        $CLUSTER_NODELIST and $CLUSTER_MPI_PREFIX describing the set."""
        from cluster.slurm.commands import mpi_prefix

        for node in gang[1:]:
            self._reserve(task, node, dict(node.view.total))
        names = [n.name for n in gang]
        ranks = max(1, task.spec.ranks_per_node)
        env = task.spec.env
        env["CLUSTER_NODELIST"] = ",".join(names)
        env["CLUSTER_NUM_NODES"] = str(len(names))
        env["CLUSTER_RANKS_PER_NODE"] = str(ranks)
        env["CLUSTER_MPI_PREFIX"] = mpi_prefix(names, ranks, os.environ.get("SHOAL_MPI", ""))
        first = gang[0]
        self._assign(task, first, reserve=dict(first.view.total))

    def _assign(self, task: _Task, node: _Node, reserve: dict[str, float] | None = None) -> None:
        self._reserve(task, node, reserve if reserve is not None else task.request)
        task.node_id = node.node_id
        node.running[task.spec.task_id] = task
        node.idle_since = None
        self._send_to_node(task, node)

    def _send_to_node(self, task: _Task, node: _Node) -> None:
        """Queue the task's spec, with its dependencies' values, for the node."""
        spec = task.spec
        out = pb.TaskSpec()
        out.CopyFrom(spec)
        if spec.fn_id and spec.fn_id not in node.functions:
            out.fn_blob = self.functions[spec.fn_id]
            node.functions.add(spec.fn_id)
        if spec.deps:
            values = self.objects.values
            seen: set[int] = set()
            for dep in spec.deps:
                if dep not in seen:
                    seen.add(dep)
                    value = values[dep]
                    if value.size:
                        holders = [self.nodes[h] for h in value.holders]
                        holders.sort(key=lambda n: n.node_id != node.node_id)
                        out.dep_values.add(id=dep, size=value.size,
                                           sources=[h.store_address for h in holders])
                    else:
                        out.dep_values.add(id=dep, data=value.data)
        node.outbox.append(out)

