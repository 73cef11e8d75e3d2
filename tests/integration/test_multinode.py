"""A second daemon joins a head over gRPC (two daemons on one host, real processes)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from helpers import head_and_second_daemon, head_status, hold, wait_until
from helpers import start_daemon as _start_daemon
from helpers import wait_nodes as _wait_nodes

import api
from cluster.common import clusterfile


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def two_nodes(clusterctl, no_session):
    with head_and_second_daemon(clusterctl, "multi", "--num-cpus", "2", "--resources",
                                '{"special": 1}') as pair:
        yield pair


@api.python_app
def node_name():
    import socket
    import time

    time.sleep(0.05)
    return os.environ.get("SHOAL_NODE_NAME", socket.gethostname()), os.getppid()


def test_tasks_spread_over_both_daemons(two_nodes):
    cf, daemon = two_nodes
    parents = {f.result(timeout=60)[1] for f in [node_name() for _ in range(30)]}
    assert daemon.pid in parents and cf.head_pid in parents


def test_custom_resource_routes_to_the_node_that_has_it(two_nodes):
    cf, daemon = two_nodes

    @api.python_app(resources={"special": 1})
    def special():
        return os.getppid()

    assert {special().result(timeout=60) for _ in range(3)} == {daemon.pid}


def test_dependencies_cross_daemons(two_nodes):
    @api.python_app(resources={"special": 1})
    def produce():
        return list(range(1000))

    @api.python_app(num_cpus=1)
    def consume(values):
        return sum(values), os.getppid()

    total, _ = consume(produce()).result(timeout=60)
    assert total == sum(range(1000))


def test_node_loss_retries_running_tasks_elsewhere(two_nodes, tmp_path):
    cf, daemon = two_nodes

    @api.python_app(max_retries=1)
    def slow_then_report(path):
        open(path, "a").write(f"{os.getppid()}\n")
        import time

        time.sleep(1.5)
        return os.getppid()

    futs = [slow_then_report(str(tmp_path / f"t{i}")) for i in range(3)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        started = [p for p in tmp_path.iterdir() if str(daemon.pid) in p.read_text()]
        if started:
            break
        time.sleep(0.05)
    assert started, "no task started on the second daemon"
    os.killpg(daemon.pid, signal.SIGKILL)
    results = [f.result(timeout=60) for f in futs]
    assert all(r == cf.head_pid for r in results), "lost tasks must finish on the head's node"


def test_node_loss_without_retries_is_worker_crashed(two_nodes):
    cf, daemon = two_nodes

    @api.python_app(resources={"special": 1})
    def hang():
        import time

        time.sleep(60)

    fut = hang()
    time.sleep(1.0)
    os.killpg(daemon.pid, signal.SIGKILL)
    with pytest.raises(api.WorkerCrashedError, match="lost"):
        fut.result(timeout=60)


def test_daemon_exits_after_losing_the_head(clusterctl):
    assert clusterctl("up", "--num-cpus", "1", "--cluster-id", "orphan").returncode == 0
    cf = clusterfile.read(clusterfile.path_for("orphan"))
    daemon = _start_daemon(cf, "lonely", "--num-cpus", "1", head_timeout=2)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline()  # serving
        time.sleep(1.0)
        os.kill(cf.head_pid, signal.SIGKILL)
        assert daemon.wait(timeout=30) is not None
    finally:
        if daemon.poll() is None:
            daemon.kill()
        clusterctl("down", "--cluster", "orphan")


def test_multi_node_app_holds_whole_nodes_and_sees_the_node_list(two_nodes, tmp_path):
    out = tmp_path / "env.txt"

    @api.bash_app(num_nodes=2, ranks_per_node=3)
    def show(path):
        return (f"echo $CLUSTER_NODELIST $CLUSTER_NUM_NODES $CLUSTER_RANKS_PER_NODE > {path};"
                f" echo $CLUSTER_MPI_PREFIX >> {path}; sleep 0.5")

    @api.python_app
    def quick():
        return 1

    fut = show(str(out))
    others = [quick() for _ in range(4)]
    assert fut.result(timeout=60) == 0
    assert all(f.result(timeout=60) == 1 for f in others)
    names, prefix = out.read_text().splitlines()
    nodes, count, ranks = names.split()
    assert sorted(nodes.split(",")) == sorted([os.uname().nodename, "second"])
    assert (count, ranks) == ("2", "3")
    assert prefix.startswith("srun --overlap --nodes=2 --ntasks=6 --ntasks-per-node=3")


def test_multi_node_app_larger_than_cluster_fails_at_call(two_nodes):
    @api.bash_app(num_nodes=3)
    def too_big():
        return "true"

    with pytest.raises(api.ResourceUnavailableError, match="3 nodes"):
        too_big()


def test_actor_restarts_on_another_node_after_its_node_is_lost(two_nodes):
    cf, daemon = two_nodes

    @api.actor(num_cpus=2, max_restarts=1, max_task_retries=1)
    class Where:
        def __init__(self):
            self.calls = 0

        def host(self):
            self.calls += 1
            return os.getppid(), os.getpid(), self.calls

    w = Where()
    first, actor_pid, _ = w.host().result(timeout=60)
    assert first == daemon.pid, f"only the second node has 2 cpus (head {cf.head_pid})"
    third = _start_daemon(cf, "third", "--num-cpus", "2")
    try:
        _wait_nodes(3)
        os.killpg(daemon.pid, signal.SIGKILL)
        # The kill is asynchronous: a call sent before the actor's worker is really gone may
        # still be answered by it (correctly). The node is lost once both have exited.
        daemon.wait(timeout=30)
        wait_until(lambda: not _alive(actor_pid), 30, "the lost node's actor worker to exit")
        where, _, calls = w.host().result(timeout=60)
        assert where == third.pid
        assert calls == 1, "the restarted actor ran __init__ again"
    finally:
        third.kill()


def test_one_at_a_time_tasks_lease_a_worker_reached_over_tcp(two_nodes, monkeypatch):
    # As from another host: the driver reaches the leased worker over TCP, not its socket
    # file (api._direct.connect prefers the file only on the worker's own host).
    from api import _direct, _session

    cf, daemon = two_nodes
    monkeypatch.setattr(_direct.socket, "gethostname", lambda: "a-login-node")
    lease = _session.client().lease
    deadline = time.monotonic() + 60
    while not lease.ready:
        assert time.monotonic() < deadline, "no lease after a minute of sync round trips"
        node_name().result(timeout=60)
    import socket

    assert lease._conn is not None and lease._conn.sock.family == socket.AF_INET
    before = lease.sent
    parents = {node_name().result(timeout=60)[1] for _ in range(10)}
    assert lease.sent - before == 10
    assert len(parents) == 1 and parents <= {daemon.pid, cf.head_pid}


def test_a_chain_runs_staged_on_the_daemon_that_joined_over_grpc(two_nodes, tmp_path):
    # Each link goes to the daemon running the link before it, over its gRPC stream, and
    # starts there when that one ends. The first link holds until the head has them all.
    cf, daemon = two_nodes

    @api.python_app(resources={"special": 0.5})
    def link(x: object) -> tuple[int, int]:
        return (x[0] if isinstance(x, tuple) else 0) + 1, os.getppid()

    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    before = head_status().tasks_staged
    futs = [hold.options(resources={"special": 0.5})(gate, started)]
    for _ in range(200):
        futs.append(link(futs[-1]))
    wait_until(lambda: os.path.exists(started), 60, "the first link to start")
    wait_until(lambda: head_status().tasks_queued >= 200, 60, "the chain to reach the head")
    open(gate, "w").close()
    assert futs[-1].result(timeout=120)[0] == 200
    assert {f.result(timeout=60)[1] for f in futs[1:]} == {daemon.pid}
    assert head_status().tasks_staged - before == 200
