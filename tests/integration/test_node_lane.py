"""The head's node lane: daemons joining over framed TCP (as `clusterctl up`'s and the
autoscaler's blocks do) instead of gRPC. Real head and daemon processes on loopback."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, start_daemon, wait_nodes, wait_until

import api
from cluster.common import clusterfile, wire
from cluster.common.protocol import pb

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def head(clusterctl, no_session):
    """A cluster whose head runs no tasks itself (every task goes to a joined daemon)."""
    up = clusterctl("up", "--num-cpus", "0", "--cluster-id", "nodelane")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("nodelane"))
    yield cf
    api.shutdown()
    clusterctl("down", "--cluster", "nodelane")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _lane_daemon(cf: clusterfile.ClusterFile, secret: str, address: str, name: str,
                 *extra: str) -> subprocess.Popen:
    """A 1-CPU daemon named `name` joining the node lane at `address` with `secret`."""
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.node", "--daemon", "--cluster-id", cf.cluster_id,
         "--head-address", f"tcp:{address}", "--node-name", name, "--num-cpus", "1", *extra],
        env={**os.environ, "SHOAL_SECRET": secret, "PYTHONPATH": ROOT}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@api.python_app
def where(x: int) -> tuple[int, int]:
    return os.getppid(), x * 2


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_the_cluster_file_names_the_node_lane(head):
    host, _, port = head.node_lane_address.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert head.node_lane_address not in (head.address, head.lane_address)


@pytest.mark.parametrize("transport", ["lane", "grpc"])
def test_a_daemon_runs_tasks_and_takes_dependencies_over_either_link(head, transport):
    daemon = start_daemon(head, "joined", "--num-cpus", "2", grpc=transport == "grpc")
    try:
        api.init(head.path)
        wait_nodes(2)
        first = [where(i) for i in range(20)]
        second = [where(f.result(timeout=60)[1]) for f in first]  # futures as arguments
        assert {f.result(timeout=60)[0] for f in second} == {daemon.pid}
        assert sorted(f.result()[1] for f in second) == [4 * i for i in range(20)]
        # A daemon on the node lane never loads gRPC (that is the lane's point: boot CPU,
        # memory); one given the head's host:port does.
        assert ("cygrpc" in _maps(daemon.pid)) == (transport == "grpc")
    finally:
        _stop(daemon)


def test_a_killed_lane_daemon_is_lost_at_once_and_its_task_fails(head, tmp_path):
    daemon = start_daemon(head, "doomed", "--num-cpus", "1")
    started = tmp_path / "started"
    try:
        api.init(head.path)
        wait_nodes(2)

        @api.python_app(max_retries=0)
        def hang(path):
            open(path, "w").close()
            time.sleep(120)

        fut = hang(str(started))
        wait_until(lambda: started.exists() or fut.done(), 60, "the task to start")
        os.killpg(daemon.pid, signal.SIGKILL)
        with pytest.raises(api.WorkerCrashedError, match="lost"):
            fut.result(timeout=60)   # the connection closing says it (no heartbeat timeout)
    finally:
        _stop(daemon)


def test_a_lane_daemon_with_a_wrong_secret_stops_saying_so(head, tmp_path):
    daemon = _lane_daemon(head, "not-the-secret", head.node_lane_address, "intruder",
                          "--log-dir", str(tmp_path), "--head-timeout", "600")
    try:
        # Well before --head-timeout: a refused secret is not retried.
        assert daemon.wait(timeout=60) is not None
        log = (tmp_path / "daemon-intruder.log").read_text()
        assert "the head refused our secret" in log, log[-2000:]
    finally:
        _stop(daemon)


def test_the_node_lane_refuses_a_wrong_secret_and_garbage_and_the_head_goes_on(head):
    host, port = head.node_lane_address.rsplit(":", 1)
    register = pb.NodeToHead(register=pb.Register(name="fake", address="127.0.0.1", pid=1))
    for secret in (b"", b"wrong"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(wire.frame(secret) + wire.frame(register.SerializeToString()))
            assert sock.recv(100) == wire.frame(b"UNAUTHENTICATED")
            assert sock.recv(100) == b"", "the head must close the connection"
    # The right secret, then something that is not a registration, then not protobuf.
    for body in (pb.NodeToHead(heartbeat=pb.Heartbeat(running=1)).SerializeToString(),
                 pickle.dumps("not protobuf") + b"\xff" * 8):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(wire.frame(head.secret.encode()) + wire.frame(body))
            assert sock.recv(100) == b"", "the head must close the connection"
    api.init(head.path)
    names = [n.name for n in api._session.client().nodes.values() if n.state == "alive"]
    assert "fake" not in names
    daemon = start_daemon(head, "after", "--num-cpus", "1")
    try:
        wait_nodes(2)
        assert where(1).result(timeout=60) == (daemon.pid, 2)
    finally:
        _stop(daemon)


def test_the_node_lane_closes_an_oversized_first_frame_and_a_silent_connection(head):
    from cluster.common import streams

    host, port = head.node_lane_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(wire.HEADER.pack(1 << 30) + b"x" * 1000)   # "a 1 GiB secret follows"
        assert sock.recv(100) == b"", "the head must close the connection"
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        # Nothing sent: closed after streams.SECRET_SECONDS (the timeout is a hang guard).
        assert streams.SECRET_SECONDS < 60
        assert sock.recv(100) == b"", "the head must close a connection that sends nothing"
    api.init(head.path)   # and it serves on
    assert [n.name for n in api._session.client().nodes.values() if n.state == "alive"]


class _Proxy:
    """A TCP relay in front of the node lane whose connections the test can cut, as a
    network fault or the head dropping a silent node would."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        #: Forward nothing, either way, and close nothing: what a dead host looks like.
        self.black = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            if self.black:
                threading.Thread(target=self._pump, args=(down, None), daemon=True).start()
                continue
            up = socket.create_connection(self.upstream)
            self.pairs.append((down, up))
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while data := src.recv(1 << 16):
                if not self.black and dst is not None:
                    dst.sendall(data)
        except OSError:
            pass
        if self.black:
            return
        for s in (src, dst):
            try:
                if s is not None:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        for down, up in self.pairs:
            for s in (down, up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_lane_daemon_whose_connection_is_cut_joins_again(head):
    proxy = _Proxy(head.node_lane_address)
    daemon = _lane_daemon(head, head.secret, proxy.address, "cut")
    try:
        api.init(head.path)
        wait_nodes(2)
        assert where(1).result(timeout=60) == (daemon.pid, 2)

        def nodes(name: str) -> list[str]:
            return [n.state for n in api._session.client().nodes.values() if n.name == name]

        proxy.cut()
        wait_until(lambda: len(proxy.pairs) == 2, 60, "the daemon to connect again")
        wait_nodes(2)
        # The old registration was lost; the new one runs tasks, on the same process.
        assert where(2).result(timeout=60) == (daemon.pid, 4)
        assert sorted(nodes("cut")) == ["alive", "dead"], nodes("cut")
        assert daemon.poll() is None
    finally:
        proxy.close()
        _stop(daemon)


def test_a_lane_daemon_whose_head_falls_silent_stops_after_its_head_timeout(head, tmp_path):
    """No FIN, no answers (a dead host, a cut network): the daemon notices by the head's
    missing answers to its heartbeats, not by TCP (which would wait ~15 minutes)."""
    proxy = _Proxy(head.node_lane_address)
    daemon = _lane_daemon(head, head.secret, proxy.address, "silent", "--head-timeout", "2",
                          "--log-dir", str(tmp_path))
    try:
        api.init(head.path)
        wait_nodes(2)
        assert where(1).result(timeout=60) == (daemon.pid, 2)
        time.sleep(3.0)   # a few heartbeats answered: the watch saw the head alive
        assert daemon.poll() is None
        proxy.black = True
        assert daemon.wait(timeout=120) is not None
        log = (tmp_path / "daemon-silent.log").read_text()
        assert "no word from the head for" in log, log[-2000:]
        assert "no contact with the head for" in log, log[-2000:]
    finally:
        proxy.close()
        _stop(daemon)
