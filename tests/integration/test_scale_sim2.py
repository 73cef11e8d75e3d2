"""Packing placement and compact queued tasks end to end: a real head (clusterctl up), a
real driver, simulated nodes (cluster/node/sim.py). No timing asserts: behaviour only (the
figures are scripts/bench_scale.py's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import api
from cluster.common import clusterfile
from cluster.head.records import COMPACT_AFTER
from cluster.slurm import bootstrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextmanager
def sim_cluster(clusterctl, cluster_id: str, nodes: int, slots: int,
                prefix: str) -> Iterator[tuple[clusterfile.ClusterFile, subprocess.Popen]]:
    """A head whose own daemon takes no 1-cpu app, and `nodes` simulated nodes, all alive."""
    up = clusterctl("up", "--num-cpus", "0", "--cluster-id", cluster_id)
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    sim = subprocess.Popen(
        [sys.executable, "-m", "cluster.node.sim", "--head-address", f"tcp:{cf.node_lane_address}",
         "--cluster-id", cluster_id, "--nodes", str(nodes), "--slots", str(slots),
         "--name-prefix", prefix, "--log-file", os.path.join(cf.log_dir, "sim.log")],
        env={**os.environ, "SHOAL_SECRET": cf.secret, "PYTHONPATH": ROOT}, cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert sim.poll() is None, "the simulation process ended early"
            alive = [n for n in bootstrap.status(cf, 30.0).nodes
                     if n.name.startswith(prefix) and n.state == "alive"]
            if len(alive) == nodes:
                break
            assert time.monotonic() < deadline, f"only {len(alive)} of {nodes} joined"
            time.sleep(0.2)
        yield cf, sim
    finally:
        api.shutdown()
        clusterctl("down", "--cluster", cluster_id)
        if sim.poll() is None:
            try:
                sim.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sim.kill()
        sim.communicate()


def _summary(clusterctl, cluster_id: str, sim: subprocess.Popen) -> dict:
    down = clusterctl("down", "--cluster", cluster_id)
    assert down.returncode == 0, down.stderr
    out, err = sim.communicate(timeout=30)
    assert sim.returncode == 0, err
    return json.loads(out.decode().strip().splitlines()[-1])


def test_a_burst_fills_the_first_nodes_whole_and_leaves_the_rest_idle(clusterctl, no_session):
    nodes, slots, tasks = 30, 4, 20
    with sim_cluster(clusterctl, "pack-sim", nodes, slots, "packnode") as (cf, sim):
        api.init(cf.path, log_to_driver=False)

        @api.python_app
        def sleep(seconds):  # the simulated nodes sleep `seconds` for apps of this name
            time.sleep(seconds)

        futures = [sleep(20.0) for _ in range(tasks)]
        deadline = time.monotonic() + 60
        while True:
            reply = bootstrap.status(cf, 30.0)
            if reply.tasks_running == tasks:
                break
            assert time.monotonic() < deadline, "the burst never all ran"
            time.sleep(0.1)
        sims = sorted((n for n in reply.nodes if n.name.startswith("packnode")),
                      key=lambda n: n.node_id)
        busy = [n for n in sims if n.running]
        # Packed: whole nodes in node-id order, every slot of each; the rest idle (an
        # autoscaler could drop them). Spreading put one task on each of 20 nodes.
        assert [n.running for n in busy] == [slots] * (tasks // slots)
        assert busy == sims[:tasks // slots]
        assert [f.result(timeout=90) for f in futures] == [None] * tasks
        api.shutdown()
        summary = _summary(clusterctl, "pack-sim", sim)
        assert summary["tasks"] == tasks and summary["duplicates"] == 0


def test_tasks_queued_past_the_compaction_threshold_all_run_exactly_once(clusterctl,
                                                                       no_session):
    tasks = COMPACT_AFTER + 5_000   # the last 5,000 wait with their specs as bytes
    with sim_cluster(clusterctl, "compact-sim", 1, 1, "compactnode") as (cf, sim):
        api.init(cf.path, log_to_driver=False)

        @api.python_app
        def noop(i):
            return i  # a simulated node answers None whatever the app would return

        futures = [noop(i) for i in range(tasks)]
        assert all(f.result(timeout=300) is None for f in futures)
        api.shutdown()
        reply = bootstrap.status(cf, 30.0)
        assert reply.tasks_done == tasks and reply.tasks_failed == 0
        assert reply.tasks_queued == 0 and reply.tasks_running == 0
        summary = _summary(clusterctl, "compact-sim", sim)
        assert summary["tasks"] == tasks and summary["unique_tasks"] == tasks
        assert summary["duplicates"] == 0
