"""The web dashboard: served by the head (aiohttp, on the head's own event loop), or by
``clusterctl dashboard --cluster ID`` from a finished run's history.

Why aiohttp on the head's loop: the pages read the head's live state (nodes, actors,
objects) between two of its loop turns, so every snapshot is consistent without locks;
history queries (tasks, timeline) run on one thread of their own so a slow query never
holds up dispatch. aiohttp is asyncio-native, maintained, and small next to a WSGI stack.

Access: bound to loopback by default, on a port the OS picks. Every request needs the
token (:func:`cluster.common.auth.dashboard_token`, an HMAC of the cluster secret, never
the secret itself): once as ``?token=...``, which sets a cookie (HttpOnly, SameSite=Strict,
named for the port, as cookies do not tell ports apart) and redirects to the same page
without it; then the cookie. ``/api/*`` and ``/metrics`` also take ``?token=`` on every
request, or ``Authorization: Bearer TOKEN`` (scrapers keep no cookies). Otherwise: 401.

Pages (``/``, ``/tasks``, ``/task/<id>``, ``/actors``, ``/objects``, ``/blocks``,
``/timeline``) are one HTML shell with the page's data embedded as JSON (so it renders
at once, scripts or not) and ``dashboard/app.js``, which renders it and polls
``/api/<page>`` every second. ``/metrics`` is Prometheus text (:mod:`cluster.head.metrics`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import html
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cluster.common import historydb, paths
from cluster.common.auth import dashboard_token
from cluster.common.protocol import pb
from cluster.head import metrics
from cluster.head.directory import ObjectDirectory
from cluster.head.records import Node

log = logging.getLogger("shoal.dashboard")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
PAGES = ("overview", "tasks", "task", "actors", "objects", "blocks", "timeline")
#: Rows per page of the tasks table.
TASKS_PER_PAGE = 50
#: Seconds after a `clusterctl up` head starts that it serves its dashboard (imports
#: aiohttp) if no request came first: its first page then answers at once; an
#: ``api.init()`` cluster's waits for a request (its start, and the driver's first tasks,
#: should not share the CPU with the import).
PRELOAD_SECONDS = 2.0
#: Seconds the overview's node records are reused: every open page polls each second.
NODE_RECORDS_SECONDS = 1.0
#: The timeline page draws at most this many of the latest tasks (the trace file has all).
TIMELINE_TASKS = 2000


class LiveHead(Protocol):
    """What the pages read of a live head."""

    nodes: dict[int, Node]
    objects: ObjectDirectory

    @property
    def actor_table(self) -> Any: ...

    def status(self, node_limit: int = 0) -> pb.StatusReply: ...

    def blocks_info(self) -> list[pb.BlockInfo]: ...


class Source:
    """What the pages show: the live head (`head`) and its history, or a history alone."""

    def __init__(self, history_path: str, head: LiveHead | None = None) -> None:
        self.head = head
        self.history_path = history_path
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "shoal-dashboard-db")
        self._local = threading.local()
        self.node_records = NodeRecords()

    def _db(self) -> sqlite3.Connection | None:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._local.db = historydb.connect(self.history_path)
            except historydb.HistoryError:
                return None
        return db

    async def query(self, fn: Callable[[sqlite3.Connection], Any], default: Any) -> Any:
        """`fn(db)` on the history's thread (`default` when there is no history)."""
        def run() -> Any:
            db = self._db()
            return default if db is None else fn(db)

        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    # ---- the pages' data ------------------------------------------------------------
    async def overview(self, _: dict[str, str]) -> dict[str, Any]:
        def read(db: sqlite3.Connection) -> dict[str, Any]:
            return {"counts": historydb.counts_by_state(db), "samples": historydb.samples(db),
                    "meta": historydb.meta(db),
                    "nodes": [] if self.head else historydb.nodes(db),
                    "actors": [] if self.head else historydb.actors(db)}

        out = await self.query(read, {"counts": {}, "samples": [], "meta": {}, "nodes": [],
                                      "actors": []})
        head = self.head
        if head is not None:
            # Every node, from the cache (see NodeRecords); the rest of the snapshot with
            # one node record only (the totals count them all).
            reply = head.status(1)
            out["nodes"] = self.node_records.get(head.nodes, reply.nodes_alive)
            out["nodes_total"] = reply.nodes_total
            out["nodes_alive"] = reply.nodes_alive
            out["actors"] = [_actor(a) for a in reply.actors]
            out["cluster_id"] = reply.cluster_id
            out["uptime"] = reply.uptime
            out["drivers"] = reply.drivers
            out["objects"] = {"count": reply.objects, "bytes": reply.object_bytes}
            out["counts"]["queued_now"] = reply.tasks_queued
            out["counts"]["running_now"] = reply.tasks_running
            # Live: queued and running as the head has them now (the history writes a
            # task's row when it ends, or HOLD_SECONDS after it came; actor calls count).
            out["counts"]["queued"] = reply.tasks_queued
            out["counts"]["running"] = reply.tasks_running
        else:
            out["cluster_id"] = out["meta"].get("cluster_id", "")
        out["live"] = head is not None
        return out

    async def tasks(self, q: dict[str, str]) -> dict[str, Any]:
        state = q.get("state") or None
        app = q.get("app") or None
        page = max(0, int(q.get("page") or 0))

        def read(db: sqlite3.Connection) -> dict[str, Any]:
            total = historydb.count(db, state, app)
            rows = historydb.tasks(db, state, app, limit=TASKS_PER_PAGE,
                                   offset=page * TASKS_PER_PAGE, newest_first=True)
            return {"total": total, "rows": rows, "apps": historydb.app_names(db),
                    "page": page, "per_page": TASKS_PER_PAGE, "state": state or "",
                    "app": app or "", "states": list(historydb.STATES)}

        return dict(await self.query(read, {"total": 0, "rows": [], "apps": []}),
                    live=self.head is not None)

    async def task(self, q: dict[str, str]) -> dict[str, Any]:
        task_id = historydb.parse_task_id(q.get("id") or "0")

        def read(db: sqlite3.Connection) -> dict[str, Any]:
            try:
                record = historydb.task(db, task_id)
            except historydb.HistoryError as err:
                return {"error": str(err)}
            return {"task": record, "logs": historydb.logs(db, task_id)}

        return dict(await self.query(read, {"error": "no history"}), live=self.head is not None)

    async def actors(self, _: dict[str, str]) -> dict[str, Any]:
        if self.head is not None:
            return {"actors": [_actor(a) for a in self.head.actor_table.status()],
                    "live": True}
        return {"actors": await self.query(historydb.actors, []), "live": False}

    async def objects(self, _: dict[str, str]) -> dict[str, Any]:
        head = self.head
        if head is None:
            return {"live": False, "objects": [], "count": 0, "bytes": 0}
        names = {n.node_id: n.name for n in head.nodes.values()}
        values = head.objects.values
        refs = head.objects.refs
        biggest = sorted(values.items(), key=lambda kv: -(kv[1].size or len(kv[1].data)))[:200]
        count, total = head.objects.stats()
        return {"live": True, "count": count, "bytes": total, "objects": [
            {"id": historydb.format_id(oid), "size": v.size or len(v.data),
             "stored": bool(v.size), "holders": sorted(names.get(h, str(h)) for h in v.holders),
             "refs": refs.get(oid, 0), "status": int(v.status)} for oid, v in biggest]}

    async def blocks(self, _: dict[str, str]) -> dict[str, Any]:
        if self.head is not None:
            return {"live": True, "blocks": [
                {"block_id": b.block_id, "job_id": b.job_id, "state": b.state,
                 "nodes": b.nodes, "walltime_left": b.walltime_left, "age": b.age,
                 "idle": b.idle, "reason": b.reason} for b in self.head.blocks_info()]}
        return {"live": False, "blocks": await self.query(historydb.blocks, [])}

    async def timeline(self, q: dict[str, str]) -> dict[str, Any]:
        limit = int(q.get("limit") or TIMELINE_TASKS)
        trace = await self.query(lambda db: historydb.timeline(db, limit), {"traceEvents": []})
        return dict(trace, live=self.head is not None)

    async def metrics_text(self) -> str:
        counts = await self.query(historydb.counts_by_state, {})
        if self.head is None:
            return "\n".join(f'shoal_history_tasks{{state="{k}"}} {v}'
                             for k, v in sorted(counts.items())) + "\n"
        return metrics.render(self.head.status(0), counts)


