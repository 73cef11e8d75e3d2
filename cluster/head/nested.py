"""Dynamic workflows, the head's side: apps that call apps.

A worker whose app calls an app (or ``api.put``/``get``, an actor...) gets a *nested
client*: the driver protocol itself, DriverToHead and HeadToDriver batches, carried as
:class:`pb.NestedFrame` s inside its daemon's own stream (no new port, no new secret: the
daemon's stream is authenticated). Here each such channel is an ordinary :class:`Driver`
(its own driver id, so results route by id as for any driver), plus:

- **ownership**: each task it submits names its ``parent_task``. When the parent ends
  failed (the worker says so after its Done), its live children are cancelled; when the
  worker dies (killed for a cancel, a walltime, a crash) or its node is lost, the channel
  closes and everything it submitted is cancelled, as when a driver leaves. Cancelled
  children's workers die in turn, so a whole subtree ends.
- **output**: print() lines of nested tasks go to the *root* driver (the one whose task,
  however deep, started the subtree), not to the worker.
- **CPUs given back**: a task blocked waiting for others (``blocked``) holds no CPUs on the
  head's books until it runs again (``unblocked``), so the node gets more work meanwhile.

Kept out of :mod:`cluster.head.state`: the head calls :meth:`NestedDrivers.on_node_message`
only for batches that carry nested frames or blocked tasks, so ordinary tasks pay nothing.
"""

from __future__ import annotations

from typing import Any

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import pb
from cluster.head.records import Driver, Node, TaskState


class NestedConn:
    """The head's connection to one nested client: HeadToDriver batches go to its worker
    through the node's stream; print() lines go to the root driver instead."""

    def __init__(self, owner: NestedDrivers, node: Node, channel: int) -> None:
        self._owner = owner
        self._node = node
        self._channel = channel

    def send(self, message: object) -> None:
        """Forward one HeadToDriver batch."""
        if not isinstance(message, pb.HeadToDriver):
            return
        if message.logs:
            self._owner.forward_logs(message.logs)
            del message.logs[:]
        for result in message.results:
            self._owner.finished(result.task_id)
        if not self._node.alive or message.ByteSize() == 0:
            return
        frame = pb.NestedFrame(channel=self._channel, payload=message.SerializeToString())
        self._node.conn.send(pb.HeadToNode(nested=[frame]))

    def close(self) -> None:
        """Nothing to close: the node's stream carries the frames."""


class NestedDrivers:
    """The nested clients of every node, their tasks' owners and root drivers."""

    def __init__(self, head: Any) -> None:
        self.head = head
        #: (node id, channel) -> the channel's driver.
        self.channels: dict[tuple[int, int], Driver] = {}
        #: Live nested task -> the driver id its output goes to (the root driver).
        self.root: dict[int, int] = {}
        #: Parent task -> its children that may still be live.
        self.children: dict[int, set[int]] = {}

    def live_records(self) -> int:
        """How many nested tasks these tables hold (a leak check for tests and status):
        0 once every nested task has ended and been reported."""
        return len(self.root) + sum(map(len, self.children.values()))

    # ---- from daemons ----------------------------------------------------------------------
    def on_node_message(self, node: Node, message: pb.NodeToHead) -> None:
        """The nested part of one daemon batch (after its results were handled)."""
        for task_id in message.blocked:
            self._cpus(node, task_id, blocked=True)
        for task_id in message.unblocked:
            self._cpus(node, task_id, blocked=False)
        for frame in message.nested:
            key = (node.node_id, frame.channel)
            if frame.closed:
                driver = self.channels.pop(key, None)
                if driver is not None:
                    self._left(driver)
                continue
            if frame.ended:
                self._ended(frame.ended, frame.failed)
                continue
            batch = pb.DriverToHead.FromString(frame.payload)
            if batch.HasField("hello"):
                old = self.channels.pop(key, None)
                if old is not None:
                    self._left(old)
                driver = self.head.driver_joined(NestedConn(self, node, frame.channel),
                                                 batch.hello)
                self.channels[key] = driver
                continue
            driver = self.channels.get(key)
            if driver is None:
                continue
            for spec in batch.submit:
                parent = spec.parent_task
                if parent:
                    parent_driver = parent >> DRIVER_SHIFT
                    self.root[spec.task_id] = self.root.get(parent, parent_driver)
                    self.children.setdefault(parent, set()).add(spec.task_id)
            self.head.on_driver_message(driver, batch)

    def node_lost(self, node: Node) -> None:
        """Every nested client of a lost node is gone."""
        for key in [k for k in self.channels if k[0] == node.node_id]:
            self._left(self.channels.pop(key))

    # ---- lifetime ----------------------------------------------------------------------
    def _left(self, driver: Driver) -> None:
        driver_id = driver.driver_id
        self.head.driver_left(driver)  # cancels what it submitted
        # Its tasks' results go nowhere now: forget them (a scan, but workers die rarely).
        for task_id in [t for t in self.root if t >> DRIVER_SHIFT == driver_id]:
            del self.root[task_id]
        for parent, kids in list(self.children.items()):
            kids.difference_update([k for k in kids if k >> DRIVER_SHIFT == driver_id])
            if not kids:
                del self.children[parent]

    def _ended(self, parent: int, failed: bool) -> None:
        kids = self.children.pop(parent, set())
        if failed and kids:
            self.cancel(kids, "cancelled: the task that submitted it failed")

    def cancel(self, task_ids: set[int], reason: str) -> None:
        """Cancel the live app tasks among `task_ids` (queued, waiting or running)."""
        head = self.head
        for task_id in task_ids:
            task = head.tasks.get(task_id)
            if task is None or task.spec.kind not in (pb.PYTHON, pb.BASH):
                continue
            if task.state in (TaskState.RUNNING, TaskState.STAGED):
                head.cancels.stop_running(task, reason)
            elif task.state in (TaskState.QUEUED, TaskState.WAITING):
                head.fail(task, pb.CANCELLED, reason)
        head.soon()

    def finished(self, task_id: int) -> None:
        """A nested task's result went to its driver: forget its root."""
        self.root.pop(task_id, None)

    def forward_logs(self, lines: Any) -> None:
        """Send nested tasks' print() lines to their root drivers."""
        drivers = self.head.drivers
        for line in lines:
            driver = drivers.get(self.root.get(line.task_id, 0))
            if driver is not None:
                driver.logs.append(line)
        self.head.soon()

    # ---- CPUs of blocked tasks --------------------------------------------------------------
    def _cpus(self, node: Node, task_id: int, blocked: bool) -> None:
        """Give back (or take again) the CPUs a running task holds on `node`."""
        task = node.running.get(task_id)
        if task is None or task.spec.num_nodes > 1:
            return
        amounts = task.reserved.get(node.node_id)
        wanted = task.request.get("cpus", 0.0)
        if amounts is None or not wanted:
            return
        held = amounts.get("cpus", 0.0)
        new = 0.0 if blocked else wanted
        if new == held:
            return
        # A fresh dict: reservations may share the task's request dict, never mutated.
        task.reserved[node.node_id] = {**amounts, "cpus": new}
        used = node.view.used
        used["cpus"] = used.get("cpus", 0.0) + new - held
        if blocked:
            self.head.dispatch.gained.add(node)
        self.head.soon()
