"""Task priorities: which ready tasks go first (pure decisions, no I/O).

``priority=`` on an app (an int, default 0): among ready tasks, higher goes first; within
one priority, first come first served. The head keeps one FIFO queue per (resource shape,
priority), named by :func:`queue_key`; :func:`in_order` lists those queues for a
scheduling pass, highest priority first. Daemons keep a small backlog of tasks sent ahead
of free slots, ordered the same way by :func:`insert`.

Cost: with every task at priority 0 (the default) the keys are the plain shapes and
:func:`in_order` is one scan of the (few) queue keys, so dispatch costs what it did.

Tasks of different resource shapes can still pass each other: a pass fills what the
nodes can take queue by queue, so a lower-priority task that fits the room left may start
while a higher-priority task that does not fit waits (backfill, as Slurm does it).

>>> ready = {b"": "cpu tasks", queue_key(b"", 5): "urgent", queue_key(b"", -1): "later"}
>>> [ready[k] for k in in_order(ready)]
['urgent', 'cpu tasks', 'later']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

#: Prefix of a prioritized queue key. A serialized protobuf message never starts with
#: 0xff (it would be field 31 of wire type 7, which does not exist), so keys of priority 0
#: (the plain shapes) and prioritized ones never collide.
_MARK = b"\xff"
_BIAS = 1 << 63
#: The range an app's priority must be in (a signed 32-bit protobuf field).
LOWEST, HIGHEST = -(1 << 31), (1 << 31) - 1


def queue_key(shape: bytes, priority: int) -> bytes:
    """The ready-queue key of tasks of `shape` (their serialized resource request) and
    `priority`: the shape itself for priority 0.

    >>> queue_key(b"abc", 0)
    b'abc'
    >>> priority_of(queue_key(b"abc", -3))
    -3
    """
    if not priority:
        return shape
    return _MARK + (priority + _BIAS).to_bytes(8, "big") + shape


def priority_of(key: bytes) -> int:
    """The priority of the tasks under ready-queue `key`.

    >>> priority_of(b"")
    0
    >>> priority_of(queue_key(b"", HIGHEST))
    2147483647
    """
    if key[:1] != _MARK:
        return 0
    return int.from_bytes(key[1:9], "big") - _BIAS


def in_order(keys: Iterable[bytes]) -> list[bytes]:
    """The ready-queue keys highest priority first; keys of one priority keep their order
    (the order their queues were made: first come, first served).

    >>> in_order([b"a", b"b"])
    [b'a', b'b']
    >>> in_order([queue_key(b"a", -1), b"b", queue_key(b"c", 2)]) == [
    ...     queue_key(b"c", 2), b"b", queue_key(b"a", -1)]
    True
    """
    listed = list(keys)
    for key in listed:
        if key[:1] == _MARK:
            return sorted(listed, key=lambda k: -priority_of(k))  # sorted() is stable
    return listed


def insert(queue: deque[T], item: T, priority: int, priority_of_item: Callable[[T], int]) -> None:
    """Put `item` into `queue` (kept highest priority first, FIFO within one) behind every
    item of its priority or higher. Appending is O(1) when nothing of lower priority waits
    (the usual case); otherwise the walk is over the lower-priority items only.

    >>> q = deque([5, 3, 3, 0])
    >>> insert(q, 3, 3, lambda x: x); list(q)
    [5, 3, 3, 3, 0]
    >>> insert(q, 9, 9, lambda x: x); list(q)
    [9, 5, 3, 3, 3, 0]
    >>> insert(q, -1, -1, lambda x: x); list(q)
    [9, 5, 3, 3, 3, 0, -1]
    """
    at = len(queue)
    while at > 0 and priority_of_item(queue[at - 1]) < priority:
        at -= 1
    if at == len(queue):
        queue.append(item)
    else:
        queue.insert(at, item)


def check(priority: object, where: str) -> int:
    """`priority` as an int, or ValueError naming `where` when it is not a whole number in
    the range a task's priority may take.

    >>> check(3, "app 'f'")
    3
    >>> check(1.5, "app 'f'")
    Traceback (most recent call last):
    ...
    ValueError: app 'f': priority=1.5; expected a whole number (higher runs first), default 0
    """
    if not isinstance(priority, int) or isinstance(priority, bool) or \
            not LOWEST <= priority <= HIGHEST:
        raise ValueError(f"{where}: priority={priority!r}; expected a whole number (higher "
                         "runs first), default 0" + (", from -2**31 to 2**31-1"
                                                     if isinstance(priority, int) else ""))
    return priority
