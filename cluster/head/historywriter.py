"""The history's writer process (``python -m cluster.head.historywriter FILE``): it
reads batches from the head on stdin and writes them into the SQLite file.

A process of its own, not a thread of the head: folding and writing a task's record
costs ~14 us of CPU, and in the head's process (sharing its GIL) that made no-op tasks
15% slower; the head now only appends tuples and ships them every 100 ms (marshal, one
pipe write). Frames are a 4-byte length and a marshalled tuple (see :func:`write_batch`).
End of input without a closing frame means the head died: what arrived is committed and
``ended`` stays empty, so readers can tell a crash from a ``down``.

This process imports neither protobuf nor gRPC (startup ~40 ms).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import marshal
import os
import pickle
import struct
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

from cluster.common import status as st
from cluster.common.ids import SIGNED_LIMIT, to_db

log = logging.getLogger("shoal.history")
#: Printed output kept per task in the history; the rest is in the task's log file.
LOG_BYTES_PER_TASK = 256 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks(
  task_id INTEGER PRIMARY KEY, name TEXT, kind TEXT, driver INTEGER, state TEXT,
  node TEXT, node_id INTEGER, worker_pid INTEGER, block TEXT, resources TEXT,
  attempts INTEGER DEFAULT 0, submitted REAL, started REAL, finished REAL, run_seconds REAL,
  status TEXT, error_type TEXT, error TEXT, traceback TEXT, stdout TEXT, stderr TEXT,
  actor_id INTEGER, events TEXT);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_by_name ON tasks(name);
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
"""


#: The head's task states (TaskState member names) as the history names them.
STATE_NAMES: dict[str, str] = {
    "NEW": "queued", "WAITING": "queued", "QUEUED": "queued", "STAGED": "queued",
    "RUNNING": "running",
    "CANCELLING": "running", "DECIDING": "running", "HOSTING": "done", "DONE": "done",
    "FAILED": "failed",
}
#: What a failure's status is called in the history (the api's exception names).
ERROR_TYPES: dict[int, str] = {
    st.APP_ERROR: "TaskError", st.WORKER_CRASHED: "WorkerCrashedError",
    st.TIMEOUT: "AppTimeout", st.DEPENDENCY_FAILED: "DependencyError",
    st.BASH_EXIT: "BashExitFailure", st.UNSCHEDULABLE: "ResourceUnavailableError",
    st.CANCELLED: "Cancelled", st.NODE_LOST: "WorkerCrashedError",
    st.OBJECT_LOST: "ObjectLostError", st.ACTOR_DIED: "ActorDiedError",
    st.OBJECT_STORE_FULL: "ObjectStoreFullError",
}




def open_db(path: str) -> sqlite3.Connection:
    """A writing connection to the history at `path`, with the schema in place."""
    import sqlite3  # here: the head imports this module for encode_frame alone

    db = sqlite3.connect(path, isolation_level=None)
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

    >>> describe_error(st.TIMEOUT, b"", "walltime exceeded")
    ('AppTimeout', 'walltime exceeded', '')
    """
    kind = ERROR_TYPES.get(status, st.NAMES.get(status, str(status)))
    traceback = ""
    if data and status in (st.APP_ERROR, st.DEPENDENCY_FAILED):
        try:
            _, module, name, text, traceback = _NoGlobals(io.BytesIO(data)).load()
            if status == st.APP_ERROR:
                kind = name if module in ("builtins", "") else f"{module}.{name}"
                message = message or text
        except Exception:  # noqa: BLE001 - the message is still there
            pass
    elif data and status == st.BASH_EXIT:
        try:
            tail = json.loads(data).get("stderr_tail", "")
            traceback = tail if isinstance(tail, str) else ""
        except ValueError:
            pass
    return kind, message, traceback



class Signed:
    """A connection whose parameters are fitted to SQLite's signed 64-bit INTEGER: ids are
    unsigned 64-bit (a task of a node caller, e.g. an actor calling another, has the top bit
    set), and SQLite refuses those. :func:`cluster.common.ids.from_db` undoes it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, fit(params))

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self.db.executemany(sql, (fit(row) for row in rows))


def fit(row: Any) -> tuple[Any, ...]:
    """`row` with every integer of 2**63 or more stored as its signed 64-bit equivalent.

    >>> fit((1, 2**64 - 1, "x"))
    (1, -1, 'x')
    """
    return tuple(to_db(v) if type(v) is int and v >= SIGNED_LIMIT else v for v in row)


