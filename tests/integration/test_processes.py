"""Processes an app starts end with it; bash apps end with their shell; one-node MPI apps
run their ranks; store-full results and bash failures say what happened."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import api
from cluster.common import clusterfile

LINUX = sys.platform.startswith("linux")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_gone(pids: list[int], guard: float = 30.0) -> list[int]:
    """The pids still alive after up to `guard` seconds (a hang guard: they should go at
    once)."""
    deadline = time.monotonic() + guard
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def spawn_children() -> list[int]:
    """Start the four kinds of children an app can leave behind; their pids."""
    pids = [subprocess.Popen(["sleep", "300"]).pid]      # a plain child
    child = os.fork()                                     # a forked copy of the worker
    if child == 0:
        try:
            time.sleep(300)
        finally:
            os._exit(0)
    pids.append(child)
    read, write = os.pipe()                               # setsid + double fork
    first = os.fork()
    if first == 0:
        try:
            os.setsid()
            second = os.fork()
            if second == 0:
                time.sleep(300)
            else:
                os.write(write, str(second).encode())
        finally:
            os._exit(0)
    os.close(write)
    pids.append(int(os.read(read, 64)))
    os.close(read)
    os.waitpid(first, 0)
    bash = subprocess.run(["bash", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
                          capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)  # a shell's background job
    pids.append(int(bash.stdout))
    return pids


@api.python_app
def leave_children() -> list[int]:
    return spawn_children()


@api.python_app
def leave_children_and_fail() -> None:
    pids = spawn_children()
    raise RuntimeError(" ".join(map(str, pids)))


@pytest.mark.skipif(not LINUX, reason="process trees are found through /proc")
def test_children_of_a_python_app_end_with_the_task(cluster):
    pids = leave_children().result(timeout=60)
    assert len(pids) == 4 and all(p > 0 for p in pids)
    assert _wait_gone(pids) == []
    with pytest.raises(api.TaskError) as info:
        leave_children_and_fail().result(timeout=60)
    pids = [int(p) for p in str(info.value.cause).split()]
    assert len(pids) == 4
    assert _wait_gone(pids) == []
    assert leave_children().result(timeout=60)  # the worker still serves tasks


@api.bash_app
def background(marker: str, stdout=api.AUTO_LOGNAME):
    return f"sleep 300 & echo $! > {marker}; setsid sleep 300 & echo $! >> {marker}; echo started"


@api.bash_app
def background_piped(marker: str):
    return f"sleep 300 & echo $! > {marker}; echo started"


@pytest.mark.skipif(not LINUX, reason="process trees are found through /proc")
def test_a_bash_app_ends_when_its_shell_exits(cluster, tmp_path):
    marker = tmp_path / "pids"
    fut = background(str(marker))
    assert fut.result(timeout=60) == 0  # took 300 s: it waited for the sleeps' stdout
    assert open(fut.stdout).read() == "started\n"
    pids = [int(p) for p in marker.read_text().split()]
    assert len(pids) == 2 and _wait_gone(pids) == []

    piped = tmp_path / "piped"
    assert background_piped(str(piped)).result(timeout=60) == 0
    assert _wait_gone([int(piped.read_text())]) == []


@api.python_app
def spawn_and_wait(path: str) -> None:
    pids = spawn_children()
    with open(path + ".tmp", "w") as f:
        f.write(" ".join(map(str, pids)))
    os.replace(path + ".tmp", path)
    time.sleep(300)


def _read_pids(path: str, guard: float = 60.0) -> list[int]:
    deadline = time.monotonic() + guard
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the app never wrote its children's pids"
        time.sleep(0.05)
    with open(path) as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.skipif(not LINUX, reason="process trees are found through /proc")
def test_children_end_with_shutdown_and_down(clusterctl, no_session, tmp_path):
    up = clusterctl("up", "--num-cpus", "2", "--cluster-id", "procs-down")
    assert up.returncode == 0, up.stderr
    try:
        cf = clusterfile.read(clusterfile.path_for("procs-down"))
        api.init(cf.path)

        @api.actor
        class Parent:
            def spawn(self) -> list[int]:
                return spawn_children()

        running = str(tmp_path / "running")
        spawn_and_wait(running)                  # still running when the driver leaves
        actor_pids = Parent().spawn().result(timeout=60)
        task_pids = _read_pids(running)
        assert all(_alive(p) for p in actor_pids + task_pids)  # alive until then
        api.shutdown()
        # The head cancels the departed driver's tasks and kills its actors.
        assert _wait_gone(task_pids + actor_pids) == []

        # Now `down` with the driver still connected: a running task's children and a
        # detached actor's (which outlives its driver) end with the daemon.
        api.init(cf.path)
        again = str(tmp_path / "again")
        spawn_and_wait(again)
        keeper = Parent.options(name="keeper", lifetime="detached")()
        pids = keeper.spawn().result(timeout=60) + _read_pids(again)
        assert all(_alive(p) for p in pids)
    finally:
        down = clusterctl("down", "--cluster", "procs-down")
        api.shutdown()
    assert down.returncode == 0, down.stderr
    assert _wait_gone(pids) == []


@api.bash_app(num_nodes=1, ranks_per_node=2)   # the shared test cluster has 2 CPUs
def ranks(out: str):
    return f"$CLUSTER_MPI_PREFIX bash -c 'echo rank >> {out}'"


def test_ranks_per_node_on_one_node_launches_that_many_ranks(cluster, tmp_path):
    out = tmp_path / "ranks"
    assert ranks.request["cpus"] == 2, "it holds a slot per rank"
    assert ranks(str(out)).result(timeout=120) == 0
    assert out.read_text().splitlines() == ["rank"] * 2


@api.bash_app
def fails_loudly(stderr=api.AUTO_LOGNAME):
    return "for i in $(seq 1 50); do echo noise $i >&2; done; echo 'the real reason' >&2; exit 3"


@api.bash_app
def fails_piped():
    return "echo 'piped reason' >&2; exit 4"


def test_bash_exit_failure_carries_stderr_tail_and_logs(cluster):
    fut = fails_loudly()
    with pytest.raises(api.BashExitFailure) as info:
        fut.result(timeout=60)
    err = info.value
    assert err.exitcode == 3
    assert err.stderr_tail.splitlines()[-1] == "the real reason"
    assert "noise 1\n" not in err.stderr_tail  # only the last lines
    assert fut.stderr in err.logs
    assert "the real reason" in str(err) and fut.stderr in str(err)

    with pytest.raises(api.BashExitFailure) as info:
        fails_piped().result(timeout=60)
    assert info.value.exitcode == 4 and "piped reason" in info.value.stderr_tail
    assert "piped reason" in str(info.value)


@api.python_app
def big(n: int):
    import numpy as np

    return np.ones(n, dtype=np.uint8)


def test_a_result_larger_than_the_store_is_object_store_full(clusterctl, no_session):
    up = clusterctl("up", "--num-cpus", "1", "--cluster-id", "procs-full",
                    "--object-store-memory", "16M")
    assert up.returncode == 0, up.stderr
    try:
        api.init(clusterfile.path_for("procs-full"))
        with pytest.raises(api.ObjectStoreFullError) as info:
            big(64 << 20).result(timeout=60)
        assert not isinstance(info.value, api.TaskError)
        assert "big" in str(info.value)
        assert big(1 << 20).result(timeout=60).sum() == 1 << 20  # the node still works
    finally:
        api.shutdown()
        clusterctl("down", "--cluster", "procs-full")
