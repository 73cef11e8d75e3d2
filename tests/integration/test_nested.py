"""Dynamic workflows on a real embedded cluster (2 CPUs): apps and actors that call apps,
join apps, CPUs given back while tasks wait, ownership of what tasks submit."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil
import pytest

import api
from api import _lease, _session

pytestmark = pytest.mark.timeout(120)


@api.python_app
def add(a, b=0):
    return a + b


@api.python_app
def fib(n):
    if n < 2:
        return n
    a, b = fib(n - 1), fib(n - 2)
    return a.result() + b.result()


@api.python_app
def fail(message="inner boom"):
    raise ValueError(message)


@api.python_app
def sleeper(path, seconds=60):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "woke"


def _status():
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata
    from cluster.common.protocol import pb

    client = api._session._state["client"]
    with grpc.insecure_channel(client.targets[-1]) as channel:
        return shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(client.secret), timeout=10)


def _wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_recursive_fib_16_finishes_on_two_cpus(cluster):
    # 3,193 tasks, 16 deep, on 2 CPUs: blocked parents give their CPUs back. Four times:
    # when waiting workers past the cap took unrelated tasks, one run in 2-4 hung (stacks
    # waiting on each other's buried tasks) or lost a worker.
    for _ in range(4):
        assert fib(16).result(timeout=60) == 987


def _recurse(n):
    return 0 if n == 0 else _recurse(n - 1) + 1


@api.python_app
def down(n):
    if n == 0:
        return _recurse(800)  # (a fresh worker's limit of 1000 frames allows it)
    return down(n - 1).result() + 1


def test_a_chain_400_deep_of_tasks_each_waiting_for_its_child(cluster):
    # They stack up in one worker, each run inside the wait of the one below: at Python's
    # default recursion limit that failed at 139 (cluster.worker.nested.FRAMES_PER_INLINE).
    # The one on top still has the frames of its own a task in a fresh worker has.
    assert down(400).result(timeout=100) == 1200


@api.python_app
def fail_down(n):
    if n == 0:
        raise ValueError("leaf boom")
    return fail_down(n - 1).result() + 1


def test_a_failure_deep_in_waiting_tasks_has_bounded_text_naming_the_leaf(cluster):
    # Each level carried the one below's message and traceback twice: the text doubled a
    # level (3.6 MB at 12; 25 levels would be ~2 GB). Now each level adds its frames, up
    # to serialization.MAX_ERROR_TRACEBACK.
    from cluster.common import serialization

    with pytest.raises(api.TaskError) as info:
        fail_down(25).result(timeout=60)
    text = str(info.value)
    bound = serialization.MAX_ERROR_MESSAGE + 2 * serialization.MAX_ERROR_TRACEBACK
    assert len(text) < bound, len(text)
    assert text.rstrip().endswith("ValueError: leaf boom"), text[-300:]
    assert "characters left out" in text


def test_fan_out_inside_a_task_with_get_wait_and_as_completed(cluster):
    @api.python_app
    def fan(n):
        futs = [add(i, 1) for i in range(n)]
        done, pending = api.wait(futs, num_returns=n)
        assert not pending and len(done) == n
        seen = sorted(f.result() for f in api.as_completed(futs))
        return sum(api.get(futs)), seen == list(range(1, n + 1))

    assert fan(200).result() == (sum(range(1, 201)), True)


def test_put_and_get_inside_a_task(cluster):
    @api.python_app
    def lookup(table, key):
        return table[key]

    @api.python_app
    def parent():
        ref = api.put({"a": 1, "b": 2})
        return api.get(ref)["b"] + api.get(lookup(ref, "a"))

    assert parent().result() == 3


def test_a_future_made_inside_a_task_can_be_returned_and_passed_on(cluster):
    @api.python_app
    def make():
        return [add(20, 1), add(1, 1)]  # futures inside the result stay valid

    inner = make().result()  # (a future inside a value arrives as a ref, as in drivers)
    assert api.get(inner) == [21, 2]
    assert add(inner[0], inner[1]).result() == 23


def test_join_app_of_one_future_and_of_a_list(cluster):
    @api.join_app
    def one(x):
        return add(x, 1)

    @api.join_app
    def many(n):
        return [add(i, i) for i in range(n)]

    @api.join_app
    def jfib(n):
        if n < 2:
            return add(n)
        return add(jfib(n - 1), jfib(n - 2))

    assert one(41).result() == 42
    assert many(5).result() == [0, 2, 4, 6, 8]
    assert jfib(8).result() == 21


def test_join_app_inner_failure_names_the_inner_task(cluster):
    @api.join_app
    def joined():
        return [add(1), fail("inner boom")]

    with pytest.raises(api.DependencyError, match="inner app 'fail'.*inner boom"):
        joined().result()


def test_child_failure_reaches_the_parent_which_may_catch_it(cluster):
    @api.python_app
    def catches():
        try:
            fail("caught it").result()
        except ValueError as err:  # the child's own type, as in a driver
            return f"parent saw: {err}".split("\n")[0]

    @api.python_app
    def lets_it_through():
        return fail("not caught").result()

    assert "caught it" in catches().result()
    with pytest.raises(api.TaskError, match="not caught"):
        lets_it_through().result()


def test_unpicklable_nested_argument_raises_serialization_error_in_parent(cluster):
    @api.python_app
    def parent():
        try:
            add(threading.Lock())
        except api.SerializationError as err:
            return f"caught: {err}"
        return "no error"

    out = parent().result()
    assert out.startswith("caught:") and "argument 0" in out


def test_failed_parent_cancels_its_running_children(cluster, tmp_path):
    marker = tmp_path / "child.pid"

    @api.python_app
    def parent(path):
        sleeper(path)  # dropped: the parent fails while it runs
        while not os.path.exists(path) or not open(path).read():
            time.sleep(0.02)
        raise RuntimeError("parent fails")

    with pytest.raises(api.TaskError, match="parent fails"):
        parent(str(marker)).result()
    child_pid = int(marker.read_text())
    _wait_for(lambda: _gone(child_pid), "the child's worker to be killed")


def _parent_waiting_on_a_sleeping_child(tmp_path) -> tuple[Any, int, int]:
    """A parent app blocked on a sleeping child it submitted, once both run: (the parent's
    future, its worker's pid, the child's worker's pid)."""
    parent_file, child_file = tmp_path / "parent.pid", tmp_path / "child.pid"

    @api.python_app
    def parent(mine, theirs):
        with open(mine, "w") as f:
            f.write(str(os.getpid()))
        return sleeper(theirs).result()

    fut = parent(str(parent_file), str(child_file))
    _wait_for(lambda: child_file.exists() and child_file.read_text(), "the child to start")
    return fut, int(parent_file.read_text()), int(child_file.read_text())


def test_killed_parent_worker_cancels_children(cluster, tmp_path, monkeypatch):
    # The parent goes through the head, whose status is asked: a task on the driver's
    # leased worker (api._lease) is not among the head's running tasks.
    monkeypatch.setattr(_lease, "START_STREAK", 10**9)
    _session.client().lease.release()
    fut, parent_pid, child_pid = _parent_waiting_on_a_sleeping_child(tmp_path)
    assert child_pid != parent_pid
    assert _status().tasks_running >= 2  # status counts nested tasks with the rest
    psutil.Process(parent_pid).kill()
    with pytest.raises(api.WorkerCrashedError):
        fut.result()
    _wait_for(lambda: _gone(child_pid), "the child's worker to be killed")


def test_force_cancelled_parent_cancels_its_children(cluster, tmp_path):
    """api.cancel(parent, force=True) (issue 13) ends the subtree it started too."""
    fut, parent_pid, child_pid = _parent_waiting_on_a_sleeping_child(tmp_path)
    assert child_pid != parent_pid  # the child runs in a worker of its own
    assert api.cancel(fut, force=True) is True
    with pytest.raises(api.TaskCancelledError):
        fut.result(timeout=60)
    _wait_for(lambda: _gone(child_pid), "the child's worker to be killed")
    _wait_for(lambda: _status().tasks_running == 0, "nothing left running")


def test_print_from_nested_tasks_reaches_the_driver(cluster, capsys):
    @api.python_app
    def leaf(i):
        print(f"hello from nested leaf {i}")
        return i

    @api.python_app
    def middle():
        return sum(api.get([leaf(i) for i in range(3)]))

    assert middle().result() == 3
    text = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "nested leaf 2" not in text:
        time.sleep(0.1)
        text += capsys.readouterr().out
    for i in range(3):
        assert f"hello from nested leaf {i}" in text


def test_actors_inside_tasks(cluster):
    @api.actor
    class Acc:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    @api.python_app
    def uses_actor():
        acc = Acc()
        for k in range(5):
            acc.add(k).result()
        return acc.add(0).result()

    assert uses_actor().result() == 10


def test_actor_method_calls_an_app(cluster):
    @api.actor
    class Caller:
        def twice(self, x):
            return add(x, x).result()

    c = Caller()
    assert c.twice(21).result() == 42


def test_synchronous_actor_cycle_is_not_a_silent_hang(cluster):
    @api.actor
    class Ping:
        def __init__(self):
            self.peer = None

        def set_peer(self, peer):
            self.peer = peer

        def ping(self):
            # Waits for the peer, which waits for us: a cycle. The timeout ends it.
            return self.peer.pong().result(timeout=2)

        def pong(self):
            return self.peer.back().result(timeout=10)

        def back(self):
            return "back"

    a, b = Ping(), Ping()
    a.set_peer(b).result()
    b.set_peer(a).result()
    with pytest.raises(api.TaskError, match="did not answer within 2s"):
        a.ping().result()


def test_no_leak_after_1000_nested_tasks(cluster):
    @api.python_app
    def many(n):
        futs = [add(i) for i in range(n)]
        return sum(api.get(futs))

    def quiet():  # earlier tests' leftovers (cancelled children, actor calls) are gone
        now = _status()
        return now.tasks_running == 0 and now.tasks_queued == 0

    _wait_for(quiet, "the cluster to be idle")
    before = _status()
    assert many(1000).result() == sum(range(1000))

    def settled():
        now = _status()
        store = sum(n.store.objects for n in now.nodes)
        return (now.nested_records == 0 and now.objects <= before.objects
                and store <= sum(n.store.objects for n in before.nodes))

    last = []

    def describe():
        now = _status()
        last[:] = [now]
        return settled()

    try:
        _wait_for(describe, "the head's tables and the store to drop the nested tasks")
    except AssertionError:
        now = last[0]
        raise AssertionError(
            f"objects {before.objects} -> {now.objects}, nested records "
            f"{now.nested_records}, store {[n.store.objects for n in before.nodes]} -> "
            f"{[n.store.objects for n in now.nodes]}") from None


def test_large_values_inside_a_task(cluster):
    np = pytest.importorskip("numpy")

    @api.python_app
    def make(n):
        return np.ones(n)

    @api.python_app
    def total(a):
        return float(a.sum())

    @api.python_app
    def parent():
        big = make(1_000_000).result()          # a stored result, mapped from the store
        ref = api.put(np.arange(500_000))      # a stored put, through the daemon
        arg = total(np.ones(300_000)).result()  # arguments too large for a message
        return float(big.sum() + api.get(ref).sum()) + arg

    assert parent().result() == 1_000_000 + sum(range(500_000)) + 300_000


def test_retries_work_for_nested_tasks(cluster, tmp_path):
    marker = tmp_path / "tried"

    @api.python_app(max_retries=1)
    def flaky(path):
        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError("first attempt fails")
        return "second attempt"

    @api.python_app
    def parent(path):
        return flaky(path).result()

    assert parent(str(marker)).result() == "second attempt"


def test_children_are_cancelled_when_the_driver_leaves(cluster, tmp_path):
    import subprocess
    import sys

    child_file = tmp_path / "child.pid"
    script = tmp_path / "driver.py"
    script.write_text(f"""
import os, sys, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(__file__)))!r})
import api
api.init(sys.argv[1])   # the test's cluster: it outlives this driver

@api.python_app
def sleeper(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

@api.python_app
def parent(path):
    return sleeper(path).result()

fut = parent({str(child_file)!r})
while not os.path.exists({str(child_file)!r}) or not open({str(child_file)!r}).read():
    time.sleep(0.05)
print("child started", flush=True)
os._exit(0)   # the driver leaves without shutting down
""")
    client = api._session._state["client"]
    subprocess.run([sys.executable, str(script), client.targets[-1]], timeout=90, check=True,
                   capture_output=True, env={**os.environ, "SHOAL_SECRET": client.secret})
    child_pid = int(child_file.read_text())
    _wait_for(lambda: _gone(child_pid), "the child's worker to be killed")


def test_walltime_of_a_waiting_parent_still_applies(cluster, tmp_path):
    @api.python_app(walltime=2)
    def parent(path):
        return sleeper(path, 30).result()  # the child may run inside this wait

    with pytest.raises(api.AppTimeout):
        parent(str(tmp_path / "child.pid")).result()


def test_nested_tasks_across_two_daemons(no_session, clusterctl):
    from helpers import head_and_second_daemon

    np = pytest.importorskip("numpy")

    @api.python_app
    def make(n):
        return np.ones(n)

    @api.python_app
    def parent(n, network=False):  # its child runs on the other node: the value comes over
        if network:  # as from another host: the daemon brings it over the network
            os.environ["SHOAL_OBJECTS_VIA_NETWORK"] = "1"
        try:
            return float(make.options(resources={"node:second": 0.01})(n).result().sum())
        finally:
            os.environ.pop("SHOAL_OBJECTS_VIA_NETWORK", None)

    with head_and_second_daemon(clusterctl, "nested-multi"):
        assert fib(12).result(timeout=120) == 144
        first = next(n.name for n in api._session.client().nodes.values()
                     if n.name != "second")
        pinned = parent.options(resources={f"node:{first}": 0.01})
        assert pinned(10).result(timeout=60) == 10.0          # inline value
        assert pinned(1_000_000).result(timeout=60) == 1e6    # stored on "second"
        assert pinned(1_000_000, network=True).result(timeout=60) == 1e6


def test_extra_workers_are_bounded_and_retire_when_idle(cluster):
    import cluster.node.nested as relay

    @api.python_app
    def pids(n):
        # Children that wait (a grandchild each): blocked tasks free their CPUs, and the
        # node starts extra workers for the tasks that are not their own child.
        return sorted({p for p in api.get([where_waits() for _ in range(n)])})

    @api.python_app
    def where_waits():
        add(1).result()
        time.sleep(0.2)
        return os.getpid()

    cap = 4 * 2  # 4 workers per CPU on the fixture's 2-CPU node

    def workers():  # the node's task workers (its heartbeat's count; actors apart)
        return _status().nodes[0].workers

    assert len(pids(12).result()) <= cap
    assert workers() <= cap
    _wait_for(lambda: workers() <= 2, "the extra workers to exit",
              timeout=relay.EXTRA_IDLE_SECONDS + 30)


def test_waiting_for_an_actor_call_gives_the_cpu_back(cluster, tmp_path):
    flag = str(tmp_path / "flag")

    @api.actor
    class Waiter:
        def wait_for(self, path):
            deadline = time.monotonic() + 60
            while not os.path.exists(path):
                assert time.monotonic() < deadline, "the flag never came"
                time.sleep(0.05)
            return "seen"

    @api.python_app
    def filler(path):  # holds the other CPU until the flag exists
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            assert time.monotonic() < deadline, "the flag never came"
            time.sleep(0.05)
        return "filled"

    @api.python_app
    def asks(waiter, path):
        return waiter.wait_for(path).result()

    @api.python_app
    def raise_flag(path):
        open(path, "w").close()
        return "raised"

    waiter = Waiter()
    f, a = filler(flag), asks(waiter, flag)
    # Both CPUs are taken: the flag can only be raised once `asks`, waiting for its actor
    # call, gives its CPU back.
    assert raise_flag(flag).result() == "raised"
    assert (f.result(), a.result()) == ("filled", "seen")
