"""What keeps the run history cheap, checked for behaviour (never timed): the head ships
only the state changes the history can tell apart, and the writer holds a new task's row
until it ends (one INSERT) without changing what the history says."""

from __future__ import annotations

import sqlite3
import time

import pytest

from cluster.common import historydb, status
from cluster.common.protocol import fill, pb
from cluster.head.history import Recorder
from cluster.head.historywriter import Writer, open_db
from cluster.head.records import Task, TaskState

pytestmark = pytest.mark.timeout(60)
S = TaskState
A = 1 << 40


def _task(seq: int, kind: int = pb.PYTHON) -> Task:
    spec = pb.TaskSpec(task_id=A | seq, name="work", kind=kind)
    fill(spec.resources, {"cpus": 1.0})
    return Task(spec, {"cpus": 1.0}, spec.resources.SerializeToString())


def _move(rec: Recorder, task: Task, *states: TaskState) -> None:
    for state in states:
        old, task.state = task.state, state
        rec.state(task, old, state)


def test_a_task_ships_only_the_changes_the_history_tells_apart(tmp_path):
    rec = Recorder(str(tmp_path / "h.sqlite"), "c")
    rec._broken = True  # noqa: SLF001 - no writer: look at what would be shipped
    plain = _task(1)
    _move(rec, plain, S.QUEUED, S.RUNNING, S.DONE)
    cancelled = _task(2)
    _move(rec, cancelled, S.WAITING, S.QUEUED, S.RUNNING, S.CANCELLING, S.FAILED)
    retried = _task(3)
    _move(rec, retried, S.QUEUED, S.RUNNING, S.DECIDING, S.QUEUED, S.RUNNING, S.DONE)
    actor = _task(4, pb.ACTOR_CREATE)
    _move(rec, actor, S.QUEUED, S.RUNNING, S.HOSTING, S.DONE)
    shipped = [(tid & 0xFF, state) for tid, state, *_ in rec._events]  # noqa: SLF001
    assert [t[0].task_id & 0xFF for t in rec._new] == [1, 2, 3, 4]  # noqa: SLF001
    assert shipped == [(1, "RUNNING"), (1, "DONE"),
                       (2, "RUNNING"), (2, "FAILED"),
                       (3, "RUNNING"), (3, "QUEUED"), (3, "RUNNING"), (3, "DONE"),
                       (4, "RUNNING"), (4, "HOSTING"), (4, "DONE")]


def _frames() -> list[tuple[float, tuple]]:
    """Batches as a head sends them, with when each came: a task ending at once, one
    retried, one failing with its error a batch later, one still running past the hold,
    one that never ends, and results arriving apart from their state changes."""
    new = [(A | i, "work", 0, '{"cpus": 1.0}', 1.0, "", "", 0) for i in range(1, 6)]
    b0 = ([(1, "nodeA", "10.0.0.1", "", 11, 1.0, '{"cpus": 2}')], new,
          [(A | 1, "RUNNING", 1.1, 1, 0), (A | 2, "RUNNING", 1.1, 1, 0),
           (A | 3, "RUNNING", 1.1, 1, 0), (A | 4, "RUNNING", 1.2, 1, 0)],
          [], [(A | 1, 1.15, False, "nodeA", "hi\n")], [], [])
    b1 = ([], [], [(A | 1, "DONE", 1.3, 1, 0), (A | 2, "QUEUED", 1.3, 0, 1),
                   (A | 2, "RUNNING", 1.4, 1, 1), (A | 3, "FAILED", 1.5, 1, 0)],
          [(A | 1, 101, 0.2)], [], [], [])
    b2 = ([], [], [(A | 2, "DONE", 1.6, 1, 1)], [(A | 2, 102, 0.2), (A | 3, 103, 0.4)], [],
          [(A | 3, 1.5, status.APP_ERROR, b"", "ValueError: no")], [])
    b3 = ([], [], [(A | 4, "DONE", 9.0, 1, 0)], [(A | 4, 104, 7.8)], [], [], [])
    b4 = ([(1, None, None, None, None, 9.5, None, "heartbeats stopped")], [], [], [], [],
          [], [])
    return [(1.0, b0), (1.3, b1), (1.6, b2), (9.0, b3), (9.5, b4)]


def _replay(path: str, hold: float) -> list[tuple]:
    writer = Writer(open_db(path), hold)
    now = [0.0]
    writer.clock = lambda: now[0]
    for t, frame in _frames():
        now[0] = t
        writer.batch(frame)
    writer.finish()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT * FROM tasks ORDER BY task_id").fetchall()
        rows += db.execute("SELECT * FROM nodes").fetchall()
    return [tuple(v if v != "" else None for v in r) for r in rows]


