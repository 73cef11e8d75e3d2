"""Autoscaling policy: a pure function from the cluster's state to blocks to add and drain.

No I/O here; :mod:`cluster.slurm.blocks` gathers the state, calls :func:`decide` every
``strategy_period`` and carries the decision out through the provider.

Rules (Parsl's, with what its users asked for):

- Capacity counts running *and pending* blocks (a pending block is capacity on its way),
  plus nodes that are not blocks (an allocation's own nodes). Draining blocks do not count.
- Scale out when the work outstanding (queued + running CPUs) times ``parallelism``
  exceeds capacity, or when a queued task needs resources no current node has but a block
  node would (a GPU); never beyond ``max_blocks`` active blocks; keep ``min_blocks``.
- Scale in only a block that has been idle ``max_idletime`` while nothing is queued, and
  only by draining it: no new work goes to it, running tasks finish, then it is cancelled.
- A block within ``drain_margin`` of its walltime is drained, and replaced in advance while
  work remains (the replacement is counted like any other scale-out).
- After a block fails to start, submissions back off exponentially (5 s, 10 s, ... 5 min).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cluster.slurm.config import ScalingConfig

BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0

ACTIVE = ("pending", "running")


@dataclass(frozen=True)
class BlockView:
    """A block as the policy sees it."""

    block_id: str
    state: str                         # pending, running, draining, failed, done
    idle_seconds: float = 0.0          # how long all its nodes have had nothing to do
    walltime_left: float | None = None  # seconds, once running


@dataclass(frozen=True)
class Demand:
    """The cluster's work."""

    queued_tasks: int = 0
    queued_cpus: float = 0.0
    running_cpus: float = 0.0
    unmet: bool = False                # a queued task fits a block node but no current node


@dataclass(frozen=True)
class ScalingInput:
    """Everything :func:`decide` looks at."""

    demand: Demand
    blocks: Sequence[BlockView] = ()
    static_cpus: float = 0.0           # CPUs of nodes that belong to no block
    failures: int = 0                  # consecutive blocks that failed to start
    since_failure: float = math.inf    # seconds since the last such failure


@dataclass
class Decision:
    """What to do now, and why (each reason is logged)."""

    add: int = 0
    drain: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def backoff(failures: int) -> float:
    """Seconds to wait before submitting again after `failures` failed starts.

    >>> [backoff(n) for n in range(5)]
    [0.0, 5.0, 10.0, 20.0, 40.0]
    >>> backoff(30)
    300.0
    """
    if failures <= 0:
        return 0.0
    return min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** (failures - 1))


def decide(state: ScalingInput, cfg: ScalingConfig) -> Decision:
    """Blocks to add and to drain. Pure: same input, same decision.

    >>> from cluster.slurm.config import ScalingConfig
    >>> cfg = ScalingConfig(cores_per_node=2, max_blocks=2, min_blocks=0)
    >>> decide(ScalingInput(Demand(queued_tasks=24, queued_cpus=24)), cfg).add
    2
    >>> idle = BlockView("7", "running", idle_seconds=10 * cfg.max_idletime)
    >>> decide(ScalingInput(Demand(), blocks=[idle]), cfg).drain
    ['7']
    """
    out = Decision()
    demand = state.demand
    slots = cfg.nodes_per_block * cfg.cores_per_node
    active = [b for b in state.blocks if b.state in ACTIVE]
    running = [b for b in state.blocks if b.state == "running"]

    # Walltime: drain blocks about to be killed by Slurm.
    expiring = [b for b in running if b.walltime_left is not None
                and b.walltime_left <= cfg.drain_margin]
    for block in expiring:
        out.drain.append(block.block_id)
        out.reasons.append(f"drain block {block.block_id}: {block.walltime_left:.0f}s of "
                           f"walltime left (drain_margin {cfg.drain_margin:g}s)")
    staying = [b for b in active if b.block_id not in out.drain]

    # Scale in: idle blocks, only when nothing waits, keeping min_blocks.
    if demand.queued_tasks == 0:
        idle = sorted((b for b in staying if b.state == "running"
                       and b.idle_seconds >= cfg.max_idletime),
                      key=lambda b: -b.idle_seconds)
        for block in idle:
            if len(staying) <= cfg.min_blocks:
                break
            staying.remove(block)
            out.drain.append(block.block_id)
            out.reasons.append(f"drain block {block.block_id}: idle {block.idle_seconds:.0f}s "
                               f">= max_idletime {cfg.max_idletime:g}s")

    # Scale out.
    want = 0
    if len(staying) < cfg.min_blocks:
        want = cfg.min_blocks - len(staying)
        out.reasons.append(f"keep min_blocks={cfg.min_blocks}: {len(staying)} active")
    if demand.queued_tasks > 0:
        capacity = state.static_cpus + len(staying) * slots
        needed = (demand.queued_cpus + demand.running_cpus) * cfg.parallelism
        extra = 0
        if needed > capacity:
            extra = math.ceil((needed - capacity) / slots)
            out.reasons.append(f"{demand.queued_tasks} tasks queued: {needed:g} CPUs of work "
                               f"x parallelism > capacity {capacity:g}")
        if demand.unmet and not any(b.state == "pending" for b in staying) and extra == 0:
            extra = 1
            out.reasons.append("a queued task needs resources only a new block has")
        want = max(want, extra)
    room = cfg.max_blocks - len(staying)
    if want > room:
        if room <= 0:
            out.reasons.append(f"at max_blocks={cfg.max_blocks}; not adding")
        want = max(room, 0)
    if want and state.failures and state.since_failure < backoff(state.failures):
        out.reasons.append(f"backing off after {state.failures} failed block starts "
                           f"({backoff(state.failures):.0f}s between tries)")
        want = 0
    out.add = want
    return out
