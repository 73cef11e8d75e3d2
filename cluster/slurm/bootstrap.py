"""Starting and stopping whole clusters: on this host, or inside a Slurm allocation.

Inside an allocation the head runs on the allocation's first node (directly when we are on
it, as in an sbatch script; through ``srun`` from an salloc shell on a login node) and one
daemon per node runs in a single ``srun --overlap`` step. Everything needed to tear the
cluster down (job and step ids, nodes, pids) goes into the cluster file, so ``down`` works
after the head has died.
"""

from __future__ import annotations

import glob
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from cluster.common import auth, bytecode, clusterfile, paths, wire
from cluster.slurm import commands as slurm


class BootstrapError(RuntimeError):
    """Starting or stopping failed; the message says why and where the logs are."""


def child_env(secret: str) -> dict[str, str]:
    """Our environment plus the secret and the package on the path (for node processes)."""
    env = dict(os.environ)
    env[auth.ENV_VAR] = secret
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths.PACKAGE_ROOT not in parts:
        env["PYTHONPATH"] = os.pathsep.join([paths.PACKAGE_ROOT, *parts])
    return env


def _read_ready(proc: subprocess.Popen, timeout: float, log_dir: str) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        hint = paths.shadowing_hint()
        raise BootstrapError(f"the head did not start within {timeout:g}s "
                             f"(exit code {proc.poll()}); see the logs in {log_dir}"
                             + (f"; {hint}" if hint else ""))
    return json.loads(line)


def _channel(cf: clusterfile.ClusterFile) -> Any:
    from cluster.common.protocol import CHANNEL_OPTIONS
    from cluster.common.tls import channel as open_channel

    return open_channel(cf.address, cf.extra.get("tls_ca"), CHANNEL_OPTIONS)


def _status(cf: clusterfile.ClusterFile, timeout: float, node_limit: int = 0,
            channel: Any = None) -> Any:
    from cluster.common import shoal_pb2_grpc as pb_grpc
    from cluster.common.protocol import pb

    if channel is None:
        with _channel(cf) as own:
            return _status(cf, timeout, node_limit, own)
    return pb_grpc.HeadStub(channel).Status(
        pb.StatusRequest(node_limit=node_limit), metadata=auth.call_metadata(cf.secret),
        timeout=timeout)


def status(cf: clusterfile.ClusterFile, timeout: float = 5.0, node_limit: int = 0) -> Any:
    """The head's StatusReply (at most `node_limit` node records, 0: all); raises
    BootstrapError when it does not answer."""
    import grpc

    try:
        return _status(cf, timeout, node_limit)
    except grpc.RpcError as err:
        raise BootstrapError(
            f"the head of {cf.cluster_id} at {cf.address} does not answer ({err.code().name}); "
            f"`clusterctl down --cluster {cf.cluster_id}` cleans up what is left") from None


def cluster_log_dir(cluster_id: str, log_root: str | None = None) -> str:
    """Where a cluster's logs and run history go: `log_root`/<id> (``up --log-dir``, say
    on a shared file system; created 0700 when missing), else the private default."""
    if not log_root:
        return paths.log_dir(cluster_id)
    path = os.path.join(os.path.abspath(os.path.expanduser(log_root)), cluster_id)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as err:
        raise BootstrapError(f"--log-dir {log_root}: cannot create {path}: {err}") from None
    return path


def start_local(cluster_id: str | None, host: str, node_options: list[str],
                timeout: float, log_root: str | None = None) -> clusterfile.ClusterFile:
    """A head and this host's daemon in one background process (`node_options` may hold
    --tls)."""
    """A head and this host's daemon in one background process."""
    cluster_id = cluster_id or clusterfile.new_local_id()
    _before_start(cluster_id)
    secret = auth.new_secret()
    log_dir = cluster_log_dir(cluster_id, log_root)
    cmd = [sys.executable, "-m", "cluster.node", "--head", "--daemon", "--cluster-id",
           cluster_id, "--write-cluster-file", "--host", host, "--log-dir", log_dir,
           *node_options]
    with open(os.path.join(log_dir, "head.stderr"), "ab") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=child_env(secret), start_new_session=True)
    _read_ready(proc, timeout, log_dir)
    return clusterfile.read(clusterfile.path_for(cluster_id))


