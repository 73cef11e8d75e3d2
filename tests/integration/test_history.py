"""The run history end to end: `clusterctl up --log-dir`, a real driver, then `clusterctl
history/logs/timeline` on the running cluster, after `down`, and after a head crash."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import api
from cluster.common import clusterfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(180)


def ctl(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@api.python_app
def add(a, b):
    print(f"adding {a} and {b}")
    return a + b


@api.python_app
def boom(x):
    raise ValueError(f"bad input {x}")


@api.bash_app
def shout(msg, stdout=api.AUTO_LOGNAME, stderr=api.AUTO_LOGNAME):
    return f"echo {msg}; echo to-stderr >&2"


@api.bash_app
def quiet_fail():
    return "echo before-exit; exit 3"


@api.actor
class Tally:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n


def _wait_written(history, task_ids, timeout=10.0):
    """Until every task in `task_ids` has its final state in the history file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(f"file:{history}?mode=ro", uri=True) as db:
                marks = ",".join(str(t) for t in task_ids)
                rows = db.execute(f"SELECT count(*) FROM tasks WHERE task_id IN ({marks}) "
                                  "AND state IN ('done', 'failed', 'cancelled')").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            rows = 0
        if rows == len(task_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A cluster (logs and history in a --log-dir) and one driver's workload on it."""
    api.shutdown()
    log_root = tmp_path_factory.mktemp("shared-logs")
    up = ctl("up", "--num-cpus", "2", "--cluster-id", "hist-a", "--log-dir", str(log_root),
             "--no-dashboard")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("hist-a"))
    api.init(cf.path, run_dir=str(tmp_path_factory.mktemp("runinfo")))
    try:
        tally = Tally.options(name="tally")()
        assert tally.bump().result() == 1
        ok = add(1, 2)
        assert ok.result() == 3
        bad = boom(7)
        with pytest.raises(ValueError):
            bad.result()
        loud = shout("hello-history")
        loud.result()
        failing = quiet_fail()
        with pytest.raises(api.BashExitFailure):
            failing.result()
        many = [add(i, i) for i in range(20)]
        api.get(many)
        futs = {"ok": ok, "bad": bad, "loud": loud, "failing": failing, "many": many}
        ids = [ok.task_id, bad.task_id, loud.task_id, failing.task_id,
               *(f.task_id for f in many)]
        history = os.path.join(str(log_root), "hist-a", "history.sqlite")
        assert _wait_written(history, ids) == len(ids)
        yield {"cf": cf, "futs": futs, "ids": ids, "history": history,
               "log_root": str(log_root), "reprs": {k: repr(v) for k, v in futs.items()
                                                     if k != "many"}}
    finally:
        api.shutdown()
        ctl("down", "--cluster", "hist-a")


def test_history_lives_in_the_log_dir(run):
    cf = run["cf"]
    assert cf.log_dir == os.path.join(run["log_root"], "hist-a")
    assert os.path.exists(run["history"])
    assert os.stat(cf.log_dir).st_mode & 0o777 == 0o700
    with sqlite3.connect(run["history"]) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_history_json_names_tasks_as_their_futures_do(run):
    out = ctl("history", "--cluster", "hist-a", "--json")
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    by_id = {r["task_id"]: r for r in records}
    futs = run["futs"]
    assert set(run["ids"]) <= set(by_id)
    for r in records:
        assert {"task_id", "name", "state", "node", "attempts", "submitted", "started",
                "finished", "error"} <= set(r)
        assert r["state"] in ("queued", "running", "done", "failed", "cancelled")
    ok = by_id[futs["ok"].task_id]
    assert ok["name"] == "add" and ok["state"] == "done" and ok["attempts"] == 1
    assert ok["node"] and ok["submitted"] <= ok["started"] <= ok["finished"]
    assert ok["worker_pid"] > 0
    # The number in the JSON is the one the future's repr shows (in hex).
    assert f"task={ok['id']}" in run["reprs"]["ok"] and int(ok["id"], 16) == ok["task_id"]
    bad = by_id[futs["bad"].task_id]
    assert bad["state"] == "failed" and bad["error_type"] == "ValueError"
    assert "bad input 7" in bad["error"]
    failing = by_id[futs["failing"].task_id]
    assert failing["state"] == "failed" and failing["error_type"] == "BashExitFailure"
    # Actor creations and calls are not app tasks.
    assert all(r["name"] != "bump" for r in records)


def test_history_filters_and_table(run):
    failed = json.loads(ctl("history", "--cluster", "hist-a", "--state", "failed",
                            "--json").stdout)
    assert {r["task_id"] for r in failed} == {run["futs"]["bad"].task_id,
                                              run["futs"]["failing"].task_id}
    adds = json.loads(ctl("history", "--cluster", "hist-a", "--app", "add", "--json").stdout)
    assert len(adds) == 21 and all(r["name"] == "add" for r in adds)
    table = ctl("history", "--cluster", "hist-a", "--state", "failed")
    assert table.returncode == 0, table.stderr
    assert f"{run['futs']['bad'].task_id:#x}" in table.stdout
    assert "ValueError: bad input 7" in table.stdout
    limited = ctl("history", "--cluster", "hist-a", "--limit", "3")
    assert "earlier tasks not shown" in limited.stdout
    wrong = ctl("history", "--cluster", "hist-a", "--state", "finished")
    assert wrong.returncode != 0 and "invalid choice" in wrong.stderr
    missing = ctl("history", "--cluster", "no-such-cluster")
    assert missing.returncode == 1 and "no run history" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_logs_of_python_and_bash_apps(run):
    futs = run["futs"]
    out = ctl("logs", f"{futs['ok'].task_id:#x}", "--cluster", "hist-a")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "adding 1 and 2\n"
    # The decimal number fut.task_id gives works too.
    assert ctl("logs", str(futs["ok"].task_id), "--cluster", "hist-a").stdout == out.stdout
    loud = ctl("logs", f"{futs['loud'].task_id:#x}", "--cluster", "hist-a")
    assert "hello-history" in loud.stdout and "to-stderr" in loud.stderr
    bad = ctl("logs", f"{futs['bad'].task_id:#x}", "--cluster", "hist-a")
    assert "ValueError: bad input 7" in bad.stderr and "raise ValueError" in bad.stderr
    failing = ctl("logs", f"{futs['failing'].task_id:#x}", "--cluster", "hist-a")
    assert "before-exit" in failing.stdout and "exited with code 3" in failing.stderr
    nope = ctl("logs", "0x123456789", "--cluster", "hist-a")
    assert nope.returncode == 1 and "no task 0x123456789" in nope.stderr
    junk = ctl("logs", "not-an-id", "--cluster", "hist-a")
    assert junk.returncode == 1 and "is not a task id" in junk.stderr


