"""A few hundred simulated nodes (cluster/node/sim.py) against a real head started by
clusterctl, over the node lane and over gRPC: every node joins, every task completes
exactly once. No timing asserts: the scale figures are scripts/bench_scale.py's job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import api
from cluster.common import clusterfile
from cluster.slurm import bootstrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODES = 300
TASKS = 3000
PREFIX = "simnode"


def _sim_nodes(reply) -> list:
    return [n for n in reply.nodes if n.name.startswith(PREFIX)]


def _wait_all_alive(cf: clusterfile.ClusterFile, sim: subprocess.Popen,
                    timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    alive = 0
    while time.monotonic() < deadline:
        assert sim.poll() is None, "the simulation process ended early"
        alive = sum(1 for n in _sim_nodes(bootstrap.status(cf, 30.0)) if n.state == "alive")
        if alive == NODES:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {alive} of {NODES} simulated nodes joined")


@pytest.mark.parametrize("transport", ["lane", "grpc"])
def test_hundreds_of_simulated_nodes_run_every_task_once(clusterctl, no_session, transport):
    cluster_id = f"scale-sim-{transport}"
    # --num-cpus 0: the head's own daemon takes no 1-CPU app, so the simulated nodes run all.
    up = clusterctl("up", "--num-cpus", "0", "--cluster-id", cluster_id)
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    sim = subprocess.Popen(
        [sys.executable, "-m", "cluster.node.sim", "--head-address",
         cf.address if transport == "grpc" else f"tcp:{cf.node_lane_address}",
         "--cluster-id", cluster_id, "--nodes", str(NODES), "--slots", "4",
         "--name-prefix", PREFIX, "--log-file", os.path.join(cf.log_dir, "sim.log")],
        env={**os.environ, "SHOAL_SECRET": cf.secret, "PYTHONPATH": ROOT}, cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        _wait_all_alive(cf, sim)
        api.init(cf.path, log_to_driver=False)

        @api.python_app
        def noop(i):
            return i  # a simulated node answers None whatever the app would return

        @api.python_app
        def sleep(seconds):
            time.sleep(seconds)

        futures = [noop(i) for i in range(TASKS - 20)] + [sleep(0.05) for _ in range(20)]
        assert [f.result(timeout=60) for f in futures] == [None] * TASKS
        api.shutdown()

        reply = bootstrap.status(cf, 30.0)
        nodes = _sim_nodes(reply)
        assert len(nodes) == NODES
        assert all(n.state == "alive" for n in nodes)
        assert len({n.name for n in nodes}) == NODES
        assert reply.tasks_done == TASKS and reply.tasks_failed == 0
        assert reply.tasks_queued == 0 and reply.tasks_running == 0
        assert sum(n.done for n in nodes) == TASKS

        # `down` makes the head tell every node to stop; the simulation then reports.
        down = clusterctl("down", "--cluster", cluster_id)
        assert down.returncode == 0, down.stderr
        out, err = sim.communicate(timeout=30)
        assert sim.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["nodes"] == NODES
        assert summary["registrations"] == NODES
        assert summary["tasks"] == TASKS and summary["unique_tasks"] == TASKS
        assert summary["duplicates"] == 0
    finally:
        api.shutdown()
        clusterctl("down", "--cluster", cluster_id)
        if sim.poll() is None:
            sim.kill()
        sim.communicate()