def start_with_blocks(cluster_id: str | None, cfg_json: str, interface: str,
                      timeout: float, tls: bool = False, head_options: list[str] | None = None,
                      log_root: str | None = None) -> clusterfile.ClusterFile:
    """A head on this host (say a login node) with no nodes of its own: the autoscaler
    submits blocks (sbatch jobs) whose daemons join it."""
    cluster_id = cluster_id or clusterfile.new_local_id()
    _before_start(cluster_id)
    secret = auth.new_secret()
    log_dir = cluster_log_dir(cluster_id, log_root)
    cmd = [sys.executable, "-m", "cluster.node", "--head", "--cluster-id", cluster_id,
           "--write-cluster-file", "--host", "auto", "--log-dir", log_dir,
           "--autoscale", cfg_json, *(head_options or [])]
    if interface:
        cmd += ["--interface", interface]
    if tls:
        cmd.append("--tls")
    with open(os.path.join(log_dir, "head.stderr"), "ab") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=child_env(secret), start_new_session=True)
    _read_ready(proc, timeout, log_dir)
    return clusterfile.read(clusterfile.path_for(cluster_id))


def _before_start(cluster_id: str) -> None:
    """Refuse a cluster id that is up already; bring our own bytecode up to date (every
    node process would otherwise compile each stale module again: cluster.common.bytecode)."""
    path = clusterfile.path_for(cluster_id)
    if os.path.exists(path):
        cf = clusterfile.read(path)
        if clusterfile.head_alive(cf):
            raise BootstrapError(f"cluster {cluster_id} is already up at {cf.address}")
    bytecode.refresh()


def start_in_allocation(interface: str, head_timeout: float, timeout: float,
                        progress: Callable[[str], None],
                        autoscale: str = "", tls: bool = False,
                        head_options: list[str] | None = None,
                        log_root: str | None = None) -> clusterfile.ClusterFile:
    """Head on the first node, one daemon per node (one srun step); returns once all
    nodes have joined."""
    alloc = slurm.current_allocation()
    cluster_id = alloc.job_id
    _before_start(cluster_id)
    secret = auth.new_secret()
    env = child_env(secret)
    log_dir = cluster_log_dir(cluster_id, log_root)
    python = slurm.python_executable()
    steps_before = set(slurm.job_steps(alloc.job_id))
    head_node = alloc.nodes[0]
    here = socket.gethostname()
    head_args = ["--head", "--cluster-id", cluster_id, "--write-cluster-file", "--log-dir",
                 log_dir, "--host", "auto", *(head_options or [])]
    if interface:
        head_args += ["--interface", interface]
    if autoscale:
        head_args += ["--autoscale", autoscale]
    if tls:
        head_args.append("--tls")
    if here == head_node:
        cmd = [python, "-m", "cluster.node", *head_args]
    else:
        cmd = slurm.head_srun_command(alloc, head_node, python, head_args)
    progress(f"starting the head on {head_node}")
    with open(os.path.join(log_dir, "head.stderr"), "ab") as err:
        head = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=env, start_new_session=True)
    # The daemons' step starts at once, beside the head's: they boot (~0.1 CPU-s each,
    # mostly imports) while the head does, and read its address from stdin (srun
    # gives it to every task) when it is up. On 16 test-bed nodes: 0.3-0.4 s of `up`.
    daemon_args = ["--daemon", "--cluster-id", cluster_id, "--head-address", "-",
                   "--log-dir", log_dir, "--host", "auto", "--head-timeout", str(head_timeout),
                   "--node-cpus", json.dumps(alloc.cpus)]
    if interface:
        daemon_args += ["--interface", interface]
    if tls:  # the CA is in the cluster file (shared file system), with the secret
        daemon_args += ["--secret-file", clusterfile.path_for(cluster_id)]
    srun = slurm.daemon_srun_command(alloc, python, daemon_args)
    srun.insert(1, "--input=all")

    def start_daemons() -> subprocess.Popen:
        progress(f"starting {len(alloc.nodes)} daemons with srun")
        with open(os.path.join(log_dir, "daemons.out"), "ab") as out:
            return subprocess.Popen(srun, stdin=subprocess.PIPE, stdout=out, stderr=out,
                                    env=env, start_new_session=True)

    # With --tls the daemons read the CA from the cluster file, which the head writes as it
    # starts: then they start once the head is up, as before.
    daemons = None if tls else start_daemons()
    try:
        ready = _read_ready(head, timeout, log_dir)
        if daemons is None:
            daemons = start_daemons()
        assert daemons.stdin is not None
        try:
            # The node lane (framed TCP, TLS with --tls: daemons then never load gRPC);
            # gRPC only from a head that serves none.
            lane = ready.get("node_lane", "")
            target = wire.TCP_PREFIX + lane if lane else ready["address"]
            daemons.stdin.write(f"{target}\n".encode())
            daemons.stdin.flush()
        except BrokenPipeError:
            pass  # the step is gone already: the loop below says so
    finally:
        try:
            if daemons is not None and daemons.stdin is not None:
                daemons.stdin.close()  # without an address, the daemons exit on their own
        except BrokenPipeError:
            pass
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    deadline = time.monotonic() + timeout
    joined = -1
    channel = None
    try:
        while True:
            if daemons.poll() is not None:
                raise BootstrapError(f"the daemon step ended (exit code {daemons.returncode}); "
                                     f"see {os.path.join(log_dir, 'daemons.out')}")
            try:
                if channel is None:  # one channel for every poll (a new one each time cost
                    channel = _channel(cf)  # clusterctl and the head CPU the daemons need)
                reply = _status(cf, 2.0, channel=channel)
                alive = [n.name for n in reply.nodes if n.state == "alive"]
            except Exception:  # noqa: BLE001
                alive = []
            count = len(alive)
            if count != joined:
                joined = count
                newest = ", ".join(alive[-3:]) + (" ..." if count > 3 else "")
                progress(f"{count}/{len(alloc.nodes)} nodes joined" +
                         (f" (latest: {newest})" if alive else ""))
            if count >= len(alloc.nodes):
                break
            if time.monotonic() > deadline:
                raise BootstrapError(f"only {count} of {len(alloc.nodes)} nodes joined within "
                                     f"{timeout:g}s; see the logs in {log_dir} on each node")
            time.sleep(0.05)
    finally:  # (also when `up` fails in the loop)
        if channel is not None:
            channel.close()
    steps = [s for s in slurm.job_steps(alloc.job_id) if s not in steps_before]
    # Fresh: the head may have added blocks (its dashboard's address is in it from the
    # start: the head binds that socket before it writes the file).
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    cf.nodes = list(alloc.nodes)
    cf.slurm_job_id = alloc.job_id
    cf.slurm_steps = steps
    cf.extra.update(launcher_host=here, launcher_pids=[head.pid, daemons.pid],
                    runtime_root=paths.runtime_root())
    cf.save()
    return cf