def test_holding_rows_writes_what_writing_at_once_writes(tmp_path):
    """Held until they end (or 5 s), written once: the same rows as written at once (an
    INSERT, then UPDATEs), whether a task's row waited or was written still running."""
    at_once = _replay(str(tmp_path / "a.sqlite"), 0.0)
    held = _replay(str(tmp_path / "b.sqlite"), 5.0)
    short = _replay(str(tmp_path / "c.sqlite"), 0.2)   # task 4 written running, then updated
    assert held == at_once == short
    db = historydb.connect(str(tmp_path / "b.sqlite"))
    records = {r["task_id"] & 0xFF: r for r in historydb.tasks(db)}
    assert {k: r["state"] for k, r in records.items()} == {
        1: "done", 2: "done", 3: "failed", 4: "done", 5: "queued"}
    assert records[2]["attempts"] == 2 and records[4]["worker_pid"] == 104
    assert records[3]["error"] == "ValueError: no" and records[3]["worker_pid"] == 103
    assert [e["state"] for e in historydb.task(db, A | 2)["events"]] == [
        "queued", "running", "queued", "running", "done"]   # the retry is kept
    assert historydb.nodes(db)[0]["reason"] == "heartbeats stopped"


def test_rows_held_are_bounded_and_written_at_the_end(tmp_path, monkeypatch):
    from cluster.head import historywriter

    monkeypatch.setattr(historywriter, "HOLD_ROWS", 10)
    path = str(tmp_path / "h.sqlite")
    writer = Writer(open_db(path), 1000.0)
    for batch in range(5):
        writer.batch(([], [(A | (batch * 5 + i), "w", 0, "{}", 1.0, "", "", 0)
                           for i in range(5)], [], [], [], [], []))
        assert len(writer._held) <= 10  # noqa: SLF001
    assert historydb.count(historydb.connect(path)) == 15
    writer.finish()
    assert historydb.count(historydb.connect(path)) == 25


def test_a_cluster_id_used_again_starts_a_history_of_its_own(tmp_path):
    """`up` after `down` with the same cluster id (the same Slurm job): the old rows had
    the new run's task ids, so INSERT OR IGNORE dropped the new run's tasks."""
    from cluster.head.history import set_aside

    path = str(tmp_path / "history.sqlite")
    first = Writer(open_db(path))
    first.batch(([], [(A | 1, "old", 0, "{}", 1.0, "", "", 0)],
                 [(A | 1, "DONE", 2.0, 0, 0)], [], [], [], []))
    first.db.close()
    moved = set_aside(path)
    assert moved.startswith(str(tmp_path / "history-")) and moved.endswith(".sqlite")
    second = Writer(open_db(path))
    second.batch(([], [(A | 1, "new", 0, "{}", 3.0, "", "", 0)],
                  [(A | 1, "DONE", 4.0, 0, 0)], [], [], [], []))
    assert [r["name"] for r in historydb.tasks(historydb.connect(path))] == ["new"]
    assert [r["name"] for r in historydb.tasks(historydb.connect(moved))] == ["old"]
    assert set_aside(str(tmp_path / "none.sqlite")) == ""


def test_a_writer_that_lags_costs_bounded_head_memory_and_loses_nothing(tmp_path,
                                                                         monkeypatch):
    """The writer runs below the head and may lag (a saturated burst): the head keeps at
    most PENDING_LIMIT for it, then waits for it; every task still reaches the file."""
    import os
    import signal
    import threading

    from cluster.head import history

    monkeypatch.setattr(history, "PENDING_LIMIT", 256 << 10)
    path = str(tmp_path / "h.sqlite")
    rec = Recorder(path, "c")
    rec._start_writer()  # noqa: SLF001 - as attach() does a moment after the head starts
    assert rec._proc is not None  # noqa: SLF001
    os.kill(rec._proc.pid, signal.SIGSTOP)  # noqa: SLF001 - a writer that gets no CPU
    resume = threading.Timer(1.0, os.kill, (rec._proc.pid, signal.SIGCONT))  # noqa: SLF001
    resume.start()
    try:
        most = 0
        for batch in range(40):
            for i in range(500):
                _move(rec, _task(batch * 500 + i + 1), S.QUEUED, S.RUNNING, S.DONE)
            rec.flush()
            most = max(most, len(rec._pending))  # noqa: SLF001
        assert most <= history.PENDING_LIMIT and rec._warned  # noqa: SLF001 - it waited
    finally:
        resume.join()
        os.kill(rec._proc.pid, signal.SIGCONT)  # noqa: SLF001
    rec.close()
    db = historydb.connect(path)
    assert historydb.counts_by_state(db)["done"] == 20_000


class _Watch:
    def __init__(self, busy: bool) -> None:
        self.answer = busy

    def busy(self) -> bool:
        return self.answer


