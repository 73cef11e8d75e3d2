"""The head's block manager: carries out the autoscaler's decisions.

Every ``strategy_period`` it polls the provider for the blocks' Slurm states (one squeue
call), builds the policy's input from the head's tables, calls
:func:`cluster.policy.autoscaler.decide`, logs each reason, submits blocks (recording each
job id in the cluster file first), drains blocks (no new work; once their running tasks
are done their daemons are told to exit and the job is scancelled), and notices blocks
that failed or were cancelled from outside.

It sees the head only through :class:`HeadView` and the batch system only through
:class:`~cluster.slurm.provider.BlockProvider`, so unit tests drive it with fakes of both
and a fake clock (``tests/unit/test_blocks.py``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

from cluster.common import clusterfile
from cluster.common.protocol import pb
from cluster.policy import autoscaler
from cluster.slurm.config import ScalingConfig
from cluster.slurm.provider import BlockProvider, JobState

log = logging.getLogger("shoal.autoscaler")

#: Slurm states of a job that is over ("GONE": squeue no longer lists it).
ENDED = {"GONE", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
         "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}


# ---- what the block manager needs of the head ----------------------------------------------
class NodeResources(Protocol):
    """A node's scheduler view (the head's ``node.view``), as far as blocks read it."""

    @property
    def total(self) -> Mapping[str, float]:
        """The resources the node brings ("cpus", "gpus", "memory", custom)."""
        ...


class NodeRecord(Protocol):
    """One of the head's node records (``cluster.head.state._Node`` at this writing), read-only."""

    @property
    def node_id(self) -> int:
        """The head's id of the node."""
        ...

    @property
    def block_id(self) -> str:
        """The block whose daemon this is; "" for a node of no block (an allocation's)."""
        ...

    @property
    def alive(self) -> bool:
        """False once the head has lost the node's daemon."""
        ...

    @property
    def draining(self) -> bool:
        """True once :meth:`HeadView.drain` was called for the node."""
        ...

    @property
    def idle_since(self) -> float | None:
        """``time.monotonic()`` when the node last ran out of work; None while it has some."""
        ...

    @property
    def running(self) -> Sized:
        """The tasks running on the node (only emptiness is looked at)."""
        ...

    @property
    def view(self) -> NodeResources:
        """The node's resources."""
        ...


class HeadView(Protocol):
    """The head as the block manager uses it (:class:`cluster.head.state.Head` is one).

    The manager publishes two attributes on it: the shape of a block node, so tasks that
    only a block could run wait instead of failing, and a callback for the blocks of
    ``clusterctl status``.
    """

    block_shape: dict[str, float]
    blocks_status: Callable[[], list[pb.BlockInfo]] | None

    @property
    def nodes(self) -> Mapping[int, NodeRecord]:
        """Every node the head knows, by node id (dead ones included)."""
        ...

    def demand(self) -> tuple[int, float, float, bool]:
        """(queued tasks, their CPUs, CPUs in use on nodes, whether a queued task fits only
        a block node)."""
        ...

    def drain(self, node_ids: list[int]) -> None:
        """No new work for these nodes; what runs there finishes."""
        ...

    def stop_node(self, node_id: int) -> None:
        """Tell a node's daemon to exit."""
        ...


# ---- blocks and their states ---------------------------------------------------------------
class BlockState(enum.StrEnum):
    """Where a block is in its life; the values are what ``clusterctl status`` shows."""

    PENDING = "pending"      # submitted; not yet running with its daemons joined
    RUNNING = "running"      # Slurm runs it and a daemon of it joined the head
    DRAINING = "draining"    # no new work; cancelled once its nodes are idle or gone
    FAILED = "failed"        # never started: sbatch failed, or it ended before any daemon joined
    DONE = "done"            # over: drained and cancelled, or ended (in use) from outside


#: Every allowed move. PENDING may end either way: FAILED when no daemon ever joined (that
#: is what backs submissions off), DONE when one had joined before Slurm said RUNNING.
#: FAILED and DONE are final.
TRANSITIONS: dict[BlockState, frozenset[BlockState]] = {
    BlockState.PENDING: frozenset({BlockState.RUNNING, BlockState.DRAINING, BlockState.FAILED,
                                   BlockState.DONE}),
    BlockState.RUNNING: frozenset({BlockState.DRAINING, BlockState.DONE}),
    BlockState.DRAINING: frozenset({BlockState.DONE}),
    BlockState.FAILED: frozenset(),
    BlockState.DONE: frozenset(),
}

#: States whose job may still hold Slurm nodes: polled every period.
LIVE = frozenset({BlockState.PENDING, BlockState.RUNNING, BlockState.DRAINING})


class InvalidTransition(RuntimeError):
    """A block was asked to make a move :data:`TRANSITIONS` does not allow."""