def needs_fitting(frame: tuple[Any, ...]) -> bool:
    """Whether a batch holds a task id of 2**63 or more (rare). Checked with ``max`` over
    each list (tuples compare in C): fitting every row of every batch took a third of
    the writer's time (batches of 650 tasks: 11.0 -> 5.9 us a task).

    >>> needs_fitting(([], [], [(5, "QUEUED", 1.0, 0, 0)], [], [], [], []))
    False
    >>> needs_fitting(([], [], [(2**63, "QUEUED", 1.0, 0, 0)], [], [], [], []))
    True
    """
    try:
        return any(rows and max(rows)[0] >= SIGNED_LIMIT for rows in frame[1:6])
    except TypeError:  # (tuples that tie on the id and differ in type further on)
        return True


#: Seconds the writer holds a new task's row before it writes it still unfinished: a task
#: that ends within this time is one INSERT of its final row instead of an INSERT and an
#: UPDATE. In a 10,000 no-op burst on 2 CPUs the median task ends 1.6 s after it was sent
#: (80% after more than 1 s); replaying such a run's frames, the writer spent 14.0 us a
#: task without holding, 10.6 us holding 3 s, 7.8 us holding 5 s. Readers see a queued or
#: running task this much later (plus the head's 0.1 s); the end of the input (a `down`, or
#: the head's death) writes every row held; a crash of the writer alone loses them.
HOLD_SECONDS = 5.0
#: At most this many rows held (~30 MB): past it, the oldest are written as they are.
HOLD_ROWS = 100_000

#: The columns of a task's first write, in the order of a held row (one more item: when
#: the writer got it, for HOLD_SECONDS).
ROW_COLUMNS = ("task_id", "name", "kind", "driver", "resources", "submitted", "stdout",
               "stderr", "actor_id", "state", "started", "finished", "node_id", "node", "block",
               "attempts", "worker_pid", "run_seconds", "events", "status", "error_type",
               "error", "traceback")
_INSERT = (f"INSERT OR IGNORE INTO tasks ({', '.join(ROW_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")
_ENDED = frozenset({"done", "failed", "cancelled"})


