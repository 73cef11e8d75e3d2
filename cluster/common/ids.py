"""Ids shared by every process: how task, object and caller ids are built.

Task and object ids are ``caller_id << DRIVER_SHIFT | sequence``: made by the caller (a
driver, or a node whose apps call actors), unique in the cluster, and routable to their
caller without a lookup.

>>> task_id = 3 << DRIVER_SHIFT | 7
>>> caller_of(task_id)
3
>>> node_caller(2) > NODE_CALLER_BASE
True
"""

from __future__ import annotations

DRIVER_SHIFT = 40
#: Callers that are nodes (apps calling actors) get ids above every driver's.
NODE_CALLER_BASE = 1 << 23


def caller_of(task_id: int) -> int:
    """The driver (or node caller) that made `task_id`."""
    return task_id >> DRIVER_SHIFT


def node_caller(node_id: int) -> int:
    """The caller id under which node `node_id` submits its apps' actor calls."""
    return NODE_CALLER_BASE + node_id
