"""``clusterctl``: start, inspect and stop shoal clusters.

    clusterctl up [--num-cpus N] [--host ADDR]   start a cluster (outside Slurm: on this host)
    clusterctl status [--cluster ID]             nodes, slots, tasks
    clusterctl down [--cluster ID]               stop it and remove its runtime files
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

from cluster import auth, clusterfile, paths
from cluster.paths import PACKAGE_ROOT


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def _pick_cluster(cluster_id: str | None, include_down: bool = False) -> clusterfile.ClusterFile:
    if cluster_id:
        path = clusterfile.path_for(cluster_id)
        if not os.path.exists(path):
            raise CliError(f"no cluster {cluster_id!r}: {path} does not exist")
        try:
            return clusterfile.read(path)
        except ValueError as err:
            raise CliError(str(err)) from None
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.path.exists(clusterfile.path_for(job)):
        return clusterfile.read(clusterfile.path_for(job))
    found = clusterfile.all_clusters() if include_down else clusterfile.running()
    found = [c for c in found if include_down or c.state == "up"]
    if len(found) == 1:
        return found[0]
    if not found:
        raise CliError("no running cluster found (start one with `clusterctl up`)")
    listing = ", ".join(c.cluster_id for c in found)
    raise CliError(f"several clusters are running ({listing}); name one with --cluster ID")


def _stub(cf: clusterfile.ClusterFile) -> tuple[object, object]:
    import grpc

    from cluster import shoal_pb2_grpc as pb_grpc
    from cluster.protocol import CHANNEL_OPTIONS

    channel = grpc.insecure_channel(cf.address, options=CHANNEL_OPTIONS)
    return channel, pb_grpc.HeadStub(channel)


def cmd_up(ns: argparse.Namespace) -> int:
    cluster_id = ns.cluster_id or clusterfile.new_local_id()
    existing = clusterfile.path_for(cluster_id)
    if os.path.exists(existing):
        cf = clusterfile.read(existing)
        if clusterfile.head_alive(cf):
            raise CliError(f"cluster {cluster_id} is already up at {cf.address}")
    secret = auth.new_secret()
    env = dict(os.environ)
    env[auth.ENV_VAR] = secret
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PACKAGE_ROOT not in parts:
        env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *parts])
    log_dir = paths.log_dir(cluster_id)
    cmd = [sys.executable, "-m", "cluster.node", "--head", "--daemon", "--cluster-id",
           cluster_id, "--write-cluster-file", "--host", ns.host, "--log-dir", log_dir]
    if ns.num_cpus is not None:
        cmd += ["--num-cpus", str(ns.num_cpus)]
    if ns.num_gpus is not None:
        cmd += ["--num-gpus", str(ns.num_gpus)]
    if ns.resources:
        json.loads(ns.resources)
        cmd += ["--resources", ns.resources]
    with open(os.path.join(log_dir, "head.stderr"), "ab") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=env, start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], ns.timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        raise CliError(f"the head did not start within {ns.timeout:g}s; see {log_dir}")
    info = json.loads(line)
    proc.stdout.close()
    print(f"shoal cluster {cluster_id} is up at {info['address']} (pid {info['pid']})")
    print(f"  cluster file: {clusterfile.path_for(cluster_id)}")
    print(f"  logs:         {log_dir}")
    print('  connect:      api.init("auto")   or   api.init("' + info["address"] + '")')
    return 0


def _fmt_res(res: object) -> str:
    from cluster.protocol import to_dict
    from cluster.scheduler import describe

    return describe(to_dict(res))  # type: ignore[arg-type]


def cmd_status(ns: argparse.Namespace) -> int:
    import grpc

    from cluster.auth import call_metadata
    from cluster.protocol import pb

    cf = _pick_cluster(ns.cluster)
    channel, stub = _stub(cf)
    try:
        reply = stub.Status(pb.StatusRequest(), metadata=call_metadata(cf.secret),  # type: ignore[attr-defined]
                            timeout=ns.timeout)
    except grpc.RpcError as err:
        raise CliError(f"the head of {cf.cluster_id} at {cf.address} does not answer "
                       f"({err.code().name}); `clusterctl down --cluster {cf.cluster_id}` "
                       "cleans up what is left") from None
    finally:
        channel.close()  # type: ignore[attr-defined]
    if ns.json:
        from google.protobuf.json_format import MessageToDict
        print(json.dumps(MessageToDict(reply), indent=1))
        return 0
    print(f"cluster {reply.cluster_id} at {cf.address}   up {reply.uptime:.0f}s   "
          f"drivers {reply.drivers}   head pid {reply.head_pid}")
    print(f"tasks: {reply.tasks_queued} queued, {reply.tasks_running} running, "
          f"{reply.tasks_done} done, {reply.tasks_failed} failed   "
          f"objects: {reply.objects} ({reply.object_bytes / 2**20:.1f} MiB)")
    print(f"{'node':<16} {'state':<6} {'running':>7} {'done':>8} {'workers':>7}  "
          "used / total")
    for node in reply.nodes:
        print(f"{node.name:<16} {node.state:<6} {node.running:>7} {node.done:>8} "
              f"{node.workers:>7}  {_fmt_res(node.used)} / {_fmt_res(node.total)}")
    return 0


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def cmd_down(ns: argparse.Namespace) -> int:
    import grpc

    from cluster.auth import call_metadata
    from cluster.protocol import pb

    cf = _pick_cluster(ns.cluster, include_down=True)
    if cf.state == "down":
        print(f"cluster {cf.cluster_id} is already down")
        return 0
    channel, stub = _stub(cf)
    try:
        stub.Shutdown(pb.ShutdownRequest(), metadata=call_metadata(cf.secret),  # type: ignore[attr-defined]
                      timeout=ns.timeout)
    except grpc.RpcError:
        pass  # the head may be dead already: clean up from the cluster file
    finally:
        channel.close()  # type: ignore[attr-defined]
    local = cf.host == socket.gethostname()
    if local and cf.head_pid and not _wait_gone(cf.head_pid, ns.timeout):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(cf.head_pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            if _wait_gone(cf.head_pid, 2):
                break
    if local and cf.runtime_dir:
        shutil.rmtree(cf.runtime_dir, ignore_errors=True)
    cf.state = "down"
    cf.save()
    print(f"cluster {cf.cluster_id} is down")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The clusterctl argument parser."""
    parser = argparse.ArgumentParser(prog="clusterctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster")
    up.add_argument("--cluster-id", default=None, help="id for the cluster file")
    up.add_argument("--host", default="127.0.0.1", help="address to bind and advertise")
    up.add_argument("--num-cpus", type=int, default=None)
    up.add_argument("--num-gpus", type=int, default=None)
    up.add_argument("--resources", default="", help='custom resources as JSON, e.g. {"ssd": 1}')
    up.add_argument("--timeout", type=float, default=30.0)
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="show nodes and tasks")
    status.add_argument("--cluster", default=None, help="cluster id (default: the only one)")
    status.add_argument("--json", action="store_true")
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop a cluster and clean up")
    down.add_argument("--cluster", default=None, help="cluster id (default: the only one)")
    down.add_argument("--timeout", type=float, default=10.0)
    down.set_defaults(func=cmd_down)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the clusterctl command."""
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except CliError as err:
        print(f"clusterctl: {err}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as err:
        print(f"clusterctl: --resources is not valid JSON: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