class Writer:
    """Folds the head's batches into the history's rows. A new task's row is held (in
    memory, at most `hold` seconds) until it ends, so most tasks are written once."""

    def __init__(self, db: sqlite3.Connection, hold: float = 0.0) -> None:
        self.db = db
        self.hold = hold
        self._log_bytes: dict[int, int] = {}
        # Tasks still live: id -> [state, started, node id].
        self._live: dict[int, list[Any]] = {}
        # Rows not written yet: id -> ROW_COLUMNS values; when their batches came, oldest
        # first: (time, ids).
        self._held: dict[int, list[Any]] = {}
        self._arrived: collections.deque[tuple[float, list[int]]] = collections.deque()
        self._node_names: dict[int, tuple[str, str]] = {}  # node id -> (name, block)
        self.written = 0
        self.clock = time.monotonic  # (a replay of recorded frames sets its own)

    def batch(self, frame: tuple[Any, ...]) -> None:
        """Write one batch in one transaction."""
        self.batches([frame])

    def batches(self, frames: list[tuple[Any, ...]]) -> None:
        """Write `frames`, oldest first, in one transaction (frames kept while the CPUs
        were busy: one commit, and tasks that ended meanwhile written once)."""
        db = self.db
        db.execute("BEGIN")
        try:
            for frame in frames:
                self._write(Signed(db) if needs_fitting(frame) else db,  # type: ignore[arg-type]
                            *frame)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def finish(self) -> None:
        """Write every row still held (the end of the input)."""
        if self._held:
            self.db.execute("BEGIN")
            self.db.executemany(_INSERT, [fit(r) for r in self._held.values()])
            self.db.execute("COMMIT")
            self._held.clear()
            self._arrived.clear()

    def _write(self, db: sqlite3.Connection, nodes: list[tuple[Any, ...]],
               new: list[tuple[Any, ...]], events: list[tuple[int, str, float, int, int]],
               results: list[tuple[int, int, float]], lines: list[tuple[Any, ...]],
               failures: list[tuple[int, float, int, bytes, str]],
               other: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        names = self._node_names
        for node_id, name, address, block, pid, t, total, *why in nodes:
            if name is None:  # lost (why: the reason, from heads that send it)
                db.execute("UPDATE nodes SET state = 'lost', left = ?, reason = ? "
                           "WHERE node_id = ? AND left IS NULL",
                           (t, why[0] if why else "", node_id))
            else:
                names[node_id] = (name, block)
                db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, 'alive', ?, "
                           "NULL, '', ?)", (node_id, name, address, block, pid, t, total))
        held = self._held
        received = self.clock()
        if new:
            self._arrived.append((received, [r[0] for r in new]))
        for tid, name, kind, resources, t, stdout, stderr, actor_id in new:
            held[tid] = [tid, name, KIND_NAMES.get(kind, "python"), tid >> 40, resources, t,
                         stdout or None, stderr or None, actor_id or None, "queued", None, None,
                         None, None, None, 1, None, None, None, None, None, None, None]
        ended: list[int] = []
        changes = self._fold(events, ended)
        rows: list[tuple[Any, ...]] = []
        for tid, c in changes.items():
            node = names.get(c[3]) if c[3] else None
            rows.append((c[0], c[1], c[2], c[3], node[0] if node else None,
                         node[1] if node else None, c[4] + 1, c[5], tid))
        if rows:
            db.executemany(
                "UPDATE tasks SET state = ?, started = coalesce(?, started), "
                "finished = coalesce(?, finished), node_id = coalesce(?, node_id), "
                "node = coalesce(?, node), block = coalesce(?, block), attempts = ?, "
                "events = coalesce(events, '') || coalesce(?, '') WHERE task_id = ?", rows)
        ran = []
        for tid, pid, run in results:
            row = held.get(tid)
            if row is None:
                ran.append((pid or None, run, tid))
            else:
                row[16], row[17] = pid or row[16], run
        if ran:  # results of tasks already written
            db.executemany("UPDATE tasks SET worker_pid = coalesce(?, worker_pid), "
                           "run_seconds = ? WHERE task_id = ?", ran)
        self.written += len(events)
        logs = []
        for task_id, t, is_err, node_name, text in lines:
            used = self._log_bytes.get(task_id, 0)
            if used >= LOG_BYTES_PER_TASK:
                continue
            used += len(text)
            if used >= LOG_BYTES_PER_TASK:
                text += "\n[more output is in the task's log file on its node]\n"
            self._log_bytes[task_id] = used
            logs.append((task_id, t, "stderr" if is_err else "stdout", node_name, text))
        if logs:
            db.executemany("INSERT INTO logs VALUES (?, ?, ?, ?, ?)", logs)
        if failures:
            rows = []
            for task_id, t, code, data, text in failures:
                kind, message, tb = describe_error(code, data, text)
                state = "cancelled" if code == st.CANCELLED else "failed"
                values = (state, t, st.NAMES.get(code, str(code)), kind, message, tb)
                row = held.get(task_id)
                if row is None:
                    rows.append((*values, task_id))
                else:
                    row[9], row[11], row[19], row[20], row[21], row[22] = values
                    ended.append(task_id)
            if rows:
                db.executemany("UPDATE tasks SET state = ?, finished = ?, status = ?, "
                               "error_type = ?, error = ?, traceback = ? WHERE task_id = ?",
                               rows)
        # Written now: the rows that ended, and those held long enough.
        pop = held.pop
        out = [row for row in (pop(tid, None) for tid in ended) if row is not None]
        cutoff = received - self.hold
        arrived = self._arrived
        while arrived and (arrived[0][0] <= cutoff or len(held) > HOLD_ROWS):
            live = self._live
            for tid in arrived.popleft()[1]:
                row = pop(tid, None)
                if row is not None:  # still running (or queued): written as it is now
                    out.append(row)
                    live[tid] = [row[9], row[10], row[12]]  # (ended rows were popped)
        if out:  # (ids fitted here too: rows may wait into a batch that fits nothing)
            db.executemany(_INSERT, [fit(r) for r in out] if max(out)[0] >= SIGNED_LIMIT
                           else out)
        for sql, many in other:  # (snapshots: actors, blocks; few rows)
            db.executemany(sql, [fit(row) for row in many])

    def _fold(self, events: list[tuple[int, str, float, int, int]], ended: list[int]) \
            -> dict[int, list[Any]]:
        """A batch's state changes: folded into held rows (their ids added to `ended` when
        the task ended), and returned for tasks already written, one entry per task:
        [state, started, finished, node id, attempt, unusual changes as text lines
        "t state node_id" (or None)]."""
        names = STATE_NAMES
        held = self._held
        nodes = self._node_names
        live = self._live
        changes: dict[int, list[Any]] = {}
        for tid, s, t, node_id, attempt in events:
            state = names[s]
            row = held.get(tid)
            if row is not None:  # (most: the row is written when the task ends)
                row[15] = attempt + 1
                old = row[9]
                if state == old:
                    continue
                if state == "running":
                    row[10] = t
                    row[12] = node_id
                    node = nodes.get(node_id)
                    if node:
                        row[13], row[14] = node
                elif state == "queued":
                    if old in ("running", "done"):  # a retry, a rebuild, a restart
                        row[18] = (row[18] or "") + \
                            f"{row[10] or 0:.6f} running {row[12]}\n{t:.6f} {state} 0\n"
                else:
                    row[11] = t
                row[9] = state
                if s == "DONE" or s == "FAILED":
                    ended.append(tid)
                continue
            seen = live.get(tid)
            if seen is None:
                seen = live[tid] = ["", None, 0]
            c = changes.get(tid)
            if c is None:
                c = changes[tid] = [state, None, None, None, attempt, None]
            c[4] = attempt
            old = seen[0]
            if state == old:
                continue
            if state == "queued" and old in ("running", "done"):
                # A retry, a rebuild or an actor's restart: keep the run that ended.
                extra = f"{seen[1] or 0:.6f} running {seen[2]}\n{t:.6f} {state} 0\n"
                c[5] = extra if c[5] is None else c[5] + extra
            if state == "running":
                c[1] = seen[1] = t
                c[3] = seen[2] = node_id
            elif state in ("done", "failed"):
                c[2] = t
            c[0] = seen[0] = state
            if s == "DONE" or s == "FAILED":  # (not HOSTING: an actor lives on)
                del live[tid]
        return changes


