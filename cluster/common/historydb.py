"""Reading a cluster's run history (the SQLite file its head writes, see
:mod:`cluster.head.history`): used by ``clusterctl history/logs/timeline`` in the user's
process and by the dashboard. Read-only; it works while the head writes (WAL mode) and
after the cluster is gone.

A task is named by the same number everywhere: ``task_id`` is the integer ``fut.task_id``
holds, written as :func:`format_id` writes it (``0x10000000007``, as the future's repr).

>>> parse_task_id("0x10000000007") == parse_task_id("1099511627783") == 0x10000000007
True
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from cluster.common.ids import from_db, to_db

if TYPE_CHECKING:  # imported where a history is opened: every `clusterctl` command
    import sqlite3  # imports this module, `up` never opens one (sqlite3: ~3 ms)

#: The states a task has in the history.
STATES = ("queued", "running", "done", "failed", "cancelled")
TASK_COLUMNS = ("task_id", "name", "kind", "state", "node", "worker_pid", "block", "attempts",
                "submitted", "started", "finished", "run_seconds", "error_type", "error",
                "resources", "driver")


class HistoryError(Exception):
    """No history where one was looked for, or a bad query (the message says what to do)."""


def format_id(task_id: int) -> str:
    """A task id as users see it everywhere (the future's repr, print() prefixes)."""
    return f"{task_id:#x}"


def parse_task_id(text: str) -> int:
    """A task id as the user typed it: ``0x...`` (as shown), or decimal (``fut.task_id``)."""
    value = text.strip().lower()
    try:
        return int(value, 16) if value.startswith("0x") else int(value)
    except ValueError:
        raise HistoryError(f"{text!r} is not a task id (write it as shown, e.g. "
                           "0x10000000007, or as the number fut.task_id gives)") from None


def connect(path: str) -> sqlite3.Connection:
    """A read-only connection to the history at `path`."""
    import sqlite3

    if not os.path.exists(path):
        raise HistoryError(f"no run history at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        db.execute("SELECT 1 FROM tasks LIMIT 1")
    except sqlite3.Error as err:
        raise HistoryError(f"cannot read the run history {path}: {err}") from None
    db.row_factory = sqlite3.Row
    return db


def _task_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row
    out["task_id"] = from_db(out["task_id"])
    if out.get("actor_id"):
        out["actor_id"] = from_db(out["actor_id"])
    if out.get("resources"):
        try:
            out["resources"] = json.loads(out["resources"])
        except ValueError:
            pass
    out["id"] = format_id(out["task_id"])
    return out


def tasks(db: sqlite3.Connection, state: str | None = None, app: str | None = None,
          limit: int = 0, offset: int = 0, newest_first: bool = False,
          kinds: tuple[str, ...] = ("python", "bash")) -> list[dict[str, Any]]:
    """Task records, oldest first (ids grow with submission), filtered by `state` and app
    `name`; `limit` 0: all. Actor creations and calls are left out unless `kinds` asks."""
    where, params = _where(state, app, kinds)
    order = "DESC" if newest_first else "ASC"
    sql = (f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks {where} ORDER BY task_id {order}")
    if limit:
        sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
    # Plain tuples zipped with the names, resources parsed once per distinct text: 100,000
    # records as sqlite3.Row and json.loads each took 2.2 s, this 0.8 s.
    cursor = db.cursor()
    cursor.row_factory = None
    parsed: dict[str, Any] = {}
    out = []
    for row in cursor.execute(sql, params):
        record = dict(zip(TASK_COLUMNS, row, strict=True))
        record["task_id"] = from_db(record["task_id"])
        text = record["resources"]
        if text:
            value = parsed.get(text)
            if value is None:
                try:
                    value = parsed[text] = json.loads(text)
                except ValueError:
                    value = text
            record["resources"] = value
        record["id"] = f"{record['task_id']:#x}"
        out.append(record)
    return out


def _where(state: str | None, app: str | None,
           kinds: tuple[str, ...]) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if state:
        if state not in STATES:
            raise HistoryError(f"no state {state!r}: states are {', '.join(STATES)}")
        clauses.append("state = ?")
        params.append(state)
    if app:
        clauses.append("name = ?")
        params.append(app)
    if kinds:
        clauses.append(f"kind IN ({', '.join('?' * len(kinds))})")
        params.extend(kinds)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def count(db: sqlite3.Connection, state: str | None = None, app: str | None = None,
          kinds: tuple[str, ...] = ("python", "bash")) -> int:
    """How many task records match."""
    where, params = _where(state, app, kinds)
    return int(db.execute(f"SELECT count(*) FROM tasks {where}", params).fetchone()[0])


def counts_by_state(db: sqlite3.Connection) -> dict[str, int]:
    """{state: number of tasks} (apps only)."""
    rows = db.execute("SELECT state, count(*) FROM tasks WHERE kind IN ('python', 'bash') "
                      "GROUP BY state")
    found = {state: 0 for state in STATES}
    found.update({r[0]: r[1] for r in rows})
    return found


def app_names(db: sqlite3.Connection) -> list[str]:
    """The names of the apps that ran."""
    return [r[0] for r in db.execute("SELECT DISTINCT name FROM tasks WHERE kind IN "
                                     "('python', 'bash') ORDER BY name")]


def task(db: sqlite3.Connection, task_id: int) -> dict[str, Any]:
    """One task's whole record, with its state changes (``events``)."""
    row = db.execute("SELECT * FROM tasks WHERE task_id = ?", (to_db(task_id),)).fetchone()
    if row is None:
        raise HistoryError(f"no task {format_id(task_id)} in this cluster's history")
    out = _task_dict(row)
    out["events"] = events(out)
    return out


def events(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A task's state changes, oldest first: the usual ones from its times, the unusual
    ones (retries, rebuilds: the runs that ended before the last) from its ``events``
    text ("t state node_id" lines)."""
    found = [{"t": record["submitted"], "state": "queued"}]
    for line in (record.get("events") or "").splitlines():
        t, state, _ = line.split(" ", 2)
        found.append({"t": float(t), "state": state})
    if record.get("started"):
        found.append({"t": record["started"], "state": "running"})
    if record.get("finished"):
        found.append({"t": record["finished"], "state": record["state"]})
    return found  # in the order they happened (the times can tie)


def logs(db: sqlite3.Connection, task_id: int) -> list[dict[str, Any]]:
    """The task's printed output, in order: [{stream, node, text, t}]."""
    return [dict(r) for r in db.execute(
        "SELECT t, stream, node, text FROM logs WHERE task_id = ? ORDER BY rowid",
        (to_db(task_id),))]


def meta(db: sqlite3.Connection) -> dict[str, str]:
    """The run's facts: cluster_id, started, ended ("" while it runs), log_dir, head_host."""
    return {r[0]: r[1] for r in db.execute("SELECT key, value FROM meta")}


def nodes(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every node that joined, with its state (alive, lost, stopped)."""
    out = []
    for r in db.execute("SELECT * FROM nodes ORDER BY node_id"):
        d = dict(r)
        try:
            d["total"] = json.loads(d.get("total") or "{}")
        except ValueError:
            d["total"] = {}
        out.append(d)
    return out


def actors(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every actor, as last seen."""
    out = []
    for r in db.execute("SELECT * FROM actors ORDER BY actor_id"):
        d = dict(r)
        d["actor_id"] = from_db(d["actor_id"])
        out.append(d)
    return out


def blocks(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every Slurm block, as last seen."""
    return [dict(r) for r in db.execute("SELECT * FROM blocks ORDER BY block_id")]


def samples(db: sqlite3.Connection, limit: int = 600) -> list[dict[str, Any]]:
    """The last `limit` once-a-second samples of the cluster's counters, oldest first."""
    rows = db.execute("SELECT * FROM samples ORDER BY rowid DESC LIMIT ?", (limit,))
    return [dict(r) for r in rows][::-1]


def timeline(db: sqlite3.Connection, limit: int = 0) -> dict[str, Any]:
    """The run as a Chrome trace (``chrome://tracing``, ui.perfetto.dev): one process per
    node, one thread per worker, one complete event (``"ph": "X"``) per task that ran.
    A task's span is its run time on its worker, ending when the head heard of it.
    `limit` > 0: the last `limit` tasks only."""
    info = meta(db)
    origin = float(info.get("started") or 0.0)
    node_names = {r["node_id"]: r["name"] for r in db.execute("SELECT node_id, name FROM nodes")}
    sql = ("SELECT task_id, name, kind, state, node_id, worker_pid, started, finished, "
           "run_seconds, attempts FROM tasks WHERE worker_pid IS NOT NULL AND finished "
           "IS NOT NULL AND kind != 'actor' ORDER BY task_id")
    if limit > 0:  # the newest, from the end of the index (the live page polls this)
        rows = list(db.execute(sql + f" DESC LIMIT {int(limit)}"))[::-1]
    else:
        rows = list(db.execute(sql))
    events: list[dict[str, Any]] = []
    threads: set[tuple[int, int]] = set()
    for r in rows:
        node_id = r["node_id"] or 0
        pid = r["worker_pid"]
        run = r["run_seconds"] if r["run_seconds"] else (r["finished"] - (r["started"] or
                                                                           r["finished"]))
        start = r["finished"] - run
        threads.add((node_id, pid))
        events.append({"name": r["name"], "cat": r["kind"], "ph": "X",
                       "ts": round((start - origin) * 1e6, 1), "dur": round(run * 1e6, 1),
                       "pid": node_id, "tid": pid,
                       "args": {"task_id": from_db(r["task_id"]),
                                "id": format_id(from_db(r["task_id"])),
                                "state": r["state"], "attempts": r["attempts"]}})
    for node_id in sorted({n for n, _ in threads}):
        events.append({"name": "process_name", "ph": "M", "pid": node_id, "tid": 0,
                       "args": {"name": node_names.get(node_id, f"node {node_id}")}})
    for node_id, pid in sorted(threads):
        events.append({"name": "thread_name", "ph": "M", "pid": node_id, "tid": pid,
                       "args": {"name": f"worker {pid}"}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"cluster_id": info.get("cluster_id", "")}}
