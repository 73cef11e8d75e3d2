"""``clusterctl``: start, inspect and stop shoal clusters.

    clusterctl up [--interface NAME]        inside a Slurm allocation: head on the first
                                            node, one daemon per node (srun --overlap);
                                            outside Slurm: a local cluster on this host
    clusterctl status [--cluster ID]        nodes, slots, tasks
    clusterctl down [--cluster ID]          stop it, end its steps, scancel its blocks
    clusterctl run [--] COMMAND ...         up, run COMMAND (api.init("auto") finds the
                                            cluster), down even if it fails; its exit code
    clusterctl history [--state S] [--app NAME] [--json]   the tasks of a run
    clusterctl logs TASK_ID                 what a task printed
    clusterctl timeline -o trace.json       the run as a Chrome trace / Perfetto file
    clusterctl dashboard [--cluster ID]     the dashboard's URL (finished runs: served here)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

from cluster import cli_history
from cluster.common import clusterfile
from cluster.common.historydb import HistoryError
from cluster.slurm import bootstrap, config
from cluster.slurm import commands as slurm


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


class NothingRunning(CliError):
    """No cluster file names a cluster that is up (for `down`: nothing to stop)."""


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: an unknown option is its own error, shown with its usage
    (argparse would otherwise hand it up to the top-level parser's usage)."""

    # Any namespace and result: one signature that fits each of argparse's overloads.
    def parse_known_args(self, args: Iterable[str] | None = None,
                         namespace: Any = None) -> tuple[Any, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


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
        try:
            return clusterfile.read(clusterfile.path_for(job))
        except ValueError as err:
            raise CliError(str(err)) from None
    found = clusterfile.all_clusters() if include_down else clusterfile.running()
    found = [c for c in found if c.state == "up"]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NothingRunning("no running cluster found (start one with `clusterctl up`)")
    listing = ", ".join(c.cluster_id for c in found)
    raise CliError(f"several clusters are running ({listing}); name one with --cluster ID")


def _progress(quiet: bool) -> Callable[[str], None]:
    tty = sys.stderr.isatty()

    def show(text: str) -> None:
        if quiet:
            return
        if tty:
            sys.stderr.write(f"\r\033[K{text}")
            sys.stderr.flush()
        else:
            print(text, file=sys.stderr)

    return show


def _scaling(ns: argparse.Namespace) -> str:
    """The scaling config as JSON ("" when neither --config nor a scaling flag was given)."""
    overrides = {key: getattr(ns, key) for key in config.KEYS
                 if key not in ("interface",) and getattr(ns, key, None) is not None}
    if not ns.config and not overrides:
        return ""
    if ns.interface:
        overrides["interface"] = ns.interface
    try:
        cfg = config.load(ns.config, overrides)
    except config.ConfigError as err:
        raise CliError(f"config: {err}") from None
    return json.dumps(config.to_dict(cfg))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _byte_size(text: str) -> int:
    try:
        return config.parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _head_options(ns: argparse.Namespace) -> list[str]:
    return [] if ns.no_dashboard else ["--dashboard", "--dashboard-host", ns.dashboard_host]


def _up(ns: argparse.Namespace) -> clusterfile.ClusterFile:
    if ns.object_store_memory:  # every daemon inherits it (srun and sbatch pass it on)
        os.environ["SHOAL_OBJECT_STORE_BYTES"] = str(ns.object_store_memory)
    scaling = _scaling(ns)
    if ns.resources:
        try:
            json.loads(ns.resources)
        except json.JSONDecodeError as err:
            raise CliError(f"--resources is not valid JSON: {err}") from None
    if slurm.in_allocation() and not ns.local:
        show = _progress(ns.quiet)
        cf = bootstrap.start_in_allocation(ns.interface, ns.head_timeout, ns.timeout, show,
                                           scaling, ns.tls, _head_options(ns), ns.log_dir)
        if sys.stderr.isatty() and not ns.quiet:
            sys.stderr.write("\n")
        return cf
    if scaling:
        return bootstrap.start_with_blocks(ns.cluster_id, scaling, ns.interface, ns.timeout,
                                           ns.tls, _head_options(ns), ns.log_dir)
    options = []
    for flag, value in (("--num-cpus", ns.num_cpus), ("--num-gpus", ns.num_gpus)):
        if value is not None:
            options += [flag, str(value)]
    if ns.resources:
        options += ["--resources", ns.resources]
    if ns.tls:
        options.append("--tls")
    host = ns.host
    if ns.interface:
        options += ["--interface", ns.interface]
        host = "auto"
    return bootstrap.start_local(ns.cluster_id, host, options + _head_options(ns), ns.timeout,
                                 ns.log_dir)


def cmd_up(ns: argparse.Namespace) -> int:
    cf = _up(ns)
    if cf.slurm_job_id:
        where = f"{len(cf.nodes)} nodes of job {cf.slurm_job_id}"
    elif ns.config or _scaling(ns):
        where = "no nodes yet: the autoscaler adds Slurm blocks"
    else:
        where = "this host"
    print(f"shoal cluster {cf.cluster_id} is up at {cf.address} ({where})")
    print(f"  cluster file: {cf.path}")
    print(f"  logs:         {cf.log_dir}   (`clusterctl history`, `clusterctl logs ID`)")
    if cf.extra.get("dashboard"):
        print("  dashboard:    `clusterctl dashboard` prints its address")
    print('  connect:      api.init("auto")   or   api.init("' + cf.path + '")')
    return 0


def _fmt_res(res: object) -> str:
    from cluster.common.protocol import to_dict
    from cluster.policy.scheduler import describe

    return describe(to_dict(res))  # type: ignore[arg-type]


def _free(node: object) -> str:
    from cluster.common.protocol import to_dict
    from cluster.policy.scheduler import describe

    total, used = to_dict(node.total), to_dict(node.used)  # type: ignore[attr-defined]
    return describe({k: max(0.0, v - used.get(k, 0.0)) for k, v in total.items()})


#: Node rows `clusterctl status` prints before summarising (``--nodes`` prints them all).
STATUS_NODE_ROWS = 50


def cmd_status(ns: argparse.Namespace) -> int:
    cf = _pick_cluster(ns.cluster)
    full = ns.nodes or ns.json
    reply = bootstrap.status(cf, ns.timeout, 0 if full else STATUS_NODE_ROWS + 1)
    if ns.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(reply), indent=1))
        return 0
    job = f"   slurm job {cf.slurm_job_id}" if cf.slurm_job_id else ""
    print(f"cluster {reply.cluster_id} at {cf.address}   up {reply.uptime:.0f}s   "
          f"drivers {reply.drivers}   head pid {reply.head_pid}{job}")
    print(f"tasks: {reply.tasks_queued} queued, {reply.tasks_running} running, "
          f"{reply.tasks_done} done, {reply.tasks_failed} failed"
          f"{f' ({reply.tasks_staged} started staged)' if reply.tasks_staged else ''}"
          f"{f' ({reply.tasks_prefetched} prefetched)' if reply.tasks_prefetched else ''}   "
          f"objects: {reply.objects} ({reply.object_bytes / 2**20:.1f} MiB)")
    print(f"nodes: {reply.nodes_alive} alive of {reply.nodes_total}   in use "
          f"{_fmt_res(reply.used)} of {_fmt_res(reply.total)}")
    shown = reply.nodes if full else reply.nodes[:STATUS_NODE_ROWS]
    print(f"{'node':<14} {'address':<16} {'state':<6} {'running':>7} {'done':>7} "
          f"{'prefetched':>10} {'workers':>7}  free / total")
    for node in shown:
        print(f"{node.name:<14} {node.address:<16} {node.state:<6} {node.running:>7} "
              f"{node.done:>7} {node.prefetched:>10} {node.workers:>7}  {_free(node)} / "
              f"{_fmt_res(node.total)}")
    if any(n.store_address for n in reply.nodes):
        print(f"{'object store':<14} {'objects':>8} {'in memory':>12} {'spilled':>10} "
              f"{'limit':>10}")
        for node in shown:
            st = node.store
            print(f"{node.name:<14} {st.objects:>8} {_mib(st.bytes):>12} {_mib(st.spilled):>10} "
                  f"{_mib(st.capacity):>10}")
    if len(shown) < reply.nodes_total:
        print(f"... {reply.nodes_total - len(shown)} more nodes (`clusterctl status --nodes` "
              "lists every one)")
    if reply.actors:
        print(f"{'actor':<20} {'name':<16} {'node':<12} {'state':<10} {'restarts':>8}")
        for a in reply.actors:
            print(f"{a.class_name:<20} {a.name or '-':<16} {a.node or '-':<12} {a.state:<10} "
                  f"{a.restarts:>8}" + (f"  {a.message}" if a.state == "dead" else ""))
    if cf.slurm_steps:
        print(f"slurm steps: {', '.join(cf.slurm_steps)}")
    if reply.blocks:
        print(f"{'block':<6} {'job':<8} {'state':<9} {'nodes':>5} {'age':>7} "
              f"{'walltime left':>13} {'idle':>7}  reason")
        for b in reply.blocks:
            left = f"{b.walltime_left:.0f}s" if b.walltime_left >= 0 else "-"
            print(f"{b.block_id:<6} {b.job_id or '-':<8} {b.state:<9} {b.nodes:>5} "
                  f"{b.age:>6.0f}s {left:>13} {b.idle:>6.0f}s  {b.reason}")
    return 0


