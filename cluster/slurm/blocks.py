"""The head's block manager: carries out the autoscaler's decisions.

Every ``strategy_period`` it polls the provider for the blocks' Slurm states (one squeue
call), builds the policy's input from the head's tables, calls
:func:`cluster.autoscaler.decide`, logs each reason, submits blocks (recording each job id
in the cluster file first), drains blocks (no new work; once their running tasks are done
their daemons are told to exit and the job is scancelled), and notices blocks that failed
or were cancelled from outside.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.common import clusterfile
from cluster.common.protocol import pb
from cluster.head.state import Head
from cluster.policy import autoscaler
from cluster.slurm.config import ScalingConfig
from cluster.slurm.provider import JobState, SlurmProvider

log = logging.getLogger("shoal.autoscaler")

ENDED = {"GONE", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
         "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}


@dataclass
class Block:
    """One submitted block."""

    block_id: str
    job_id: str = ""
    state: str = "pending"          # pending, running, draining, failed, done
    submitted: float = field(default_factory=time.monotonic)
    slurm_state: str = "PENDING"
    time_left: float | None = None
    reason: str = ""
    ever_joined: bool = False


class BlockManager:
    """Owns the blocks of one cluster."""

    def __init__(self, head: Head, cfg: ScalingConfig, provider: SlurmProvider,
                 cluster_id: str, run_blocking: Callable[..., Any] | None = None) -> None:
        self.head = head
        self.cfg = cfg
        self.provider = provider
        self.cluster_id = cluster_id
        self.blocks: dict[str, Block] = {}
        self.failures = 0
        self.last_failure = -math.inf
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
        for _ in range(self.cfg.init_blocks):
            await self._submit("init_blocks")
        while True:
            try:
                await self.step()
            except Exception:  # noqa: BLE001 - keep scaling; the next period retries
                log.exception("autoscaler step failed")
            await asyncio.sleep(self.cfg.strategy_period)

    async def step(self) -> autoscaler.Decision:
        """Poll Slurm, decide, act."""
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
    def _nodes_of(self, block_id: str) -> list[Any]:
        return [n for n in self.head.nodes.values() if n.block_id == block_id and n.alive]

    def snapshot(self) -> autoscaler.ScalingInput:
        """The policy's input, from the head's tables and the blocks."""
        queued, queued_cpus, running_cpus, unmet = self.head.demand()
        now = time.monotonic()
        views = []
        for block in self.blocks.values():
            nodes = self._nodes_of(block.block_id)
            idle = 0.0
            if nodes and len(nodes) >= self.cfg.nodes_per_block and \
                    all(n.idle_since is not None for n in nodes):
                idle = now - max(n.idle_since for n in nodes)
            views.append(autoscaler.BlockView(block.block_id, block.state, idle,
                                              block.time_left))
        static = sum(n.view.total.get("cpus", 0.0) for n in self.head.nodes.values()
                     if n.alive and not n.block_id)
        return autoscaler.ScalingInput(
            autoscaler.Demand(queued, queued_cpus, running_cpus, unmet), views, static,
            self.failures, now - self.last_failure)

    async def _poll(self) -> None:
        live = [b for b in self.blocks.values() if b.state in ("pending", "running", "draining")
                and b.job_id]
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
            elif block.state == "pending" and job.state == "RUNNING" and joined:
                block.state = "running"
                self.failures = 0
                log.info("block %s (job %s) is running", block.block_id, block.job_id)

    def _ended(self, block: Block, job: JobState) -> None:
        if block.state == "draining":
            block.state = "done"
            return
        if not block.ever_joined:
            block.state = "failed"
            self.failures += 1
            self.last_failure = time.monotonic()
            log.warning("block %s (job %s) ended without joining: %s %s; retrying after %.0fs",
                        block.block_id, block.job_id, job.state, block.reason,
                        autoscaler.backoff(self.failures))
        else:
            block.state = "done"
            log.warning("block %s (job %s) ended while in use (%s %s); its tasks are retried",
                        block.block_id, block.job_id, job.state, block.reason)

    # ---- actions -------------------------------------------------------------------------
    async def _submit(self, why: str) -> None:
        self._next += 1
        block = Block(str(self._next))
        self.blocks[block.block_id] = block
        try:
            block.job_id = await self._blocking(self.provider.submit, block.block_id)
        except Exception as err:  # noqa: BLE001
            block.state = "failed"
            block.reason = str(err)
            self.failures += 1
            self.last_failure = time.monotonic()
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
        if block is None or block.state not in ("pending", "running"):
            return
        block.state = "draining"
        self.head.drain([n.node_id for n in self._nodes_of(block_id)])
        log.info("draining block %s (job %s)", block_id, block.job_id)

    async def _finish_drains(self) -> None:
        done = []
        for block in self.blocks.values():
            if block.state != "draining":
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
                block.state = "done"
                log.info("block %s (job %s) drained and cancelled", block.block_id,
                         block.job_id)

    async def cancel_all(self) -> None:
        """scancel every block not known to be over (at shutdown)."""
        ids = [b.job_id for b in self.blocks.values() if b.job_id and b.state != "done"]
        if ids:
            await self._blocking(self.provider.cancel, ids)

    def status(self) -> list[pb.BlockInfo]:
        """Blocks for `clusterctl status`."""
        now = time.monotonic()
        snapshot = {v.block_id: v for v in self.snapshot().blocks}
        out = []
        for block in self.blocks.values():
            view = snapshot.get(block.block_id)
            out.append(pb.BlockInfo(
                block_id=block.block_id, job_id=block.job_id, state=block.state,
                nodes=len(self._nodes_of(block.block_id)), age=now - block.submitted,
                walltime_left=block.time_left if block.time_left is not None else -1,
                idle=view.idle_seconds if view else 0.0, reason=block.reason))
        return out
