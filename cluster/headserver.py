"""The head's gRPC face: stream connections for drivers and daemons, status, shutdown.

Each bidirectional stream gets a :class:`StreamConn`: the head's ``send`` appends to an
outbox and a writer coroutine drains it, merging whatever piled up into one message, so a
busy head writes a few large messages instead of many small ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cluster.auth import AuthInterceptor
from cluster.head import Head
from cluster.protocol import SERVER_OPTIONS, pb, pb_grpc

log = logging.getLogger("shoal.head")


class StreamConn:
    """Outbound half of a bidirectional stream, fed by the head without awaiting."""

    def __init__(self) -> None:
        self._outbox: list[Any] = []
        self._event = asyncio.Event()
        self._closed = False

    def send(self, message: Any) -> None:
        if not self._closed:
            self._outbox.append(message)
            self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    async def messages(self) -> AsyncIterator[Any]:
        """Yield merged batches until closed."""
        while True:
            await self._event.wait()
            self._event.clear()
            if self._outbox:
                batch, self._outbox = self._outbox, []
                first = batch[0]
                for extra in batch[1:]:
                    first.MergeFrom(extra)
                yield first
            if self._closed:
                return


class LocalConn:
    """An in-process 'connection': hands the message object straight to the receiver.

    Safe because both ends defer their own reactions (they batch with ``call_soon``), so a
    delivery never re-enters the sender.
    """

    def __init__(self, deliver: Any) -> None:
        self._deliver = deliver

    def send(self, message: Any) -> None:
        self._deliver(message)

    def close(self) -> None:
        pass


class HeadService(pb_grpc.HeadServicer):
    """gRPC servicer bridging streams to the :class:`Head` state machine."""

    def __init__(self, head: Head) -> None:
        self.head = head

    async def DriverStream(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.DriverToHead], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeadToDriver]:
        conn = StreamConn()
        head = self.head
        state: dict[str, Any] = {}

        async def read() -> None:
            try:
                async for message in request_iterator:
                    driver = state.get("driver")
                    if driver is None:
                        if not message.HasField("hello"):
                            raise ValueError("first message must be a hello")
                        driver = state["driver"] = head.driver_joined(conn, message.hello)
                    head.on_driver_message(driver, message)
            except Exception as err:  # noqa: BLE001 - a bad peer must not hurt the head
                if not isinstance(err, asyncio.CancelledError):
                    log.warning("driver stream ended: %s", err)
            finally:
                conn.close()

        reader = asyncio.ensure_future(read())
        try:
            async for message in conn.messages():
                yield message
        finally:
            reader.cancel()
            driver = state.get("driver")
            if driver is not None:
                head.driver_left(driver)

    async def NodeStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.NodeToHead], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeadToNode]:
        conn = StreamConn()
        head = self.head
        state: dict[str, Any] = {}

        async def read() -> None:
            reason = "stream closed"
            try:
                async for message in request_iterator:
                    node = state.get("node")
                    if node is None:
                        if not message.HasField("register"):
                            raise ValueError("first message must be a registration")
                        node = state["node"] = head.node_joined(conn, message.register)
                    head.on_node_message(node, message)
            except Exception as err:  # noqa: BLE001
                if not isinstance(err, asyncio.CancelledError):
                    reason = str(err) or type(err).__name__
            finally:
                node = state.get("node")
                if node is not None:
                    head.node_lost(node, reason)
                conn.close()

        reader = asyncio.ensure_future(read())
        try:
            async for message in conn.messages():
                yield message
        finally:
            reader.cancel()
            node = state.get("node")
            if node is not None:
                head.node_lost(node, "stream closed")

    async def Status(  # noqa: N802
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusReply:
        return self.head.status()

    async def Shutdown(  # noqa: N802
        self, request: pb.ShutdownRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShutdownReply:
        asyncio.get_running_loop().call_later(0.05, self.head.shutdown)
        return pb.ShutdownReply()


async def start_server(head: Head, secret: str, host: str,
                       unix_path: str | None = None) -> tuple[grpc.aio.Server, int]:
    """Serve the head on ``host:0`` (and a Unix socket if given); returns (server, port)."""
    server = grpc.aio.server(interceptors=[AuthInterceptor(secret)], options=SERVER_OPTIONS)
    pb_grpc.add_HeadServicer_to_server(HeadService(head), server)
    bind = f"[{host}]:0" if ":" in host else f"{host}:0"
    port = server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"could not bind the head's port on {host}")
    if unix_path:
        server.add_insecure_port(f"unix:{unix_path}")
    await server.start()
    return server, port