def cmd_down(ns: argparse.Namespace) -> int:
    try:
        cf = _pick_cluster(ns.cluster, include_down=True)
    except NothingRunning:
        print("nothing to stop: no cluster of yours is up")
        return 0
    if cf.state == "down":
        print(f"cluster {cf.cluster_id} is already down")
        return 0
    for note in bootstrap.teardown(cf, ns.timeout):
        print(f"  {note}", file=sys.stderr)
    print(f"cluster {cf.cluster_id} is down")
    return 0


def cmd_run(ns: argparse.Namespace) -> int:
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        raise CliError("nothing to run: clusterctl run -- python driver.py")
    cf = _up(ns)
    print(f"shoal cluster {cf.cluster_id} is up at {cf.address}", file=sys.stderr)
    env = dict(os.environ)
    env["SHOAL_ADDRESS"] = cf.path  # api.init() and api.init("auto") both find it
    if ns.checkpoint_dir:  # api.init() reads it (memoized results kept across jobs)
        env["SHOAL_CHECKPOINT_DIR"] = os.path.abspath(ns.checkpoint_dir)
    proc = None
    code = 1

    def forward(signum: int, frame: object) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            proc = subprocess.Popen(command, env=env)
        except OSError as err:
            raise CliError(f"cannot run {command[0]!r}: {err}") from None
        code = proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        bootstrap.teardown(clusterfile.read(cf.path), ns.timeout)
        print(f"shoal cluster {cf.cluster_id} is down", file=sys.stderr)
    return code if code >= 0 else 128 - code


