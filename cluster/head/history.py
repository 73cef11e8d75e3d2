"""The run history: every task, node, actor and block of a cluster, in a SQLite file.

The head calls a :class:`Recorder` from its state machine: :meth:`Recorder.state` from
``Head.set_state`` (every state change of every task), :meth:`Recorder.node_batch` once per
batch a daemon sends (worker pids, run times and printed output of finished tasks),
:meth:`Recorder.failed` when a task fails for good, :meth:`Recorder.node` when a node
joins or is lost. Each call only appends a tuple to a list (O(1), no I/O, no formatting):
every 100 ms the loop hands the lists to a writer thread, which writes them with
``executemany`` in one transaction. Actors and blocks are snapshotted once a second
(written when they changed), so their tables need no hooks in their owners.

The file is in WAL mode and committed every 100 ms, so readers (``clusterctl history``,
the dashboard) never block the writer, and a head that crashes loses at most the last
tenth of a second. A task's row is kept up to date by a trigger on ``events`` (in SQLite's
C code, not in Python holding the GIL the head's loop needs).

States in the history are the user's: ``queued`` (waiting for arguments or for a slot),
``running``, ``done``, ``failed``, ``cancelled``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import queue
import sqlite3
import threading
import time
from typing import Any, Protocol

from cluster.common.protocol import pb, to_dict
from cluster.head.records import Node, Task, TaskState

log = logging.getLogger("shoal.history")

#: The history's file name inside a cluster's log directory.
FILE_NAME = "history.sqlite"
#: Seconds between writes (what a crash can lose; what readers lag behind).
FLUSH_SECONDS = 0.1
#: Seconds between samples of the cluster's counters (the dashboard's chart).
SAMPLE_SECONDS = 1.0
#: Printed output kept per task in the history; the rest is in the task's log file.
LOG_BYTES_PER_TASK = 256 * 1024
#: Set to "0" (or "off") to run a head without a history.
ENV_VAR = "SHOAL_HISTORY"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks(
  task_id INTEGER PRIMARY KEY, name TEXT, kind TEXT, driver INTEGER, state TEXT,
  node TEXT, node_id INTEGER, worker_pid INTEGER, block TEXT, resources TEXT,
  attempts INTEGER DEFAULT 0, submitted REAL, started REAL, finished REAL, run_seconds REAL,
  status TEXT, error_type TEXT, error TEXT, traceback TEXT, stdout TEXT, stderr TEXT,
  actor_id INTEGER);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_by_name ON tasks(name);
CREATE TABLE IF NOT EXISTS events(task_id INTEGER, t REAL, state TEXT, node_id INTEGER,
  attempt INTEGER);
CREATE INDEX IF NOT EXISTS events_by_task ON events(task_id);
CREATE TABLE IF NOT EXISTS nodes(node_id INTEGER PRIMARY KEY, name TEXT, address TEXT,
  block TEXT, pid INTEGER, state TEXT, joined REAL, left REAL, reason TEXT, total TEXT);
CREATE TABLE IF NOT EXISTS actors(actor_id INTEGER PRIMARY KEY, class_name TEXT, name TEXT,
  node TEXT, state TEXT, restarts INTEGER, detached INTEGER, message TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS blocks(block_id TEXT PRIMARY KEY, job_id TEXT, state TEXT,
  nodes INTEGER, walltime_left REAL, reason TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS logs(task_id INTEGER, t REAL, stream TEXT, node TEXT, text TEXT);
CREATE INDEX IF NOT EXISTS logs_by_task ON logs(task_id);
CREATE TABLE IF NOT EXISTS samples(t REAL, queued INTEGER, running INTEGER, done INTEGER,
  failed INTEGER, nodes INTEGER, cpus_used REAL, cpus_total REAL, actors INTEGER);
CREATE TRIGGER IF NOT EXISTS event_to_task AFTER INSERT ON events BEGIN
  UPDATE tasks SET
    state = NEW.state,
    attempts = NEW.attempt + 1,
    started = CASE WHEN NEW.state = 'running' THEN NEW.t ELSE started END,
    finished = CASE WHEN NEW.state IN ('done', 'failed') THEN NEW.t ELSE finished END,
    node_id = CASE WHEN NEW.state = 'running' THEN NEW.node_id ELSE node_id END,
    node = CASE WHEN NEW.state = 'running'
      THEN (SELECT name FROM nodes WHERE node_id = NEW.node_id) ELSE node END,
    block = CASE WHEN NEW.state = 'running'
      THEN (SELECT block FROM nodes WHERE node_id = NEW.node_id) ELSE block END
  WHERE task_id = NEW.task_id;
END;
"""

