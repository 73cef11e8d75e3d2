"""Helpers shared by the tests (test files never import each other): paths, golden files,
daemons added to a local cluster, the Slurm test bed, and an app that blocks a slot."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import api
from cluster.common import clusterfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_PATH = pathlib.Path(ROOT)
GOLDEN = ROOT_PATH / "tests" / "unit" / "golden"
TESTBED = pathlib.Path(os.environ.get("SLURM_TESTBED_DIR", "/var/tmp/shoal-testbed"))


def start_daemon(cf: clusterfile.ClusterFile, name: str, *extra: str,
                 head_timeout: float = 30, grpc: bool = False) -> subprocess.Popen:
    """A daemon joining `cf`'s head as `clusterctl up`'s do, over its node lane (`grpc`:
    over gRPC, by the head's host:port)."""
    env = {**os.environ, "SHOAL_SECRET": cf.secret, "PYTHONPATH": ROOT}
    address = cf.address if grpc or not cf.node_lane_address else f"tcp:{cf.node_lane_address}"
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.node", "--daemon", "--cluster-id", cf.cluster_id,
         "--head-address", address, "--node-name", name, "--head-timeout",
         str(head_timeout), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_nodes(count: int, timeout: float = 20) -> None:
    @api.python_app(num_cpus=0)
    def nothing():
        return None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = api._session.client()
        if len([n for n in client.nodes.values() if n.state == "alive"]) >= count:
            return
        nothing().result(timeout=10)  # node-table updates ride on result batches
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} nodes joined")




@contextlib.contextmanager
def head_and_second_daemon(clusterctl, cluster_id: str,
                           *second_args: str) -> Iterator[tuple[clusterfile.ClusterFile,
                                                                subprocess.Popen]]:
    """A local cluster (head with a 1-CPU daemon) plus a daemon named "second", with this
    process connected to it; everything is stopped afterwards."""
    up = clusterctl("up", "--num-cpus", "1", "--cluster-id", cluster_id)
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    daemon = start_daemon(cf, "second", *(second_args or ("--num-cpus", "1")))
    try:
        api.init(cf.path)
        wait_nodes(2)
        yield cf, daemon
    finally:
        api.shutdown()
        clusterctl("down", "--cluster", cluster_id)
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()


def head_status():
    """The head's status snapshot (pb.StatusReply), asked over gRPC as clusterctl does."""
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata
    from cluster.common.protocol import pb

    client = api._session.client()
    with grpc.insecure_channel(client.targets[-1]) as channel:
        return shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(client.secret), timeout=10)


def with_sent_back(heirs: dict, result: Any) -> list:
    """`result` and what a daemon reports after it (cluster.node.staged): every task
    staged behind a task that did not start its heir comes back BOUNCED, link by link
    (`heirs`: the head's ``staging.heirs``). For fake daemons in the head's unit tests."""
    from cluster.common.protocol import pb
    from cluster.policy.staging import heir_runs

    results = [result]
    heir = heirs.get(result.task_id)
    while heir is not None and not heir_runs(result.status, result.nested):
        results.append(pb.TaskResult(task_id=heir.task_id, status=pb.BOUNCED))
        heir = heirs.get(heir.task_id)
    return results


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SHOAL_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with SHOAL_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed; if intended, SHOAL_UPDATE_GOLDEN=1"


# ---- the Slurm test bed ----

def bed_is_up() -> str:
    """Why the Slurm test bed cannot be used, or "" when it is up."""
    if os.geteuid() != 0:
        return "the Slurm test bed needs root (network namespaces)"
    if shutil.which("scontrol") is None:
        return "Slurm is not installed: run `bash scripts/testbed/up.sh`"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "slurmctld does not answer"
    if "UP" not in ping.stdout:
        return "the Slurm test bed is not up: run `bash scripts/testbed/up.sh`"
    return ""


def namespaces() -> list[str]:
    rows = (TESTBED / "nodes.tsv").read_text().split("\n")
    return [r.split("\t")[2] for r in rows if r.strip()]


def our_processes(job_id: str = "") -> list[str]:
    """Command lines of shoal processes in any node namespace (or for one job)."""
    found = []
    for ns in namespaces():
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in out.stdout.split():
            try:
                cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.split(") ", 1)[-1].startswith("Z"):
                continue
            text = cmd.decode(errors="replace")
            if "cluster.node" in text or "cluster.worker" in text:
                if not job_id or job_id in text or "cluster.worker" in text:
                    found.append(f"{pid}: {text}")
    return found


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def job_alive(job_id: str) -> bool:
    out = subprocess.run(["squeue", "--noheader", f"--jobs={job_id}", "--format=%T"],
                         capture_output=True, text=True)
    return bool(out.stdout.strip()) and "COMPLET" not in out.stdout


@api.python_app
def hold(gate: str, started: str = "") -> str:
    """Run until the file `gate` exists (creating `started` first): blocks its slot."""
    if started:
        open(started, "w").close()
    deadline = time.monotonic() + 90
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"