def _pid_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[-1].startswith("Z"):
                    return True  # a zombie is as good as gone
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


class _NoHead(Exception):
    """The cluster file has no secret left, so the head cannot be asked to stop."""


def teardown(cf: clusterfile.ClusterFile, timeout: float) -> list[str]:
    """Stop a cluster: ask the head, end its Slurm steps, scancel its blocks, remove runtime
    directories, mark the file down (blanking its secret). Works with a dead head;
    idempotent. Returns notes."""
    import grpc

    from cluster.common import shoal_pb2_grpc as pb_grpc
    from cluster.common.protocol import CHANNEL_OPTIONS, pb

    notes: list[str] = []
    try:
        if not cf.secret:  # marked down already: no head to ask
            raise _NoHead
        from cluster.common.tls import channel as open_channel

        with open_channel(cf.address, cf.extra.get("tls_ca"), CHANNEL_OPTIONS) as channel:
            pb_grpc.HeadStub(channel).Shutdown(
                pb.ShutdownRequest(), metadata=auth.call_metadata(cf.secret),
                timeout=min(timeout, 5.0))
    except (grpc.RpcError, _NoHead):
        notes.append("the head did not answer; cleaning up from the cluster file")
    here = socket.gethostname()
    if cf.head_pid and cf.host == here and not _pid_gone(cf.head_pid, timeout):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(cf.head_pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            if _pid_gone(cf.head_pid, 2):
                break
    if cf.slurm_steps or cf.slurm_jobs:
        deadline = time.monotonic() + timeout
        remaining = list(cf.slurm_steps)
        while remaining and time.monotonic() < deadline:
            try:
                alive = set(slurm.job_steps(cf.slurm_job_id)) if cf.slurm_job_id else set()
            except slurm.SlurmError:
                alive = set()
            remaining = [s for s in remaining if s in alive]
            if remaining:
                time.sleep(0.1)
        try:
            slurm.cancel(remaining + list(cf.slurm_jobs))
            if remaining:
                notes.append(f"cancelled steps {', '.join(remaining)}")
            if cf.slurm_jobs:
                notes.append(f"cancelled blocks {', '.join(cf.slurm_jobs)}")
        except slurm.SlurmError as err:
            notes.append(f"scancel failed: {err}")
    if cf.extra.get("autoscale"):
        from cluster.slurm.provider import job_name

        try:
            slurm.cancel_by_name(job_name(cf.cluster_id))
        except slurm.SlurmError as err:
            notes.append(f"scancel --name failed: {err}")
    for pid in cf.extra.get("launcher_pids", []) if cf.extra.get("launcher_host") == here else []:
        if not _pid_gone(pid, 2):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    root = cf.extra.get("runtime_root") or os.path.dirname(cf.runtime_dir or "")
    # The head's directory and every daemon's on this host ("<id>-<node>[-b<block>]").
    spill = paths.spill_root()
    for path in [cf.runtime_dir, *glob.glob(os.path.join(root, f"{cf.cluster_id}-*")),
                 os.path.join(spill, cf.cluster_id),
                 *glob.glob(os.path.join(spill, f"{cf.cluster_id}-*"))]:
        if path and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
    clusterfile.mark_down(cf)  # keeps pids and ids for history, drops the secret
    return notes
