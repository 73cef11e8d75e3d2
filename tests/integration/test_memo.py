"""Memoization and checkpoints on real local clusters: cache hits, ignore_for_cache,
futures as arguments, unhashable arguments, a checkpoint reused by a second driver process
(and by `clusterctl run --checkpoint-dir`), a driver SIGKILLed mid-write, and the periodic
and manual checkpoint modes. Each app appends to a log file when it really runs, so
"nothing ran" is checked, not assumed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import ROOT

import api

pytestmark = pytest.mark.timeout(180)


def runs(log) -> list[str]:
    return open(log).read().split() if os.path.exists(log) else []


@api.python_app(cache=True, ignore_for_cache=["note"])
def square(log, x, note=""):
    with open(log, "a") as f:
        f.write(f"square:{x}\n")
    return x * x


@api.python_app
def add(a, b):
    return a + b


@api.python_app(cache=True)
def flaky(log, flag):
    with open(log, "a") as f:
        f.write("flaky\n")
    if not os.path.exists(flag):
        raise ValueError("no flag yet")
    return "ok"


def test_identical_calls_run_once_and_share_the_future(cluster, tmp_path):
    log = str(tmp_path / "log")
    a = square(log, 3)
    b = square(log, 3, note="ignored")
    c = square(log, x=3)
    d = square(log, 4)
    assert a is b is c and a is not d
    assert [f.result(timeout=60) for f in (a, b, c, d)] == [9, 9, 9, 16]
    again = square(log, 3)  # finished: the value is kept (not the future)
    assert again.result(timeout=60) == 9 and again.done()
    assert sorted(runs(log)) == ["square:3", "square:4"]
    assert add(a, d).result(timeout=60) == 25  # a memoized future is an ordinary dependency


def test_futures_as_arguments_are_hashed_by_their_value(cluster, tmp_path):
    log = str(tmp_path / "log")
    via_future = square(log, add(1, 2))          # key known once add() finished
    direct = square(log, 3)
    assert via_future.result(timeout=60) == direct.result(timeout=60) == 9
    assert runs(log) == ["square:3"]
    # A memoized call waiting on a future, passed on before it resolved.
    chained = add(square(log, add(2, 3)), 1)
    assert chained.result(timeout=60) == 26
    assert square(log, 5).result(timeout=60) == 25
    assert runs(log) == ["square:3", "square:5"]
    # A chain of memoized calls, each the next one's argument.
    fut = square(log, 2)
    for _ in range(3):
        fut = square(log, fut)
    assert fut.result(timeout=60) == 2 ** 16
    assert runs(log)[2:] == ["square:2", "square:4", "square:16", "square:256"]


def test_refs_are_hashed_by_content(cluster, tmp_path):
    import numpy as np

    log = str(tmp_path / "log")

    @api.python_app(cache=True)
    def total(log, arr):
        with open(log, "a") as f:
            f.write("total\n")
        return float(arr.sum())

    r1 = api.put(np.ones(100_000))  # stored (over the inline limit)
    r2 = api.put(np.ones(100_000))
    assert total(log, r1).result(timeout=60) == total(log, r2).result(timeout=60) == 1e5
    assert runs(log) == ["total"]


def test_a_failed_call_is_not_remembered(cluster, tmp_path):
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    with pytest.raises(ValueError, match="no flag yet"):
        flaky(log, flag).result(timeout=60)
    open(flag, "w").close()
    assert flaky(log, flag).result(timeout=60) == "ok"
    assert flaky(log, flag).result(timeout=60) == "ok"
    assert runs(log) == ["flaky", "flaky"]


def test_failed_dependency_fails_the_memoized_call(cluster, tmp_path):
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    with pytest.raises(api.DependencyError, match="no flag yet"):
        square(log, flaky(log, flag)).result(timeout=60)


def test_unhashable_argument_is_a_clear_error_at_the_call(cluster, tmp_path):
    log = str(tmp_path / "log")
    with open(__file__) as handle, pytest.raises(api.CacheKeyError) as info:
        square(log, [1, handle])
    text = str(info.value)
    assert "argument 'x'[1]" in text and "TextIOWrapper" in text and "ignore_for_cache" in text
    assert isinstance(info.value, TypeError)
    assert not os.path.exists(log)  # nothing ran
    assert square(log, 5, note=open).result(timeout=60) == 25  # ignored: fine


def test_cache_false_runs_every_time(cluster, tmp_path):
    log = str(tmp_path / "log")
    plain = api.python_app(square.fn)
    a, b = plain(log, 3), plain(log, 3)
    assert a is not b and a.result(timeout=60) == b.result(timeout=60) == 9
    assert runs(log) == ["square:3", "square:3"]


# ---- checkpoints across driver processes ---------------------------------------------------
DRIVER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import numpy as np
    import api

    LOG = {log!r}
    mode = os.environ.get("MODE", "task_exit")
    kwargs = {{}} if os.environ.get("NO_DIR") else {{"checkpoint_dir": {ck!r}}}
    api.init(num_cpus=2, checkpoint_mode=mode, checkpoint_period=0.3, **kwargs)

    @api.python_app(cache=True)
    def step(i):
        with open(LOG, "a") as f:
            f.write(f"step:{{i}}\\n")
        return {{"i": i, "sq": i * i}}

    @api.python_app(cache=True)
    def big(n):
        with open(LOG, "a") as f:
            f.write(f"big:{{n}}\\n")
        return np.full(n, 7.0)

    @api.bash_app(cache=True)
    def shout(msg, stdout=api.AUTO_LOGNAME):
        return f"echo {{msg}}; echo bash:{{msg}} >> {{LOG}}"

    @api.python_app(cache=True)
    def total(parts, arr):
        with open(LOG, "a") as f:
            f.write("total\\n")
        return sum(p["sq"] for p in parts) + float(arr.sum())

    @api.python_app
    def mean(arr):  # not cached: runs every time, on a checkpointed value in the 2nd run
        return float(arr.mean())

    phase = os.environ.get("PHASE", "all")
    if phase == "all":
        parts = [step(i) for i in range(4)]
        arr = big(300_000)
        t = total(parts, arr)
        s = shout("hi")
        print("RESULT", t.result(), s.result(), open(s.stdout).read().strip(), flush=True)
        a = arr.result()
        print("BIG", a.shape[0], float(a.sum()), a.flags.writeable, flush=True)
        print("MEAN", mean(arr).result(), mean(arr).result(), flush=True)  # published once
    elif phase == "kill":
        print("SMALL", [step(i).result() for i in range(4)], flush=True)
        print("WRITTEN", api.checkpoint(), flush=True)
        print("BIG", big(300_000).result().shape, flush=True)  # its write stalls: killed then
        time.sleep(600)
    elif phase == "modes":
        print("R", [step(i).result() for i in range(3)], flush=True)
        time.sleep(float(os.environ.get("WAIT", "0")))
        print("COUNT", api.checkpoint() if mode == "manual" and os.environ.get("CALL") else -1,
              flush=True)
        step(99).result()
    api.shutdown()
""")


