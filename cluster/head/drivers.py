"""Drivers leaving the head (moved out of :mod:`cluster.head.state`, which keeps a thin
delegating method): what a driver queued or runs ends as cancelled, and its references go.

``self`` is the :class:`~cluster.head.state.Head` (a function, not a method, so the
state machine module stays within its size cap).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import pb
from cluster.head.records import Driver, Task, TaskState

log = logging.getLogger("shoal.head")


def driver_left(self: Any, driver: Driver) -> None:
    """A driver disconnected: drop its queued tasks and its references."""
    if self.drivers.pop(driver.driver_id, None) is None:
        return
    log.info("driver %d left", driver.driver_id)
    driver_id = driver.driver_id
    self.actor_table.owner_left(driver_id)
    self.failures.driver_left(driver_id)
    for task_id in [t for t in self.leased_running if t >> DRIVER_SHIFT == driver_id]:
        del self.leased_running[task_id]  # (its leased worker dies with its actor)

    def its(task: Task) -> bool:
        return task.task_id >> DRIVER_SHIFT == driver_id and \
            task.kind in (pb.PYTHON, pb.BASH)

    # Its queued tasks and those waiting for dependencies (some of which it just
    # dropped, so they would wait forever) end as cancelled, releasing what they hold.
    # Queues are filtered in one pass: removing 100,000 tasks one by one is quadratic.
    dropped: list[Task] = []
    for key, queue in list(self.ready.items()):
        kept = deque(t for t in queue if not its(t))
        if len(kept) != len(queue):
            dropped.extend(t for t in queue if its(t))
            if kept:
                self.ready[key] = kept
            else:
                del self.ready[key]
    for task in [t for t in self.gangs if its(t)]:
        self.gangs.remove(task)
        dropped.append(task)
    dropped.extend(t for t in self.tasks.values()
                   if its(t) and t.state is TaskState.WAITING)
    for task in dropped:
        self.fail(task, pb.CANCELLED, "its driver disconnected", queued=False)
    # Its running tasks are stopped (their workers killed and replaced), so they do not
    # hold the cluster for other drivers; their results end them as cancelled.
    for task in [t for t in self.tasks.values()
                 if its(t) and t.state in (TaskState.RUNNING, TaskState.STAGED)]:
        self.cancels.stop_running(task)
    self.soon()
    for object_id, count in driver.refs.items():
        for _ in range(count):
            self.objects.decref(object_id)
    driver.refs.clear()
