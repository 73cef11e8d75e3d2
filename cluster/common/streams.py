"""Connections as the head and the daemons see them: the outbound half of a gRPC stream,
an in-process link, and the framed lanes that take the secret first (the head's driver
lanes, a store's objects lane). Shared by the head (cluster/head/server.py), a daemon's
link to it (cluster/node/headlink.py) and its store (cluster/store/objectserver.py), so a
daemon does not import the head to get them (that import cost every daemon ~17 ms of
start-up).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from cluster.common import wire

log = logging.getLogger("shoal.lanes")


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


class AsyncFrameProtocol(wire.FrameProtocol, asyncio.BufferedProtocol):
    """:class:`~cluster.common.wire.FrameProtocol` as asyncio sees a buffered protocol, so
    its transport reads with ``recv_into`` the protocol's own buffer (wire.py says why).
    Defined here, not in wire.py, because workers import wire.py and never asyncio."""


#: Before the secret passed: the largest first frame accepted (a secret is 43 bytes), and
#: how long a connection may stay open without sending it (a port scanner, or anyone,
#: could otherwise hold connections, and the head's file descriptors, for ever).
SECRET_MAX = 4096
SECRET_SECONDS = 10.0


class _SecretFirstProtocol(AsyncFrameProtocol):
    """AsyncFrameProtocol that tells its SecretFirstFrames when the connection is made."""

    on_connected: Callable[[], None] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.on_connected is not None:
            self.on_connected()


class SecretFirstFrames:
    """A framed connection whose first frame must be the cluster `secret` and whose others
    are protobuf messages of `message_type`, each handed to ``on_message``: the head's
    driver lanes and node lane, and a store's objects lane. Nothing but the secret is
    looked at before it passes; a wrong one is answered ``UNAUTHENTICATED`` and the
    connection closed, and so is (without an answer) a frame that does not parse, a first
    frame longer than SECRET_MAX, and a connection that sent no secret within
    SECRET_SECONDS. `what` names the lane in logs."""

    def __init__(self, secret: bytes, message_type: Any, on_message: Callable[[Any], None],
                 on_lost: Callable[[], None], what: str,
                 recv_size: int = wire.RECV_SIZE) -> None:
        self._secret = secret
        self._parse = message_type.FromString
        self._on_message = on_message
        self._on_lost = on_lost
        self._what = what
        self._authenticated = False
        self._timer: asyncio.TimerHandle | None = None
        self.protocol = _SecretFirstProtocol(self._on_frame, self._lost, decode=bytes,
                                             recv_size=recv_size)
        self.protocol.max_first_frame = SECRET_MAX
        self.protocol.on_connected = self._connected

    def _connected(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(SECRET_SECONDS, self._expire)

    def _expire(self) -> None:
        if not self._authenticated:
            log.warning("%s: no secret within %gs, connection closed", self._what,
                        SECRET_SECONDS)
            self.protocol.close()

    def _lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._on_lost()

    def _on_frame(self, body: bytes) -> None:
        if not self._authenticated:
            if not hmac.compare_digest(body, self._secret):
                log.warning("%s: wrong secret, connection closed", self._what)
                self.protocol.write(wire.frame(b"UNAUTHENTICATED"))
                self.protocol.close()
                return
            self._authenticated = True
            if self._timer is not None:
                self._timer.cancel()
            return
        try:
            message = self._parse(body)
        except Exception:  # noqa: BLE001
            log.warning("%s: malformed message, connection closed", self._what)
            self.protocol.close()
            return
        self._on_message(message)

    def send(self, message: Any) -> None:
        """Write one protobuf message as a frame (queued; never blocks)."""
        self.protocol.write(wire.frame(message.SerializeToString()))

    def close(self) -> None:
        """Close the connection."""
        self.protocol.close()


class LaneClient:
    """The connecting side of a secret-first lane over TCP (a daemon's node lane, a
    simulated node's): :meth:`connect` sends the secret; every frame body from the peer
    goes to `on_body`; :attr:`refused` is set when the peer's first frame was
    ``UNAUTHENTICATED``; :attr:`heard` is the loop time of the last frame; :attr:`ended`
    completes when the connection is gone."""

    def __init__(self, on_body: Callable[[bytes], None]) -> None:
        self._on_body = on_body
        self._loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = self._loop.create_future()
        self.refused = False
        self.heard = self._loop.time()
        self._answered = False
        self.protocol = AsyncFrameProtocol(self._on_frame, self._on_lost, decode=bytes)

    @classmethod
    async def connect(cls, address: str, secret: str, on_body: Callable[[bytes], None],
                      ssl: Any = None, server_hostname: str | None = None) -> LaneClient:
        """Connect to `address` (``[tcp:]HOST:PORT``, over TLS with the `ssl` context) and
        send `secret` as the first frame."""
        client = cls(on_body)
        host, port = wire.host_port(address)
        await client._loop.create_connection(
            lambda: cast(asyncio.BaseProtocol, client.protocol), host, port, ssl=ssl,
            server_hostname=server_hostname)
        client.protocol.write(wire.frame(secret.encode()))
        return client

    def _on_frame(self, body: bytes) -> None:
        if self.ended.done():
            return
        self.heard = self._loop.time()
        if not self._answered:
            self._answered = True
            if body == b"UNAUTHENTICATED":
                self.refused = True
                self.close()
                return
        self._on_body(body)

    def _on_lost(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def send(self, message: Any) -> None:
        """Write one protobuf message as a frame (queued; never blocks)."""
        self.protocol.write(wire.frame(message.SerializeToString()))

    def close(self) -> None:
        """Close the connection (:attr:`ended` completes)."""
        self.protocol.close()