def _script(tmp_path):
    log, ck = str(tmp_path / "log"), str(tmp_path / "ck")
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(root=ROOT, log=log, ck=ck))
    return str(path), log, ck


def _run(script, tmp_path, timeout=120, **env):
    return subprocess.run([sys.executable, script], capture_output=True, text=True,
                          timeout=timeout, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": ROOT, **env})


def _rows(ck) -> int:
    db = sqlite3.connect(os.path.join(ck, "index.sqlite"))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    finally:
        db.close()


def test_second_driver_reuses_every_result_and_runs_nothing(tmp_path, clusterctl):
    script, log, ck = _script(tmp_path)
    first = _run(script, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    ran = runs(log)
    assert sorted(ran) == sorted(["step:0", "step:1", "step:2", "step:3", "big:300000",
                                  "total", "bash:hi"])
    assert _rows(ck) == 7
    assert os.listdir(os.path.join(ck, "objects")), "the large result has its own file"
    second = _run(script, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert runs(log) == ran, "the second driver ran something"
    assert "RESULT 2100014.0 0 hi" in second.stdout and "RESULT 2100014.0 0 hi" in first.stdout
    assert "BIG 300000 2100000.0 False" in second.stdout  # mapped from the checkpoint file
    assert "MEAN 7.0 7.0" in second.stdout  # a checkpointed value as an ordinary argument
    # The same directory through clusterctl run --checkpoint-dir (no checkpoint_dir= given).
    third = clusterctl("run", "--num-cpus", "2", "--checkpoint-dir", ck, "--", sys.executable,
                       script, env={"NO_DIR": "1", "PYTHONPATH": ROOT}, timeout=120)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "RESULT 2100014.0 0 hi" in third.stdout
    assert runs(log) == ran


def test_driver_killed_mid_write_then_rerun_reuses_what_finished(tmp_path):
    script, log, ck = _script(tmp_path)
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
                            env={**os.environ, "PYTHONPATH": ROOT, "PHASE": "kill",
                                 "SHOAL_TEST_CHECKPOINT_STALL": "120"})
    objects = os.path.join(ck, "objects")
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("BIG"):
                break
        assert any(x.startswith("WRITTEN 4") for x in lines), "".join(lines)
        while not any(n.startswith(".tmp.") for n in os.listdir(objects)):
            time.sleep(0.05)  # the big result's file is being written (and stalls)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    assert _rows(ck) == 4, "the killed write left no row"
    assert [n for n in os.listdir(objects) if not n.startswith(".tmp.")] == []
    first_runs = runs(log)
    assert "big:300000" in first_runs
    rerun = _run(script, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = runs(log)[len(first_runs):]
    # Every finished step is reused; the result whose write was killed runs again.
    assert sorted(again) == ["bash:hi", "big:300000", "total"]
    assert "RESULT 2100014.0 0 hi" in rerun.stdout
    assert _rows(ck) == 7
    assert not any(n.startswith(".tmp.") for n in os.listdir(objects)), \
        "the dead driver's partial file was not cleaned up"


def test_manual_mode_writes_only_at_checkpoint(tmp_path):
    script, log, ck = _script(tmp_path)
    done = _run(script, tmp_path, PHASE="modes", MODE="manual", CALL="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "COUNT 3" in done.stdout
    assert _rows(ck) == 3, "step(99), after the checkpoint, must not be written in manual mode"


def test_periodic_mode_writes_while_running(tmp_path):
    script, log, ck = _script(tmp_path)
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL, cwd=str(tmp_path),
                            env={**os.environ, "PYTHONPATH": ROOT, "PHASE": "modes",
                                 "MODE": "periodic", "WAIT": "600"})
    try:
        assert proc.stdout.readline().startswith("R ")
        deadline = time.monotonic() + 60
        while not (os.path.exists(os.path.join(ck, "index.sqlite")) and _rows(ck) == 3):
            assert time.monotonic() < deadline, "no periodic checkpoint within 60 s"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()


def test_large_results_are_not_pinned_by_the_memo_table(cluster, tmp_path):
    import gc

    import numpy as np

    log = str(tmp_path / "log")

    @api.python_app(cache=True)
    def make(log, n):
        with open(log, "a") as f:
            f.write("make\n")
        return np.ones(n)

    fut = make(log, 200_000)  # 1.6 MB: stored
    assert make(log, 200_000) is fut
    assert fut.result(timeout=60).sum() == 200_000
    import weakref

    ref = weakref.ref(fut)
    del fut
    deadline = time.monotonic() + 30
    while ref() is not None:  # (the table's reference is weakened on the memo thread)
        assert time.monotonic() < deadline, "the memo table still holds the large result"
        gc.collect()
        time.sleep(0.05)
    assert make(log, 200_000).result(timeout=60).sum() == 200_000  # runs again
    assert runs(log) == ["make", "make"]


def test_a_waiting_cached_bash_app_knows_its_log_files_at_once(cluster, tmp_path):
    @api.python_app
    def slow(x):
        import time as t

        t.sleep(0.5)
        return x

    log = tmp_path / "log"

    @api.bash_app(cache=True)
    def show(tag, value, stdout=api.AUTO_LOGNAME):
        return f"echo {tag} {value}; echo ran >> {log}"

    tag = tmp_path.name
    fut = show(tag, slow(7))
    assert fut.stdout and fut.stdout.endswith(".stdout") and not fut.done()
    assert fut.result(timeout=60) == 0
    assert open(fut.stdout).read() == f"{tag} 7\n"
    again = show(tag, 7)  # the call it became is remembered like any other
    assert again.result(timeout=60) == 0 and again.stdout == fut.stdout
    assert log.read_text() == "ran\n"