class NodeList(list[dict[str, Any]]):
    """Node records with their JSON text, made once for every page that polls (5,000
    nodes: 1.4 MB, 19 ms to encode)."""

    _text: str | None = None

    @property
    def json(self) -> str:
        if self._text is None:
            self._text = json.dumps(list(self), default=str)
        return self._text


def dumps(data: dict[str, Any]) -> str:
    """`data` as JSON, its node records from their cached text."""
    nodes = data.get("nodes")
    if not isinstance(nodes, NodeList):
        return json.dumps(data, default=str)
    rest = json.dumps({k: v for k, v in data.items() if k != "nodes"}, default=str)
    return rest[:-1] + (", " if rest != "{}" else "") + '"nodes": ' + nodes.json + "}"


class NodeRecords:
    """Every node's record for the overview, built from the head's nodes at most once a
    NODE_RECORDS_SECONDS (however many pages poll), at once when a node joined or was
    lost; and then only for the nodes whose heartbeat, running or done tasks changed. At
    5,000 nodes, building every record as a status reply took the head's loop 0.4 s (so
    the page used to show the first 200)."""

    def __init__(self) -> None:
        self._at = -1e9
        self._shape = (-1, -1)
        self._rows: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.records = NodeList()
        self.built = 0  # node records built (tests)

    def get(self, nodes: dict[int, Node], alive: int) -> NodeList:
        """The records of `nodes` (`alive` of them alive), in the order they joined."""
        now = time.monotonic()
        shape = (len(nodes), alive)
        if shape == self._shape and now - self._at < NODE_RECORDS_SECONDS:
            return self.records
        self._at, self._shape = now, shape
        rows = self._rows
        out = NodeList()
        for node_id, node in nodes.items():
            key = (len(node.running), node.done, node.alive, node.draining)
            seen = rows.get(node_id)
            if seen is None or seen[0][0] is not node.heartbeat or seen[0][1:] != key:
                seen = rows[node_id] = ((node.heartbeat, *key), _node(node))
                self.built += 1
            out.append(seen[1])
        if len(rows) > len(nodes):
            for gone in set(rows) - set(nodes):
                del rows[gone]
        self.records = out
        return out


