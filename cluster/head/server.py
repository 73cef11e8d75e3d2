"""How the head is reached: gRPC streams for daemons and drivers, and a local driver lane.

Each bidirectional gRPC stream gets a :class:`~cluster.common.streams.StreamConn`: the
head's ``send`` appends to an outbox and a writer coroutine drains it, merging whatever
piled up into one message, so a busy head writes a few large messages instead of many
small ones.

Drivers on the head's own host may instead use the *local driver lane*: a Unix socket in
the cluster's 0700 runtime directory carrying the very same protobuf batches as
length-prefixed frames, the first of which must be the cluster secret. It exists for
latency: on the 2-core machines we measure on, one gRPC-Python message costs 150-200 us
each way (a bare two-process ping-pong is ~385 us, ~9 event-loop turns in the head per
task), while a framed Unix socket costs ~20 us. Drivers on other hosts get the same lane
over TCP (the cluster file's ``lane_address``), except on a --tls cluster; drivers that
know only the head's ``host:port`` use gRPC. Daemons get the same framed protobuf on
the *node lane* (TCP, a port of its own: a daemon's first message could not be told from
a driver's), which is how ``clusterctl up`` and the autoscaler's blocks join them; a daemon
given the head's ``host:port`` joins over gRPC. On a --tls cluster the node lane is TLS.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc

from cluster.common import shoal_pb2_grpc as pb_grpc
from cluster.common import wire
from cluster.common.auth import server_interceptor
from cluster.common.protocol import SERVER_OPTIONS, pb
from cluster.common.streams import SecretFirstFrames, StreamConn
from cluster.head.state import Head

log = logging.getLogger("shoal.head")


class _LaneSession:
    """One driver-lane connection: authenticate, then feed DriverToHead frames to the head
    (the head sends through :attr:`conn`)."""

    def __init__(self, head: Head, secret: bytes) -> None:
        self.head = head
        self.driver: Any = None
        self.conn = SecretFirstFrames(secret, pb.DriverToHead, self.on_message, self.on_lost,
                                      "driver lane")
        self.protocol = self.conn.protocol

    def on_message(self, message: pb.DriverToHead) -> None:
        if self.driver is None:
            if not message.HasField("hello"):
                self.conn.close()
                return
            self.driver = self.head.driver_joined(self.conn, message.hello)
        self.head.on_driver_message(self.driver, message)

    def on_lost(self) -> None:
        if self.driver is not None:
            self.head.driver_left(self.driver)
            self.driver = None


async def start_driver_lane(head: Head, secret: str, path: str) -> asyncio.AbstractServer:
    """Serve the local driver lane on the Unix socket `path` (the head's last start-up
    step: the objects made so far are then left out of the collector, see settle_gc)."""
    loop = asyncio.get_running_loop()
    key = secret.encode()
    # FrameProtocol is an asyncio protocol by duck typing (workers import it without asyncio).
    server = await loop.create_unix_server(
        lambda: cast(asyncio.BaseProtocol, _LaneSession(head, key).protocol), path=path)
    settle_gc()
    return server


#: The head's answer to a daemon's heartbeat on the node lane: an empty frame.
HEARTBEAT_ACK = wire.frame(b"")


class _NodeLaneSession:
    """One node-lane connection: authenticate, then the daemon's NodeToHead frames (the
    first must register) go to the head, which sends through :attr:`conn`; the node is lost
    when the connection ends."""

    def __init__(self, head: Head, secret: bytes) -> None:
        self.head = head
        self.node: Any = None
        self.conn = SecretFirstFrames(secret, pb.NodeToHead, self.on_message, self.on_lost,
                                      "node lane", recv_size=wire.NODE_RECV_SIZE)
        self.protocol = self.conn.protocol

    def on_message(self, message: pb.NodeToHead) -> None:
        if self.node is None:
            if not message.HasField("register"):
                log.warning("node lane: the first message did not register; closed")
                self.conn.close()
                return
            self.node = self.head.node_joined(self.conn, message.register)
        if message.HasField("heartbeat"):
            # Answered with an empty frame: a daemon that hears nothing for a few intervals
            # takes the head for gone (a dead host sends no FIN; gRPC's keepalive pings did
            # this job on the gRPC link).
            self.conn.protocol.write(HEARTBEAT_ACK)
        self.head.on_node_message(self.node, message)

    def on_lost(self) -> None:
        if self.node is not None:
            self.head.node_lost(self.node, "connection closed")
            self.node = None


async def _serve_tcp(session: Callable[[], Any], host: str,
                     ssl: Any = None) -> tuple[asyncio.AbstractServer, str]:
    """Serve framed sessions (each made by `session`, a protocol) on ``host:0``, over TLS
    with the `ssl` context; returns (server, its host:port)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: cast(asyncio.BaseProtocol, session()), host=host, port=0, reuse_port=False,
        ssl=ssl)
    port = server.sockets[0].getsockname()[1]
    return server, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_tcp_driver_lane(head: Head, secret: str,
                                host: str) -> tuple[asyncio.AbstractServer, str]:
    """Serve the driver lane over TCP on ``host:0`` for drivers on other hosts; returns
    (server, its host:port). Not on a --tls cluster: the driver's reader thread and its senders use
    one socket at once, which an ``ssl`` socket does not allow, so those drivers keep gRPC.
    (A driver on another host over gRPC cost the head 66-105 us of CPU a no-op task and
    itself 38-48; over a framed socket, 47-78 and 21-36: scripts/bench_cost.py.)"""
    key = secret.encode()
    return await _serve_tcp(lambda: _LaneSession(head, key).protocol, host)


