"""Cancellation at the head: ``fut.cancel()`` and ``api.cancel(fut, force=...)``.

A driver asks to cancel one of its tasks (a ``CancelRequest``); the head answers with a
``CancelReply`` saying whether the task will not run (``cancelled``), and a cancelled
task's future also gets its CANCELLED result, in the same batch, before the reply.

Where the task is decides how:

- ``WAITING``, ``QUEUED`` (also an actor call in its actor's queue), ``DECIDING``: failed
  at once with status CANCELLED; dependents fail with DEPENDENCY_FAILED.
- ``RUNNING`` as far as the head knows, which covers a daemon's local backlog (tasks sent
  ahead of free slots), and ``STAGED`` (sent ahead behind its input): without ``force``
  the daemon is asked to drop it if it has not started (``HeadToNode.cancel_queued``);
  its answer (``NodeToHead.cancel_replies``) is passed on, and a dropped task reports
  CANCELLED. With ``force`` the task moves to ``CANCELLING`` and its node stops it (its
  worker and process tree are killed and the worker replaced, or a staged task dropped);
  whatever result comes back ends it as cancelled.
- A running actor call is never force-stopped (that would kill the actor for every
  caller): use ``api.kill``.

A cancelled task is never retried: CANCELLED is not a retriable status, and a CANCELLING
task's result is never looked at.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import pb
from cluster.head.records import Driver, Node, Task, TaskState

log = logging.getLogger("shoal.head")

#: What a task cancelled by its driver's request fails with.
CANCELLED_MESSAGE = "cancelled by its driver (fut.cancel() or api.cancel())"
#: What a task stopped because its driver left fails with.
DRIVER_LEFT_MESSAGE = "cancelled: its driver disconnected"


class CancelHost(Protocol):
    """The parts of the head cancellation touches."""

    nodes: dict[int, Node]
    tasks: dict[int, Task]
    dispatch: Any

    def set_state(self, task: Task, state: TaskState) -> None: ...

    def fail(self, task: Task, status: pb.Status, message: str, queued: bool = True) -> None: ...

    def soon(self) -> None: ...


class Cancellations:
    """Cancel requests in flight, for the head (``head.cancels``)."""

    def __init__(self, head: CancelHost) -> None:
        self.head = head
        #: Tasks a daemon was asked to drop if not started: task id -> (driver, request).
        self.asked: dict[int, list[tuple[Driver, pb.CancelRequest]]] = {}
        #: Why each CANCELLING task is being stopped (absent: its driver left).
        self.reasons: dict[int, str] = {}

    def request(self, driver: Driver, request: pb.CancelRequest) -> None:
        """A driver asks to cancel one of its tasks."""
        head = self.head
        task_id = request.task_id
        if task_id >> DRIVER_SHIFT != driver.driver_id:
            self._reply(driver, request, False, "not a task of this driver")
            return
        task = head.tasks.get(task_id)
        if task is None:
            self._reply(driver, request, False, "it has finished (or is not known)")
            return
        state = task.state
        if state in (TaskState.WAITING, TaskState.QUEUED, TaskState.DECIDING):
            head.fail(task, pb.CANCELLED, CANCELLED_MESSAGE)
            log.info("task %#x (%s) cancelled while %s", task_id, task.spec.name,
                     state.name.lower())
            self._reply(driver, request, True)
        elif state is TaskState.CANCELLING:
            self._reply(driver, request, True)
        elif state in (TaskState.RUNNING, TaskState.STAGED):  # (staged: as in a backlog)
            node = head.nodes.get(task.node_id)
            if node is None or not node.alive:
                self._reply(driver, request, False, "its node is gone")
            elif request.force and task.spec.kind in (pb.PYTHON, pb.BASH):
                # (Not an actor's creation or call: stopping those would kill the actor
                # for every caller, and a creation's result must still make it HOSTING.)
                self.stop_running(task, CANCELLED_MESSAGE + ", stopped while it ran")
                log.info("task %#x (%s) being stopped on %s (force-cancelled)", task_id,
                         task.spec.name, node.name)
                self._reply(driver, request, True)
            else:  # maybe still in the daemon's backlog: only it can tell
                node.cancel_queued.append(pb.CancelRequest(task_id=task_id))
                self._touch(node)
                self.asked.setdefault(task_id, []).append((driver, request))
        else:
            self._reply(driver, request, False, f"it is {state.name.lower()}")

    def stop_running(self, task: Task, reason: str | None = None) -> None:
        """Stop the RUNNING (or STAGED) app task `task`: its worker is killed, or its
        daemon drops it, and its result ends it as cancelled, for `reason` (None: its
        driver left)."""
        head = self.head
        head.set_state(task, TaskState.CANCELLING)
        if reason is not None:
            self.reasons[task.task_id] = reason
        node = head.nodes.get(task.node_id)
        if node is not None and node.alive:
            head.dispatch.cancel(node, task.task_id)
        head.soon()

    def answered(self, replies: list[pb.CancelReply]) -> None:
        """A daemon's answers to ``cancel_queued`` (a dropped task's CANCELLED result came
        in the same batch, before them)."""
        for reply in replies:
            for driver, request in self.asked.pop(reply.task_id, ()):
                self._reply(driver, request, reply.cancelled,
                            reply.message or "it has started")

    def node_lost(self) -> None:
        """A node was lost: asks it can no longer answer are decided again where their
        tasks are now (re-queued for a retry: cancelled there; failed: too late)."""
        for task_id in list(self.asked):
            task = self.head.tasks.get(task_id)
            node = self.head.nodes.get(task.node_id) if task is not None else None
            if task is not None and task.state in (TaskState.RUNNING, TaskState.STAGED) \
                    and node is not None and node.alive:
                continue
            for driver, request in self.asked.pop(task_id):
                self.request(driver, request)

    def reason(self, task: Task) -> str:
        """Why the CANCELLING `task` ends as cancelled."""
        return self.reasons.pop(task.task_id, DRIVER_LEFT_MESSAGE)

    def _touch(self, node: Node) -> None:
        self.head.dispatch.dirty.add(node)  # sent with the node's next batch, after its tasks
        self.head.soon()

    def _reply(self, driver: Driver, request: pb.CancelRequest, cancelled: bool,
               message: str = "") -> None:
        driver.cancel_replies.append(pb.CancelReply(
            request_id=request.request_id, task_id=request.task_id, cancelled=cancelled,
            message=message))
        self.head.soon()
