"""The run history's parts without a cluster: the head's state machine feeding a real
Recorder (and its writer process, a real SQLite file), the reader, the error decoding,
the trace format, /metrics, the dashboard token and the progress line."""

from __future__ import annotations

import io
import os
import pickle
import sqlite3

import pytest

from cluster.common import auth, historydb
from cluster.common.protocol import fill, pb
from cluster.common.serialization import dumps_error
from cluster.head import metrics
from cluster.head.history import Recorder
from cluster.head.historywriter import Writer, describe_error, open_db
from cluster.head.records import Node, Task, TaskState
from cluster.policy import scheduler

pytestmark = pytest.mark.timeout(60)


def _task(seq, name="work", kind=pb.PYTHON):
    spec = pb.TaskSpec(task_id=(1 << 40) | seq, name=name, kind=kind)
    fill(spec.resources, {"cpus": 1.0})
    return Task(spec, {"cpus": 1.0}, spec.resources.SerializeToString())


def _node(node_id=1, name="nodeA"):
    return Node(node_id, name, "10.0.0.1", 4242, None,
                scheduler.NodeView(node_id, {"cpus": 2.0}, {}, 1.0))


def _move(rec, task, *states):
    for state in states:
        old = task.state
        task.state = state
        rec.state(task, old, state)


def test_recorder_writes_a_run_that_readers_see(tmp_path):
    path = str(tmp_path / "history.sqlite")
    rec = Recorder(path, "c-unit", str(tmp_path))
    node = _node()
    rec.node(node)
    ok, bad, retried, cancelled = _task(1), _task(2, "boom"), _task(3), _task(4)
    ok.node_id = bad.node_id = retried.node_id = node.node_id
    _move(rec, ok, TaskState.QUEUED, TaskState.RUNNING, TaskState.DONE)
    _move(rec, bad, TaskState.QUEUED, TaskState.RUNNING, TaskState.FAILED)
    rec.failed(bad, pb.TaskResult(task_id=bad.task_id, status=pb.APP_ERROR,
                                  data=dumps_error(KeyError("k"), "Traceback: line 1\n"),
                                  message="'k'"))
    _move(rec, retried, TaskState.QUEUED, TaskState.RUNNING)
    rec.flush()   # the retry's second half arrives in another batch
    retried.attempts = 1
    _move(rec, retried, TaskState.QUEUED, TaskState.RUNNING, TaskState.DONE)
    _move(rec, cancelled, TaskState.QUEUED, TaskState.FAILED)
    rec.failed(cancelled, pb.TaskResult(task_id=cancelled.task_id, status=pb.CANCELLED,
                                        message="cancelled: its driver disconnected"))
    batch = pb.NodeToHead(results=[pb.TaskResult(task_id=ok.task_id, worker_pid=777,
                                                 run_seconds=0.25)],
                          logs=[pb.LogLine(task_id=ok.task_id, text="hello\n"),
                                pb.LogLine(task_id=ok.task_id, text="oops\n", stderr=True)])
    rec.node_batch(node, batch)
    node.alive = False
    rec.node(node)
    rec.close()

    db = historydb.connect(path)
    rows = {r["task_id"]: r for r in historydb.tasks(db)}
    assert rows[ok.task_id]["state"] == "done" and rows[ok.task_id]["node"] == "nodeA"
    assert rows[ok.task_id]["worker_pid"] == 777 and rows[ok.task_id]["attempts"] == 1
    assert rows[ok.task_id]["resources"] == {"cpus": 1.0}
    assert rows[bad.task_id]["state"] == "failed"
    assert rows[bad.task_id]["error_type"] == "KeyError"
    full = historydb.task(db, bad.task_id)
    assert full["traceback"] == "Traceback: line 1\n" and full["status"] == "APP_ERROR"
    assert rows[cancelled.task_id]["state"] == "cancelled"
    assert rows[retried.task_id]["state"] == "done" and rows[retried.task_id]["attempts"] == 2
    states = [e["state"] for e in historydb.task(db, retried.task_id)["events"]]
    assert states == ["queued", "running", "queued", "running", "done"]
    assert [(x["stream"], x["text"]) for x in historydb.logs(db, ok.task_id)] == [
        ("stdout", "hello\n"), ("stderr", "oops\n")]
    assert historydb.counts_by_state(db) == {"queued": 0, "running": 0, "done": 2,
                                             "failed": 1, "cancelled": 1}
    assert historydb.nodes(db)[0]["state"] == "lost"
    info = historydb.meta(db)
    assert info["cluster_id"] == "c-unit" and float(info["ended"]) > 0
    assert historydb.tasks(db, state="failed", app="boom")[0]["task_id"] == bad.task_id
    with pytest.raises(historydb.HistoryError, match="no state 'finished'"):
        historydb.tasks(db, state="finished")
    with pytest.raises(historydb.HistoryError, match="no task 0x100000000ff"):
        historydb.task(db, (1 << 40) | 0xFF)


