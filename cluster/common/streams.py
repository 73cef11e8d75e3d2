"""Connections as the head and the daemons see them: the outbound half of a gRPC stream,
and an in-process link. Shared by the head (cluster/head/server.py) and a daemon's link
to it (cluster/node/headlink.py), so a daemon does not import the head to get them
(that import cost every daemon ~17 ms of start-up).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from cluster.common import wire


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
