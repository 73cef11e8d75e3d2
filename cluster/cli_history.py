"""``clusterctl history``, ``logs``, ``timeline`` and ``dashboard``: they run in the user's
process and read the run history file (:mod:`cluster.common.historydb`), so they work on
a running cluster and on one that is down or whose head crashed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from cluster.common import clusterfile, historydb, paths
from cluster.common.historydb import HistoryError, format_id


def _default_log_dir(cluster_id: str) -> str:
    # As paths.log_dir, without creating anything.
    return os.path.join(tempfile.gettempdir(), f"shoal-{paths.user()}", "logs", cluster_id)


def find(cluster_id: str | None) -> tuple[str, clusterfile.ClusterFile | None]:
    """(history file, cluster file or None) of `cluster_id`; without one: this Slurm job's
    cluster, else the only running one, else the newest cluster that left a history."""
    if cluster_id:
        cf = None
        path = clusterfile.path_for(cluster_id)
        if os.path.exists(path):
            try:
                cf = clusterfile.read(path)
            except ValueError as err:
                raise HistoryError(str(err)) from None
        log_dir = cf.log_dir if cf is not None and cf.log_dir else _default_log_dir(cluster_id)
        history = paths.history_file(log_dir)
        if not os.path.exists(history):
            raise HistoryError(f"cluster {cluster_id!r} left no run history (looked for "
                               f"{history})")
        return history, cf
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.path.exists(clusterfile.path_for(job)):
        return find(job)
    running = [c for c in clusterfile.running() if c.state == "up"]
    if len(running) > 1:
        listing = ", ".join(c.cluster_id for c in running)
        raise HistoryError(f"several clusters are running ({listing}); name one with "
                           "--cluster ID")
    candidates = running or clusterfile.all_clusters()
    for cf in candidates:
        history = paths.history_file(cf.log_dir or _default_log_dir(cf.cluster_id))
        if os.path.exists(history):
            return history, cf
    raise HistoryError("no cluster of yours left a run history (start one with "
                       "`clusterctl up`; name an old one with --cluster ID)")


def _when(t: float | None, origin: float) -> str:
    return f"{t - origin:9.3f}" if t else f"{'-':>9}"


def cmd_history(ns: argparse.Namespace) -> int:
    """``clusterctl history``: the tasks of a run, filtered, as a table or JSON."""
    path, _ = find(ns.cluster)
    db = historydb.connect(path)
    if ns.nodes:
        return _nodes(db, ns.json)
    if ns.json:
        rows = historydb.tasks(db, ns.state, ns.app, limit=ns.limit or 0)
        # dumps, not dump: dump encodes in Python, chunk by chunk (22 s for 100,000 tasks).
        sys.stdout.write(json.dumps(rows, separators=(",", ":")) + "\n")
        return 0
    info = historydb.meta(db)
    origin = float(info.get("started") or 0.0)
    total = historydb.count(db, ns.state, ns.app)
    limit = 100 if ns.limit is None else ns.limit
    rows = historydb.tasks(db, ns.state, ns.app, limit=limit, newest_first=True)[::-1]
    ended = info.get("ended")
    status = (f"ended {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(ended)))}"
              if ended else "running (or its head crashed)")
    print(f"cluster {info.get('cluster_id', '?')}: {total} tasks"
          f"{' ' + ns.state if ns.state else ''}{' of ' + ns.app if ns.app else ''}; "
          f"{status}; times are seconds since the cluster started")
    print(f"{'task':<15} {'name':<18} {'state':<9} {'node':<12} {'att':>3} {'submitted':>9} "
          f"{'started':>9} {'finished':>9}  error")
    for r in rows:
        error = f"{r['error_type']}: {r['error']}" if r["error_type"] else ""
        print(f"{r['id']:<15} {r['name'][:18]:<18} {r['state']:<9} {(r['node'] or '-')[:12]:<12}"
              f" {r['attempts'] or 0:>3} {_when(r['submitted'], origin)} "
              f"{_when(r['started'], origin)} {_when(r['finished'], origin)}  "
              f"{error.splitlines()[0][:80] if error else ''}")
    if total > len(rows):
        print(f"... {total - len(rows)} earlier tasks not shown (--limit 0 shows all)")
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    """``clusterctl logs TASK_ID``: what the task printed (stdout and stderr), and its error."""
    task_id = historydb.parse_task_id(ns.task_id)
    path, cf = find(ns.cluster)
    db = historydb.connect(path)
    record = historydb.task(db, task_id)
    lines = historydb.logs(db, task_id)
    shown = False
    for line in lines:
        if ns.stream and line["stream"] != ns.stream:
            continue
        (sys.stderr if line["stream"] == "stderr" else sys.stdout).write(line["text"])
        shown = True
    sys.stdout.flush()
    # Bash apps' redirected output (stdout=/stderr= paths): files on the node that ran it.
    for stream in ("stdout", "stderr"):
        target = record.get(stream)
        if not target or (ns.stream and ns.stream != stream):
            continue
        if os.path.exists(target):
            with open(target, errors="replace") as f:
                (sys.stderr if stream == "stderr" else sys.stdout).write(f.read())
            shown = True
        else:
            print(f"[{stream} went to {target} on {record.get('node') or 'its node'}, not "
                  "readable here]", file=sys.stderr)
    if not shown:
        log_dir = os.path.dirname(path)
        task_log = os.path.join(log_dir, "tasks", f"task-{task_id:x}.log")
        if os.path.exists(task_log):
            with open(task_log, errors="replace") as f:
                sys.stdout.write(f.read())
            shown = True
    if record.get("traceback") and not ns.stream:
        print(f"--- {record['error_type']}: {record['error']}\n{record['traceback']}",
              file=sys.stderr)
    elif record.get("error") and not ns.stream:
        print(f"--- {record['error_type']}: {record['error']}", file=sys.stderr)
    if not shown and not record.get("error"):
        print(f"[task {format_id(task_id)} ({record['name']}, {record['state']}) printed "
              "nothing]", file=sys.stderr)
    return 0


def cmd_timeline(ns: argparse.Namespace) -> int:
    """``clusterctl timeline -o trace.json``: the run as a Chrome trace / Perfetto file."""
    path, _ = find(ns.cluster)
    trace = historydb.timeline(historydb.connect(path), ns.limit or 0)
    spans = sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
    with open(ns.output, "w") as f:
        f.write(json.dumps(trace, separators=(",", ":")))
    print(f"wrote {ns.output}: {spans} tasks; open it in https://ui.perfetto.dev or "
          "chrome://tracing")
    return 0


def ssh_tunnel(url: str, head_host: str) -> str:
    """The ``ssh -L`` command that reaches a dashboard on `head_host` from a login node.

    >>> ssh_tunnel("http://127.0.0.1:8765/?token=t", "node07")
    'ssh -N -L 8765:127.0.0.1:8765 node07'
    """
    from urllib.parse import urlparse

    parsed = urlparse(url)
    return f"ssh -N -L {parsed.port}:{parsed.hostname}:{parsed.port} {head_host}"


def cmd_dashboard(ns: argparse.Namespace) -> int:
    """``clusterctl dashboard``: print the running cluster's dashboard URL (with its
    token; an ``api.init()`` local cluster's from its head's note); for a cluster that is
    down, serve its history read-only until Ctrl-C."""
    from cluster.common import auth

    cf = None
    if ns.cluster:
        path = clusterfile.path_for(ns.cluster)
        cf = clusterfile.read(path) if os.path.exists(path) else None
    else:
        try:
            _, cf = find(None)
        except HistoryError:
            cf = None
    if cf is not None and cf.state == "up" and clusterfile.head_alive(cf):
        base = cf.extra.get("dashboard")
        if not base:
            raise HistoryError(f"cluster {cf.cluster_id} runs without a dashboard (it was "
                               "started with --no-dashboard)")
        url = f"{base}?token={auth.dashboard_token(cf.secret)}"
        print(url)
        if cf.slurm_job_id or os.environ.get("SLURM_JOB_ID"):
            print(f"from a login node: {ssh_tunnel(url, cf.host)}   then open the URL above",
                  file=sys.stderr)
        return 0
    running = local_dashboards(ns.cluster)
    if len(running) > 1 and not ns.cluster:
        raise HistoryError("several local clusters serve a dashboard ("
                           f"{', '.join(sorted(running))}); name one with --cluster ID")
    if running:
        print(next(iter(running.values())))
        return 0
    history, cf = find(ns.cluster)
    from cluster.head.dashboard import serve_history

    serve_history(history, ns.dashboard_host, ns.port)
    return 0


def local_dashboards(cluster_id: str | None = None) -> dict[str, str]:
    """{cluster id: dashboard URL with its token} of the running heads that left a note in
    their log directory under the temp directory (an ``api.init()`` local cluster has no
    cluster file; see cluster.head.dashboard.write_note); only `cluster_id`'s if given."""
    base = os.path.dirname(_default_log_dir("x"))
    try:
        names = [cluster_id] if cluster_id else os.listdir(base)
    except OSError:
        return {}
    found = {}
    for name in names:
        try:
            with open(os.path.join(base, name, "dashboard.json")) as f:
                note = json.load(f)
            if paths.pid_alive(int(note["pid"])):
                found[name] = f"{note['url']}?token={note['token']}"
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _nodes(db: Any, as_json: bool) -> int:
    """``clusterctl history --nodes``: every node of the run, when it joined and left, and
    why a lost one was lost."""
    rows = historydb.nodes(db)
    if as_json:
        sys.stdout.write(json.dumps(rows, separators=(",", ":")) + "\n")
        return 0
    origin = float(historydb.meta(db).get("started") or 0.0)
    print(f"{'node':<24} {'state':<8} {'block':<10} {'joined':>9} {'left':>9}  reason")
    for r in rows:
        print(f"{r['name'] or '?':<24} {r['state'] or '':<8} {r['block'] or '-':<10} "
              f"{_when(r['joined'], origin)} {_when(r['left'], origin)}  {r['reason'] or ''}")
    return 0