def test_a_writer_without_a_closing_frame_leaves_the_run_open(tmp_path):
    """The head died: what arrived is there, `ended` is empty."""
    from cluster.head.historywriter import run, write_batch

    path = str(tmp_path / "h.sqlite")
    stream = io.BytesIO()
    write_batch(stream, ([], [((1 << 40) | 1, "a", 0, "{}", 1.0, "", "", 0)],
                         [((1 << 40) | 1, "QUEUED", 1.0, 0, 0)], [], [], [],
                         [("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("ended", "")])]))
    stream.seek(0)
    assert run(path, stream) is False
    db = historydb.connect(path)
    assert historydb.meta(db)["ended"] == ""
    assert historydb.tasks(db)[0]["state"] == "queued"


def test_the_live_table_forgets_finished_tasks(tmp_path):
    writer = Writer(open_db(str(tmp_path / "h.sqlite")))
    events = []
    for seq in range(100):
        tid = (1 << 40) | seq
        events += [(tid, "QUEUED", 1.0, 0, 0), (tid, "RUNNING", 2.0, 1, 0),
                   (tid, "DONE", 3.0, 1, 0)]
    writer.batch(([], [], events, [], [], [], []))
    assert writer._live == {}  # noqa: SLF001 - memory must not grow with finished tasks


def test_ids_with_the_top_bit_set_are_stored_and_read_back(tmp_path):
    """A node caller's task (an actor calling an actor) has an id of 2**63 or more, which
    SQLite's signed INTEGER refuses: the writer failed its whole batch on one."""
    from cluster.common.ids import DRIVER_SHIFT, node_caller

    tid = node_caller(1) << DRIVER_SHIFT | 3
    assert tid >= 1 << 63
    path = str(tmp_path / "h.sqlite")
    writer = Writer(open_db(path))
    writer.batch(([], [(tid, "call", pb.ACTOR_CALL, "{}", 1.0, "", "", tid - 1)],
                  [(tid, "QUEUED", 1.0, 0, 0), (tid, "RUNNING", 2.0, 1, 0),
                   (tid, "DONE", 3.0, 1, 0)], [(tid, 77, 0.5)],
                  [(tid, 2.5, False, "nodeA", "hello\n")], [], []))
    db = historydb.connect(path)
    (record,) = historydb.tasks(db, kinds=("actor_call",))
    assert (record["task_id"], record["state"], record["worker_pid"]) == (tid, "done", 77)
    assert historydb.task(db, tid)["actor_id"] == tid - 1
    assert [line["text"] for line in historydb.logs(db, tid)] == ["hello\n"]


def test_every_task_state_has_a_history_name(tmp_path):
    """A state the writer does not know failed its whole batch (KeyError): DECIDING, the
    retry_handler's state, did. Each state is folded as the writer would see it."""
    from cluster.head.historywriter import STATE_NAMES

    assert set(STATE_NAMES) == {s.name for s in TaskState}
    writer = Writer(open_db(str(tmp_path / "h.sqlite")))
    tid = (1 << 40) | 1
    events = [(tid, s.name, 1.0 + i, 1, 0) for i, s in enumerate(TaskState)]
    writer.batch(([], [(tid, "a", 0, "{}", 1.0, "", "", 0)], events, [], [], [], []))
    assert historydb.tasks(historydb.connect(str(tmp_path / "h.sqlite")))[0]["task_id"] == tid


def test_error_envelopes_are_read_without_running_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    evil = pickle.dumps((None, "x", "Y", Evil(), ""))
    kind, message, tb = describe_error(pb.APP_ERROR, evil, "the message")
    assert (kind, message, tb) == ("TaskError", "the message", "")
    kind, _, tb = describe_error(pb.BASH_EXIT, b'{"exitcode": 3, "stderr_tail": "no such"}',
                                 "bash app 'x' exited with code 3")
    assert kind == "BashExitFailure" and tb == "no such"


def test_task_ids_are_parsed_as_shown_or_as_numbers():
    assert historydb.parse_task_id("0x10000000007") == 0x10000000007
    assert historydb.parse_task_id(str(0x10000000007)) == 0x10000000007
    assert historydb.format_id(0x10000000007) == "0x10000000007"
    with pytest.raises(historydb.HistoryError, match="is not a task id"):
        historydb.parse_task_id("task-7")


def test_timeline_has_one_row_per_worker(tmp_path):
    path = str(tmp_path / "h.sqlite")
    db = open_db(path)
    db.execute("INSERT INTO meta VALUES ('started', '100.0')")
    db.execute("INSERT INTO nodes (node_id, name) VALUES (1, 'nodeA')")
    for seq, pid in ((1, 11), (2, 11), (3, 12)):
        db.execute("INSERT INTO tasks (task_id, name, kind, state, node_id, worker_pid, started,"
                   " finished, run_seconds, attempts) VALUES (?, 'f', 'python', 'done', 1, ?, "
                   "?, ?, 0.5, 1)", ((1 << 40) | seq, pid, 100.0 + seq, 101.0 + seq))
    db.close()
    trace = historydb.timeline(historydb.connect(path))
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 3 and {e["tid"] for e in spans} == {11, 12}
    assert spans[0]["ts"] == pytest.approx(1.5e6) and spans[0]["dur"] == pytest.approx(5e5)
    meta = {(e["name"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
            if e["ph"] == "M"}
    assert meta[("process_name", 0)] == "nodeA" and meta[("thread_name", 11)] == "worker 11"
    newest = historydb.timeline(historydb.connect(path), limit=2)["traceEvents"]
    assert [e["args"]["task_id"] & 0xFF for e in newest if e["ph"] == "X"] == [2, 3]


def test_metrics_text_format():
    reply = pb.StatusReply(cluster_id='c"1', nodes_total=2, nodes_alive=1, tasks_queued=3,
                           tasks_running=1, tasks_done=10, tasks_failed=2, tasks_prefetched=7)
    node = reply.nodes.add(name="nodeA", node_id=1, running=1)
    fill(node.total, {"cpus": 4.0, "memory": 2.0**30})
    fill(node.used, {"cpus": 1.0})
    node.store.bytes, node.store.capacity = 100, 1000
    reply.actors.add(state="alive")
    text = metrics.render(reply, {"done": 9, "failed": 2})
    assert 'shoal_up{cluster="c\\"1"} 1' in text
    assert 'shoal_node_resource_used{node="nodeA",node_id="1",resource="cpus"} 1' in text
    assert 'shoal_tasks{state="queued"} 3' in text and "shoal_tasks_done_total 10" in text
    assert "shoal_tasks_prefetched_total 7" in text
    assert 'shoal_actors{state="alive"} 1' in text
    for line in text.splitlines():
        if not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            float(value)
            assert name_labels.startswith("shoal_")


def test_dashboard_token_is_derived_not_the_secret():
    secret = auth.new_secret()
    token = auth.dashboard_token(secret)
    assert token == auth.dashboard_token(secret) and secret not in token
    assert token != auth.dashboard_token(auth.new_secret())


def test_history_file_is_wal(tmp_path):
    open_db(str(tmp_path / "h.sqlite")).close()
    with sqlite3.connect(str(tmp_path / "h.sqlite")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("name", ["cluster.head.metrics", "cluster.head.historywriter",
                                  "cluster.cli_history", "cluster.common.historydb"])
def test_doctests(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.failed == 0


def _finishing(n, fail=()):
    import concurrent.futures
    import threading

    futs = [concurrent.futures.Future() for _ in range(n)]

    def finish():
        for i, fut in enumerate(futs):
            if i in fail:
                fut.set_exception(ValueError(i))
            else:
                fut.set_result(i)

    threading.Timer(0.05, finish).start()
    return futs


def test_progress_with_tqdm():
    pytest.importorskip("tqdm")
    import api

    out = io.StringIO()
    futs = api.progress(_finishing(30, fail={3}), desc="sims", file=out)
    assert all(f.done() for f in futs) and len(futs) == 30
    assert "sims" in out.getvalue() and "30/30" in out.getvalue()


def test_progress_without_tqdm(monkeypatch):
    import sys

    import api

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)   # import raises ImportError
    out = io.StringIO()
    futs = api.progress(_finishing(20, fail={1, 2}), desc="sims", file=out)
    assert all(f.done() for f in futs)
    assert out.getvalue().splitlines()[-1].startswith("sims: 20/20 done, 2 failed")
    assert api.progress([], file=out) == []


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_wait_with_progress_draws_the_awaited_count(monkeypatch, with_tqdm):
    """``api.wait(..., progress=True)`` (the issue's spelling): a bar of the num_returns
    awaited, moved as futures finish, and the same (done, pending) as without it."""
    import sys

    import api

    if with_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    futs = _finishing(20, fail={4})
    done, pending = api.wait(futs, num_returns=15, progress=True)
    assert len(done) >= 15 and len(done) + len(pending) == 20
    text = out.getvalue()
    assert "15/15" in text, text
    if not with_tqdm:
        assert text.splitlines()[-1].startswith("tasks: 15/15 done, 1 failed")
    out.truncate(0)
    api.wait(futs, num_returns=20)            # no bar unless asked
    assert out.getvalue() == ""
