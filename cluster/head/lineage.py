"""Lineage: rebuilding objects lost with a node by re-running the tasks that made them.

When a task's result stays in a node store, the head keeps the task's spec (and, through
reference counts, its arguments) for as long as the result is referenced. If every node
holding the result is lost, the task runs again, somewhere else, and the object is pending
until it is back: gets and dependent tasks simply wait. Objects that were ``api.put`` have
no lineage; losing their last copy makes them fail with ``ObjectLostError``. Results of
actor calls are not rebuilt either (re-running a method would change the actor's state),
nor values with refs nested inside (their refs would be counted twice).
"""

from __future__ import annotations

import logging

from cluster.common.protocol import pb
from cluster.head.directory import LOST, Value
from cluster.head.interface import HeadCore
from cluster.head.records import Task

log = logging.getLogger("shoal.head")

REBUILDABLE = (pb.PYTHON, pb.BASH)


class Lineage:
    """The specs of finished tasks whose stored results may have to be rebuilt."""

    def __init__(self, head: HeadCore) -> None:
        self.head = head
        self._records: dict[int, Task] = {}   # object id -> the task that made it
        self.rebuilt = 0

    def record(self, task: Task, result: pb.TaskResult) -> bool:
        """Keep `task` (and its arguments) while its result lives; True if kept."""
        if not result.size or task.spec.kind not in REBUILDABLE or result.nested:
            return False
        self._records[task.task_id] = task
        return True

    def forget(self, object_id: int) -> None:
        """The object was dropped: its task's arguments may go too."""
        task = self._records.pop(object_id, None)
        if task is not None:
            for dep in task.spec.deps:
                self.head.objects.decref(dep)

    def rebuild(self, lost: list[int]) -> set[int]:
        """Re-run the tasks that made the `lost` objects; returns the ids being rebuilt
        (the others cannot be)."""
        head = self.head
        fresh: dict[int, Task] = {}
        for object_id in lost:
            task = self._records.pop(object_id, None)
            if task is None:
                continue
            head.objects.make_pending(object_id)   # refs unchanged
            fresh[object_id] = Task(task.spec, task.request, task.shape)
        # Producers before their consumers, so a consumer sees its producer as pending.
        order = list(fresh.values())
        placed: set[int] = set()
        while order:
            now = [t for t in order if not any(
                d in fresh and d not in placed and d != t.task_id for d in t.spec.deps)]
            for task in now or order[:1]:  # ids are acyclic; never spin regardless
                placed.add(task.task_id)
                log.info("rebuilding object %#x: re-running %s", task.task_id, task.spec.name)
                self.rebuilt += 1
                missing = head.missing_args(task)
                if missing:
                    head.wait(task, missing)
                elif missing is not None:
                    head.make_ready(task)
            order = [t for t in order if t.task_id not in placed]
        rebuilt = set(fresh)
        if rebuilt:
            head.unready(rebuilt)
        return rebuilt

    @staticmethod
    def lost_value(object_id: int, node_name: str) -> Value:
        """What a lost object without lineage becomes."""
        return Value(pb.OBJECT_LOST, b"", f"object {object_id:#x} was held only by node "
                     f"{node_name}, which was lost, and no task can rebuild it (api.put "
                     "objects, actor results and values holding refs are not rebuilt); "
                     "put it again, or re-run what made it" if node_name else LOST.message)