@dataclass
class Block:
    """One submitted block. Its state changes only through :meth:`move`."""

    block_id: str
    job_id: str = ""
    submitted: float = field(default_factory=time.monotonic)
    slurm_state: str = "PENDING"
    time_left: float | None = None
    reason: str = ""
    ever_joined: bool = False
    _state: BlockState = field(default=BlockState.PENDING, init=False, repr=False)

    @property
    def state(self) -> BlockState:
        """The block's state (every block starts PENDING)."""
        return self._state

    def move(self, to: BlockState) -> None:
        """Change the state to `to`; raises InvalidTransition for a move not allowed.

        >>> b = Block("1"); b.move(BlockState.RUNNING); b.state
        <BlockState.RUNNING: 'running'>
        >>> b.move(BlockState.FAILED)
        Traceback (most recent call last):
        ...
        cluster.slurm.blocks.InvalidTransition: block 1: running -> failed is not allowed
        """
        if to not in TRANSITIONS[self._state]:
            raise InvalidTransition(f"block {self.block_id}: {self._state} -> {to} is not "
                                  "allowed")
        self._state = to


class BlockManager:
    """Owns the blocks of one cluster.

    `clock` must be the clock the head stamps ``idle_since`` with (``time.monotonic``);
    tests pass a fake one to both. `run_blocking` runs a provider call; by default in the
    event loop's executor, so a slow sbatch never stalls the head.
    """

    def __init__(self, head: HeadView, cfg: ScalingConfig, provider: BlockProvider,
                 cluster_id: str, run_blocking: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.head = head
        self.cfg = cfg
        self.provider = provider
        self.cluster_id = cluster_id
        self.clock = clock
        self.blocks: dict[str, Block] = {}
        self.failures = 0                 # consecutive blocks that failed to start
        self.last_failure = -math.inf     # clock() of the latest such failure
        self._next = 0
        self._last_reasons: list[str] = []
        self._run_blocking = run_blocking
        head.block_shape = cfg.node_resources()
        head.blocks_status = self.status

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._run_blocking is not None:
            return self._run_blocking(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # ---- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """Scale until cancelled; `init_blocks` are submitted first."""
        await self.start()
        while True:
            try:
                await self.step()
            except Exception:  # noqa: BLE001 - keep scaling; the next period retries
                log.exception("autoscaler step failed")
            await asyncio.sleep(self.cfg.strategy_period)

    async def start(self) -> None:
        """Submit the `init_blocks`."""
        for _ in range(self.cfg.init_blocks):
            await self._submit("init_blocks")

    async def step(self) -> autoscaler.Decision:
        """One period: poll Slurm, decide, act."""
        await self._poll()
        decision = autoscaler.decide(self.snapshot(), self.cfg)
        if decision.reasons != self._last_reasons:  # log changes, not every period
            for reason in decision.reasons:
                log.info("scaling: %s", reason)
            self._last_reasons = decision.reasons
        for block_id in decision.drain:
            self._drain(block_id)
        for _ in range(decision.add):
            await self._submit("scale out")
        await self._finish_drains()
        return decision

    # ---- state ---------------------------------------------------------------------------
    def _nodes_of(self, block_id: str) -> list[NodeRecord]:
        return [n for n in self.head.nodes.values() if n.block_id == block_id and n.alive]

    def snapshot(self) -> autoscaler.ScalingInput:
        """The policy's input, from the head's tables and the blocks."""
        queued, queued_cpus, running_cpus, unmet = self.head.demand()
        now = self.clock()
        views = []
        for block in self.blocks.values():
            nodes = self._nodes_of(block.block_id)
            idle = 0.0
            # Idle only once the whole block has joined and every node of it is idle.
            if nodes and len(nodes) >= self.cfg.nodes_per_block and \
                    all(n.idle_since is not None for n in nodes):
                idle = now - max(n.idle_since for n in nodes if n.idle_since is not None)
            views.append(autoscaler.BlockView(block.block_id, block.state.value, idle,
                                              block.time_left))
        static = sum(n.view.total.get("cpus", 0.0) for n in self.head.nodes.values()
                     if n.alive and not n.block_id)
        return autoscaler.ScalingInput(
            autoscaler.Demand(queued, queued_cpus, running_cpus, unmet), views, static,
            self.failures, now - self.last_failure)

    async def _poll(self) -> None:
        live = [b for b in self.blocks.values() if b.state in LIVE and b.job_id]
        if not live:
            return
        states: dict[str, JobState] = await self._blocking(
            self.provider.status, [b.job_id for b in live])
        for block in live:
            job = states.get(block.job_id, JobState("GONE", None))
            block.slurm_state, block.time_left = job.state, job.time_left
            if job.reason and job.reason != "None":
                block.reason = job.reason
            joined = bool(self._nodes_of(block.block_id))
            block.ever_joined = block.ever_joined or joined
            if job.state in ENDED:
                self._ended(block, job)
            elif block.state == BlockState.PENDING and job.state == "RUNNING" and joined:
                block.move(BlockState.RUNNING)
                self.failures = 0
                log.info("block %s (job %s) is running", block.block_id, block.job_id)

    def _ended(self, block: Block, job: JobState) -> None:
        if block.state == BlockState.DRAINING:
            block.move(BlockState.DONE)
            return
        if not block.ever_joined:
            block.move(BlockState.FAILED)
            self._failed_start()
            log.warning("block %s (job %s) ended without joining: %s %s; retrying after %.0fs",
                        block.block_id, block.job_id, job.state, block.reason,
                        autoscaler.backoff(self.failures))
        else:
            block.move(BlockState.DONE)
            log.warning("block %s (job %s) ended while in use (%s %s); its tasks are retried",
                        block.block_id, block.job_id, job.state, block.reason)

    def _failed_start(self) -> None:
        self.failures += 1
        self.last_failure = self.clock()

    # ---- actions -------------------------------------------------------------------------
    async def _submit(self, why: str) -> None:
        self._next += 1
        block = Block(str(self._next), submitted=self.clock())
        self.blocks[block.block_id] = block
        try:
            block.job_id = await self._blocking(self.provider.submit, block.block_id)
        except Exception as err:  # noqa: BLE001
            block.move(BlockState.FAILED)
            block.reason = str(err)
            self._failed_start()
            log.warning("sbatch for block %s failed (%s); backing off %.0fs", block.block_id,
                        err, autoscaler.backoff(self.failures))
            return
        self._record(block.job_id)
        log.info("submitted block %s as job %s (%s)", block.block_id, block.job_id, why)

    def _record(self, job_id: str) -> None:
        """Put a job id in the cluster file, so `down` can cancel it whatever happens."""
        try:
            cf = clusterfile.read(clusterfile.path_for(self.cluster_id))
        except ValueError:
            return
        if job_id not in cf.slurm_jobs:
            cf.slurm_jobs.append(job_id)
            cf.save()

    def _drain(self, block_id: str) -> None:
        block = self.blocks.get(block_id)
        if block is None or block.state not in (BlockState.PENDING, BlockState.RUNNING):
            return
        block.move(BlockState.DRAINING)
        self.head.drain([n.node_id for n in self._nodes_of(block_id)])
        log.info("draining block %s (job %s)", block_id, block.job_id)

    async def _finish_drains(self) -> None:
        done = []
        for block in self.blocks.values():
            if block.state != BlockState.DRAINING:
                continue
            nodes = self._nodes_of(block.block_id)
            self.head.drain([n.node_id for n in nodes])  # nodes that joined late
            if any(n.running for n in nodes):
                continue
            for node in nodes:
                self.head.stop_node(node.node_id)
            done.append(block)
        if done:
            await self._blocking(self.provider.cancel, [b.job_id for b in done if b.job_id])
            for block in done:
                block.move(BlockState.DONE)
                log.info("block %s (job %s) drained and cancelled", block.block_id,
                         block.job_id)

    async def cancel_all(self) -> None:
        """scancel every block not known to be over (at shutdown)."""
        ids = [b.job_id for b in self.blocks.values()
               if b.job_id and b.state != BlockState.DONE]
        if ids:
            await self._blocking(self.provider.cancel, ids)

    # ---- checks and status ---------------------------------------------------------------
    def validate(self) -> None:
        """Raise AssertionError naming the first broken rule; holds between steps.

        Not ``assert`` statements: tests call this after every step, and ``python -O``
        must not turn it into a no-op.
        """
        def fail(message: str) -> None:
            raise AssertionError(f"block manager invariant: {message}")

        active = [b for b in self.blocks.values()
                  if b.state in (BlockState.PENDING, BlockState.RUNNING)]
        if len(active) > self.cfg.max_blocks:
            fail(f"{len(active)} pending/running blocks > max_blocks={self.cfg.max_blocks}")
        for key, block in self.blocks.items():
            if key != block.block_id or not 0 < int(block.block_id) <= self._next:
                fail(f"block {block.block_id} filed as {key!r} (last id {self._next})")
            if not isinstance(block.state, BlockState):
                fail(f"block {key} has state {block.state!r}")
            if block.state in LIVE and not block.job_id:
                fail(f"block {key} is {block.state} without a job id")
            if block.state == BlockState.RUNNING and not block.ever_joined:
                fail(f"block {key} is running but no daemon of it ever joined")
            if block.state == BlockState.DRAINING:
                working = [n.node_id for n in self._nodes_of(key) if not n.draining]
                if working:
                    fail(f"block {key} is draining but nodes {working} still take work")
        if self.failures < 0 or (self.failures and self.last_failure == -math.inf):
            fail(f"failures={self.failures} with last failure at {self.last_failure}")

    def status(self) -> list[pb.BlockInfo]:
        """Blocks for `clusterctl status`."""
        now = self.clock()
        snapshot = {v.block_id: v for v in self.snapshot().blocks}
        out = []
        for block in self.blocks.values():
            view = snapshot.get(block.block_id)
            out.append(pb.BlockInfo(
                block_id=block.block_id, job_id=block.job_id, state=block.state.value,
                nodes=len(self._nodes_of(block.block_id)), age=now - block.submitted,
                walltime_left=block.time_left if block.time_left is not None else -1,
                idle=view.idle_seconds if view else 0.0, reason=block.reason))
        return out