def _node(n: Node) -> dict[str, Any]:
    beat = n.heartbeat
    store = beat.store
    return {"node_id": n.node_id, "name": n.name, "address": n.address,
            "state": "alive" if n.alive else "lost", "reason": n.lost_reason,
            "total": {k: v for k, v in n.view.total.items() if v},
            "used": {k: v for k, v in n.view.used.items() if v > 1e-9},
            "running": len(n.running), "done": n.done, "workers": beat.workers,
            "block": n.block_id, "draining": n.draining,
            "store": {"objects": store.objects, "bytes": store.bytes, "spilled": store.spilled,
                      "capacity": store.capacity}}


def _actor(a: Any) -> dict[str, Any]:
    return {"actor_id": a.actor_id, "id": historydb.format_id(a.actor_id),
            "class_name": a.class_name, "name": a.name, "node": a.node, "state": a.state,
            "restarts": a.restarts, "detached": a.detached, "message": a.message}


def _shell(page: str, data: dict[str, Any], token_cookie: str) -> str:
    title = {"overview": "Overview", "task": "Task"}.get(page, page.capitalize())
    links = "".join(f'<a href="/{"" if p == "overview" else p}" class="{"on" if p == page else ""}"'
                    f' id="nav-{p}">{p.capitalize()}</a>' for p in PAGES if p != "task")
    blob = dumps(data).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shoal: {html.escape(title)}</title>
