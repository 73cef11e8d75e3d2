"""Staged tasks at the head: a waiting task whose one missing argument is being made on a
node goes there ahead (state ``STAGED``) and starts the moment that argument is made.

When and which is :func:`cluster.policy.staging.may_stage`; what the daemon does with a
staged task is :mod:`cluster.node.staged`. The rules both sides keep:

- The head sends a staged task (``TaskSpec.after`` naming its *input*) after its input,
  in the same batch or a later one, so the daemon has the input before the heir.
- Every task the head sends gets exactly one result back. When the input succeeds
  (:func:`~cluster.policy.staging.heir_runs`), the daemon starts the heir in the input's
  slot and the head, reading the same result, moves the heir to ``RUNNING`` holding that
  slot. Otherwise the daemon sends the heir back (``BOUNCED``), as it does when the heir
  arrives after its input ended; the head then places it again as if it had never been
  staged (:meth:`Staging.returned`).
- A staged task the head cancels is dropped by its daemon (``CANCELLED``) or, if it has
  started meanwhile, killed, exactly as a task in a daemon's backlog.

Measured with a 1,000-link chain of ``inc`` on the local cluster (2 cores): 0.255 ms a
link before (each link a round trip through the head); see the README for after.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from cluster.common.protocol import pb
from cluster.head.records import Node, Task, TaskState
from cluster.policy.staging import heir_runs, may_stage

#: ``SHOAL_STAGE=0`` turns staging off: every dependent waits at the head (for comparing).
ENABLED = os.environ.get("SHOAL_STAGE", "1") != "0"
#: Why a task staged behind a task that was force-cancelled (and still succeeded) stops.
INPUT_CANCELLED = "cancelled: the task it depends on was cancelled"


class StagingHost(Protocol):
    """The parts of the head staging touches."""

    waiters: dict[int, list[Task]]
    tasks: dict[int, Task]
    nodes: dict[int, Node]
    objects: Any
    dispatch: Any
    cancels: Any

    def set_state(self, task: Task, state: TaskState) -> None: ...

    def missing_args(self, task: Task, queued: bool = True) -> list[int] | None: ...

    def wait(self, task: Task, pending: list[int]) -> None: ...

    def make_ready(self, task: Task) -> None: ...

    def fail(self, task: Task, status: pb.Status, message: str, queued: bool = True) -> None: ...

    def finish_failed(self, task: Task, result: pb.TaskResult, queued: bool = True) -> None: ...


class Staging:
    """The staged tasks, for the head (``head.staging``)."""

    def __init__(self, head: StagingHost) -> None:
        self.head = head
        self.enabled = ENABLED
        #: Input task id -> the task staged behind it (until the input's result comes).
        self.heirs: dict[int, Task] = {}
        #: Staged task id -> its input's id (the reverse of ``heirs``).
        self.input_of: dict[int, int] = {}
        self.started = 0  # staged tasks that started behind their input (the status)

    def placed(self, task: Task, node: Node) -> None:
        """`task` was just placed on `node` (RUNNING or STAGED): stage what waits for it
        there, and what waits for that, down the chain."""
        waiters = self.head.waiters
        while task.task_id in waiters and task.task_id not in self.heirs and \
                node.alive and not node.draining:
            heir = self._heir(task, waiters[task.task_id])
            if heir is None:
                return
            self._stage(heir, task, node)
            task = heir

    def submitted(self, task: Task, pending: list[int]) -> None:
        """`task` was submitted waiting for `pending`: stage it if that is one task
        already placed on a node (a driver adding a link to a running chain)."""
        if len(set(pending)) != 1:
            return
        producer = self.head.tasks.get(pending[0])
        if producer is not None and producer.state in (TaskState.RUNNING, TaskState.STAGED):
            node = self.head.nodes.get(producer.node_id)
            if node is not None and producer.task_id not in self.heirs:
                self.placed(producer, node)

    def _heir(self, task: Task, waiting: list[Task]) -> Task | None:
        """The first task waiting for `task` that may be staged behind it."""
        spec = task.spec
        if task.state not in (TaskState.RUNNING, TaskState.STAGED):
            return None
        values = self.head.objects.values
        for heir in waiting:
            if heir.state is not TaskState.WAITING or heir.bounced:
                continue
            hspec = heir.spec
            missing = {d for d in hspec.deps if d not in values}
            if may_stage(hspec.kind, hspec.num_nodes, heir.shape, spec.kind, spec.num_nodes,
                         task.shape, missing, task.task_id):
                return heir
        return None

    def _stage(self, heir: Task, task: Task, node: Node) -> None:
        head = self.head
        task_id = task.task_id
        kept = [t for t in head.waiters[task_id] if t is not heir]
        if kept:
            head.waiters[task_id] = kept
        else:
            del head.waiters[task_id]
        heir.pending = 0
        heir.node_id = node.node_id  # (first: the history records where it goes)
        head.set_state(heir, TaskState.STAGED)
        node.staged[heir.task_id] = heir
        self.heirs[task_id] = heir
        self.input_of[heir.task_id] = task_id
        head.dispatch.send(heir, node, after=task_id)

    def input_ended(self, task: Task, node: Node, result: pb.TaskResult) -> None:
        """`task`'s result came from `node`: the task staged behind it started there in its
        slot (it is RUNNING now), or the node sends it back."""
        heir = self.heirs.pop(task.task_id, None)
        if heir is None:
            return
        del self.input_of[heir.task_id]
        if not heir_runs(result.status, result.nested):
            return  # (BOUNCED follows: see returned)
        head = self.head
        del node.staged[heir.task_id]
        node.running[heir.task_id] = heir
        node.idle_since = None
        head.dispatch.reserve(heir, node, heir.request)
        self.started += 1  # (a heir that came too late is sent back: see returned)
        if heir.state is TaskState.STAGED:
            head.set_state(heir, TaskState.RUNNING)
            if task.state is TaskState.CANCELLING:  # it succeeded, but was cancelled
                head.cancels.stop_running(heir, INPUT_CANCELLED)

    def returned(self, task: Task, node: Node, result: pb.TaskResult) -> None:
        """A task this head staged came back from `node` unrun or cancelled (taken out of
        the node's ``staged`` or ``running`` by the caller, its resources given back):
        fail it, or place it again as if it had never been staged."""
        head = self.head
        input_id = self.input_of.pop(task.task_id, None)
        if input_id is not None:
            del self.heirs[input_id]
        self.input_ended(task, node, result)  # (its own heir comes back too)
        if task.state is TaskState.CANCELLING:
            head.fail(task, pb.CANCELLED, head.cancels.reason(task))
        elif result.status != pb.BOUNCED:  # dropped on a cancel request before it started
            head.finish_failed(task, result)
        else:
            # Placed again, never staged again: whatever made it come back (its input
            # ended before it arrived, or failed) cannot send it round in a loop.
            task.bounced = True
            if task.state is TaskState.RUNNING:  # counted as started behind its input
                self.started -= 1
            missing = head.missing_args(task, queued=False)
            if missing:
                head.wait(task, missing)  # (staged again if its input is placed)
            elif missing is not None:
                head.make_ready(task)

    def node_lost(self, node: Node) -> None:
        """`node` is gone: its staged tasks are placed again (after what ran there was
        retried or failed, so their inputs' states are settled)."""
        staged = list(node.staged.values())
        node.staged.clear()
        for task in staged:
            if task.state in (TaskState.STAGED, TaskState.CANCELLING):
                self.returned(task, node, pb.TaskResult(task_id=task.task_id,
                                                        status=pb.BOUNCED))

    def check(self, nodes: dict[int, Node]) -> None:
        """Invariants (for ``Head.validate``): every staged task is on the node it names,
        holds nothing, and ``heirs`` and ``input_of`` mirror each other."""
        for node in nodes.values():
            for task_id, task in node.staged.items():
                assert task.state in (TaskState.STAGED, TaskState.CANCELLING), \
                    f"{task_id:#x} staged on {node.name} but {task.state.name}"
                assert task.node_id == node.node_id, f"{task_id:#x} staged on two nodes"
                assert not task.reserved, f"{task_id:#x} is staged but holds {task.reserved}"
                assert task_id not in node.running, f"{task_id:#x} staged and running"
        for input_id, heir in self.heirs.items():
            assert self.input_of.get(heir.task_id) == input_id, \
                f"{heir.task_id:#x} staged behind {input_id:#x} one way only"
            where = nodes.get(heir.node_id)
            assert where is not None and where.staged.get(heir.task_id) is heir, \
                f"{heir.task_id:#x} is an heir but not staged on its node"
        assert len(self.input_of) == len(self.heirs), "heirs and input_of differ"
