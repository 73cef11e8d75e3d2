"""Length-prefixed frames over local stream sockets.

Two kinds of users. A daemon and its workers, and actors' direct callers (a socketpair,
or a socket to the actor's worker): frames are the pickled messages of
:mod:`cluster.common.messages` (workers never import gRPC, so they start in tens of
milliseconds). The head's local driver lane (a Unix socket in the cluster's 0700 runtime
directory): frames are the same protobuf batches the gRPC stream carries. Each frame is a
4-byte little-endian length and the body.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.common import messages

if TYPE_CHECKING:  # for mypy only: at run time the base is object (see FrameProtocol)
    from asyncio import Protocol as _ProtocolBase
else:
    _ProtocolBase = object

HEADER = struct.Struct("<I")
PROTOCOL = 5
MAX_FRAME = 1 << 31
#: Bytes per recv(): Python allocates this much on every call, so a large value costs
#: more than the syscalls it saves (1 MiB made a no-op task ~14% slower end to end).
RECV_SIZE = 1 << 16
#: How the address of a framed lane over TCP is written (``tcp:HOST:PORT``): a driver's
#: target for the head's TCP driver lane, a daemon's ``--head-address`` for its node lane.
TCP_PREFIX = "tcp:"
#: The first receive buffer of a head's node-lane connection (see FrameProtocol): a
#: daemon's usual batch fits in it; a larger one grows it.
NODE_RECV_SIZE = 1 << 12


def host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or either behind ``tcp:`` -> (host, port).

    >>> host_port("tcp:[::1]:7000")
    ('::1', 7000)
    >>> host_port("10.0.0.1:4567")
    ('10.0.0.1', 4567)
    """
    host, _, port = address.removeprefix(TCP_PREFIX).rpartition(":")
    return host.strip("[]"), int(port)


def frame(body: bytes) -> bytes:
    """One frame around `body`."""
    return HEADER.pack(len(body)) + body


def encode(message: tuple) -> bytes:
    """One frame holding the pickled `message` (a :mod:`~cluster.common.messages` type,
    sent in its wire form)."""
    return frame(pickle.dumps(messages.pack(message), protocol=PROTOCOL))


def decode(body: bytes) -> Any:
    """The message in one frame body (raises on a malformed frame or unknown tag)."""
    return messages.unpack(pickle.loads(body))


def split(buf: bytearray) -> list[bytes]:
    """Remove and return every complete frame body at the start of `buf`."""
    out = []
    pos = 0
    size = len(buf)
    unpack = HEADER.unpack_from
    while size - pos >= 4:
        (length,) = unpack(buf, pos)
        end = pos + 4 + length
        if end > size:
            break
        out.append(bytes(buf[pos + 4 : end]))
        pos = end
    if pos:
        del buf[:pos]
    return out


def recv_frames(sock: Any, buf: bytearray, peer: str) -> list[bytes]:
    """Block on the socket `sock` until `buf` (what it received so far) holds a complete
    frame; remove and return every complete frame body (EOFError naming `peer` at EOF)."""
    while True:
        frames = split(buf)
        if frames:
            return frames
        data = sock.recv(RECV_SIZE)
        if not data:
            raise EOFError(f"{peer} closed the connection")
        buf += data


class FrameProtocol(_ProtocolBase):
    """asyncio protocol for a framed socket: ``on_message(decode(body))`` per frame,
    ``on_lost()`` at EOF. A frame that fails to decode closes the connection.

    (Duck-typed rather than subclassing asyncio.Protocol, so workers, which import this
    module, never import asyncio.)"""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None],
                 decode: Callable[[bytes], Any] = decode, recv_size: int = RECV_SIZE) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._decode = decode
        # The receive buffer asyncio reads into (get_buffer/buffer_updated): bytes
        # [_start, _end) are received and not yet parsed. It starts at `recv_size` and grows
        # for a large frame (back to `recv_size` once that frame passed, if it grew past
        # RECV_SIZE). The head keeps one per daemon on its node lane, which therefore asks
        # for NODE_RECV_SIZE: at 5,000 nodes, 64 KiB buffers were 328 MB of its RSS.
        self._recv_size = recv_size
        self._rbuf = bytearray(recv_size)
        #: The largest first frame accepted (later ones: MAX_FRAME); a header announcing
        #: more closes the connection before any room is made for it (SecretFirstFrames
        #: sets it small, as its first frame is the secret: else one header from anyone
        #: could make us allocate 2 GiB). Counted per frame, so a secret and a large
        #: frame arriving in one read are both taken.
        self.max_first_frame = MAX_FRAME
        self._first = True
        self._start = 0
        self._end = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        """The plain-protocol path (asyncio uses the buffered one below): the same parser."""
        view = memoryview(data)
        while view and self.transport is not None and not self.transport.is_closing():
            room = self.get_buffer(len(view))
            n = min(len(room), len(view))
            room[:n] = view[:n]
            del room
            self.buffer_updated(n)
            view = view[n:]

    # Buffered receiving (asyncio.BufferedProtocol's two methods; the class that asyncio
    # sees as one is cluster.common.streams.AsyncFrameProtocol). asyncio's plain path
    # calls recv(256 KiB) and gets a fresh bytes object each time: above glibc's mmap
    # threshold, so every read was an mmap, an mremap to the bytes received and a munmap
    # (strace: 6 of the head's 17 system calls per sync round trip, the munmap a TLB
    # shootdown across gRPC's threads). recv_into one reused buffer makes none.

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self._rbuf
        start, end = self._start, self._end
        if start:  # move the partial frame to the front (usually nothing is left)
            buf[: end - start] = buf[start:end]
            start, end = 0, end - start
            self._start, self._end = 0, end
        need = min(RECV_SIZE, len(buf)) // 4
        if end >= 4:  # a partial frame: make room for all of it (buffer_updated refuses
            length = HEADER.unpack_from(buf, 0)[0]   # one above the limit)
            if length <= (self.max_first_frame if self._first else MAX_FRAME):
                need = max(need, 4 + length - end)
        if len(buf) - end < need:
            # A new buffer, not a resize: asyncio may still hold the last memoryview.
            grown = bytearray(max(2 * len(buf), end + need))
            grown[:end] = buf[:end]
            self._rbuf = buf = grown
        return memoryview(buf)[end:]

    def buffer_updated(self, nbytes: int) -> None:
        buf = self._rbuf
        end = self._end + nbytes
        self._end = end
        pos = self._start
        unpack = HEADER.unpack_from
        bodies = []
        while end - pos >= 4:
            (length,) = unpack(buf, pos)
            if length > (self.max_first_frame if self._first else MAX_FRAME):
                self.close()
                return
            self._first = False
            stop = pos + 4 + length
            if stop > end:
                break
            bodies.append(bytes(buf[pos + 4 : stop]))
            pos = stop
        if pos == end:
            pos = end = self._end = 0
            if len(buf) > RECV_SIZE:  # a large frame passed: give its buffer back
                self._rbuf = bytearray(self._recv_size)
        self._start = pos
        for body in bodies:
            try:
                message = self._decode(body)
            except Exception:  # noqa: BLE001 - a malformed frame ends the connection
                self.close()
                return
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()

    def write(self, data: bytes) -> None:
        """Queue raw bytes (already framed); never blocks."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, message: tuple) -> None:
        """Queue one pickled frame."""
        self.write(encode(message))

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.close()
