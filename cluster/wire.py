"""Length-prefixed frames between a daemon and its worker processes (a Unix socketpair).

Each frame is a 4-byte little-endian length and a pickled tuple. Workers never import gRPC:
they start in a few tens of milliseconds and speak only this.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("<I")
PROTOCOL = 5


def encode(message: tuple) -> bytes:
    """One frame for `message`."""
    body = pickle.dumps(message, protocol=PROTOCOL)
    return HEADER.pack(len(body)) + body


class FrameProtocol(asyncio.Protocol):
    """asyncio side of the socketpair: calls `on_message(msg)` per frame, `on_lost()` at EOF."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buf = bytearray()
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        size = len(buf)
        unpack = HEADER.unpack_from
        while size - pos >= 4:
            (length,) = unpack(buf, pos)
            end = pos + 4 + length
            if end > size:
                break
            message = pickle.loads(memoryview(buf)[pos + 4 : end])
            pos = end
            self._on_message(message)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()

    def send(self, message: tuple) -> None:
        """Queue one frame for the worker (never blocks)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(message))
