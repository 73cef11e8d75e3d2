"""Liveness policy: how often nodes heartbeat and when the head gives up on one. Pure
functions, no I/O.

Each heartbeat costs the head ~150-300 us of CPU (one gRPC-Python message; measured with
simulated nodes: the idle head used 0.79 of a core at 5,000 nodes heartbeating every
second, 0.116 at 250 beats a second in all). So the interval grows with the cluster,
keeping heartbeats to about :data:`BEATS_PER_SECOND` in total, and the timeout grows with
the interval. That is safe because heartbeats only catch a daemon that *hangs*: one that
dies, or whose host does, is noticed at once (its stream breaks, and gRPC keepalive pings,
handled in C, end a silent stream within ~15 s), whatever the interval; and what a
heartbeat carries (queued tasks, workers, store use) only feeds ``clusterctl status``. A
hung daemon in a 5,000-node cluster is given up after 150 s, about what Parsl's
HighThroughputExecutor does by default (30 s beats, 120 s threshold) and under Dask's
5-minute worker TTL.
"""

from __future__ import annotations

#: Heartbeats per second the head budgets for, over all nodes together.
BEATS_PER_SECOND = 100.0
MIN_INTERVAL = 1.0
MAX_INTERVAL = 60.0
#: Intervals a node may miss before the head gives up on it.
MISSED_BEATS = 3.0


def heartbeat_interval(nodes: int) -> float:
    """Seconds between one node's heartbeats in a cluster of `nodes` alive nodes.

    >>> heartbeat_interval(3)
    1.0
    >>> heartbeat_interval(5000)
    50.0
    >>> heartbeat_interval(10**6)
    60.0
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


def check_period(timeout: float) -> float:
    """Seconds between the head's walks over every node looking for silent ones: a tenth
    of the `timeout` (so a hung node is given up at most 10% late), at least 1 s. At 5,000
    nodes the walk is O(nodes); once a second it was a needless share of an idle head.

    >>> check_period(10.0)
    1.0
    >>> check_period(150.0)
    15.0
    """
    return max(1.0, timeout / 10.0)
