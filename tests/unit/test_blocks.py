"""The block manager driven step by step: fake provider, fake head, fake clock; no processes,
no Slurm.

:class:`FakeProvider` moves jobs PENDING -> RUNNING -> COMPLETED/FAILED when a test says so;
:class:`FakeHead` holds nodes that "join" and run 1-CPU tasks on command. Each test calls
``BlockManager.step`` directly (through :meth:`Rig.step`, which also runs
``BlockManager.validate``), so every decision is observed at the tick it is made.
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import importlib
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from cluster.common import clusterfile
from cluster.policy import autoscaler
from cluster.policy.scheduler import NodeView
from cluster.slurm import config
from cluster.slurm.blocks import (
    TRANSITIONS,
    Block,
    BlockManager,
    BlockState,
    HeadView,
    InvalidTransition,
)
from cluster.slurm.commands import SlurmError
from cluster.slurm.provider import BlockProvider, JobState, SlurmProvider

CLUSTER_ID = "blocks-test"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Clock:
    """A clock that moves only when told (seconds, like ``time.monotonic``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---- the fake provider ---------------------------------------------------------------------
@dataclass
class FakeJob:
    """One job of the fake batch system."""

    block_id: str
    state: str = "PENDING"
    started: float | None = None
    reason: str = "Priority"


class FakeProvider:
    """A :class:`BlockProvider` without Slurm. Jobs stay PENDING until :meth:`start`, then
    RUNNING until :meth:`finish`; :meth:`cancel` makes them CANCELLED, as scancel would.
    Set :attr:`submit_error` to make sbatch fail."""

    def __init__(self, clock: Clock, walltime: float) -> None:
        self.clock = clock
        self.walltime = walltime
        self.jobs: dict[str, FakeJob] = {}
        self.cancelled: list[str] = []
        self.submit_error: str = ""
        self._next = 500

    # the three verbs
    def submit(self, block_id: str) -> str:
        if self.submit_error:
            raise SlurmError(self.submit_error)
        self._next += 1
        self.jobs[str(self._next)] = FakeJob(block_id)
        return str(self._next)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        out = {}
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None:
                out[job_id] = JobState("GONE", None)
                continue
            left = None
            if job.state == "RUNNING" and job.started is not None:
                left = max(0.0, self.walltime - (self.clock() - job.started))
            out[job_id] = JobState(job.state, left, job.reason)
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self.cancelled.append(job_id)
            job = self.jobs.get(job_id)
            if job is not None and job.state in ("PENDING", "RUNNING"):
                job.state, job.reason = "CANCELLED", "None"

    # test controls
    def job_of(self, block_id: str) -> str:
        """The job id of a block."""
        return next(j for j, job in self.jobs.items() if job.block_id == block_id)

    def start(self, job_id: str) -> None:
        """PENDING -> RUNNING: Slurm gave the job its nodes."""
        job = self.jobs[job_id]
        assert job.state == "PENDING", job.state
        job.state, job.started, job.reason = "RUNNING", self.clock(), "None"

    def finish(self, job_id: str, state: str = "COMPLETED", reason: str = "None") -> None:
        """The job ended (COMPLETED, FAILED, TIMEOUT, ...), from PENDING or RUNNING."""
        job = self.jobs[job_id]
        assert job.state in ("PENDING", "RUNNING"), job.state
        job.state, job.reason = state, reason


# ---- the fake head -------------------------------------------------------------------------
@dataclass
class FakeNode:
    """A node record with the fields :class:`cluster.slurm.blocks.NodeRecord` reads."""

    node_id: int
    block_id: str
    view: NodeView
    idle_since: float | None
    alive: bool = True
    draining: bool = False
    running: set[int] = field(default_factory=set)


class FakeHead:
    """A :class:`HeadView`: 1-CPU tasks queue here and run on nodes when :meth:`dispatch`
    is called; nodes join, finish tasks and die when a test says so."""

    def __init__(self, clock: Clock, cores_per_node: int) -> None:
        self.clock = clock
        self.cores = cores_per_node
        self.nodes: dict[int, FakeNode] = {}
        self.queued = 0
        self.unmet = False
        self.stopped: list[int] = []
        self.block_shape: dict[str, float] = {}
        self.blocks_status = None
        self._next_node = 0
        self._next_task = 0

    def demand(self) -> tuple[int, float, float, bool]:
        running = sum(len(n.running) for n in self.nodes.values() if n.alive)
        return self.queued, float(self.queued), float(running), self.unmet

    def drain(self, node_ids: list[int]) -> None:
        for node_id in node_ids:
            self.nodes[node_id].draining = True

    def stop_node(self, node_id: int) -> None:
        self.stopped.append(node_id)

    # test controls
    def join(self, block_id: str, count: int = 1) -> list[int]:
        """`count` daemons of `block_id` register (idle)."""
        ids = []
        for _ in range(count):
            self._next_node += 1
            self.nodes[self._next_node] = FakeNode(
                self._next_node, block_id, NodeView(self._next_node, {"cpus": self.cores}),
                idle_since=self.clock())
            ids.append(self._next_node)
        return ids

    def dispatch(self) -> None:
        """Queued tasks go to free slots of alive nodes that are not draining."""
        for node in self.nodes.values():
            while self.queued and node.alive and not node.draining and \
                    len(node.running) < self.cores:
                self._next_task += 1
                node.running.add(self._next_task)
                node.idle_since = None
                self.queued -= 1

    def finish_tasks(self, node_id: int) -> None:
        """Every task on the node is done."""
        node = self.nodes[node_id]
        node.running.clear()
        node.idle_since = self.clock()

    def lose(self, node_id: int) -> None:
        """The node's daemon is gone (its tasks go back to the queue)."""
        node = self.nodes[node_id]
        self.queued += len(node.running)
        node.running.clear()
        node.alive = False


# ---- the rig -------------------------------------------------------------------------------
@dataclass
class Rig:
    """A manager wired to the fakes; :meth:`step` is one ``strategy_period``."""

    clock: Clock
    head: FakeHead
    provider: FakeProvider
    manager: BlockManager

    def step(self, advance: float = 0.0) -> autoscaler.Decision:
        """Move the clock, run one step, check the manager's invariants."""
        self.clock.advance(advance)
        decision = asyncio.run(self.manager.step())
        self.manager.validate()
        return decision

    def state(self, block_id: str) -> BlockState:
        """A block's state."""
        return self.manager.blocks[block_id].state

    def bring_up(self, block_id: str) -> list[int]:
        """Slurm starts the block's job and its daemons join; returns their node ids."""
        self.provider.start(self.provider.job_of(block_id))
        return self.head.join(block_id, self.manager.cfg.nodes_per_block)

    def recorded(self) -> list[str]:
        """The job ids in the cluster file."""
        return clusterfile.read(clusterfile.path_for(CLUSTER_ID)).slurm_jobs


@pytest.fixture
def make(tmp_path, monkeypatch):
    """make(**config keys) -> Rig, with its cluster file under a private SHOAL_HOME."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    clusterfile.write(clusterfile.ClusterFile(cluster_id=CLUSTER_ID, address="h:1",
                                              secret="s"))

    def build(**keys: object) -> Rig:
        values = {"nodes_per_block": 1, "cores_per_node": 2, "init_blocks": 0,
                  "min_blocks": 0, "max_blocks": 2, "max_idletime": 60, "drain_margin": 60,
                  "walltime": "00:30:00", **keys}
        cfg = config.from_mapping(values)
        clock = Clock()
        head = FakeHead(clock, cfg.cores_per_node)
        provider = FakeProvider(clock, config.parse_walltime(cfg.walltime))
        manager = BlockManager(head, cfg, provider, CLUSTER_ID,
                               run_blocking=lambda fn, *args: fn(*args), clock=clock)
        manager.validate()
        return Rig(clock, head, provider, manager)

    return build


# ---- seams ---------------------------------------------------------------------------------
def _signature(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_real_head_and_slurm_provider_offer_what_the_protocols_describe():
    from cluster.head.state import Head

    head = Head("seam-check")
    for name in ("nodes", "block_shape", "blocks_status"):
        assert hasattr(head, name), name
    for name in ("demand", "drain", "stop_node"):
        assert _signature(getattr(Head, name)) == _signature(getattr(HeadView, name)), name
    for name in ("submit", "status", "cancel"):
        assert _signature(getattr(SlurmProvider, name)) == \
            _signature(getattr(BlockProvider, name)), name


def test_block_manager_does_not_import_the_head():
    with open(os.path.join(ROOT, "cluster", "slurm", "blocks.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("cluster.head")], imported


def test_manager_publishes_block_shape_and_status(make):
    rig = make(cores_per_node=4, gpus_per_node=1)
    assert rig.head.block_shape == {"cpus": 4.0, "gpus": 1.0}
    assert rig.head.blocks_status == rig.manager.status


# ---- the state machine ---------------------------------------------------------------------
def test_only_the_moves_in_the_table_are_allowed():
    assert set(TRANSITIONS) == set(BlockState)
    for start in BlockState:
        for to in BlockState:
            block = Block("1")
            if start != BlockState.PENDING:
                block.move(start)  # every state is one move away from PENDING
            if to in TRANSITIONS[start]:
                block.move(to)
                assert block.state == to
            else:
                with pytest.raises(InvalidTransition, match=f"{start} -> {to}"):
                    block.move(to)
                assert block.state == start
    assert not TRANSITIONS[BlockState.DONE] and not TRANSITIONS[BlockState.FAILED]


def test_validate_names_a_broken_invariant(make):
    rig = make(max_blocks=1)
    for block_id in ("1", "2"):
        rig.manager.blocks[block_id] = Block(block_id, job_id="9" + block_id)
    rig.manager._next = 2
    with pytest.raises(AssertionError, match="max_blocks=1"):
        rig.manager.validate()
    del rig.manager.blocks["2"]
    rig.manager.blocks["1"].move(BlockState.DRAINING)
    rig.head.join("1")
    with pytest.raises(AssertionError, match="draining but nodes"):
        rig.manager.validate()


# ---- scaling out ---------------------------------------------------------------------------
def test_init_blocks_are_submitted_and_recorded_at_start(make):
    rig = make(init_blocks=2)
    asyncio.run(rig.manager.start())
    rig.manager.validate()
    assert sorted(rig.manager.blocks) == ["1", "2"]
    assert rig.recorded() == sorted(rig.provider.jobs)


def test_queued_work_scales_out_but_never_above_max_blocks(make):
    rig = make(max_blocks=2)
    assert rig.step().add == 0 and not rig.provider.jobs  # nothing queued: nothing added
    rig.head.queued = 10
    decision = rig.step()
    assert decision.add == 2
    assert [rig.state(b) for b in ("1", "2")] == [BlockState.PENDING] * 2
    # Each job id is in the cluster file as soon as sbatch returned, while still pending.
    assert rig.recorded() == sorted(rig.provider.jobs) and len(rig.recorded()) == 2

    decision = rig.step(1)  # pending blocks are capacity on its way, and we are at max
    assert decision.add == 0 and any("max_blocks=2" in r for r in decision.reasons)
    for block_id in ("1", "2"):
        rig.bring_up(block_id)
    rig.step(1)
    assert [rig.state(b) for b in ("1", "2")] == [BlockState.RUNNING] * 2
    rig.head.dispatch()
    rig.head.queued += 100
    for _ in range(5):
        assert rig.step(1).add == 0
    assert len(rig.provider.jobs) == 2 and len(rig.manager.blocks) == 2


def test_a_task_only_a_block_can_run_adds_one_block(make):
    rig = make(max_blocks=3)
    rig.head.queued, rig.head.unmet = 1, True
    assert rig.step().add == 1
    assert rig.step(1).add == 0  # one pending block is enough: it will bring the resource


def test_pending_block_becomes_running_only_once_a_daemon_joined(make):
    rig = make()
    rig.head.queued = 1
    rig.step()
    rig.provider.start(rig.provider.job_of("1"))
    rig.step(1)
    assert rig.state("1") == BlockState.PENDING  # Slurm runs it, but nobody joined yet
    rig.head.join("1")
    rig.step(1)
    assert rig.state("1") == BlockState.RUNNING


# ---- scaling in ----------------------------------------------------------------------------
def test_idle_block_is_drained_after_max_idletime_then_stopped_and_cancelled(make):
    rig = make(max_idletime=60)
    rig.head.queued = 2
    rig.step()
    [node] = rig.bring_up("1")
    rig.step(1)
    rig.head.dispatch()
    rig.step(1)
    rig.head.finish_tasks(node)  # idle from now
    job = rig.provider.job_of("1")

    assert rig.step(59).drain == []
    assert rig.state("1") == BlockState.RUNNING
    rig.head.queued = 1  # something waits: an idle block is kept however long it idles
    assert rig.step(30).drain == []
    rig.head.queued = 0
    decision = rig.step(1)
    assert decision.drain == ["1"] and any("max_idletime" in r for r in decision.reasons)
    # Its only node was idle, so in the same step: drained, told to stop, then scancelled.
    assert rig.head.nodes[node].draining and rig.head.stopped == [node]
    assert rig.provider.cancelled == [job]
    assert rig.state("1") == BlockState.DONE
    rig.step(1)  # a done block is neither polled nor cancelled again
    assert rig.provider.cancelled == [job]


def test_min_blocks_are_never_drained_for_idleness(make):
    rig = make(min_blocks=1, max_blocks=2)
    assert rig.step().add == 1
    rig.bring_up("1")
    rig.step(1)
    assert rig.step(600).drain == [] and rig.state("1") == BlockState.RUNNING


def test_block_near_walltime_is_replaced_and_cancelled_only_once_its_tasks_are_done(make):
    rig = make(cores_per_node=4, max_blocks=2, drain_margin=60, walltime="00:30:00")
    rig.head.queued = 3
    assert rig.step().add == 1
    [old] = rig.bring_up("1")
    rig.step(1)
    rig.head.dispatch()
    rig.head.queued = 1  # 3 running + 1 queued: fits the block, no reason to add
    assert rig.step(1).add == 0
    old_job = rig.provider.job_of("1")

    assert rig.step(1800 - 60 - 3).drain == []  # 61 s of walltime left
    decision = rig.step(1)                          # 60 s left: drain, and replace
    assert decision.drain == ["1"] and decision.add == 1
    assert any("walltime left" in r for r in decision.reasons)
    assert rig.state("1") == BlockState.DRAINING and rig.head.nodes[old].draining
    assert rig.state("2") == BlockState.PENDING
    assert rig.provider.cancelled == [] and rig.head.stopped == []  # its tasks still run

    [new] = rig.bring_up("2")
    rig.step(1)
    rig.head.dispatch()
    assert rig.head.nodes[new].running and rig.state("2") == BlockState.RUNNING
    assert rig.provider.cancelled == []
    rig.head.finish_tasks(old)
    rig.step(1)
    assert rig.head.stopped == [old] and rig.provider.cancelled == [old_job]
    assert rig.state("1") == BlockState.DONE
    assert rig.recorded() == sorted(rig.provider.jobs)


def test_draining_block_whose_nodes_are_gone_is_cancelled(make):
    rig = make(cores_per_node=2, nodes_per_block=2, drain_margin=60)
    rig.head.queued = 4
    rig.step()
    nodes = rig.bring_up("1")
    rig.step(1)
    rig.head.dispatch()
    rig.step(1800 - 60)
    assert rig.state("1") == BlockState.DRAINING and rig.provider.cancelled == []
    rig.head.lose(nodes[0])
    rig.step(1)
    assert rig.provider.cancelled == []  # one node still runs tasks
    rig.head.lose(nodes[1])
    rig.step(1)
    assert rig.provider.cancelled == [rig.provider.job_of("1")]
    assert rig.head.stopped == []  # nothing alive to tell
    assert rig.state("1") == BlockState.DONE


def test_a_block_ending_while_in_use_is_done_not_a_failed_start(make):
    rig = make()
    rig.head.queued = 1
    rig.step()
    [node] = rig.bring_up("1")
    rig.step(1)
    rig.head.dispatch()
    rig.provider.finish(rig.provider.job_of("1"), "TIMEOUT")
    rig.head.lose(node)  # its task goes back to the queue
    decision = rig.step(1)
    assert rig.state("1") == BlockState.DONE and rig.manager.failures == 0
    assert decision.add == 1  # the work is still there: a new block, no backoff
    assert rig.state("2") == BlockState.PENDING


# ---- failures ------------------------------------------------------------------------------
def test_blocks_that_fail_to_start_back_off_5s_doubling_up_to_5min(make):
    rig = make(max_blocks=1)
    rig.head.queued = 4
    rig.step()
    expected = [5, 10, 20, 40, 80, 160, 300, 300]
    for n, wait in enumerate(expected, start=1):
        block_id = str(n)
        job = rig.provider.job_of(block_id)
        if n % 2:
            rig.provider.finish(job, "FAILED", "launch failed requeued held")  # never ran
        else:
            rig.provider.start(job)
            rig.provider.finish(job, "NODE_FAIL")  # ran, but no daemon ever joined
        rig.step(1)
        assert rig.state(block_id) == BlockState.FAILED
        assert rig.manager.failures == n
        assert any(f"{wait}s between tries" in r for r in rig.step(wait - 0.5).reasons)
        assert len(rig.manager.blocks) == n
        assert rig.step(0.5).add == 1, f"no retry {wait}s after failure {n}"
        assert len(rig.manager.blocks) == n + 1
    status = {b.block_id: b for b in rig.manager.status()}
    assert status["1"].state == "failed" and "launch failed" in status["1"].reason

    # A block that comes up resets the backoff: the next failure waits 5 s again.
    last = str(len(expected) + 1)
    rig.bring_up(last)
    rig.step(1)
    assert rig.state(last) == BlockState.RUNNING and rig.manager.failures == 0


def test_sbatch_failure_is_a_failed_start_with_its_message(make):
    rig = make(max_blocks=1)
    rig.head.queued = 1
    rig.provider.submit_error = "sbatch: error: invalid partition specified: nope"
    rig.step()
    block = rig.manager.blocks["1"]
    assert block.state == BlockState.FAILED and not block.job_id
    assert "invalid partition" in block.reason and rig.manager.failures == 1
    assert rig.recorded() == []
    rig.provider.submit_error = ""
    assert rig.step(4.9).add == 0
    assert rig.step(0.1).add == 1
    assert rig.recorded() == [rig.provider.job_of("2")]


def test_no_cluster_file_is_not_an_error(make, tmp_path):
    rig = make()
    os.remove(clusterfile.path_for(CLUSTER_ID))
    rig.head.queued = 1
    assert rig.step().add == 1 and rig.state("1") == BlockState.PENDING


def test_cancel_all_cancels_every_block_not_known_to_be_over(make):
    rig = make(max_blocks=2)
    rig.head.queued = 4
    rig.step()
    rig.bring_up("1")
    rig.step(1)
    asyncio.run(rig.manager.cancel_all())
    assert sorted(rig.provider.cancelled) == sorted(rig.provider.jobs)


# ---- doctests of cluster/slurm (tests/unit/test_doctests.py scans policy and common) ------
@pytest.mark.parametrize("name", ["cluster.slurm.blocks", "cluster.slurm.config",
                                  "cluster.slurm.commands"])
def test_slurm_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