async def start_tcp_node_lane(head: Head, secret: str, host: str,
                              tls: tuple[bytes, bytes] | None = None
                              ) -> tuple[asyncio.AbstractServer, str]:
    """Serve the node lane on ``host:0``: daemons (cluster/node/headlink.py LaneHeadLink)
    join over it in framed protobuf instead of gRPC; returns (server, its host:port). On a
    --tls cluster (`tls` = the head's key and certificate, PEM) the lane is TLS, verified
    by the daemons against the cluster's CA as its gRPC is. (asyncio's TLS runs on the
    event loop's one thread, so the lane can take it; the driver's lane, read and written
    from two threads, cannot.)"""
    key = secret.encode()
    context = None
    if tls is not None:
        from cluster.common.tls import server_context

        context = server_context(*tls)
    return await _serve_tcp(lambda: _NodeLaneSession(head, key).protocol, host, context)


def settle_gc() -> None:
    """Move everything the head's start-up made (modules, gRPC, protobuf descriptors) out
    of the garbage collector's reach (they live as long as the process), and make full
    collections 10x rarer (the young generations still run as before): in a 65,000-task
    gRPC run (scripts/bench_cost.py) the head spent 0.33 s in the collector, 0.19 s of it
    in 4 full passes of ~47 ms over every task record; frozen, 0.20 s; with this threshold
    too, 0.10 s (one full pass): ~3.5 us of the head's CPU per task."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, max(gen2, 100))


async def _bridge(requests: AsyncIterator[Any], first_field: str,
                  join: Callable[[StreamConn, Any], Any], on_message: Callable[[Any, Any], None],
                  leave: Callable[[Any, str], None]) -> AsyncIterator[Any]:
    """Run one peer's stream: its first message must carry `first_field` (hello or
    register) and makes it join; every message goes to `on_message`; the peer leaves (once)
    when either direction ends. Yields what the head sends it."""
    conn = StreamConn()
    state: dict[str, Any] = {}

    def depart(reason: str) -> None:
        peer = state.pop("peer", None)
        if peer is not None:
            leave(peer, reason)

    async def read() -> None:
        reason = "stream closed"
        try:
            async for message in requests:
                peer = state.get("peer")
                if peer is None:
                    if not message.HasField(first_field):
                        raise ValueError(f"the first message must carry {first_field}")
                    peer = state["peer"] = join(conn, message)
                on_message(peer, message)
        except Exception as err:  # noqa: BLE001 - a bad peer must not hurt the head
            if not isinstance(err, asyncio.CancelledError):
                reason = str(err) or type(err).__name__
                log.warning("%s stream ended: %s", first_field, reason)
        finally:
            depart(reason)
            conn.close()

    reader = asyncio.ensure_future(read())
    try:
        async for message in conn.messages():
            yield message
    finally:
        reader.cancel()
        depart("stream closed")


class HeadService(pb_grpc.HeadServicer):
    """gRPC servicer bridging streams to the :class:`Head` state machine."""

    def __init__(self, head: Head) -> None:
        self.head = head

    async def DriverStream(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.DriverToHead], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeadToDriver]:
        head = self.head
        async for message in _bridge(
                request_iterator, "hello",
                lambda conn, m: head.driver_joined(conn, m.hello), head.on_driver_message,
                lambda driver, reason: head.driver_left(driver)):
            yield message

    async def NodeStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.NodeToHead], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeadToNode]:
        head = self.head
        async for message in _bridge(
                request_iterator, "register",
                lambda conn, m: head.node_joined(conn, m.register), head.on_node_message,
                head.node_lost):
            yield message

    async def Status(  # noqa: N802
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusReply:
        return self.head.status(request.node_limit)

    async def Shutdown(  # noqa: N802
        self, request: pb.ShutdownRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShutdownReply:
        asyncio.get_running_loop().call_later(0.05, self.head.shutdown)
        return pb.ShutdownReply()


async def start_server(head: Head, secret: str, host: str,
                       tls: tuple[bytes, bytes] | None = None) -> tuple[grpc.aio.Server, int]:
    """Serve the head's gRPC service on ``host:0`` (TLS with `tls` = (key, cert) PEMs);
    returns (server, port)."""
    server = grpc.aio.server(interceptors=[server_interceptor(secret)], options=SERVER_OPTIONS)
    pb_grpc.add_HeadServicer_to_server(HeadService(head), server)
    bind = f"[{host}]:0" if ":" in host else f"{host}:0"
    if tls:
        from cluster.common.tls import server_credentials

        port = server.add_secure_port(bind, server_credentials(*tls))
    else:
        port = server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"could not bind the head's port on {host}")
    await server.start()
    return server, port
