"""Dispatch: choosing nodes for queued tasks, reserving their resources, and sending them
(with their arguments' values or locations) to the daemons.

An object the head owns (``head.dispatch``). The choice itself is the pure functions of
:mod:`cluster.policy.scheduler`; the head's state machine learns of each placement through
the ``started`` callback, which moves the task to ``RUNNING``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Iterator

from cluster.common.protocol import pb
from cluster.head.directory import ObjectDirectory
from cluster.head.records import NOTHING_RESERVED, Node, Task
from cluster.policy import priority, scheduler
from cluster.slurm.commands import mpi_prefix

#: The longest a task batch waits for a remote node. Packing fills free slots as tasks
#: arrive, so a burst went out a few tasks per message (12.9 on average at 2,000
#: simulated nodes, against ~90 for one node, where the queue allowance holds tasks
#: back), and each message costs the head ~150 us of gRPC-Python each way. As a busy
#: daemon gathers its results (``RESULT_BATCH_SECONDS``), the head gathers a node's next
#: tasks: while the node has not answered its last batch (Nagle's rule), and while the
#: head is busy (:data:`BUSY_RATE`). A node idle in a quiet cluster gets its tasks at
#: once (round trips and chains unchanged). Measured at 2,000 simulated nodes, one run
#: each: no gathering 12.9 tasks a message and 69.6 us of head CPU a task; Nagle's rule
#: and busy gathering for 2 ms, 25.5 and 52.6 us; for 5 ms, 41 and 46.4 us (one node:
#: 31-41 us).
HOLD_SECONDS = 0.005
#: The head counts as busy while it sends tasks faster than this (per second, over its
#: last :data:`HOLD_SECONDS` or more): tasks then queue for tens of ms anyway (burst p50
#: 37-92 ms), so a few more ms buy batches several times larger. One driver waiting
#: for each result (~400 us a round trip) stays well below it.
BUSY_RATE = 5000.0


def hold_batch(node: Node, now: float, busy: bool = False) -> bool:
    """Whether `node`'s outbox should wait: it holds only tasks, fewer than the node's
    slots, the node is remote, was sent a batch less than :data:`HOLD_SECONDS` ago, and
    has not answered it or the head is `busy`."""
    return ((node.awaiting or busy) and node.remote and node.alive
            and 0 < len(node.outbox) < node.view.total.get("cpus", 0.0)
            and now - node.sent_at < HOLD_SECONDS
            and not (node.deletes or node.cancels or node.cancel_queued))


class Dispatcher:
    """Placement, reservations and sending, for the head."""

    def __init__(self, nodes: dict[int, Node], objects: ObjectDirectory,
                 functions: dict[bytes, bytes],
                 started: Callable[[Task, Node], None]) -> None:
        self.nodes = nodes
        self.objects = objects
        self.functions = functions
        self._started = started
        #: Nodes with something in their outbox, flushed once per loop turn.
        self.dirty: set[Node] = set()
        #: Since the last pass: tasks were queued (all nodes are candidates), or only
        #: these nodes gained room. A node that could not take a queue's first task then
        #: cannot now unless it gained room, so a pass looks at just those: at saturation
        #: every finished task would otherwise cost a walk over every node.
        self.new_work = True
        self.gained: set[Node] = set()
        #: Nodes that may have a free slot, lowest id first (packing placement), and the
        #: placement view of every node that ever joined, by id.
        self.free = scheduler.FreeSlots()
        self.views: dict[int, scheduler.NodeView] = {}
        self._release_pending = False  # a timer will flush the held batches
        self._window_at = 0.0      # tasks sent since then (see BUSY_RATE)
        self._window_sent = 0
        self._busy = False
        #: The clock of the busy window (a test steps a fake one: a loaded machine's
        #: sleeps are too coarse for a 5 ms window).
        self.clock: Callable[[], float] = time.monotonic

    def schedule(self, ready: dict[bytes, deque[Task]], gangs: deque[Task]) -> None:
        """Place as many queued tasks as the nodes can take now, in queue order.

        A task whose stored arguments are on some nodes goes where most of their bytes are
        (:func:`~cluster.policy.scheduler.place`); any other task asking for cpus is
        *packed*: the lowest-id node with a really free slot
        (:class:`~cluster.policy.scheduler.FreeSlots`), O(log n). Only when no node has a
        free slot do the daemons' queue allowances come in, least loaded first
        (:func:`~cluster.policy.scheduler.least_loaded`), as for tasks taking no cpu.
        """
        if not (ready or gangs) or not (self.new_work or self.gained):
            return
        all_nodes = self.new_work or bool(gangs)
        gained = self.gained
        self.new_work = False
        self.gained = set()
        free, views_by_id = self.free, self.views
        for node in gained:
            if node.alive:
                views_by_id[node.node_id] = node.view
                free.add(node.node_id)
        views: list[scheduler.NodeView] | None = None  # built only when a pass needs them

        def candidates() -> list[scheduler.NodeView]:
            nonlocal views
            if views is None:
                pool = self.nodes.values() if all_nodes else gained
                views = [n.view for n in pool if n.alive]
            return views

        nodes = self.nodes
        while gangs:
            task = gangs[0]
            chosen = scheduler.place_gang(task.request, candidates(), task.spec.num_nodes)
            if chosen is None:
                break
            gangs.popleft()
            self._assign_gang(task, [nodes[i] for i in chosen])
        place = scheduler.place
        for key in priority.in_order(ready):  # highest priority first
            queue = ready[key]
            spread: Iterator[int] | None = None   # queue allowances, least loaded first
            try:
                while queue:
                    task = queue[0]
                    local = self._local_bytes(task) if task.spec.deps else None
                    if local:
                        spread = None  # the heap's loads would be stale after place()
                        node_id = place(task.request, candidates(), local)
                    else:
                        # Packing is by slots: a task taking no cpu fills none, and stacking
                        # every such task (0-cpu actors) on the first node would have no
                        # bound. Those are spread least loaded, as before.
                        node_id = free.take(task.request, views_by_id) \
                            if task.request.get("cpus", 0.0) > 0 else None
                        if node_id is None:
                            if spread is None:
                                spread = scheduler.least_loaded(task.request, candidates())
                            node_id = next(spread, None)
                    if node_id is None:
                        break
                    queue.popleft()
                    self._assign(task, nodes[node_id])
            finally:
                free.end_queue()
            if not queue:
                del ready[key]

    def check(self) -> None:
        """Invariant of the packing index (for ``Head.validate``): every alive,
        schedulable node with a free cpu is indexed, or waits in ``gained`` to be."""
        for node in self.nodes.values():
            view = node.view
            if node.alive and view.schedulable and not scheduler.cpus_full(view):
                assert node.node_id in self.free or node in self.gained, \
                    f"node {node.node_id} has free cpus but is not in the packing index"
                if node.node_id in self.free:
                    assert self.views.get(node.node_id) is view, \
                        f"node {node.node_id}: stale placement view"

    def _local_bytes(self, task: Task) -> dict[int, int] | None:
        """Bytes of the task's stored arguments on each node (for locality)."""
        held: dict[int, int] = {}
        values = self.objects.values
        for dep in set(task.spec.deps):
            value = values.get(dep)
            if value is not None and value.size:
                for node_id in value.holders:
                    held[node_id] = held.get(node_id, 0) + value.size
        return held or None

    def reserve(self, task: Task, node: Node, amounts: dict[str, float]) -> None:
        """Count `amounts` of `node` as the task's."""
        used = node.view.used
        for key, amount in amounts.items():
            used[key] = used.get(key, 0.0) + amount
        if task.reserved is NOTHING_RESERVED:
            task.reserved = {node.node_id: amounts}
        else:
            task.reserved[node.node_id] = amounts

    def unreserve(self, task: Task) -> None:
        """Give back everything the task holds, on every node."""
        for node_id, amounts in task.reserved.items():
            node = self.nodes.get(node_id)
            if node is not None:
                self.gained.add(node)
                used = node.view.used
                for key, amount in amounts.items():
                    used[key] = used.get(key, 0.0) - amount
        task.reserved = NOTHING_RESERVED

    def _assign_gang(self, task: Task, gang: list[Node]) -> None:
        """A multi-node app holds every slot of its nodes and runs on the first one, with
        $CLUSTER_NODELIST and $CLUSTER_MPI_PREFIX describing the set."""
        for node in gang[1:]:
            self.reserve(task, node, dict(node.view.total))
        names = [n.name for n in gang]
        ranks = max(1, task.spec.ranks_per_node)
        env = task.spec.env
        env["CLUSTER_NODELIST"] = ",".join(names)
        env["CLUSTER_NUM_NODES"] = str(len(names))
        env["CLUSTER_RANKS_PER_NODE"] = str(ranks)
        env["CLUSTER_MPI_PREFIX"] = mpi_prefix(names, ranks, os.environ.get("SHOAL_MPI", ""))
        first = gang[0]
        self._assign(task, first, reserve=dict(first.view.total))

    def _assign(self, task: Task, node: Node, reserve: dict[str, float] | None = None) -> None:
        self.reserve(task, node, reserve if reserve is not None else task.request)
        self.send(task, node)
        self._started(task, node)  # (after: tasks staged behind it follow it to the node)

    def send(self, task: Task, node: Node, after: int = 0) -> None:
        """Queue the task's spec, with its dependencies' values, for the node; staged
        `after` a task running there (:mod:`cluster.head.staging`), without that one's."""
        spec = task.spec
        out = pb.TaskSpec()
        out.CopyFrom(spec)
        if after:
            out.after = after
        if spec.fn_id and spec.fn_id not in node.functions:
            out.fn_blob = self.functions[spec.fn_id]
            node.functions.add(spec.fn_id)
        if spec.deps:
            values = self.objects.values
            seen: set[int] = set()
            for dep in spec.deps:
                if dep not in seen and dep != after:
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
        self.dirty.add(node)

    def delete(self, node: Node, object_id: int) -> None:
        """Tell `node` to delete its copy of `object_id`."""
        node.deletes.append(object_id)
        self.dirty.add(node)

    def cancel(self, node: Node, task_id: int) -> None:
        """Tell `node` to stop task `task_id` (its worker's process group is killed)."""
        node.cancels.append(task_id)
        self.dirty.add(node)

    def flush(self) -> None:
        """Send every node its batch, except small task batches for a remote node
        (:func:`hold_batch`): those wait for its answer, a full batch, or
        :data:`HOLD_SECONDS`, whichever comes first."""
        held: set[Node] = set()
        now = self.clock()
        elapsed = now - self._window_at
        if elapsed >= HOLD_SECONDS:  # how busy was the last window
            self._busy = self._window_sent >= BUSY_RATE * elapsed
            self._window_at, self._window_sent = now, 0
        busy = self._busy
        for node in self.dirty:
            if hold_batch(node, now, busy):
                held.add(node)
                continue
            tasks = len(node.outbox)
            message = node.take_batch()
            if message is not None and node.alive:
                node.conn.send(message)
                if tasks:
                    node.sent_at, node.awaiting = now, True
                    self._window_sent += tasks
        self.dirty = held
        if held and not self._release_pending:
            self._release_pending = True
            asyncio.get_running_loop().call_later(HOLD_SECONDS, self._release)

    @property
    def busy(self) -> bool:
        """Whether the head sent tasks faster than :data:`BUSY_RATE` over its last window
        (small batches for remote nodes are then gathered, see :func:`hold_batch`)."""
        return self._busy

    def _release(self) -> None:
        self._release_pending = False
        self.flush()
