"""The run history: every task, node, actor and block of a cluster, in a SQLite file
(the cluster's log directory, ``history.sqlite``; read by :mod:`cluster.common.historydb`).

The head calls a :class:`Recorder` from its state machine: :meth:`Recorder.state` from
``Head.set_state`` (every state change; those the history cannot tell apart are dropped at
once, see :meth:`Recorder.state`), :meth:`Recorder.node_batch` once per
batch a daemon sends (worker pids, run times and printed output of finished tasks),
:meth:`Recorder.failed` when a task fails for good, :meth:`Recorder.node` when a node
joins or is lost. Each call only appends a tuple to a list (O(1), no I/O, no formatting).
Every 100 ms the loop turns the lists into plain tuples and ships them (marshal, a
non-blocking pipe write) to the writer process
(:mod:`cluster.head.historywriter`), which writes them with ``executemany`` in one
transaction, a task's row once when it ended (or 5 s after it came). Actors and blocks
are snapshotted once a second (sent when they changed), so their owners need no hooks.

The file is in WAL mode and committed every batch, so readers (``clusterctl history``,
the dashboard) never block the writer, and a head that crashes loses at most what it
gathered in its last 100 ms (or its first 0.5 s, before the writer has started), or, when
the writer lagged behind a burst, what was still in the head's buffer (PENDING_LIMIT at
most; what the pipe and the writer hold is written).

States in the history are the user's: ``queued`` (waiting for arguments or for a slot),
``running``, ``done``, ``failed``, ``cancelled``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any, Protocol

from cluster.common import paths
from cluster.common.protocol import pb, to_dict
from cluster.head.historywriter import STATE_NAMES, encode_frame
from cluster.head.records import Node, Task, TaskState

log = logging.getLogger("shoal.history")

#: Seconds between batches (what a crash can lose; what readers lag behind).
FLUSH_SECONDS = 0.1
#: Seconds after the head's start before the writer process starts.
WRITER_DELAY = 0.5
#: Seconds between samples of the cluster's counters (the dashboard's chart).
SAMPLE_SECONDS = 1.0
#: The directory holding the `cluster` package (for the writer process's path).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Bytes of frames the head keeps for a writer that lags (it runs at nice 10: a burst of
#: short tasks that saturates the CPUs does not wait for it); past it the head waits.
#: ~150 bytes a task: ~200,000 tasks (what a head crash can lose while the writer lags).
PENDING_LIMIT = 32 << 20
#: The pipe's size asked of the kernel (Linux allows up to 1 MB unprivileged).
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: Set to "0" (or "off") to run a head without a history.
ENV_VAR = "SHOAL_HISTORY"


_now = time.time    # bound once: called for every state change
_NEW = TaskState.NEW
_DONE = TaskState.DONE
_PYTHON = pb.PYTHON
#: The resources key of leased tasks' records (they all have python_app's defaults).
_LEASED_SHAPE = b"\x00leased"
_NAMES = STATE_NAMES  # keyed by the member's name: hashing an Enum runs Python code


def enabled() -> bool:
    """Whether heads keep a history (``SHOAL_HISTORY=0`` turns it off)."""
    return os.environ.get(ENV_VAR, "1").lower() not in ("0", "off", "no", "false")


class _Observed(Protocol):
    """What the once-a-second snapshot reads of the head (see cluster.head.report)."""

    nodes: dict[int, Node]
    tasks: dict[int, Task]
    done: int
    failed: int

    @property
    def actor_table(self) -> Any: ...

    def blocks_info(self) -> list[pb.BlockInfo]: ...


class Recorder:
    """Records what the head does into the history file at `path` (see the module doc)."""

    def __init__(self, path: str, cluster_id: str, log_dir: str = "") -> None:
        self.path = path
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        now = time.time()
        # What the head appended since the last flush (only its loop touches these).
        self._new: list[tuple[pb.TaskSpec, bytes, float]] = []
        self._events: list[tuple[int, str, float, int, int]] = []
        self._batches: list[tuple[str, pb.NodeToHead, float]] = []
        self._failures: list[tuple[int, float, pb.TaskResult]] = []
        self._nodes: list[tuple[Any, ...]] = []
        self._other: list[tuple[str, list[tuple[Any, ...]]]] = [
            ("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                ("cluster_id", cluster_id), ("started", repr(now)), ("log_dir", log_dir),
                ("head_host", os.uname().nodename), ("head_pid", str(os.getpid())),
                ("ended", "")])]
        # Frames not yet taken by the pipe (the writer is behind): written when it can.
        self._pending = bytearray()
        self._waiting = False
        self._broken = False
        self._warned = False
        self._resources: dict[bytes, str] = {}
        self._actors: dict[int, tuple[Any, ...]] = {}
        self._blocks: dict[str, tuple[Any, ...]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head: _Observed | None = None
        self._last_sample = 0.0
        self._node_events = 0  # nodes joined or lost (a snapshot's node sums then change)
        self._sums_key: tuple[int, ...] = ()
        self._sums = (0.0, 0.0, 0.0, 0)
        self._closed = False
        self.sent = 0  # state changes shipped, for tests and benchmarks
        self.flush()

    # ---- called by the head (its loop thread): append only -------------------------------
    def state(self, task: Task, old: TaskState, new: TaskState) -> None:
        """`task` moved from `old` to `new`."""
        # Only the changes the history can tell apart: a new task's record says it is
        # queued, and RUNNING -> CANCELLING or WAITING -> QUEUED change no history state
        # (a no-op task: 2 changes shipped and folded, not 3). DONE always: an actor's
        # HOSTING -> DONE ends its creation's record.
        name = _NAMES[new._name_]
        if old is _NEW:
            now = _now()
            self._new.append((task.spec, task.shape, now))
            if name == "queued":
                return
        elif name == _NAMES[old._name_] and new is not _DONE:
            return
        else:
            now = _now()
        self._events.append((task.task_id, new._name_, now, task.node_id, task.attempts))

    def leased(self, task: pb.LeasedTask, node_id: int, started: bool) -> None:
        """A task a driver ran on its leased worker (the head never saw it): with
        `started`, its record (queued and running when sent), and, once ``finished`` is
        set, its end (done or failed)."""
        spec, result = task.spec, task.result
        task_id = spec.task_id
        if started:
            self._new.append((spec, _LEASED_SHAPE, task.submitted))
            self._events.append((task_id, "RUNNING", task.submitted, node_id, 0))
        if task.finished:
            ended = "DONE" if result.status == pb.OK else "FAILED"
            self._events.append((task_id, ended, task.finished, node_id, 0))
            if ended == "FAILED":
                self._failures.append((task_id, task.finished, result))

    def node_batch(self, node: Node, message: pb.NodeToHead) -> None:
        """A daemon's batch: its results (worker pids, run times) and printed output."""
        if message.results or message.logs:
            self._batches.append((node.name, message, time.time()))

    def failed(self, task: Task, result: pb.TaskResult) -> None:
        """`task` failed for good with `result`."""
        self._failures.append((task.task_id, time.time(), result))

    def node(self, node: Node) -> None:
        """`node` joined (it is alive) or was lost (``node.lost_reason`` says why)."""
        self._node_events += 1
        if node.alive:
            self._nodes.append((node.node_id, node.name, node.address, node.block_id,
                                node.pid, time.time(), json.dumps(node.view.total)))
        else:
            self._nodes.append((node.node_id, None, None, None, None, time.time(), None,
                                node.lost_reason))

    def attach(self, loop: asyncio.AbstractEventLoop, head: _Observed) -> None:
        """Start flushing every FLUSH_SECONDS on `loop`, sampling `head` once a second."""
        self._loop = loop
        self._head = head
        loop.call_later(FLUSH_SECONDS, self._tick)
        # The writer starts a moment after the head: its interpreter's start would
        # otherwise compete with the first workers' (cold start to a first result).
        loop.call_later(WRITER_DELAY, self._start_writer)

    def _start_writer(self) -> None:
        if self._proc is not None or self._broken:
            return
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [PACKAGE_ROOT, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        try:
            # Its own session: a Ctrl-C meant for the head does not cut the history short;
            # it ends when its input does (the head is gone), after writing what it got.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "cluster.head.historywriter", self.path],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                start_new_session=True, close_fds=True)
        except OSError as err:
            log.error("no run history: cannot start its writer: %s", err)
            self._broken = True
            self._pending.clear()
            return
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        try:  # what the kernel keeps for a writer that lags (and that a head crash keeps)
            fcntl.fcntl(self._fd, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        os.set_blocking(self._fd, False)
        self._send()

    def _tick(self) -> None:
        if self._closed:
            return
        now = time.time()
        if self._head is not None and now - self._last_sample >= SAMPLE_SECONDS:
            self._last_sample = now
            try:
                self._snapshot(self._head, now)
            except Exception:  # noqa: BLE001 - a snapshot must never stop the head
                log.exception("history snapshot failed")
        self.flush()
        if self._loop is not None:
            self._loop.call_later(FLUSH_SECONDS, self._tick)

    def flush(self) -> None:
        """Ship what was recorded to the writer (on the loop: converting a batch costs
        ~2.7 us a task, less than handing it to a thread that then competes for the GIL)."""
        if not (self._new or self._events or self._batches or self._failures or
                self._nodes or self._other):
            return
        frame = encode_frame(self._plain(self._nodes, self._new, self._events, self._batches,
                                         self._failures, self._other))
        self._nodes, self._new, self._events, self._batches = [], [], [], []
        self._failures, self._other = [], []
        self._send(frame)

    def _send(self, frame: bytes = b"") -> None:
        if self._broken:
            return
        self._pending += frame
        if self._proc is None:  # not started yet: kept until it is
            return
        try:
            while self._pending:
                sent = os.write(self._fd, self._pending)
                del self._pending[:sent]
        except BlockingIOError:
            if len(self._pending) > PENDING_LIMIT:
                self._catch_up()
        except OSError as err:
            log.error("the history writer is gone (%s): no more history", err)
            self._broken = True
            self._pending.clear()
        waiting = bool(self._pending) and self._loop is not None
        if waiting != self._waiting and self._loop is not None:
            if waiting:
                self._loop.add_writer(self._fd, self._send)
            else:
                self._loop.remove_writer(self._fd)
            self._waiting = waiting

    def _catch_up(self) -> None:
        """The writer is PENDING_LIMIT behind: wait for it (the head's memory stays bounded
        and nothing is dropped; the writer runs at nice 10, so this waits only while the
        CPUs are saturated for long)."""
        if not self._warned:
            self._warned = True
            log.warning("the history writer is %d MB behind: the head waits for it",
                        len(self._pending) >> 20)
        os.set_blocking(self._fd, True)
        try:
            while len(self._pending) > PENDING_LIMIT // 2:
                sent = os.write(self._fd, self._pending[:1 << 20])
                del self._pending[:sent]
        finally:
            os.set_blocking(self._fd, False)

    def _snapshot(self, head: _Observed, now: float) -> None:
        # The walk over every node only when a task or a node moved since the last one:
        # at 5,000 idle nodes it was ~24% of the idle head's samples. Every 10 s regardless
        # (CPUs a blocked task gave back move no task).
        moved = (len(head.tasks), head.done, head.failed, self.sent + len(self._events),
                 self._node_events, int(now // 10))
        if moved != self._sums_key:
            running = used = total = 0.0
            alive = 0
            for node in head.nodes.values():
                if node.alive:
                    alive += 1
                    running += len(node.running)
                    used += node.view.used.get("cpus", 0.0)
                    total += node.view.total.get("cpus", 0.0)
            self._sums_key, self._sums = moved, (running, used, total, alive)
        running, used, total, alive = self._sums
        actors = head.actor_table.status()
        live = sum(1 for a in actors if a.state == "alive")
        self._other.append(("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [(
            now, max(0, len(head.tasks) - int(running)), int(running), head.done,
            head.failed, alive, used, total, live)]))
        rows: list[tuple[Any, ...]] = []
        for a in actors:
            row = (a.actor_id, a.class_name, a.name, a.node, a.state, a.restarts,
                   int(a.detached), a.message)
            if self._actors.get(a.actor_id) != row:
                self._actors[a.actor_id] = row
                rows.append((*row, now))
        if rows:
            self._other.append(("INSERT OR REPLACE INTO actors VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                                "?)", rows))
        blocks: list[tuple[Any, ...]] = []
        for b in head.blocks_info():
            key = (b.block_id, b.job_id, b.state, b.nodes, b.reason)
            if self._blocks.get(b.block_id) != key:  # walltime left alone changes each time
                self._blocks[b.block_id] = key
                blocks.append((b.block_id, b.job_id, b.state, b.nodes, b.walltime_left,
                               b.reason, now))
        if blocks:
            self._other.append(("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                                blocks))

    def close(self, timeout: float = 30.0) -> None:
        """Send what is left, mark the run ended, and wait for the writer to finish."""
        if self._closed:
            return
        if self._head is not None:
            try:
                self._snapshot(self._head, time.time())
            except Exception:  # noqa: BLE001
                log.exception("history snapshot failed")
        self._other.append(("UPDATE nodes SET state = 'stopped', left = ? WHERE left IS NULL",
                            [(time.time(),)]))
        self.flush()
        self._closed = True
        started = self._proc is not None
        self._start_writer()
        if self._proc is None:
            return
        if not started and self._loop is not None:
            # A head that ran less than WRITER_DELAY: the writer finishes on its own.
            timeout = 0.0
        if self._waiting and self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._waiting = False
        stdin = self._proc.stdin
        try:
            assert stdin is not None
            os.set_blocking(self._fd, True)
            if not self._broken:
                stdin.write(bytes(self._pending) + encode_frame("close"))
            stdin.close()
        except (OSError, ValueError) as err:
            log.error("could not finish the history: %s", err)
        if not timeout:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the history writer did not finish within %gs", timeout)
            self._proc.kill()

    def _plain(self, nodes: list[tuple[Any, ...]], new: list[tuple[pb.TaskSpec, bytes, float]],
               events: list[tuple[int, str, float, int, int]],
               batches: list[tuple[str, pb.NodeToHead, float]],
               failures: list[tuple[int, float, pb.TaskResult]],
               other: list[tuple[str, list[tuple[Any, ...]]]]) -> tuple[Any, ...]:
        """A batch as plain values (what marshal can send; no protobuf in the writer)."""
        cache = self._resources
        tasks = []
        for spec, shape, t in new:
            resources = cache.get(shape)
            if resources is None:
                if len(cache) > 4096:
                    cache.clear()
                resources = cache[shape] = json.dumps(to_dict(spec.resources))
            kind = spec.kind
            if kind == _PYTHON:  # (no output files, no actor: three reads fewer)
                tasks.append((spec.task_id, spec.name, 0, resources, t, "", "", 0))
            else:
                tasks.append((spec.task_id, spec.name, int(kind), resources, t, spec.stdout,
                              spec.stderr, spec.actor_id))
        results = []
        lines = []
        for node_name, message, t in batches:
            for r in message.results:
                results.append((r.task_id, r.worker_pid, r.run_seconds))
            for line in message.logs:
                lines.append((line.task_id, t, line.stderr, node_name, line.text))
        fails = [(task_id, t, int(r.status), r.data, r.message) for task_id, t, r in failures]
        self.sent += len(events)
        return (nodes, tasks, events, results, lines, fails, other)


def make_recorder(log_dir: str, cluster_id: str) -> Recorder | None:
    """The head's recorder into `log_dir` (None when histories are off). A writer that
    cannot start later is logged by :meth:`Recorder._start_writer`; the head runs on."""
    if not enabled():
        return None
    path = paths.history_file(log_dir)
    set_aside(path)
    return Recorder(path, cluster_id, log_dir)


def set_aside(path: str) -> str:
    """Rename an earlier run's history at `path` (a cluster id used again, e.g. `up` after
    `down` in the same Slurm job) to ``history-<its last write>.sqlite``, so the new run
    starts its own: the old rows' task ids are the new run's, and the writer's INSERT OR
    IGNORE kept the old ones (the new run's tasks were missing). Returns the new name."""
    if not os.path.exists(path):
        return ""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
    root, ext = os.path.splitext(path)
    target = f"{root}-{stamp}{ext}"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{root}-{stamp}-{n}{ext}"
    for suffix in ("-wal", "-shm", ""):   # (the file itself last: readers look for it)
        if os.path.exists(path + suffix):
            try:
                os.replace(path + suffix, target + suffix)
            except OSError as err:
                log.error("could not set the earlier history %s aside: %s", path, err)
    log.info("an earlier run's history is now %s", target)
    return target