def _add_up_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster-id", default=None, help="id for the cluster file (local only)")
    p.add_argument("--interface", default="", help="network interface whose address the head "
                   "and daemons advertise (default: the address the hostname resolves to)")
    p.add_argument("--host", default="127.0.0.1", help="address of a local cluster")
    p.add_argument("--local", action="store_true",
                   help="start a local cluster even inside a Slurm allocation")
    p.add_argument("--num-cpus", type=int, default=None, help="local cluster: worker slots")
    p.add_argument("--num-gpus", type=int, default=None, help="local cluster: GPUs")
    p.add_argument("--resources", default="", help='custom resources as JSON, e.g. {"ssd": 1}')
    p.add_argument("--object-store-memory", type=_byte_size, default=None, metavar="BYTES",
                   help="each node's object store limit (e.g. 8G; default 30%% of RAM); "
                        "past it, objects spill to node-local disk")
    p.add_argument("--head-timeout", type=float, default=30.0,
                   help="daemons stop after losing the head this long (s)")
    p.add_argument("--timeout", type=float, default=60.0, help="how long to wait for nodes")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--log-dir", default=None, metavar="DIR",
                   help="put logs and the run history in DIR/<cluster id> (say a shared file "
                        "system; default: a private 0700 directory under the temp dir)")
    p.add_argument("--dashboard-host", default="127.0.0.1",
                   help="the dashboard's address on the head's host (default loopback)")
    p.add_argument("--no-dashboard", action="store_true", help="serve no dashboard")
    p.add_argument("--tls", action="store_true",
                   help="serve gRPC over TLS with a per-cluster certificate (its CA goes into "
                        "the cluster file; daemons and drivers verify it)")
    scaling = p.add_argument_group(
        "autoscaling (Slurm blocks)", "keys as in a --config TOML file; any of them turns the "
        "autoscaler on (from a login node: a head with no nodes that grows by sbatch blocks)")
    scaling.add_argument("--config", default=None, help="TOML file with the keys below")
    for key, spec in config.KEYS.items():
        if key == "interface":
            continue
        kind = {"int": int, "float": float}.get(str(spec.type), str)
        scaling.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, default=None,
                             help=f"default {spec.default!r}")


def build_parser() -> argparse.ArgumentParser:
    """The clusterctl argument parser."""
    parser = argparse.ArgumentParser(prog="clusterctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    up = sub.add_parser("up", help="start a cluster", allow_abbrev=False)
    _add_up_options(up)
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="show nodes and tasks", allow_abbrev=False)
    status.add_argument("--cluster", default=None, help="cluster id (default: this job's, or "
                        "the only one)")
    status.add_argument("--json", action="store_true", help="everything, every node included")
    status.add_argument("--nodes", action="store_true",
                        help=f"list every node (by default the first {STATUS_NODE_ROWS})")
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop a cluster and clean up", allow_abbrev=False)
    down.add_argument("--cluster", default=None, help="cluster id (default: this job's, or "
                      "the only one)")
    down.add_argument("--timeout", type=float, default=10.0)
    down.set_defaults(func=cmd_down)
    run = sub.add_parser("run", help="up, run a command, down", allow_abbrev=False)
    _add_up_options(run)
    run.add_argument("--checkpoint-dir", default=None, help="where the driver's cache=True "
                     "apps keep results, for the next run (sets $SHOAL_CHECKPOINT_DIR)")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_run)
    cli_history.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the clusterctl command."""
    ns = build_parser().parse_args(argv)
    if argv is None:  # the command itself, not a caller's process (a test's, say)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `clusterctl status | head` ends quietly
    try:
        return ns.func(ns)
    except (CliError, bootstrap.BootstrapError, slurm.SlurmError, HistoryError) as err:
        print(f"clusterctl: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