def test_timeline_is_a_chrome_trace(run, tmp_path):
    path = tmp_path / "trace.json"
    out = ctl("timeline", "--cluster", "hist-a", "-o", str(path))
    assert out.returncode == 0, out.stderr
    trace = json.loads(path.read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    ids = {e["args"]["task_id"] for e in spans}
    assert set(run["ids"]) <= ids
    for e in spans:
        assert e["dur"] >= 0 and e["ts"] >= 0 and e["tid"] > 0
    # One row (thread) per worker, named; one process per node, named.
    workers = {(e["pid"], e["tid"]) for e in spans}
    names = {(e["pid"], e["tid"]) for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert workers == names and 1 <= len(workers) <= 4
    assert any(e["ph"] == "M" and e["name"] == "process_name" for e in trace["traceEvents"])


def test_progress_of_real_futures(run):
    import io

    out = io.StringIO()
    futs = api.progress([add(i, 1) for i in range(8)], desc="adds", file=out)
    assert api.get(futs) == [i + 1 for i in range(8)]
    assert "8/8" in out.getvalue()


def test_wait_with_progress_on_real_futures(run, monkeypatch, capsys):
    futs = [add(i, 2) for i in range(6)]
    done, pending = api.wait(futs, num_returns=len(futs), progress=True)
    assert (len(done), pending) == (6, [])
    assert api.get(done) == [i + 2 for i in range(6)]
    assert "6/6" in capsys.readouterr().err


def test_leased_tasks_are_in_the_history(run):
    # One-at-a-time tasks run on the driver's leased worker (api._lease), which the head
    # never sees: the driver reports them afterwards, and they are recorded like the rest.
    from api import _session

    lease = _session.client().lease
    while not lease.ready:
        assert add(1, 1).result(timeout=60) == 2
    before = lease.sent
    ok = add(0, 1)
    assert ok.result(timeout=60) == 1
    bad = boom(9)
    with pytest.raises(ValueError):
        bad.result(timeout=60)
    assert lease.sent - before == 2
    assert _wait_written(run["history"], [ok.task_id, bad.task_id]) == 2
    records = {r["task_id"]: r for r in
               json.loads(ctl("history", "--cluster", "hist-a", "--json").stdout)}
    done, failed = records[ok.task_id], records[bad.task_id]
    assert done["name"] == "add" and done["state"] == "done" and done["node"]
    assert done["submitted"] <= done["started"] <= done["finished"]
    assert failed["state"] == "failed" and failed["error_type"] == "ValueError"
    assert "bad input 9" in failed["error"]


def test_history_outlives_down_and_a_head_crash(run, tmp_path):
    # Down (the last test of the module on this cluster): everything is still readable.
    assert ctl("down", "--cluster", "hist-a").returncode == 0
    after = json.loads(ctl("history", "--cluster", "hist-a", "--json").stdout)
    assert set(run["ids"]) <= {r["task_id"] for r in after}
    logs = ctl("logs", f"{run['futs']['ok'].task_id:#x}", "--cluster", "hist-a")
    assert logs.stdout == "adding 1 and 2\n"
    with sqlite3.connect(run["history"]) as db:
        ended = db.execute("SELECT value FROM meta WHERE key = 'ended'").fetchone()[0]
        assert float(ended) > 0
        states = {r[0] for r in db.execute("SELECT state FROM nodes")}
        assert states == {"stopped"}
        actors = db.execute("SELECT class_name, name FROM actors").fetchall()
        assert ("Tally", "tally") in actors

    # A head that is killed: what it recorded up to ~0.1 s before is there.
    api.shutdown()
    up = ctl("up", "--num-cpus", "2", "--cluster-id", "hist-crash", "--no-dashboard")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("hist-crash"))
    try:
        api.init(cf.path, run_dir=str(tmp_path / "runinfo"))
        futs = [add(i, 1) for i in range(10)]
        api.get(futs)
        history = os.path.join(cf.log_dir, "history.sqlite")
        assert _wait_written(history, [f.task_id for f in futs]) == 10
        api.shutdown()
        os.kill(cf.head_pid, signal.SIGKILL)
        crashed = json.loads(ctl("history", "--cluster", "hist-crash", "--json").stdout)
        assert {f.task_id for f in futs} <= {r["task_id"] for r in crashed if
                                              r["state"] == "done"}
        table = ctl("history", "--cluster", "hist-crash")
        assert "running (or its head crashed)" in table.stdout
    finally:
        api.shutdown()
        ctl("down", "--cluster", "hist-crash", "--timeout", "3")
