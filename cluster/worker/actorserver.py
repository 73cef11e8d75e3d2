"""Direct calls into an actor's worker: callers send method calls straight to the process
that holds the actor, not through the head or the daemon (as Ray's direct actor calls).

The worker listens on a Unix socket in the node's 0700 runtime directory (callers on the
same host) and on TCP at the node's address (callers elsewhere). Frames are the daemon
wire's; the first frame of a connection must be the cluster secret, compared in constant
time before anything is unpickled. Calls are :class:`~cluster.common.messages.DirectCall`
(or, on a worker a driver leases for its tasks, :class:`~cluster.common.messages.DirectTask`),
replies :class:`~cluster.common.messages.DirectReply` (or one
:class:`~cluster.common.messages.Denied` before hanging up). Calls on one connection run in
arrival order
(async methods run concurrently, as their actor allows).
"""

from __future__ import annotations

import hmac
import os
import selectors
import socket
import threading
from collections.abc import Callable

from cluster.common import wire
from cluster.common.messages import Denied, DirectAck, DirectCall, DirectTask


class DirectConn:
    """One caller's connection to the actor."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.authenticated = False
        self._lock = threading.Lock()

    def send(self, message: tuple) -> None:
        """Send one reply (callable from the async actor's loop thread too)."""
        data = wire.encode(message)
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the caller went away; its futures fail on its side


class ActorServer:
    """The listening sockets of one actor worker and the callers connected to them."""

    def __init__(self, secret: bytes, runtime_dir: str, actor_id: int, host: str) -> None:
        self.secret = secret
        self.selector = selectors.DefaultSelector()
        self.unix_path = os.path.join(runtime_dir, f"a{actor_id & 0xFFFFFFFFFF:x}.sock")
        try:
            os.unlink(self.unix_path)
        except FileNotFoundError:
            pass
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(self.unix_path)
        unix.listen(64)
        self.listeners = [unix]
        tcp_address = ""
        if host:  # "" on a --tls cluster: callers elsewhere go through the head's TLS stream
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind((host, 0))
            tcp.listen(64)
            self.listeners.append(tcp)
            tcp_address = f"{host}:{tcp.getsockname()[1]}"
        for listener in self.listeners:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, None)
        #: Called with a caller's connection once it is closed.
        self.on_drop: Callable[[DirectConn], None] = lambda conn: None
        #: "hostname|unix path|host:port": what callers need to reach us.
        self.route = f"{socket.gethostname()}|{self.unix_path}|{tcp_address}"

    def register_daemon(self, sock: socket.socket, on_readable: Callable[[], None]) -> None:
        """Also watch the daemon's socket."""
        self.selector.register(sock, selectors.EVENT_READ, on_readable)

    def poll(self, on_call: Callable[[DirectConn, DirectCall | DirectTask | DirectAck], None],
             timeout: float | None = None) -> bool:
        """Wait for and handle one round of events (blocking, at most `timeout` seconds);
        False if none came."""
        events = self.selector.select(timeout)
        if not events:
            return False
        # The daemon first: if it is gone, we must not serve another call.
        events.sort(key=lambda e: not callable(e[0].data) or isinstance(e[0].data, DirectConn))
        for key, _ in events:
            if key.data is None:
                self._accept(key.fileobj)  # type: ignore[arg-type]
            elif isinstance(key.data, DirectConn):
                self._read(key.data, on_call)
            else:
                key.data()
        return True

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector.register(sock, selectors.EVENT_READ, DirectConn(sock))

    def _drop(self, conn: DirectConn) -> None:
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        self.on_drop(conn)

    def _read(self, conn: DirectConn,
              on_call: Callable[[DirectConn, DirectCall | DirectTask | DirectAck], None]) -> None:
        try:
            data = conn.sock.recv(wire.RECV_SIZE)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        for body in wire.split(conn.buf):
            if not conn.authenticated:
                if not hmac.compare_digest(body, self.secret):
                    conn.send(Denied())
                    self._drop(conn)
                    return
                conn.authenticated = True
                continue
            try:
                message = wire.decode(body)
            except Exception:  # noqa: BLE001 - a malformed frame ends the connection
                self._drop(conn)
                return
            if type(message) in (DirectCall, DirectTask, DirectAck):
                on_call(conn, message)

    def close(self) -> None:
        """Stop listening (the socket file goes with the runtime directory too)."""
        for listener in self.listeners:
            listener.close()
        try:
            os.unlink(self.unix_path)
        except OSError:
            pass
