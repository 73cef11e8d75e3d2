"""How the head ends tasks that failed: retries (``max_retries``, the driver's
``retry_handler``, free re-runs after a planned node stop), final failures and what they do
to dependents, the end of an actor's hosting, and dropped objects.

An object the head owns (``head.failures``); :class:`~cluster.head.state.Head` keeps thin
methods (``fail``, ``finish_failed``, ``end_hosting``) that delegate here, which is what its
other parts call.

Retries with a ``retry_handler`` are the driver's decision (the handler runs where the
exception object is): a retriable failure moves the task to ``DECIDING``, the failure goes
to the driver marked ``retry_pending``, and the driver answers ``retry`` (the task is
queued again) or ``give_up`` (the failure becomes final). Dependents keep waiting
meanwhile, since the task may still succeed.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import pb
from cluster.head.directory import ObjectDirectory, Value
from cluster.head.records import Driver, Node, Task, TaskState

log = logging.getLogger("shoal.head")

#: Failures a task may be re-run after (``max_retries``, ``retry_handler``). CANCELLED is
#: not among them: a cancelled task never runs again.
RETRIABLE = frozenset({pb.APP_ERROR, pb.WORKER_CRASHED, pb.TIMEOUT, pb.BASH_EXIT, pb.NODE_LOST})


class FailureHost(Protocol):
    """The parts of the head failures touch."""

    nodes: dict[int, Node]
    drivers: dict[int, Driver]
    waiters: dict[int, list[Task]]
    objects: ObjectDirectory
    failed: int
    actor_table: Any
    lineage: Any
    dispatch: Any
    history: Any  # cluster.head.history.Recorder, or None when the history is off

    def set_state(self, task: Task, state: TaskState) -> None: ...

    def make_ready(self, task: Task) -> None: ...

    def dequeue(self, task: Task) -> None: ...

    def soon(self) -> None: ...


class Failures:
    """Retries and final failures, for the head."""

    def __init__(self, head: FailureHost) -> None:
        self.head = head
        #: DECIDING tasks (their driver's retry_handler is asked), with their failure.
        self.deciding: dict[int, tuple[Task, pb.TaskResult]] = {}

    # ---- retries ---------------------------------------------------------------------
    def task_failed(self, task: Task, result: pb.TaskResult) -> None:
        """`task` failed with `result` (its resources were given back): run it again if its
        retries allow (or ask its driver's retry_handler), else fail it for good."""
        if result.status in RETRIABLE:
            if task.spec.retry_handler:
                self._ask_driver(task, result)
                return
            if task.attempts < task.spec.max_retries:
                task.attempts += 1
                task.spec.attempt = task.attempts
                log.info("retrying task %#x (%s), attempt %d: %s", task.task_id,
                         task.spec.name, task.attempts, result.message)
                self.head.make_ready(task)
                return
        self.finish_failed(task, result)

    def rerun_free(self, task: Task, why: str) -> None:
        """Run `task` again without using up a retry: its node stopped by plan (drained, or
        its Slurm job reached its walltime), not because of the task."""
        log.info("re-running task %#x (%s) without using a retry: %s", task.task_id,
                 task.spec.name, why)
        self.head.make_ready(task)

    def _ask_driver(self, task: Task, result: pb.TaskResult) -> None:
        driver = self.head.drivers.get(task.task_id >> DRIVER_SHIFT)
        if driver is None:  # nobody to ask: its failure is final
            self.finish_failed(task, result)
            return
        self.head.set_state(task, TaskState.DECIDING)
        self.deciding[task.task_id] = (task, result)
        notice = pb.TaskResult()
        notice.CopyFrom(result)
        notice.retry_pending = True
        driver.results.append(notice)
        self.head.soon()

    def decided(self, driver: Driver, task_id: int, retry: bool) -> None:
        """The driver's retry_handler answered for `task_id`."""
        if task_id >> DRIVER_SHIFT != driver.driver_id:
            return
        entry = self.deciding.pop(task_id, None)
        if entry is None:
            return  # cancelled meanwhile
        task, result = entry
        if retry:
            task.attempts += 1
            task.spec.attempt = task.attempts
            log.info("retrying task %#x (%s), attempt %d (retry_handler): %s", task.task_id,
                     task.spec.name, task.attempts, result.message)
            self.head.make_ready(task)
        else:
            self.finish_failed(task, result)

    def driver_left(self, driver_id: int) -> None:
        """A driver left: its DECIDING tasks fail (nobody will answer)."""
        for task_id in [t for t in self.deciding if t >> DRIVER_SHIFT == driver_id]:
            task, _ = self.deciding.pop(task_id)
            self.fail(task, pb.CANCELLED, "its driver disconnected")

    # ---- final failures ----------------------------------------------------------------
    def fail(self, task: Task, status: pb.Status, message: str, queued: bool = True) -> None:
        """End `task` with `status` and `message` (no retry); see :meth:`finish_failed`."""
        result = pb.TaskResult(task_id=task.task_id, status=status, message=message,
                               attempt=task.spec.attempt)
        self.finish_failed(task, result, queued)

    def finish_failed(self, task: Task, result: pb.TaskResult, queued: bool = True) -> None:
        """`task` failed for good: record the failure as its value, fail its dependents.
        Its resources must have been given back already; a QUEUED task is taken out of
        its queue unless the caller did (`queued` False). Idempotent."""
        head = self.head
        # A work list, not recursion: a 100,000-link chain fails link by link.
        work = [(task, result, queued)]
        while work:
            task, result, queued = work.pop()
            if task.state in (TaskState.DONE, TaskState.FAILED):
                continue
            if task.spec.kind == pb.ACTOR_CALL:
                if task.state in (TaskState.WAITING, TaskState.QUEUED):
                    head.actor_table.drop_call(task)
            elif task.state is TaskState.QUEUED and queued:
                head.dequeue(task)
            elif task.state is TaskState.DECIDING:
                self.deciding.pop(task.task_id, None)
            head.set_state(task, TaskState.FAILED)
            task_id = task.task_id
            head.failed += 1
            if head.history is not None:
                head.history.failed(task, result)
            value = Value(result.status, result.data, result.message)
            head.objects.finish(task_id, value)
            for dep in task.spec.deps:
                head.objects.decref(dep)
            driver = head.drivers.get(task_id >> DRIVER_SHIFT)
            if driver is not None:
                driver.results.append(result)
            for dependent in head.waiters.pop(task_id, ()):
                if dependent.state is TaskState.WAITING:
                    work.append((dependent, self.dependency_failure(
                        dependent, task_id, value, task.spec.name), True))
            if task.spec.kind == pb.ACTOR_CREATE:
                head.actor_table.creation_failed(task, result.message)

    def end_hosting(self, task: Task) -> None:
        """An actor's creation that held its node's resources ends (the actor is dead):
        give them back and let go of its arguments."""
        head = self.head
        node = head.nodes.get(task.node_id)
        if node is not None:
            node.running.pop(task.task_id, None)
        head.dispatch.unreserve(task)
        head.set_state(task, TaskState.DONE)
        for dep in task.spec.deps:
            head.objects.decref(dep)

    def fail_dependency(self, task: Task, dep: int, value: Value, name: str = "",
                        queued: bool = True) -> None:
        """Fail `task` because its argument `dep` failed with `value`."""
        self.finish_failed(task, self.dependency_failure(task, dep, value, name), queued)

    @staticmethod
    def dependency_failure(task: Task, dep: int, value: Value,
                           name: str = "") -> pb.TaskResult:
        """What `task` fails with because its argument `dep` failed with `value`. A failure
        that was itself a dependency's passes on unchanged, naming the root cause once
        (a 10,000-link chain used to carry 68 KB of nested messages)."""
        if value.status == pb.DEPENDENCY_FAILED:
            return pb.TaskResult(task_id=task.task_id, status=pb.DEPENDENCY_FAILED,
                                 message=value.message, data=value.data)
        label = f"{name} " if name else ""
        status = pb.Status.Name(value.status)
        message = (f"dependency {label}(task {dep:#x}) failed with {status}: "
                   f"{value.message or 'see its future for details'}")
        return pb.TaskResult(task_id=task.task_id, status=pb.DEPENDENCY_FAILED,
                             message=message, data=value.data if value.status == pb.APP_ERROR
                             else b"")

    # ---- objects ----------------------------------------------------------------------
    def object_dropped(self, object_id: int, value: Value) -> None:
        """Nothing refers to `object_id` any more: forget its lineage, delete its copies."""
        head = self.head
        head.lineage.forget(object_id)
        for node_id in value.holders:
            node = head.nodes.get(node_id)
            if node is not None and node.alive:
                head.dispatch.delete(node, object_id)
                head.soon()