#: The head's task states as the history names them.
STATE_NAMES: dict[TaskState, str] = {
    TaskState.NEW: "queued", TaskState.WAITING: "queued", TaskState.QUEUED: "queued",
    TaskState.RUNNING: "running", TaskState.CANCELLING: "running",
    TaskState.HOSTING: "done", TaskState.DONE: "done", TaskState.FAILED: "failed",
}
KIND_NAMES = {pb.PYTHON: "python", pb.BASH: "bash", pb.ACTOR_CREATE: "actor",
              pb.ACTOR_CALL: "actor_call"}
#: What a failure's status is called in the history (the api's exception names).
ERROR_TYPES: dict[int, str] = {
    pb.APP_ERROR: "TaskError", pb.WORKER_CRASHED: "WorkerCrashedError",
    pb.TIMEOUT: "AppTimeout", pb.DEPENDENCY_FAILED: "DependencyError",
    pb.BASH_EXIT: "BashExitFailure", pb.UNSCHEDULABLE: "ResourceUnavailableError",
    pb.CANCELLED: "Cancelled", pb.NODE_LOST: "WorkerCrashedError",
    pb.OBJECT_LOST: "ObjectLostError", pb.ACTOR_DIED: "ActorDiedError",
    pb.OBJECT_STORE_FULL: "ObjectStoreFullError",
}


def path_in(log_dir: str) -> str:
    """The history file of the cluster whose log directory is `log_dir`."""
    return os.path.join(log_dir, FILE_NAME)


def enabled() -> bool:
    """Whether heads keep a history (``SHOAL_HISTORY=0`` turns it off)."""
    return os.environ.get(ENV_VAR, "1").lower() not in ("0", "off", "no", "false")


def open_db(path: str) -> sqlite3.Connection:
    """A writing connection to the history at `path`, with the schema in place."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives the process crashing (not a power cut), and
    # needs no fsync per transaction.
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


class _NoGlobals(pickle.Unpickler):
    """Reads an app error's envelope (a tuple of bytes and str) and nothing else: the head
    never runs code from a pickle."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not read by the head")