def _paced_run(busy: bool, defer: float, wait: float, monkeypatch) -> tuple[list, bool]:
    """What `paced` hands its writer while the input stays open (up to `wait` seconds for
    a first write), and after the input ends; and whether it wrote before the end."""
    import os
    import threading

    from cluster.head import historypace
    from cluster.head.historywriter import encode_frame

    monkeypatch.setattr(historypace, "DEFER_SECONDS", defer)
    r, w = os.pipe()
    written: list = []
    wrote = threading.Event()

    def write(batch):
        written.extend(batch)
        wrote.set()

    def send():
        for frame in FRAMES:
            os.write(w, encode_frame(frame))
        early[0] = wrote.wait(wait)
        os.close(w)   # the head is gone: no closing frame

    early = [False]
    sender = threading.Thread(target=send)
    sender.start()
    assert historypace.paced(r, write, _Watch(busy)) is False
    sender.join()
    os.close(r)
    return written, early[0]


FRAMES = [([], [], [], [], [], [], [("SELECT ?", [(i,)])]) for i in range(3)]


def test_the_writer_waits_while_the_cpus_are_busy_but_not_longer_than_its_limit(
        monkeypatch):
    # CPUs not busy: written at once.
    assert _paced_run(False, 1000.0, 30.0, monkeypatch) == (FRAMES, True)
    # Busy: kept (here until the input ends; nothing is lost then)...
    assert _paced_run(True, 1000.0, 1.0, monkeypatch) == (FRAMES, False)
    # ...but never longer than DEFER_SECONDS.
    assert _paced_run(True, 0.3, 30.0, monkeypatch) == (FRAMES, True)


def test_cpu_watch_counts_other_processes_only(tmp_path):
    from cluster.head.historypace import WINDOW, CpuWatch

    stat = tmp_path / "stat"
    cpus = "cpu0 1 2 3\ncpu1 1 2 3\n"                      # two CPUs
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n" + cpus)
    watch = CpuWatch(str(stat))
    assert watch.busy() is False
    time.sleep(WINDOW + 0.05)
    stat.write_text("cpu  220 0 100 880 0 0 0 0 0 0\n" + cpus)   # 1.2 of 2 CPUs in use
    assert watch.busy() is True
    time.sleep(WINDOW + 0.05)
    stat.write_text("cpu  280 0 100 1020 0 0 0 0 0 0\n" + cpus)  # 0.6 of 2
    assert watch.busy() is False
    time.sleep(WINDOW + 0.05)
    stat.write_text("cpu  280 0 100 1220 0 0 0 0 0 0\n" + cpus)  # all idle since
    assert watch.busy() is False
    assert CpuWatch(str(tmp_path / "missing")).busy() is False


def test_idle_samples_do_not_walk_the_nodes_but_see_every_change(tmp_path):
    """The once-a-second sample walks every node only when a task or a node moved."""

    class Walked(dict):
        walks = 0

        def values(self):  # type: ignore[override]
            Walked.walks += 1
            return super().values()

    class View:
        def __init__(self) -> None:
            self.used = {"cpus": 0.0}
            self.total = {"cpus": 4.0}

    class FakeNode:
        def __init__(self, node_id: int) -> None:
            self.node_id, self.alive, self.running, self.view = node_id, True, set(), View()
            self.name, self.address, self.block_id, self.pid = f"n{node_id}", "a", "", 1
            self.lost_reason = ""

    class Actors:
        def status(self) -> list:
            return []

    class FakeHead:
        def __init__(self) -> None:
            self.nodes = Walked({i: FakeNode(i) for i in range(3)})
            self.tasks: dict = {}
            self.done = self.failed = 0
            self.actor_table = Actors()

        def blocks_info(self) -> list:
            return []

    rec = Recorder(str(tmp_path / "h.sqlite"), "c")
    rec._broken = True  # noqa: SLF001 - no writer: look at what would be shipped
    head = FakeHead()

    def sample(now: float) -> tuple:
        rec._snapshot(head, now)  # noqa: SLF001
        return rec._other[-1][1][0]  # noqa: SLF001

    assert sample(100.0)[5:8] == (3, 0.0, 12.0)
    walks = Walked.walks
    for second in range(1, 5):
        sample(100.0 + second)
    assert Walked.walks == walks, "nothing moved: no walk"
    lost = head.nodes[2]
    lost.alive, lost.lost_reason = False, "its stream closed"
    rec.node(lost)  # as the head tells it
    assert sample(105.0)[5:8] == (2, 0.0, 8.0), "a lost node shows at once"
    task = _task(7)
    head.tasks[task.task_id] = task
    head.nodes[0].running.add(task.task_id)
    head.nodes[0].view.used["cpus"] = 1.0
    _move(rec, task, S.QUEUED, S.RUNNING)
    assert sample(106.0)[1:3] == (0, 1), "a started task shows at once"
    assert sample(106.5)[6] == 1.0
    head.nodes[1].view.used["cpus"] = 1.0  # moved without a task moving (a blocked task)
    assert sample(112.0)[6] == 2.0, "seen within 10 s regardless"