def add_commands(sub: Any) -> None:
    """The subcommands, on clusterctl's parser."""
    cluster_help = "cluster id (default: this job's, the only running one, or the newest)"
    p = sub.add_parser("history", help="the tasks of a run (running or finished)",
                       allow_abbrev=False)
    p.add_argument("--cluster", default=None, help=cluster_help)
    p.add_argument("--state", default=None, choices=historydb.STATES)
    p.add_argument("--app", default=None, help="only tasks of this app (its name)")
    p.add_argument("--json", action="store_true", help="a JSON list of task records")
    p.add_argument("--nodes", action="store_true",
                   help="the run's nodes instead: joined, left, why a lost one was lost")
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many (the newest; default 100, 0: all; JSON: all)")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("logs", help="what a task printed", allow_abbrev=False)
    p.add_argument("task_id", help="the task's id as shown (0x...) or fut.task_id")
    p.add_argument("--cluster", default=None, help=cluster_help)
    p.add_argument("--stream", choices=("stdout", "stderr"), default=None)
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("timeline", help="write a Chrome trace / Perfetto file of the run",
                       allow_abbrev=False)
    p.add_argument("-o", "--output", default="trace.json")
    p.add_argument("--cluster", default=None, help=cluster_help)
    p.add_argument("--limit", type=int, default=0, help="only the last N tasks")
    p.set_defaults(func=cmd_timeline)
    p = sub.add_parser("dashboard", help="the dashboard's URL (a finished run: serve it)",
                       allow_abbrev=False)
    p.add_argument("--cluster", default=None, help=cluster_help)
    p.add_argument("--dashboard-host", default="127.0.0.1",
                   help="finished runs: address to serve on (default loopback)")
    p.add_argument("--port", type=int, default=0, help="finished runs: port (default: any)")
    p.set_defaults(func=cmd_dashboard)