<meta name="referrer" content="no-referrer">
<link rel="stylesheet" href="/static/style.css"></head>
<body data-page="{page}">
<header><b>shoal</b> <span id="cluster"></span> <span id="live"></span><nav>{links}</nav></header>
<main id="main"></main>
<script id="initial" type="application/json">{blob}</script>
<script src="/static/app.js"></script>
</body></html>"""


def make_app(source: Source, token: str) -> Any:
    """The aiohttp application for `source`, guarded by `token`."""
    from aiohttp import web

    cookie = None

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request],
                                                            Awaitable[web.StreamResponse]]) \
            -> web.StreamResponse:
        nonlocal cookie
        if cookie is None:
            port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
            cookie = f"shoal_token_{port}"
        given = request.query.get("token")
        bearer = request.headers.get("Authorization", "")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _denied(web)
            if not request.path.startswith(("/api/", "/metrics")):
                # A page: keep the token as a cookie and take it out of the address bar.
                query = {k: v for k, v in request.query.items() if k != "token"}
                target = request.rel_url.with_query(query)
                response: web.StreamResponse = web.HTTPFound(str(target))
                response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")
                return response
        elif bearer.startswith("Bearer "):  # scrapers (Prometheus' `authorization:`)
            if not hmac.compare_digest(bearer[7:].strip().encode(), token.encode()):
                return _denied(web)
        else:
            held = request.cookies.get(cookie, "")
            if not hmac.compare_digest(held.encode(), token.encode()):
                return _denied(web)
        response = await handler(request)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def data_for(page: str) -> Callable[[dict[str, str]], Awaitable[dict[str, Any]]]:
        return {"overview": source.overview, "tasks": source.tasks, "task": source.task,
                "actors": source.actors, "objects": source.objects, "blocks": source.blocks,
                "timeline": source.timeline}[page]

    def page_handler(page: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            query = dict(request.query)
            if page == "task":
                query["id"] = request.match_info["task_id"]
            try:
                data = await data_for(page)(query)
            except (historydb.HistoryError, ValueError) as err:
                data = {"error": str(err)}
            return web.Response(text=_shell(page, data, cookie or ""),
                                content_type="text/html")
        return handle

    async def api(request: web.Request) -> web.Response:
        page = request.match_info["page"]
        if page not in PAGES:
            raise web.HTTPNotFound()
        try:
            data = await data_for(page)(dict(request.query))
        except (historydb.HistoryError, ValueError) as err:
            return web.json_response({"error": str(err)}, status=400)
        if page == "timeline" and request.query.get("download"):
            return web.Response(text=json.dumps(data), content_type="application/json",
                                headers={"Content-Disposition":
                                         'attachment; filename="trace.json"'})
        return web.json_response(data, dumps=dumps)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(text=await source.metrics_text(),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", page_handler("overview"))
    for page in PAGES:
        if page not in ("overview", "task"):
            app.router.add_get(f"/{page}", page_handler(page))
    app.router.add_get("/task/{task_id}", page_handler("task"))
    app.router.add_get("/api/{page}", api)
    app.router.add_get("/metrics", prometheus)
    app.router.add_static("/static", STATIC)
    return app


def _denied(web: Any) -> Any:
    return web.Response(status=401, text="401: this dashboard needs its token. "
                        "`clusterctl dashboard` prints the address with it.\n")


class Dashboard:
    """A running dashboard: its `url` (without the token) and how to stop it."""

    def __init__(self, runner: Any, url: str, source: Source) -> None:
        self.runner = runner
        self.url = url
        self.source = source

    async def stop(self) -> None:
        """Stop serving."""
        await self.runner.cleanup()
        self.source.close()


async def serve(source: Source, token: str, host: str, port: int = 0) -> Dashboard:
    """Serve `source` on host:port (0: any free port) on the running loop."""
    from aiohttp import web

    runner = web.AppRunner(make_app(source, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=False)
    await site.start()
    # aiohttp has no public way to the port the OS picked.
    sockets = getattr(site._server, "sockets", None) or []  # noqa: SLF001
    bound = sockets[0].getsockname()[1] if sockets else port
    return Dashboard(runner, _url(host, bound), source)


def _url(host: str, port: int) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


class LazyDashboard:
    """The head's dashboard: its socket is bound at once (so its URL is known when the head
    starts), aiohttp is imported and started when the first request arrives. Importing
    aiohttp.web costs the head 0.3-1.2 s of CPU (alone / on a loaded 2-core machine): a
    local cluster's start (``api.init()``) should not pay it for a page nobody opens."""

    def __init__(self, sock: socket.socket, url: str, source: Source, token: str,
                 preload: float = 0.0) -> None:
        self.sock = sock
        self.url = url
        self.source = source
        self.token = token
        self.runner: Any = None
        self.note = ""  # the NOTE_FILE written for it
        self._loop = asyncio.get_running_loop()
        self._starting: asyncio.Future[None] | None = None
        self._loop.add_reader(sock.fileno(), self._first_request)
        if preload:  # started anyway this many seconds on, unless a request came first
            self._loop.call_later(preload, self._first_request)

    def _first_request(self) -> None:
        if self._starting is not None:
            return
        self._loop.remove_reader(self.sock.fileno())
        self._starting = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        import importlib

        try:
            # (in a thread: the head's loop goes on while the modules load)
            await self._loop.run_in_executor(None, importlib.import_module, "aiohttp.web")
            from aiohttp import web

            runner = web.AppRunner(make_app(self.source, self.token), access_log=None)
            await runner.setup()
            await web.SockSite(runner, self.sock).start()
            self.runner = runner
        except Exception:  # noqa: BLE001 - the head runs on without its dashboard
            log.exception("the dashboard could not start")

    async def stop(self) -> None:
        """Stop serving."""
        if self._starting is None:
            self._loop.remove_reader(self.sock.fileno())
        else:
            await self._starting
        if self.runner is not None:
            await self.runner.cleanup()
        self.sock.close()
        self.source.close()
        if self.note:
            try:
                os.unlink(self.note)
            except OSError:
                pass


