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
from typing import TYPE_CHECKING, Any

from cluster.common.protocol import pb
from cluster.head.directory import LOST

if TYPE_CHECKING:
    from cluster.head.state import Head

log = logging.getLogger("shoal.head")

REBUILDABLE = (pb.PYTHON, pb.BASH)


class Lineage:
    """The specs of finished tasks whose stored results may have to be rebuilt."""

    def __init__(self, head: Head) -> None:
        self.head = head
        self._records: dict[int, Any] = {}   # object id -> the _Task that made it
        self.rebuilt = 0

    def record(self, task: Any, result: pb.TaskResult) -> bool:
        """Keep `task` (and its arguments) while its result lives; True if kept."""
        if not result.size or task.spec.kind not in REBUILDABLE or result.nested:
            return False
        self._records[task.spec.task_id] = task
        return True

    def forget(self, object_id: int) -> None:
        """The object was dropped: its task's arguments may go too."""
        task = self._records.pop(object_id, None)
        if task is not None:
            for dep in task.spec.deps:
                self.head.objects.decref(dep)

    def __len__(self) -> int:
        return len(self._records)

    def rebuild(self, lost: list[int]) -> set[int]:
        """Re-run the tasks that made the `lost` objects; returns the ids being rebuilt
        (the others cannot be)."""
        head = self.head
        fresh = []
        for object_id in sorted(lost):  # ids grow with submission: producers first
            task = self._records.pop(object_id, None)
            if task is None:
                continue
            head.objects.values.pop(object_id, None)   # pending again; refs unchanged
            again = type(task)(task.spec, task.request, task.shape)
            head.tasks[object_id] = again
            fresh.append(again)
        for task in fresh:
            log.info("rebuilding object %#x: re-running %s", task.spec.task_id, task.spec.name)
            self.rebuilt += 1
            missing = head.wait_for_missing(task)
            if missing is None:
                continue  # failed: an argument is gone for good
            if missing == 0:
                head.make_ready(task)
        rebuilt = {t.spec.task_id for t in fresh}
        if rebuilt:
            head.unready(rebuilt)
        return rebuilt

    @staticmethod
    def lost_value(object_id: int, node_name: str) -> Any:
        """What a lost object without lineage becomes."""
        from cluster.head.directory import Value

        return Value(pb.OBJECT_LOST, b"", f"object {object_id:#x} was held only by node "
                     f"{node_name}, which was lost, and no task can rebuild it (api.put "
                     "objects, actor results and values holding refs are not rebuilt); "
                     "put it again, or re-run what made it" if node_name else LOST.message)