def describe_error(status: int, data: bytes, message: str) -> tuple[str, str, str]:
    """(error type, message, traceback text) of a failed task's result.

    >>> describe_error(pb.TIMEOUT, b"", "walltime exceeded")
    ('AppTimeout', 'walltime exceeded', '')
    """
    kind = ERROR_TYPES.get(status, pb.Status.Name(status))
    traceback = ""
    if data and status in (pb.APP_ERROR, pb.DEPENDENCY_FAILED):
        import io

        try:
            _, module, name, text, traceback = _NoGlobals(io.BytesIO(data)).load()
            if status == pb.APP_ERROR:
                kind = name if module in ("builtins", "") else f"{module}.{name}"
                message = message or text
        except Exception:  # noqa: BLE001 - the message is still there
            pass
    elif data and status == pb.BASH_EXIT:
        try:
            tail = json.loads(data).get("stderr_tail", "")
            traceback = tail if isinstance(tail, str) else ""
        except ValueError:
            pass
    return kind, message, traceback


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
        self._db = open_db(path)
        now = time.time()
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("cluster_id", cluster_id), ("started", repr(now)), ("log_dir", log_dir),
            ("head_host", os.uname().nodename), ("head_pid", str(os.getpid())),
            ("ended", "")])
        # What the head appended since the last flush (only its loop touches these).
        self._new: list[tuple[pb.TaskSpec, float]] = []
        self._events: list[tuple[int, TaskState, float, int, int]] = []
        self._batches: list[tuple[str, pb.NodeToHead, float]] = []
        self._failures: list[tuple[int, float, pb.TaskResult]] = []
        self._nodes: list[tuple[str, tuple[Any, ...]]] = []
        self._other: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._log_bytes: dict[int, int] = {}
        self._resources: dict[bytes, str] = {}
        self._actors: dict[int, tuple[Any, ...]] = {}
        self._blocks: dict[str, tuple[Any, ...]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._head: _Observed | None = None
        self._last_sample = 0.0
        self._closed = False
        self.written = 0  # events written, for tests and benchmarks
        self._thread = threading.Thread(target=self._write_loop, name="shoal-history",
                                        daemon=True)
        self._thread.start()

    # ---- called by the head (its loop thread): append only -------------------------------
    def state(self, task: Task, old: TaskState, new: TaskState) -> None:
        """`task` moved from `old` to `new`."""
        now = time.time()
        spec = task.spec
        if old is TaskState.NEW:
            self._new.append((spec, now))
        self._events.append((spec.task_id, new, now, task.node_id, task.attempts))

    def node_batch(self, node: Node, message: pb.NodeToHead) -> None:
        """A daemon's batch: its results (worker pids, run times) and printed output."""
        if message.results or message.logs:
            self._batches.append((node.name, message, time.time()))

    def failed(self, task: Task, result: pb.TaskResult) -> None:
        """`task` failed for good with `result`."""
        self._failures.append((task.spec.task_id, time.time(), result))

    def node(self, node: Node) -> None:
        """`node` joined (it is alive) or was lost (the head's log says why)."""
        now = time.time()
        if node.alive:
            self._nodes.append((
                "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, 'alive', ?, NULL, '', ?)",
                (node.node_id, node.name, node.address, node.block_id, node.pid, now,
                 json.dumps(node.view.total))))
        else:
            self._nodes.append(("UPDATE nodes SET state = 'lost', left = ? WHERE node_id = ? "
                                "AND left IS NULL", (now, node.node_id)))

    def attach(self, loop: asyncio.AbstractEventLoop, head: _Observed) -> None:
        """Start flushing every FLUSH_SECONDS on `loop`, sampling `head` once a second."""
        self._loop = loop
        self._head = head
        loop.call_later(FLUSH_SECONDS, self._tick)

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
        """Hand what was recorded to the writer thread."""
        if not (self._new or self._events or self._batches or self._failures or
                self._nodes or self._other):
            return
        self._queue.put((self._nodes, self._new, self._events, self._batches,
                         self._failures, self._other))
        self._nodes, self._new, self._events, self._batches = [], [], [], []
        self._failures, self._other = [], []

    def _snapshot(self, head: _Observed, now: float) -> None:
        running = used = total = 0.0
        alive = 0
        for node in head.nodes.values():
            if node.alive:
                alive += 1
                running += len(node.running)
                used += node.view.used.get("cpus", 0.0)
                total += node.view.total.get("cpus", 0.0)
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

    def close(self) -> None:
        """Write what is left, mark the run ended and close the file (waits for the
        writer)."""
        if self._closed:
            return
        if self._head is not None:
            try:
                self._snapshot(self._head, time.time())
            except Exception:  # noqa: BLE001
                log.exception("history snapshot failed")
        self._nodes.append(("UPDATE nodes SET state = 'stopped', left = ? WHERE left IS NULL",
                            (time.time(),)))
        self.flush()
        self._closed = True
        self._queue.put(None)
        self._thread.join(30)

    # ---- the writer thread --------------------------------------------------------------
    def _write_loop(self) -> None:
        db = self._db
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                db.execute("BEGIN")
                self._write(db, *item)
                db.execute("COMMIT")
            except Exception:  # noqa: BLE001 - the head goes on without the history
                log.exception("could not write the history to %s", self.path)
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        try:
            db.execute("UPDATE meta SET value = ? WHERE key = 'ended'", (repr(time.time()),))
            db.close()
        except sqlite3.Error:
            log.exception("could not close the history")

    def _write(self, db: sqlite3.Connection, nodes: list[tuple[str, tuple[Any, ...]]],
               new: list[tuple[pb.TaskSpec, float]],
               events: list[tuple[int, TaskState, float, int, int]],
               batches: list[tuple[str, pb.NodeToHead, float]],
               failures: list[tuple[int, float, pb.TaskResult]],
               other: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        for sql, params in nodes:
            db.execute(sql, params)
        if new:
            db.executemany("INSERT OR IGNORE INTO tasks (task_id, name, kind, driver, state, "
                           "resources, submitted, stdout, stderr, actor_id) "
                           "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                           [self._task_row(spec, t) for spec, t in new])
        if events:
            names = STATE_NAMES
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                           [(tid, t, names[s], node, attempt)
                            for tid, s, t, node, attempt in events])
            self.written += len(events)
        results = []
        logs = []
        for node_name, batch, t in batches:
            for r in batch.results:
                results.append((r.worker_pid or None, r.run_seconds, r.task_id))
            for line in batch.logs:
                used = self._log_bytes.get(line.task_id, 0)
                if used >= LOG_BYTES_PER_TASK:
                    continue
                text = line.text
                used += len(text)
                if used >= LOG_BYTES_PER_TASK:
                    text += "\n[more output is in the task's log file on its node]\n"
                self._log_bytes[line.task_id] = used
                logs.append((line.task_id, t, "stderr" if line.stderr else "stdout",
                             node_name, text))
        if results:
            db.executemany("UPDATE tasks SET worker_pid = coalesce(?, worker_pid), "
                           "run_seconds = ? WHERE task_id = ?", results)
        if logs:
            db.executemany("INSERT INTO logs VALUES (?, ?, ?, ?, ?)", logs)
        if failures:
            rows = []
            for task_id, t, result in failures:
                kind, message, tb = describe_error(result.status, result.data, result.message)
                state = "cancelled" if result.status == pb.CANCELLED else "failed"
                rows.append((state, t, pb.Status.Name(result.status), kind, message, tb,
                             task_id))
            db.executemany("UPDATE tasks SET state = ?, finished = ?, status = ?, "
                           "error_type = ?, error = ?, traceback = ? WHERE task_id = ?", rows)
        for sql, many in other:
            db.executemany(sql, many)

    def _task_row(self, spec: pb.TaskSpec, t: float) -> tuple[Any, ...]:
        shape = spec.resources.SerializeToString()
        resources = self._resources.get(shape)
        if resources is None:
            if len(self._resources) > 4096:
                self._resources.clear()
            resources = self._resources[shape] = json.dumps(to_dict(spec.resources))
        return (spec.task_id, spec.name, KIND_NAMES.get(spec.kind, "python"),
                spec.task_id >> 40, resources, t, spec.stdout or None, spec.stderr or None,
                spec.actor_id or None)


def make_recorder(log_dir: str, cluster_id: str) -> Recorder | None:
    """The head's recorder into `log_dir` (None when histories are off or the file cannot
    be opened: the head runs on, saying why in its log)."""
    if not enabled():
        return None
    try:
        return Recorder(path_in(log_dir), cluster_id, log_dir)
    except (sqlite3.Error, OSError) as err:
        log.error("no run history: cannot open %s: %s", path_in(log_dir), err)
        return None


