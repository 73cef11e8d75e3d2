"""How a driver's batches reach the head.

A transport takes batches from the client through ``take()`` (a DriverToHead, or None when
nothing is pending) and hands every HeadToDriver to ``on_message``. Two exist:

- :class:`LaneTransport` (here): the head's driver lane, a Unix socket to a head on this
  host or a TCP socket to one elsewhere (see :mod:`cluster.head.server`); the user thread
  writes its frames itself, and reads the results itself while it waits for one
  (:meth:`LaneTransport.wait_inline`); a reader thread resolves them when no thread waits.
  No event loop, no thread hop on the way out or (for a waiting thread) back, and no gRPC
  import.
- :class:`api._grpc_transport.GrpcTransport`: one bidirectional gRPC stream, for heads
  known by their ``host:port`` alone and for --tls clusters; imported only when needed.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from api import _errors
from cluster.common import wire
from cluster.common.protocol import pb

Take = Callable[[], "pb.DriverToHead | None"]
OnMessage = Callable[[pb.HeadToDriver], None]
OnLost = Callable[[str], None]
IDLE_FLUSH_SECONDS = 0.2
#: While tasks are in flight, submissions that follow a write this soon wait for one batch
#: (sent by the reader thread at most this long after that write) instead of a frame
#: each: a burst of 10,000 no-ops went out as 10,000 frames, each waking the head for one
#: task. A submission with nothing in flight (a sync round trip) is written at once.
SUBMIT_BATCH_SECONDS = 0.0005
#: A thread waiting for a result reads the socket itself (:meth:`LaneTransport.wait_inline`)
#: instead of being handed the result by the reader thread: that hand-off was 46 us and 34
#: us of CPU of a sync round trip (scripts/bench_bounds.py). The reader then stays out of
#: the way until no thread has waited for this long, so a loop of sync calls never wakes it.
PARK_SECONDS = 0.002
_EOF, _IDLE, _BUSY = 0, 1, 2
_MAIN = threading.main_thread().ident


class _HeldInterrupt:
    """Ctrl-C while the main thread, leading a wait, reads and delivers a batch: raised
    once the batch is delivered, not in the middle of it (bytes received but not yet
    buffered would desynchronize the stream; a batch half delivered would lose results).
    A wait blocked in poll() is interrupted at once, as before. We wrap whatever SIGINT
    handler is installed (Python's, IPython's, the user's) and call it then."""

    def __init__(self) -> None:
        self.holding = False
        self.pending: tuple[int, Any] | None = None
        self.previous: Any = None

    def install(self) -> None:
        """On the main thread: make sure our wrapper is SIGINT's handler."""
        current = signal.getsignal(signal.SIGINT)
        if current == self.handle or not callable(current):  # (a new bound method each time)
            return  # ours already, or SIG_DFL/SIG_IGN (nothing raised to hold back)
        self.previous = current
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        if self.holding:
            self.pending = (signum, frame)
        elif self.previous is not None:
            self.previous(signum, frame)

    def release(self) -> None:
        """End the held section; raise what the handler raises, if Ctrl-C came."""
        self.holding = False
        pending, self.pending = self.pending, None
        if pending is not None and self.previous is not None:
            self.previous(*pending)


_HELD = _HeldInterrupt()


class Transport(Protocol):
    """What the client needs of a transport (both implement it; tests may fake it)."""

    target: str

    def connect(self, hello: pb.DriverToHead, timeout: float) -> pb.Welcome:
        """Authenticate and say hello; the head's welcome (OSError when unreachable)."""
        ...

    def start(self, on_message: OnMessage, on_lost: OnLost) -> None:
        """Start delivering the head's batches to `on_message`; `on_lost(why)` once."""
        ...

    def flush(self) -> None:
        """Send what ``take()`` has pending (soon; never blocks on the network)."""
        ...

    def flush_soon(self) -> None:
        """As :meth:`flush`, for submissions made while others are in flight: a transport
        may gather them for a moment (at most ``SUBMIT_BATCH_SECONDS``)."""
        ...

    def close(self) -> None:
        """Flush and disconnect."""
        ...


class SendsOnOneThread:
    """The send side shared by transports that write on the caller's thread: whoever
    calls :meth:`flush` writes what ``take()`` has, unless another thread is writing, in
    which case that one goes round again. Subclasses set ``_take``, ``_send_lock`` and
    ``_pending`` and define :meth:`write` and :meth:`write_failed`."""

    _take: Callable[[], pb.DriverToHead | None]
    _send_lock: threading.Lock
    _pending: bool

    def write(self, message: pb.DriverToHead) -> None:
        """Send one batch (raises OSError when the connection is gone)."""
        raise NotImplementedError

    def write_failed(self) -> None:
        """A write raised OSError: make the reader notice."""

    def flush_soon(self) -> None:
        """As :meth:`flush` (a subclass may gather submissions for a moment)."""
        self.flush()

    def flush(self) -> None:
        """Send whatever is pending; the calling thread writes unless another one is."""
        if not self._send_lock.acquire(blocking=False):
            self._pending = True
            return
        try:
            while True:
                self._pending = False
                message = self._take()
                if message is None:
                    break
                self.write(message)
        except OSError:
            self.write_failed()
        finally:
            self._send_lock.release()
        if self._pending:
            self.flush()


class LaneTransport(SendsOnOneThread):
    """Framed protobuf over the head's driver lane: `target` is ``unix:PATH`` (the head's
    host) or ``tcp:HOST:PORT`` (the cluster file's ``lane_address``)."""

    def __init__(self, target: str, secret: str, take: Take) -> None:
        self.target = target
        self._secret = secret
        self._take = take
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._pending = False
        self._closed = False
        self._buf = bytearray()
        self._last_write = 0.0
        self._deferred = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_lock = threading.Lock()  # (no write to the fd once closed and reused)
        # Reading the socket: whoever holds _token (the reader thread, or one waiting
        # thread: the leader). _park guards the rest and parks the reader meanwhile.
        self._token = threading.Lock()
        self._park = threading.Condition(threading.Lock())
        self._leading = False
        self._parked = False
        self._others = False   # a thread waited while another led: wake the reader after
        self._left_at = 0.0
        self._leader = 0       # the leading thread's ident
        self._poller: select.poll | None = None
        self._on_message: OnMessage | None = None

    def flush_soon(self) -> None:
        """Write now unless a write went out less than ``SUBMIT_BATCH_SECONDS`` ago; then
        the reader thread writes the batch once that time has passed."""
        if self._deferred:
            return  # the reader thread sends it, with whatever else piles up meanwhile
        if time.monotonic() - self._last_write >= SUBMIT_BATCH_SECONDS or \
                (self._parked and not self._leading):  # (nobody polls the wake fd)
            self.flush()
            return
        self._deferred = True
        with self._wake_lock:
            woken = self._wake_fd >= 0
            if woken:
                os.eventfd_write(self._wake_fd, 1)
        if not woken:  # the reader has ended: nobody else would send it
            self._deferred = False
            self.flush()

    def _open(self, timeout: float) -> socket.socket:
        kind, _, where = self.target.partition(":")
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(where)
            except OSError:
                sock.close()
                raise
            return sock
        sock = socket.create_connection(wire.host_port(where), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames are small
        return sock

    def connect(self, hello: pb.DriverToHead, timeout: float) -> pb.Welcome:
        try:
            sock = self._open(timeout)
        except OSError as err:
            self._close_wake()
            raise OSError(f"{self.target} ({err})") from None
        try:
            self._sock = sock
            sock.sendall(wire.frame(self._secret.encode()) +
                         wire.frame(hello.SerializeToString()))
            body = wire.recv_frames(sock, self._buf, "the head")[0]
        except (OSError, EOFError) as err:
            sock.close()
            self._close_wake()
            raise OSError(f"{self.target} ({err})") from None
        if body == b"UNAUTHENTICATED":
            sock.close()
            raise _errors.ConnectionError(
                f"the shoal cluster at {self.target} refused our secret: the cluster file or "
                "$SHOAL_SECRET belongs to another cluster (was it restarted?)")
        first = pb.HeadToDriver.FromString(body)
        if not first.HasField("welcome"):
            raise OSError(f"{self.target} (no welcome)")
        self._first = first
        return first.welcome

    def start(self, on_message: OnMessage, on_lost: OnLost) -> None:
        assert self._sock is not None
        # Blocking, with no timeout: the socket is shared with the senders, and a timeout
        # on it made a sendall to a busy head fail after 0.2 s and its batch vanish (one
        # task in 12,000 at 2,000 simulated nodes). The reader waits with poll() instead.
        self._sock.settimeout(None)
        on_message(self._first)
        threading.Thread(target=self._reader, args=(on_message, on_lost),
                         name="shoal-lane-reader", daemon=True).start()

    def _reader(self, on_message: OnMessage, on_lost: OnLost) -> None:
        sock = self._sock
        assert sock is not None
        reason = "the head closed the connection"
        poller = self._poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        self._on_message = on_message
        idle_ms = int(IDLE_FLUSH_SECONDS * 1000)
        try:
            while True:
                if self._leading:
                    self._step_aside()
                    continue
                with self._token:
                    if self._leading:
                        continue
                    state = self._read_once(idle_ms)
                if state == _EOF:
                    break
                if state == _IDLE:
                    self.flush()  # releases are sent lazily; push them when idle
        except OSError as err:
            reason = f"lost the head at {self.target}: {err}"
        finally:
            self._close_wake()
            self._deferred = False
        if not self._closed:
            on_lost(reason)

    def _read_once(self, limit_ms: int) -> int:
        """One poll (at most `limit_ms`, -1: no limit) and what it brought: a deferred
        batch sent, results delivered. _EOF when the head closed, else _IDLE or _BUSY.
        Only the holder of ``_token`` calls it."""
        sock, poller, buf, wake = self._sock, self._poller, self._buf, self._wake_fd
        assert sock is not None and poller is not None and self._on_message is not None
        timeout = limit_ms
        if self._deferred:
            left = self._last_write + SUBMIT_BATCH_SECONDS - time.monotonic()
            left_ms = max(0, int(left * 1000 + 0.999))
            timeout = left_ms if timeout < 0 else min(timeout, left_ms)
        events = poller.poll(timeout)
        held = threading.get_ident() == _MAIN  # (only the main thread gets Ctrl-C)
        if held:
            _HELD.holding = True
        try:
            if self._deferred and \
                    time.monotonic() - self._last_write >= SUBMIT_BATCH_SECONDS:
                self._deferred = False
                self.flush()
            if not events:
                return _IDLE
            readable = False
            for fd, _ in events:
                if fd == wake:
                    try:
                        os.eventfd_read(wake)
                    except OSError:
                        pass
                else:
                    readable = True
            if readable:
                data = sock.recv(wire.RECV_SIZE)
                if not data:
                    return _EOF
                buf += data
                on_message = self._on_message
                for body in wire.split(buf):
                    on_message(pb.HeadToDriver.FromString(body))
            return _BUSY
        finally:
            if held:
                _HELD.release()

    def _step_aside(self) -> None:
        """The reader thread, while a waiting thread reads: park until none has for
        ``PARK_SECONDS`` (or one asks for the reader back)."""
        with self._park:
            self._parked = True
            try:
                while not self._closed and (
                        self._leading or time.monotonic() - self._left_at < PARK_SECONDS):
                    self._park.wait(PARK_SECONDS)
            finally:
                self._parked = False

    def wait_inline(self, done: Callable[[], bool], timeout: float | None,
                    lock: Any = None) -> None:
        """Read the socket on this thread until ``done()`` or `timeout` seconds, when no
        other thread does so already; the caller then waits as usual (a result delivered
        meanwhile by another thread, an error, the connection lost: all still reach it).
        While it leads, ``lock.wake`` (the future's FutureLock, if given) is set to
        :meth:`wake_leader`, so the future done by another thread ends the wait. Never
        call it while delivering results (on the reader thread, or inside
        ``on_message``)."""
        if self._on_message is None or self._wake_fd < 0:
            return
        if threading.get_ident() == _MAIN:
            _HELD.install()
        with self._park:
            if self._leading:
                self._others = True  # the leader gives the reader back when it stops
                return
            self._leading = True
            self._leader = threading.get_ident()
            parked = self._parked
        deadline = None if timeout is None else time.monotonic() + timeout
        lost = False
        try:
            if not parked:
                self._kick()  # out of its poll(): it then sees _leading and parks
            if not self._token.acquire(True, -1 if timeout is None else max(timeout, 0)):
                return
            if lock is not None:
                lock.wake = self.wake_leader  # (set before done() is looked at)
            idle_ms = int(IDLE_FLUSH_SECONDS * 1000)
            try:
                while not done():
                    limit = idle_ms
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        limit = min(limit, int(left * 1000 + 0.999))
                    state = self._read_once(limit)
                    if state == _EOF:
                        lost = True  # the reader sees the end too, and fails what waits
                        break
                    if state == _IDLE:
                        self.flush()  # as the reader does: releases go out when idle
            finally:
                if lock is not None:
                    lock.wake = None
                self._token.release()
        except OSError:
            lost = True
        finally:
            with self._park:
                self._leading = False
                self._leader = 0
                self._left_at = time.monotonic()
                if lost or self._others:
                    self._others = False
                    self._left_at = 0.0
                    self._park.notify_all()

    def wake_leader(self) -> None:
        """A future the leading thread waits for is done: if another thread did it,
        wake the leader out of its poll()."""
        if self._leader and self._leader != threading.get_ident():
            self._kick()

    def _kick(self) -> None:
        with self._wake_lock:
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)

    def _close_wake(self) -> None:
        with self._wake_lock:
            if self._wake_fd >= 0:
                os.close(self._wake_fd)
                self._wake_fd = -1

    def write(self, message: pb.DriverToHead) -> None:
        if self._sock is not None and not self._closed:
            self._sock.sendall(wire.frame(message.SerializeToString()))
            self._last_write = time.monotonic()

    def write_failed(self) -> None:
        # The batch is gone with the connection: close it, so the reader fails every
        # pending future at once instead of some never being answered.
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._deferred = False
        self.flush()
        self._closed = True
        with self._park:
            self._park.notify_all()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
