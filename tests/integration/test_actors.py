"""Actors on a real cluster: ordering, state, handles in apps, names, kill, restarts, async."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import api


@api.actor
class Counter:
    def __init__(self, start=0):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    def value(self):
        return self.n

    def fail(self):
        raise KeyError("broken call")

    def pid(self):
        return os.getpid()


def test_calls_run_in_submission_order_and_keep_state(cluster):
    c = Counter(10)
    assert isinstance(c, api.ActorHandle)
    futs = [c.add(1) for _ in range(3000)]
    assert [f.result(timeout=60) for f in futs] == list(range(11, 3011))
    assert c.value().result(timeout=30) == 3010


def test_state_survives_a_methods_exception(cluster):
    c = Counter(1)
    c.add(1)
    with pytest.raises(KeyError) as info:
        c.fail().result(timeout=30)
    assert isinstance(info.value, api.TaskError)
    assert "broken call" in str(info.value)
    assert c.add(1).result(timeout=30) == 3


def test_unknown_method_is_an_attribute_error_at_the_call(cluster):
    c = Counter()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope()


def test_futures_and_refs_as_call_arguments(cluster):
    @api.python_app
    def slow_five():
        import time

        time.sleep(0.3)
        return 5

    c = Counter(0)
    ref = api.put(100)
    first = c.add(slow_five())       # waits for its dependency...
    second = c.add(ref)              # ...and the next call from this caller waits for it
    assert first.result(timeout=30) == 5
    assert second.result(timeout=30) == 105


def test_handles_passed_to_apps_and_other_actors(cluster):
    c = Counter(0)

    @api.python_app
    def bump(counter, times):
        return [counter.add(1).result() for _ in range(times)][-1]

    assert bump(c, 5).result(timeout=60) == 5

    @api.actor
    class Forwarder:
        def __init__(self, target):
            self.target = target

        def forward(self, k):
            return self.target.add(k).result()

    f = Forwarder(c)
    assert f.forward(10).result(timeout=60) == 15
    assert c.value().result(timeout=30) == 15


def test_named_actor_found_and_detached_outlives_its_driver(cluster, tmp_path):
    named = Counter.options(name="shared-counter")(7)
    assert api.get_actor("shared-counter").add(1).result(timeout=30) == 8
    with pytest.raises(ValueError, match="no live actor named 'missing'"):
        api.get_actor("missing")
    dup = Counter.options(name="shared-counter")(0)
    with pytest.raises(api.ActorDiedError, match="already exists"):
        dup.add(1).result(timeout=30)
    assert named.value().result(timeout=30) == 8

    # A second driver creates a detached and a plain named actor, then exits.
    client = api._session._state["client"]
    script = tmp_path / "other.py"
    script.write_text(
        "import api, sys\n"
        "api.init(sys.argv[1])\n"
        "@api.actor\nclass Box:\n    def __init__(self): self.v = 41\n"
        "    def get(self): self.v += 1; return self.v\n"
        "Box.options(name='keeper', lifetime='detached')().get().result()\n"
        "Box.options(name='temp')().get().result()\n"
        "print('created')\n")
    proc = subprocess.run([sys.executable, str(script), client.targets[-1]],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHOAL_SECRET": client.secret})
    assert "created" in proc.stdout, proc.stderr
    assert api.get_actor("keeper").get().result(timeout=30) == 43
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            api.get_actor("temp")
        except ValueError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a non-detached actor outlived its driver")
    api.kill(api.get_actor("keeper"))


def test_kill_fails_pending_and_later_calls(cluster):
    @api.actor
    class Sleepy:
        def nap(self, s):
            import time

            time.sleep(s)
            return s

    s = Sleepy()
    assert s.nap(0).result(timeout=30) == 0
    pending = [s.nap(0.5) for _ in range(4)]
    time.sleep(0.2)
    api.kill(s)
    with pytest.raises(api.ActorDiedError):
        for fut in pending:
            fut.result(timeout=30)
    with pytest.raises(api.ActorDiedError, match="killed"):
        s.nap(0).result(timeout=30)


def test_restart_after_worker_killed_reruns_init_and_retries(cluster):
    c = Counter.options(max_restarts=1, max_task_retries=1)(100)
    pid = c.pid().result(timeout=30)
    c.add(5).result(timeout=30)
    os.kill(pid, signal.SIGKILL)
    # The restarted actor ran __init__ again: its state starts over at 100.
    assert c.add(1).result(timeout=60) == 101
    assert c.pid().result(timeout=30) != pid
    os.kill(c.pid().result(timeout=30), signal.SIGKILL)  # out of restarts now
    with pytest.raises(api.ActorDiedError, match="after 1 restarts"):
        c.add(1).result(timeout=60)


def test_actor_without_restarts_dies_with_actor_died_error(cluster):
    c = Counter()
    os.kill(c.pid().result(timeout=30), signal.SIGKILL)
    with pytest.raises(api.ActorDiedError, match="died"):
        c.add(1).result(timeout=60)


def test_init_failure_reaches_the_caller(cluster):
    @api.actor
    class Broken:
        def __init__(self):
            raise RuntimeError("cannot start")

        def ping(self):
            return 1

    b = Broken()
    with pytest.raises(api.ActorDiedError, match="cannot start"):
        b.ping().result(timeout=30)


def test_async_actor_runs_calls_concurrently(cluster):
    @api.actor(max_concurrency=8)
    class Waiter:
        def __init__(self):
            self.now = 0
            self.peak = 0

        async def wait(self, seconds):
            import asyncio

            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(seconds)
            self.now -= 1
            return self.peak

    w = Waiter()
    peaks = [f.result(timeout=30) for f in [w.wait(0.5) for _ in range(8)]]
    # One after another, every call would see a peak of 1.
    assert max(peaks) > 1, f"async calls ran one at a time: {peaks}"


def test_status_lists_actors(cluster):
    Counter.options(name="visible")(0).add(1).result(timeout=30)
    client = api._session._state["client"]
    # Ask through the public CLI path: the head's Status RPC.
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata
    from cluster.common.protocol import pb

    with grpc.insecure_channel(client.targets[-1]) as channel:
        reply = shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(client.secret), timeout=10)
    names = {a.name: a for a in reply.actors}
    assert names["visible"].class_name == "Counter" and names["visible"].state == "alive"


def test_bad_actor_options_are_refused():
    with pytest.raises(TypeError, match="unknown actor option"):
        api.actor(colour="red")(Counter._cls)
    with pytest.raises(ValueError, match="lifetime"):
        api.actor(lifetime="forever")(Counter._cls)
    with pytest.raises(TypeError, match="decorates a class"):
        api.actor(lambda: 1)


def _head_tasks_done() -> int:
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata
    from cluster.common.protocol import pb

    client = api._session._state["client"]
    with grpc.insecure_channel(client.targets[-1]) as channel:
        reply = shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(client.secret), timeout=10)
    return reply.tasks_done


def test_calls_go_straight_to_the_actor_not_through_the_head(cluster):
    c = Counter(0)
    c.add(1).result(timeout=30)           # the route is known from here on
    before = _head_tasks_done()
    assert [c.add(1).result(timeout=30) for _ in range(200)][-1] == 201
    assert _head_tasks_done() == before, "direct calls must not pass through the head"
    # A call with a dependency does go through the head (which waits for it).
    assert c.add(api.put(5)).result(timeout=30) == 206
    assert _head_tasks_done() == before + 1


def test_order_is_kept_across_direct_and_head_routed_calls(cluster):
    @api.python_app
    def later(x):
        import time

        time.sleep(0.2)
        return x

    @api.actor
    class Log:
        def __init__(self):
            self.seen = []

        def record(self, x):
            self.seen.append(x)
            return len(self.seen)

        def all(self):
            return self.seen

    log = Log()
    log.record(-1).result(timeout=30)
    futs = []
    for i in range(30):
        futs.append(log.record(later(i) if i % 7 == 3 else i))
    assert [f.result(timeout=60) for f in futs] == list(range(2, 32))
    assert log.all().result(timeout=30) == [-1, *range(30)]


def test_direct_connection_refuses_a_wrong_secret(cluster):
    from api._direct import connect
    from cluster.common import wire

    c = Counter(0)
    c.add(1).result(timeout=30)
    client = api._session._state["client"]
    route = client.direct.routes[c.actor_id].route
    assert route, "the creation result must carry the actor's route"
    sock = connect(route, "not-the-secret")
    assert sock is not None
    try:
        sock.sendall(wire.encode(("c", 1, "add", wire.pickle.dumps(((1,), {})))))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server hung up on the secret before the call went out: also a refusal
    sock.settimeout(5)
    try:
        answer = sock.recv(100)
    except ConnectionResetError:
        answer = b""  # our unread call made the kernel reset the closed connection
    if answer:
        assert wire.pickle.loads(answer[4:]) == ("denied",)
        assert sock.recv(100) == b""
    sock.close()
    assert c.value().result(timeout=30) == 1, "the refused call must not have run"


def test_async_actor_never_exceeds_max_concurrency(cluster):
    @api.actor(max_concurrency=2)
    class Gauge:
        def __init__(self):
            self.now = 0
            self.peak = 0

        async def hold(self):
            import asyncio

            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.1)
            self.now -= 1
            return self.peak

    g = Gauge()
    peaks = [f.result(timeout=30) for f in [g.hold() for _ in range(10)]]
    assert max(peaks) == 2, peaks