async def start_dashboard(head: LiveHead, secret: str, host: str, log_dir: str,
                          preload: float = PRELOAD_SECONDS) -> LazyDashboard | None:
    """The head's dashboard (None, logged, when it cannot be served: the head runs on).
    `preload`: start serving that many seconds on even if nobody asked (0: at the first
    request only, as an ``api.init()`` local cluster does)."""
    import importlib.util

    if importlib.util.find_spec("aiohttp") is None:
        log.error("no dashboard: aiohttp is not installed (pip install aiohttp)")
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (not SO_REUSEPORT)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
    except OSError as err:
        log.error("no dashboard: %s", err)
        return None
    dashboard = LazyDashboard(sock, _url(host, sock.getsockname()[1]),
                              Source(paths.history_file(log_dir), head),
                              dashboard_token(secret), preload)
    dashboard.note = write_note(log_dir, dashboard.url, dashboard.token)
    log.info("dashboard at %s", dashboard.url)
    return dashboard


#: In a running head's log directory: its dashboard's address and token, for
#: ``clusterctl dashboard`` (an ``api.init()`` local cluster has no cluster file).
NOTE_FILE = "dashboard.json"


def write_note(log_dir: str, url: str, token: str) -> str:
    """Write NOTE_FILE (0600, in the 0700 log directory; the token, never the secret);
    its path, or "" when it cannot be written."""
    path = os.path.join(log_dir, NOTE_FILE)
    try:
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": url, "token": token, "pid": os.getpid()}, f)
        os.replace(path + ".tmp", path)
    except OSError as err:
        log.warning("could not write %s: %s", path, err)
        return ""
    return path


def serve_history(history_path: str, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve a finished run's history read-only until interrupted (``clusterctl
    dashboard --cluster ID`` after ``down``); prints the URL with a fresh token."""
    import secrets

    token = secrets.token_hex(20)

    async def main() -> None:
        dashboard = await serve(Source(history_path), token, host, port)
        print(f"{dashboard.url}?token={token}", flush=True)
        print("serving this finished run's history read-only; Ctrl-C stops", flush=True)
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            await dashboard.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
