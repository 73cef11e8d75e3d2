"""A driver's direct calls to actors (see :mod:`cluster.worker.actorserver`).

Once an actor's route is known (its creation result carries it), calls without
dependencies go straight to the actor's worker. Calls with dependencies, and calls made
before the route is known, go through the head, which waits for the dependencies. The
caller's order is kept across the two paths: a call never overtakes an earlier one,
because a call on one path waits (held here, without blocking the caller) while calls on
the other path are outstanding.

A large result of a direct call is not in the reply: the actor's worker leaves it sealed
in its node's store under the call's id and replies ``("stored", size, node id, refs)``.
The driver registers it with the head exactly as an ``api.put`` into that node's store
(the head then counts the driver's reference and deletes it when released), and the
future resolves lazily, mapped zero-copy on the host, as a task's stored result does.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from cluster.common import status, wire
from cluster.common.messages import DirectAck, DirectCall, DirectReply


class CallConn:
    """A connection to one actor's worker: a reader thread for replies, and sends that
    never block (what the socket does not take at once goes to a writer thread, in order),
    so no lock is ever held across a blocking send."""

    def __init__(self, sock: socket.socket, on_reply: Callable[[Any], None],
                 on_lost: Callable[[], None]) -> None:
        self.sock = sock
        self._lock = threading.Condition()
        self._pending = bytearray()
        self._writing = False
        self._broken = False
        self._on_reply = on_reply
        self._on_lost = on_lost
        threading.Thread(target=self._reader, name="shoal-actor-reader", daemon=True).start()
        threading.Thread(target=self._writer, name="shoal-actor-writer", daemon=True).start()

    def send(self, message: tuple) -> bool:
        data = wire.encode(message)
        with self._lock:
            if self._broken:
                return False
            if not (self._pending or self._writing):
                try:
                    sent = self.sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._broken = True
                    return False
                data = data[sent:]
            if data:
                self._pending += data
                self._lock.notify()
        return True

    def _writer(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._broken:
                    self._writing = False
                    self._lock.wait()
                if self._broken:
                    return
                chunk = bytes(self._pending)
                self._pending.clear()
                self._writing = True
            try:
                self.sock.sendall(chunk)
            except OSError:
                with self._lock:
                    self._broken = True
                return

    def _reader(self) -> None:
        buf = bytearray()
        try:
            while True:
                data = self.sock.recv(wire.RECV_SIZE)
                if not data:
                    break
                buf += data
                for body in wire.split(buf):
                    self._on_reply(wire.decode(body))
        except OSError:
            pass
        with self._lock:
            self._broken = True
            self._lock.notify()
        self._on_lost()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def connect(route: str, secret: str, timeout: float = 5.0) -> socket.socket | None:
    """Open and authenticate a socket to a route ("host|unix path|ip:port"); None if the
    actor cannot be reached directly."""
    try:
        host, path, address = route.split("|")
    except ValueError:
        return None
    attempts: list[tuple[socket.AddressFamily, str | tuple[str, int]]] = []
    if host == socket.gethostname() and path:
        attempts.append((socket.AF_UNIX, path))
    ip, _, port = address.rpartition(":")
    if ip and port.isdigit():
        attempts.append((socket.AF_INET, (ip, int(port))))
    for family, target in attempts:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(wire.frame(secret.encode()))
            sock.settimeout(None)
            return sock
        except OSError:
            sock.close()
    return None


class ActorRoute:
    """One actor as this driver calls it."""

    def __init__(self, actor_id: int) -> None:
        self.actor_id = actor_id
        self.lock = threading.Lock()
        self.route = ""
        self.max_task_retries = 0
        self.conn: CallConn | None = None
        self.via_head = 0          # calls outstanding through the head
        self.direct: dict[int, tuple] = {}   # calls outstanding on the direct connection
        self.held: deque[tuple] = deque()    # calls waiting for the other path to drain


class DirectCalls:
    """The client's direct-call machinery; `submit_via_head(call)` sends through the head,
    `resolve(future, status, data, message, name)` completes a future."""

    def __init__(self, secret: str, submit_via_head: Callable[[tuple], None],
                 resolve: Callable[..., None], client: Any = None) -> None:
        self.secret = secret
        self.routes: dict[int, ActorRoute] = {}
        self._submit_via_head = submit_via_head
        self._resolve = resolve
        self._head_calls: dict[int, ActorRoute] = {}
        # The client registers stored results with the head (its ``put``). Until the
        # client passes itself, it is found as the owner of `resolve` (its bound method).
        self._client = client

    def route_for(self, actor_id: int) -> ActorRoute:
        state = self.routes.get(actor_id)
        if state is None:
            state = self.routes.setdefault(actor_id, ActorRoute(actor_id))
        return state

    def learn(self, actor_id: int, route: str, max_task_retries: int | None = None) -> None:
        """The actor is (again) reachable at `route`."""
        state = self.route_for(actor_id)
        with state.lock:
            if route != state.route and state.conn is not None:
                state.conn.close()
                state.conn = None
            state.route = route
            if max_task_retries is not None:
                state.max_task_retries = max_task_retries

    def forget(self, actor_id: int) -> None:
        """Drop what is known of an actor that is gone (its route, no calls outstanding)."""
        self.routes.pop(actor_id, None)

    def call(self, actor_id: int, call: tuple) -> None:
        """call = (task_id, method, data, deps, future, name, actor_id)."""
        state = self.route_for(actor_id)
        to_head: list[tuple] = []
        with state.lock:
            state.held.append(call)
            self._drain(state, to_head)
        self._head(to_head)

    def _head(self, calls: list[tuple]) -> None:
        # Outside every route lock: submitting may block on the head's socket.
        for call in calls:
            self._submit_via_head(call)

    def _send(self, state: ActorRoute, call: tuple, to_head: list[tuple]) -> bool:
        """Send now if order allows; False means hold it. Called with state.lock held;
        calls for the head are appended to `to_head` (submitted after the lock is let go,
        in this order)."""
        task_id, method, data, deps = call[:4]
        if not deps and state.route:
            if state.via_head:
                return False
            conn = state.conn or self._open(state)
            if conn is not None:
                state.direct[task_id] = call
                if conn.send(DirectCall(task_id, method, data)):
                    return True
                del state.direct[task_id]
        if state.direct:
            return False
        self._track_head_call(state, call)
        to_head.append(call)
        return True

    def _track_head_call(self, state: ActorRoute, call: tuple) -> None:
        """Count a call going through the head until :meth:`head_done` (the client
        calls it on delivering the result, stored results included). Called with
        state.lock held."""
        state.via_head += 1
        self._head_calls[call[0]] = state

    def _open(self, state: ActorRoute) -> CallConn | None:
        sock = connect(state.route, self.secret)
        if sock is None:
            state.route = ""  # unreachable directly: use the head from now on
            return None
        state.conn = CallConn(sock, lambda reply: self._on_reply(state, reply),
                           lambda: self._on_lost(state, sock))
        return state.conn

    def _drain(self, state: ActorRoute, to_head: list[tuple]) -> None:
        while state.held and self._send(state, state.held[0], to_head):
            state.held.popleft()

    def cancel_held(self, task_id: int) -> bool:
        """Drop call `task_id` if it is still held here (behind the caller's earlier calls
        on the other path); True if it was, and so is never sent."""
        for state in list(self.routes.values()):
            to_head: list[tuple] = []
            with state.lock:
                for call in state.held:
                    if call[0] == task_id:
                        state.held.remove(call)
                        self._drain(state, to_head)
                        break
                else:
                    continue
            self._head(to_head)
            return True
        return False

    def head_done(self, task_id: int) -> None:
        """A call that went through the head has finished."""
        state = self._head_calls.pop(task_id, None)
        if state is not None:
            to_head: list[tuple] = []
            with state.lock:
                state.via_head -= 1
                self._drain(state, to_head)
            self._head(to_head)

    def _on_reply(self, state: ActorRoute, reply: Any) -> None:
        if type(reply) is not DirectReply:
            return  # Denied: the reader ends and _on_lost handles it
        call = state.direct.pop(reply.call_id, None)
        if call is not None:
            data = reply.data
            if type(data) is tuple:
                self._stored(state, call, data)
            else:
                self._resolve(call[4], reply.status, data, reply.message, call[5])
        if state.held:
            to_head: list[tuple] = []
            with state.lock:
                self._drain(state, to_head)
            self._head(to_head)

    def _stored(self, state: ActorRoute, call: tuple, data: tuple) -> None:
        conn = state.conn
        resolve_direct(self._client, call[0], call[4], call[5], data, self._resolve,
                       lambda: conn is not None and conn.send(DirectAck(call[0])))

    def _on_lost(self, state: ActorRoute, sock: socket.socket) -> None:
        """The actor's worker went away (it died, or was killed): retry what was in flight
        through the head when the actor allows retries, else fail it."""
        with state.lock:
            if state.conn is not None and state.conn.sock is sock:
                state.conn = None
                state.route = ""
            lost = list(state.direct.values())
            state.direct.clear()
        to_head: list[tuple] = []
        for call in lost:
            if state.max_task_retries > 0:
                with state.lock:
                    self._track_head_call(state, call)
                to_head.append(call)
            else:
                self._resolve(call[4], status.ACTOR_DIED, b"",
                              "the actor's worker died while running the call", call[5])
        with state.lock:
            self._drain(state, to_head)
        self._head(to_head)

    def close(self) -> None:
        for state in list(self.routes.values()):  # (a lease given back forgets its route)
            if state.conn is not None:
                state.conn.close()
                state.conn = None

    def wants(self, actor_id: int) -> Any:
        return self.routes.get(actor_id)


def resolve_direct(client: Any, task_id: int, future: Any, name: str, data: tuple,
                   resolve: Callable[..., None], ack: Callable[[], object]) -> None:
    """A direct call's (or leased task's) result that the head must hold for the caller:
    ``("stored", size, node id, nested refs)``, sealed in the worker's node store, or
    ``("inline", bytes, nested refs)``, small but with refs inside. It is registered with
    the head as a put held by this driver (before the future resolves, so anything the
    caller submits with it reaches the head after the put), then the future resolves to
    load it when asked. With refs inside, the head must have the put before the worker
    lets its own refs go: a get of it is the barrier (the head answers after the put),
    then `ack()` tells the worker (a result's ref was lost, "not held by the cluster",
    when the worker's release overtook the put)."""
    from api._futures import Stored
    from cluster.common.protocol import pb

    if client is None:
        resolve(future, status.OBJECT_LOST, b"",
                "the result is in the worker's node store but this driver cannot "
                "register it", name)
        return
    if data[0] == "stored":
        _, size, node_id, nested = data
        client.put(pb.Value(id=task_id, size=size, holders=[node_id], nested=nested))
        result = pb.TaskResult(task_id=task_id, status=pb.OK, size=size, holders=[node_id])
    else:
        _, blob, nested = data
        client.put(pb.Value(id=task_id, data=blob, nested=nested))
        result = pb.TaskResult(task_id=task_id, status=pb.OK, data=blob)
    if nested:
        try:
            client.get_values([task_id], 30.0)
        except Exception:  # noqa: BLE001 - the head is gone: nothing holds anything now
            pass
        ack()
    # nested stays off the result: the put holds those refs, the future does not.
    future.set_result(Stored(result))