#: Kind numbers (proto Kind) as the history names them.
KIND_NAMES = {0: "python", 1: "bash", 2: "actor", 3: "actor_call"}


def encode_frame(frame: Any) -> bytes:
    """One frame for the writer's input (the head's side of the pipe)."""
    data = marshal.dumps(frame)
    return struct.pack("<I", len(data)) + data


def write_batch(out: Any, frame: Any) -> None:
    """Send one frame to a writer."""
    out.write(encode_frame(frame))
    out.flush()


def _read_exactly(stream: Any, n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return b""
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def run(path: str, stream: Any, pace: bool = False) -> bool:
    """Write frames from `stream` into the history at `path` until a closing frame
    (returns True) or end of input (the head died: False). `pace`: while the CPUs are
    busy, write every few seconds (:mod:`cluster.head.historypace`; `stream` must then be
    the raw input, read by its file descriptor)."""
    db = open_db(path)
    writer = Writer(db, HOLD_SECONDS)

    def write(frames: list[Any]) -> None:
        try:
            writer.batches(frames)
        except Exception:  # noqa: BLE001 - one bad batch must not end the history
            for frame in frames:  # (each alone: the others are kept)
                try:
                    writer.batch(frame)
                except Exception:  # noqa: BLE001
                    log.exception("could not write a batch of the history to %s", path)

    if pace:
        from cluster.head.historypace import paced

        closed = paced(stream.fileno(), write)
    else:
        closed = False
        while True:
            head = _read_exactly(stream, 4)
            if not head:
                break
            data = _read_exactly(stream, struct.unpack("<I", head)[0])
            if not data:
                break
            frame = marshal.loads(data)
            if frame == "close":
                closed = True
                break
            write([frame])
    writer.finish()
    if closed:
        db.execute("UPDATE meta SET value = ? WHERE key = 'ended'", (repr(time.time()),))
    db.close()
    return closed


def lower_priority() -> None:
    """Run below the head, its workers and drivers: while they keep the CPUs busy (a burst
    of short tasks) the history takes a small share and lags, its input buffered in the
    pipe and the head's sender (bounded: cluster.head.history.PENDING_LIMIT). Nice 10,
    with SCHED_BATCH (a frame's arrival does not preempt the head). Not nice 19 or
    SCHED_IDLE: on a machine others kept busy (load 9 on 2 cores), a nice-19 writer took
    over a minute to start and write 25 tasks, and the live pages lagged as long."""
    try:
        os.nice(10)
    except OSError:
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):
        pass


def main() -> None:
    """``python -m cluster.head.historywriter FILE``: frames on stdin."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s history %(levelname)s "
                        "%(message)s")
    lower_priority()
    import sqlite3

    try:
        run(sys.argv[1], sys.stdin.buffer, pace=True)
    except sqlite3.Error as err:
        log.error("the run history %s cannot be written: %s", sys.argv[1], err)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
