"""Liveness policy: how often nodes heartbeat and when the head gives up on one. Pure
functions, no I/O.

Each heartbeat costs the head ~150-300 us of CPU (one gRPC-Python message; measured with
simulated nodes: the idle head used 0.79 of a core at 5,000 nodes heartbeating every
second, and 0.156 at 1,000 nodes beating every 2 s). So the interval grows with the
cluster, keeping heartbeats to about :data:`BEATS_PER_SECOND` in total (under 0.1 core),
and the timeout grows with the interval. A daemon that dies is still noticed at once (its
stream breaks, and gRPC keepalive pings, handled in C, end a silent stream within ~15 s);
the heartbeat timeout is the backstop for a node that hangs.
"""

from __future__ import annotations

#: Heartbeats per second the head budgets for, over all nodes together.
BEATS_PER_SECOND = 250.0
MIN_INTERVAL = 1.0
MAX_INTERVAL = 30.0
#: Intervals a node may miss before the head gives up on it.
MISSED_BEATS = 3.0


def heartbeat_interval(nodes: int) -> float:
    """Seconds between one node's heartbeats in a cluster of `nodes` alive nodes.

    >>> heartbeat_interval(3)
    1.0
    >>> heartbeat_interval(5000)
    20.0
    >>> heartbeat_interval(10**6)
    30.0
    """
    return min(MAX_INTERVAL, max(MIN_INTERVAL, nodes / BEATS_PER_SECOND))


def node_timeout(base: float, interval: float) -> float:
    """Seconds of silence after which a node is lost: at least `base` (the configured
    timeout), and never fewer than :data:`MISSED_BEATS` intervals.

    >>> node_timeout(10.0, 1.0)
    10.0
    >>> node_timeout(10.0, 10.0)
    30.0
    """
    return max(base, MISSED_BEATS * interval)


def needs_update(told: float, wanted: float) -> bool:
    """Whether nodes told `told` must hear the new interval `wanted`: when it has grown or
    shrunk by half or more (so a cluster losing nodes one by one does not re-tell every
    node at each loss). Beating at `told` meanwhile is always safe: the head's timeout
    follows what it told.

    >>> needs_update(1.0, 1.2)
    False
    >>> needs_update(1.0, 2.0)
    True
    >>> needs_update(4.0, 2.0)
    True
    >>> needs_update(4.0, 3.0)
    False
    """
    return wanted >= 1.5 * told or wanted * 1.5 <= told
