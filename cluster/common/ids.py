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


#: SQLite's INTEGER is signed 64-bit; ids are unsigned 64-bit (a node caller's have the top bit).
SIGNED_LIMIT = 1 << 63


def to_db(task_id: int) -> int:
    """`task_id` as SQLite can store it (its signed 64-bit equivalent); see :func:`from_db`.

    >>> to_db(5), to_db(node_caller(1) << DRIVER_SHIFT) < 0
    (5, True)
    """
    return task_id - (1 << 64) if task_id >= SIGNED_LIMIT else task_id


def from_db(value: int) -> int:
    """The id that :func:`to_db` stored as `value`.

    >>> from_db(to_db(node_caller(1) << DRIVER_SHIFT | 9)) == node_caller(1) << DRIVER_SHIFT | 9
    True
    """
    return value + (1 << 64) if value < 0 else value
