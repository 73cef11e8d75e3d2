"""A node dies mid-workflow (two daemons on one host, the second SIGKILLed): running
tasks are retried elsewhere, objects only it held are rebuilt from their lineage, puts it
alone held fail with ObjectLostError, its actors restart elsewhere, and the workflow's
results are right."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from helpers import head_and_second_daemon

import api
from cluster.common.protocol import pb
from cluster.common.serialization import ObjectRef
from cluster.store import objectformat

MB = 2**20


@pytest.fixture
def two_daemons(clusterctl, no_session):
    with head_and_second_daemon(clusterctl, "faults") as pair:
        yield pair


def _wait_for(path, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


@api.python_app
def hold(started: str, gate: str) -> int:
    """Occupies a node's CPU until `gate` exists."""
    open(started, "w").close()
    while not os.path.exists(gate):
        time.sleep(0.02)
    return os.getppid()


@api.python_app
def produce(value: float) -> dict:
    return {"node": os.getppid(), "data": np.full(2 * MB, value)}  # 16 MiB: stored


@api.python_app
def consume(made: dict) -> float:
    return float(made["data"].sum())


@api.python_app(max_retries=2)
def slow_square(x: int, started: str) -> tuple[int, int]:
    open(started, "w").close()
    time.sleep(1.0)
    return x * x, os.getppid()


@api.actor(num_cpus=0, max_restarts=1)
class Tally:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n, os.getppid()


def test_node_loss_retries_rebuilds_and_reports_lost_puts(two_daemons, tmp_path):
    cf, second = two_daemons
    client = api._session.client()
    first_node = next(n for n in client.nodes.values() if n.name != "second")
    second_node = next(n for n in client.nodes.values() if n.name == "second")

    # With the first node's CPU held, new work lands on the second node.
    gate = tmp_path / "gate"
    blocker = hold.options(resources={f"node:{first_node.name}": 0.01})(
        str(tmp_path / "blocked"), str(gate))
    _wait_for(tmp_path / "blocked", "the first node is busy")
    tally = Tally()
    assert tally.add(1).result(timeout=60) == (1, second.pid)
    made = produce(3.0)
    assert made.result(timeout=60)["node"] == second.pid
    gate.touch()
    assert blocker.result(timeout=60) == cf.head_pid

    # A put whose only copy is on the second node.
    enc = objectformat.encode(np.full(MB, 9.0))
    put_id = client.new_id()
    client.objects._write_local(second_node, put_id, enc)
    client.put(pb.Value(id=put_id, size=enc.size, holders=[second_node.node_id]))
    lonely = ObjectRef(put_id, client)
    assert float(api.get(lonely)[0]) == 9.0

    # Tasks running on both nodes when the second one dies.
    started = [tmp_path / f"s{i}" for i in range(2)]
    squares = [slow_square(i + 2, str(started[i])) for i in range(2)]
    for path in started:
        _wait_for(path, "both squares run")
    os.kill(second.pid, signal.SIGKILL)
    second.wait()

    # Running tasks were retried on the surviving node; results are right.
    assert [f.result(timeout=120)[0] for f in squares] == [4, 9]
    assert {f.result()[1] for f in squares} == {cf.head_pid}
    # The stored result that lived only there is rebuilt for whoever needs it.
    assert consume(made).result(timeout=120) == 3.0 * 2 * MB
    # The put cannot be rebuilt: a clear ObjectLostError.
    with pytest.raises(api.ObjectLostError, match="held only by node second"):
        api.get(lonely, timeout=60)
    with pytest.raises(api.DependencyError, match="OBJECT_LOST"):
        consume({"data": lonely}).result(timeout=60)
    # The actor restarted on the surviving node (its state starts over).
    deadline = time.monotonic() + 60
    while True:
        try:
            assert tally.add(5).result(timeout=60) == (5, cf.head_pid)
            break
        except api.ActorDiedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    # And the cluster goes on serving.
    assert consume(produce(1.0)).result(timeout=60) == 2.0 * MB
