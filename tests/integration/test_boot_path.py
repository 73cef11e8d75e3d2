"""The start-up path of `clusterctl up`: daemons that read the head's address from stdin
(``--head-address -``, how an allocation's daemons boot beside the head), and `up`
returning only once the head's dashboard (started after the head's ready line) is in the
cluster file."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import api
from cluster.common import clusterfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(180)


def _daemon(cf: clusterfile.ClusterFile, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.node", "--daemon", "--cluster-id", cf.cluster_id,
         "--head-address", "-", "--node-name", name, "--num-cpus", "1"],
        env={**os.environ, "SHOAL_SECRET": cf.secret, "PYTHONPATH": ROOT}, cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)


def _where() -> str:
    import socket

    return os.environ.get("SHOAL_NODE_NAME", socket.gethostname())


def run_once_joined(pinned) -> None:
    """Run `pinned` (an app pinned to the new daemon) once that daemon has joined."""
    deadline = time.monotonic() + 60
    while True:
        try:
            assert pinned().result(timeout=60)
            return
        except api.ResourceUnavailableError:   # not joined yet
            assert time.monotonic() < deadline, "the daemon never joined"
            time.sleep(0.1)


def test_a_daemon_takes_the_head_address_from_stdin(clusterctl, no_session):
    up = clusterctl("up", "--num-cpus", "0", "--cluster-id", "boot-stdin")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("boot-stdin"))
    daemon = _daemon(cf, "from-stdin")
    try:
        assert daemon.stdin is not None
        daemon.stdin.write(f"tcp:{cf.node_lane_address}\n".encode())   # as `up` writes it
        daemon.stdin.close()
        api.init(cf.path)
        pinned = api.python_app(num_cpus=0, resources={"node:from-stdin": 0.01})(_where)
        run_once_joined(pinned)
    finally:
        api.shutdown()
        clusterctl("down", "--cluster", "boot-stdin")
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()


def test_a_daemon_whose_stdin_closes_without_an_address_exits_saying_so(clusterctl):
    up = clusterctl("up", "--num-cpus", "0", "--cluster-id", "boot-eof")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("boot-eof"))
    daemon = _daemon(cf, "no-address")
    try:
        _, err = daemon.communicate(b"", timeout=120)   # EOF at once: the head never came
        assert daemon.returncode not in (0, None)
        assert b"no head address on stdin" in err, err[-2000:]
    finally:
        clusterctl("down", "--cluster", "boot-eof")
        if daemon.poll() is None:
            daemon.kill()


def test_up_returns_with_the_dashboard_address_in_the_cluster_file(clusterctl):
    up = clusterctl("up", "--num-cpus", "1", "--cluster-id", "boot-dash")
    try:
        assert up.returncode == 0, up.stderr
        cf = clusterfile.read(clusterfile.path_for("boot-dash"))
        assert cf.extra.get("dashboard", "").startswith("http://"), cf.extra
        assert "dashboard:" in up.stdout
        assert cf.address and cf.secret   # the head's own fields are still there
    finally:
        clusterctl("down", "--cluster", "boot-dash")


def test_a_daemon_alone_imports_no_module_of_the_head_nor_grpc(clusterctl, no_session):
    up = clusterctl("up", "--num-cpus", "0", "--cluster-id", "boot-imports")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("boot-imports"))
    daemon = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "cluster.node", "--daemon", "--cluster-id",
         cf.cluster_id, "--head-address", f"tcp:{cf.node_lane_address}", "--node-name", "imports",
         "--num-cpus", "1"],
        env={**os.environ, "SHOAL_SECRET": cf.secret, "PYTHONPATH": ROOT}, cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        api.init(cf.path)
        pinned = api.python_app(num_cpus=0, resources={"node:imports": 0.01})(_where)
        run_once_joined(pinned)  # registered, and its worker ran a task: past every
        # start-up import
    finally:
        api.shutdown()
        clusterctl("down", "--cluster", "boot-imports")
        if daemon.poll() is None:
            daemon.kill()
        _, err = daemon.communicate(timeout=60)
    imported = [line.rsplit("|", 1)[-1].strip() for line in err.decode().splitlines()
                if line.startswith("import time:")]
    assert "cluster.node.daemon" in imported and "cluster.node.headlink" in imported
    assert [m for m in imported if m.startswith("cluster.head")] == []
    # On the node lane (how `clusterctl up` joins daemons) gRPC is never loaded.
    assert [m for m in imported if m == "grpc" or m.startswith("grpc.")] == []
