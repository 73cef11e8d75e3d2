"""Process entry point: ``python -m cluster.node`` runs a head, a daemon, or both.

- ``--head --daemon``: a whole local cluster in one process (the head and this host's
  daemon share an event loop and talk without serialization), used by ``api.init()`` and
  ``clusterctl up`` outside Slurm;
- ``--head``: the head alone (Slurm: on the allocation's first node);
- ``--daemon --head-address tcp:HOST:PORT``: one node's daemon joining a head over its
  node lane (``HOST:PORT``: over gRPC; ``-``: read the address from stdin, so
  `clusterctl up` can start the daemons beside the head);
- with ``--daemon``, ``python -m cluster.node`` first forks the zygote that forks this
  node's workers (:mod:`cluster.node.forkserver`).

The cluster secret comes from the ``SHOAL_SECRET`` environment variable, never argv. Once
serving, the process prints one JSON line on stdout (address, port, pid) and, with
``--watch-stdin``, stops when its stdin closes (its parent, the driver, is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from typing import Any

from cluster.common import auth, paths, wire

log = logging.getLogger("shoal.node")
#: Object store capacity in bytes, inherited by every daemon of a cluster (srun, sbatch).
STORE_ENV = "SHOAL_OBJECT_STORE_BYTES"
#: Below this much free shared memory, the object store lives on node-local disk.
MIN_SHARED_MEMORY = 1 << 30


def detect_resources(ns: argparse.Namespace) -> dict[str, float]:
    """This host's resources, overridden by the command line."""
    cpus = ns.num_cpus
    if cpus is None and ns.node_cpus:
        cpus = json.loads(ns.node_cpus).get(socket.gethostname())
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    total: dict[str, float] = {"cpus": float(cpus)}
    gpus = ns.num_gpus
    if gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        gpus = len([g for g in visible.split(",") if g.strip()]) if visible else 0
    if gpus:
        total["gpus"] = float(gpus)
    total["memory"] = float(ns.memory if ns.memory is not None
                            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if ns.resources:
        for key, value in json.loads(ns.resources).items():
            total[key] = float(value)
    # As in Ray: a task asking for {"node:NAME": 0.01} runs on that node.
    total[f"node:{ns.node_name or socket.gethostname()}"] = 1.0
    return total


def resolve_host(host: str, interface: str, strict: bool) -> str:
    """The address to bind and advertise (see --host).

    `strict` (the head): a missing interface is an error. A daemon falls back to the
    address its hostname resolves to, since a login node's interface (say a bridge) need
    not exist on compute nodes.
    """
    if host != "auto":
        return host
    if interface:
        import psutil

        for addr in psutil.net_if_addrs().get(interface, []):
            if addr.family == socket.AF_INET:
                return addr.address
        names = ", ".join(sorted(psutil.net_if_addrs()))
        if strict:
            raise SystemExit(f"--interface {interface}: no IPv4 address on it "
                             f"(interfaces here: {names})")
        log.warning("interface %s not on this node (%s); using the hostname's address",
                    interface, names)
    return socket.gethostbyname(socket.gethostname())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster.node", description=__doc__)
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--daemon", action="store_true")
    parser.add_argument("--cluster-id", required=True)
    parser.add_argument("--head-address", default="",
                        help="tcp:HOST:PORT, the head's node lane (its cluster file's "
                             "node_lane_address; TLS on a --tls cluster), or HOST:PORT, its "
                             "gRPC address; '-': read it from stdin (one line)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind and advertise; 'auto': --interface's address, "
                             "else the address this host's name resolves to")
    parser.add_argument("--interface", default="", help="network interface for --host auto")
    parser.add_argument("--node-cpus", default="", help="JSON {hostname: cpus} (Slurm)")
    parser.add_argument("--node-name", default="")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--num-gpus", type=int, default=None)
    parser.add_argument("--memory", type=float, default=None)
    parser.add_argument("--resources", default="", help="JSON object of custom resources")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--log-dir", default="")
    parser.add_argument("--write-cluster-file", action="store_true")
    parser.add_argument("--watch-stdin", action="store_true")
    parser.add_argument("--head-timeout", type=float, default=30.0)
    parser.add_argument("--node-timeout", type=float, default=10.0)
    parser.add_argument("--autoscale", default="", help="JSON scaling config (head only)")
    parser.add_argument("--secret-file", default="",
                        help="read the secret from this file (a cluster file or plain text)")
    parser.add_argument("--block-id", default="", help="the block this daemon belongs to")
    parser.add_argument("--tls", action="store_true", help="head: serve gRPC over TLS")
    parser.add_argument("--dashboard", action="store_true", help="head: serve the dashboard")
    parser.add_argument("--dashboard-host", default="127.0.0.1",
                        help="head: the dashboard's address (default loopback)")
    parser.add_argument("--store-bytes", type=float,
                        default=float(os.environ.get(STORE_ENV) or 0) or None,
                        help=f"object store capacity in bytes (default ${STORE_ENV}, else 30%% "
                             "of RAM, at most what the shared-memory file system has free)")
    return parser.parse_args(argv)


async def serve(ns: argparse.Namespace, secret: str, daemon: Any) -> None:
    """Run what `ns` asks for until shutdown (`daemon`: this host's, already spawning)."""
    from cluster.common.protocol import fill, pb

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    log_dir = ns.log_dir or paths.log_dir(ns.cluster_id)
    node_name = ns.node_name or socket.gethostname()
    server = None
    head = None
    port = 0
    unix_path = lane_address = node_lane = ""
    tcp_lane: Any = None
    node_lane_server: Any = None

    def finish() -> None:
        # Remote daemons need a moment to receive their shutdown message; a cluster that
        # is all in this process can end at once (its workers exit on "exit" or EOF).
        remote = head is not None and any(n.alive and n.remote for n in head.nodes.values())
        loop.call_later(0.3 if remote else 0.0, done.set)

    def stop() -> None:
        if head is not None:
            head.shutdown()  # calls finish() through on_shutdown
        elif daemon is not None:
            daemon.stop()
        else:
            done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    if daemon is not None:
        if not ns.head:
            daemon.on_stop = lambda: loop.call_later(0.3, done.set)
        workers_started = asyncio.ensure_future(daemon.start())

    # Two daemons of one cluster can share a host (two blocks packed on one node).
    local_name = f"{node_name}-b{ns.block_id}" if ns.block_id else node_name
    runtime = paths.runtime_dir(ns.cluster_id, "" if ns.head else local_name)
    tls_pair = None
    if ns.head and ns.tls:
        from cluster.common.tls import make_cluster_certificates

        ca, key, cert, node_key, node_cert = make_cluster_certificates([ns.host])
        tls_pair = (key, cert)
        ns.tls_ca, ns.tls_node_key, ns.tls_node_cert = (ca.decode(), node_key.decode(),
                                                         node_cert.decode())
    store_server = None
    store_address = store_dir = ""
    if daemon is not None:
        daemon.secret = secret.encode()
        daemon.runtime_dir = runtime
        daemon.address = ns.host
        store_server, store_address, store_dir = await _start_store(ns, secret, daemon)
    if ns.head:
        # Imported only here: a daemon alone never loads the head (0.03 CPU-s of imports,
        # `python -X importtime`, of a boot of ~0.15), nor the cluster file (1-2 ms).
        from cluster.common import clusterfile
        from cluster.common.streams import LocalConn
        from cluster.head.server import (
            start_driver_lane,
            start_server,
            start_tcp_driver_lane,
            start_tcp_node_lane,
        )
        from cluster.head.state import Head

        head = Head(ns.cluster_id, node_timeout=ns.node_timeout)
        head.attach_loop(loop)
        head.on_shutdown = finish
        from cluster.head.history import make_recorder

        head.history = make_recorder(log_dir, ns.cluster_id)
        if head.history is not None:
            head.history.attach(loop, head)
        unix_path = os.path.join(runtime, "driver.sock")
        server, port = await start_server(head, secret, ns.host, tls_pair)
        if ns.write_cluster_file and not ns.tls:  # (where drivers elsewhere can find it)
            tcp_lane, lane_address = await start_tcp_driver_lane(head, secret, ns.host)
        if ns.write_cluster_file:  # (on a --tls cluster, TLS with the head's certificate)
            node_lane_server, node_lane = await start_tcp_node_lane(head, secret, ns.host,
                                                                    tls_pair)
        lane = await start_driver_lane(head, secret, unix_path)  # (the last: see settle_gc)
        if daemon is not None:
            register = pb.Register(name=node_name, address=f"{ns.host}", pid=os.getpid(),
                                   store_address=store_address, store_dir=store_dir)
            fill(register.total, daemon.total)
            node_conn = LocalConn(daemon.on_head_message)
            node = head.node_joined(node_conn, register, remote=False)
            daemon.link = LocalConn(lambda m: head.on_node_message(node, m))
            daemon.node_id = node.node_id

            async def local_heartbeat() -> None:
                while not daemon.stopping:
                    head.on_node_message(node, pb.NodeToHead(heartbeat=daemon.heartbeat()))
                    await asyncio.sleep(1.0)

            asyncio.ensure_future(local_heartbeat())
    elif daemon is not None:
        from cluster.node.headlink import make_link

        if ns.head_address == "-":  # `clusterctl up` writes it once the head is up
            ns.head_address = await _address_from_stdin()
        register = pb.Register(name=node_name, address=ns.host, pid=os.getpid(),
                               block_id=ns.block_id, store_address=store_address,
                               store_dir=store_dir)
        fill(register.total, daemon.total)
        link = make_link(daemon, ns.head_address, secret, register, ns.head_timeout,
                         ca=ns.tls_ca)
        daemon.link = link
        asyncio.ensure_future(link.run())

    address = f"{ns.host}:{port}" if port else ""
    dashboard = None
    if ns.dashboard and head is not None:
        # Cheap at start: the socket is bound here, aiohttp is imported on the first request
        # (importing it was ~40% of the head's start, 0.1 of 0.25 CPU-s).
        from cluster.head.dashboard import PRELOAD_SECONDS, start_dashboard

        dashboard = await start_dashboard(head, secret, ns.dashboard_host, log_dir,
                                          preload=0.0 if ns.watch_stdin else PRELOAD_SECONDS)
    if ns.write_cluster_file and head is not None:
        clusterfile.write(clusterfile.ClusterFile(
            cluster_id=ns.cluster_id, address=address, secret=secret,
            host=socket.gethostname(), head_pid=os.getpid(), unix_socket=unix_path,
            lane_address=lane_address, node_lane_address=node_lane,
            runtime_dir=runtime, log_dir=log_dir, created=time.time(),
            slurm_job_id=os.environ.get("SLURM_JOB_ID", ""),
            extra={**({"autoscale": True} if ns.autoscale else {}),
                   **({"tls_ca": ns.tls_ca, "tls_node_key": ns.tls_node_key,
                       "tls_node_cert": ns.tls_node_cert} if ns.tls else {}),
                   **({"dashboard": dashboard.url} if dashboard is not None else {})}))
    manager = None
    if ns.autoscale and head is not None:
        from cluster.slurm import config
        from cluster.slurm.blocks import BlockManager
        from cluster.slurm.provider import SlurmProvider

        cfg = config.from_mapping(json.loads(ns.autoscale))
        provider = SlurmProvider(cfg, cluster_id=ns.cluster_id,
                                 head_address=wire.TCP_PREFIX + node_lane if node_lane else address,
                                 secret_file=clusterfile.path_for(ns.cluster_id),
                                 python=cfg.python or sys.executable, log_dir=log_dir,
                                 package_root=paths.PACKAGE_ROOT)
        manager = BlockManager(head, cfg, provider, ns.cluster_id)
        scaling = asyncio.ensure_future(manager.run())
    print(json.dumps({"address": address, "node_lane": node_lane, "unix_socket": unix_path,
                      "pid": os.getpid(),
                      "log_dir": log_dir,
                      "dashboard": dashboard.url if dashboard is not None else ""}), flush=True)
    if ns.watch_stdin:
        def on_stdin() -> None:
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(0)
                stop()
        loop.add_reader(0, on_stdin)

    if daemon is not None:
        await workers_started
    await done.wait()
    if manager is not None:
        scaling.cancel()
        try:
            await manager.cancel_all()
        except Exception:  # noqa: BLE001 - `down` scancels from the cluster file too
            log.exception("could not cancel blocks")
    if daemon is not None:
        daemon.stop()
    if store_server is not None:
        await store_server.stop()
    if server is not None:
        lane.close()
        if tcp_lane is not None:
            tcp_lane.close()
        if node_lane_server is not None:
            node_lane_server.close()
        await server.stop(0)
    if dashboard is not None:
        await dashboard.stop()
    if head is not None and head.history is not None:
        head.history.close()
    shutil.rmtree(runtime, ignore_errors=True)
    if daemon is not None and daemon.store is not None:
        shutil.rmtree(daemon.store.spill_dir, ignore_errors=True)
        shutil.rmtree(daemon.store.directory, ignore_errors=True)
    if ns.write_cluster_file and head is not None:
        try:
            cf = clusterfile.read(clusterfile.path_for(ns.cluster_id))
            if cf.head_pid == os.getpid():
                clusterfile.mark_down(cf)  # keeps the record, scrubs the secret
        except ValueError:
            pass


async def _address_from_stdin() -> str:
    """The head's ``host:port``, one line on stdin (``--head-address -``): in an
    allocation, the daemons' step starts with the head's, so they boot while it does."""
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    address = line.strip()
    if not address:
        log.error("--head-address -: stdin closed before the head's address came")
        raise SystemExit("--head-address -: no head address on stdin (the head did not start)")
    return address


async def _start_store(ns: argparse.Namespace, secret: str,
                       daemon: Any) -> tuple[Any, str, str]:
    """The daemon's object store (in its runtime directory, spilling to node-local disk)
    and its servers; returns (those servers, transfer address, the store directory)."""
    from cluster.store import objectserver
    from cluster.store.objectstore import ObjectStore

    runtime = daemon.runtime_dir
    spill = os.path.join(paths.spill_root(), os.path.basename(runtime))
    capacity = int(ns.store_bytes) if ns.store_bytes else None
    directory = os.path.join(runtime, "store")
    st = os.statvfs(runtime)
    free = st.f_bavail * st.f_frsize
    if free < max(MIN_SHARED_MEMORY, capacity or 0):
        # A container's 64 MB /dev/shm, say: node-local disk (still page cache) instead.
        directory = spill + "-store"
        log.warning("%s has %d MiB free: the object store goes to %s", runtime, free >> 20,
                    directory)
    store = ObjectStore(directory, spill, capacity)
    if capacity is None:
        st = os.statvfs(store.directory)
        store.capacity = min(store.capacity, int(st.f_bavail * st.f_frsize * 0.9))
    daemon.store = store
    server_tls = client_tls = None
    if ns.tls_ca:  # a --tls cluster: transfers are TLS, actors take no plain TCP calls
        from cluster.common import tls

        if not (ns.tls_node_key and ns.tls_node_cert):
            raise SystemExit("this --tls cluster's file has no node certificate; run "
                             "`clusterctl down` and `up --tls` again with this version")
        server_tls = tls.server_context(ns.tls_node_key, ns.tls_node_cert)
        client_tls = tls.client_context(ns.tls_ca)
        daemon.address = ""
    daemon.puller = objectserver.Puller(store, secret, client_tls)
    servers = await objectserver.start(store, secret, ns.host, server_tls)
    daemon.transfers = servers.transfers
    return servers, servers.transfers.address, store.directory


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    if not (ns.head or ns.daemon):
        raise SystemExit("say --head, --daemon or both")
    if ns.daemon and not ns.head and not ns.head_address:
        raise SystemExit("--daemon alone needs --head-address tcp:HOST:PORT or HOST:PORT")
    secret, extra = auth.read_secret(ns.secret_file)
    ns.tls_ca = extra.get("tls_ca", "")
    ns.tls_node_key = extra.get("tls_node_key", "")
    ns.tls_node_cert = extra.get("tls_node_cert", "")
    log_dir = ns.log_dir or paths.log_dir(ns.cluster_id)
    ns.log_dir = log_dir
    os.makedirs(log_dir, exist_ok=True)
    role = "head" if ns.head else f"daemon-{ns.node_name or socket.gethostname()}"
    logging.basicConfig(
        filename=os.path.join(log_dir, f"{role}.log"), level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    daemon = None
    if ns.daemon:
        from cluster.node.daemon import Daemon

        daemon = Daemon(ns.node_name or socket.gethostname(), detect_resources(ns),
                        os.path.join(log_dir, "tasks"), ns.num_workers)
        daemon.spawn_initial()
    ns.host = resolve_host(ns.host, ns.interface, strict=ns.head)
    paths.sweep_stale()
    asyncio.run(serve(ns, secret, daemon))


if __name__ == "__main__":
    main()
