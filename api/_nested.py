"""The client of apps that call apps (dynamic workflows): the driver's own client, inside a
worker, reaching the head through the worker's daemon.

:func:`worker_client` makes it the first time code running in a worker asks for the
session (calling an app, ``api.put``, ``api.get``, creating an actor...). It is a
:class:`api._client.Client` whose transport carries the same DriverToHead/HeadToDriver
batches as :class:`NestedOut`/:class:`NestedIn` frames over the worker's socket to its
daemon, which relays them on its own authenticated stream (:mod:`cluster.node.nested`,
:mod:`cluster.head.nested`). So futures, refs, errors and actors behave as in a driver.

What differs: every task it submits names the running task as its parent (the head
cancels a failed parent's children, and a dead worker's), and every wait on futures
(``result()``, ``api.get``, ``api.wait``, ``api.as_completed``) goes through
:meth:`cluster.worker.nested.NestedLink.block`, which gives the task's CPUs back while it
waits.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from typing import Any

from api import _errors, _futures
from api._client import Client
from api._objects import ObjectClient
from api._transport import SendsOnOneThread
from cluster.common.messages import AllocReply, NestedOut, Pull
from cluster.common.protocol import pb
from cluster.worker.nested import NestedLink

#: Seconds the first hello may take (the head answers through the daemon).
CONNECT_TIMEOUT = 30.0

_lock = threading.Lock()
_client: list[NestedClient] = []


class NestedTransport(SendsOnOneThread):
    """Driver batches over the worker's socket (see the module docstring)."""

    target = "nested:daemon"

    def __init__(self, link: NestedLink, take: Any) -> None:
        self._link = link
        self._take = take
        self._send_lock = threading.Lock()
        self._pending = False
        self._held: list[int] = []
        self._first: pb.HeadToDriver | None = None

    def connect(self, hello: pb.DriverToHead, timeout: float) -> pb.Welcome:
        got = threading.Event()
        first: list[bytes] = []

        def on_payload(payload: bytes) -> None:
            first.append(payload)
            got.set()

        self._link.on_payload = on_payload
        self._link.send(NestedOut(hello.SerializeToString()))
        if not got.wait(timeout):
            raise OSError(f"no answer from the head through this node's daemon within "
                          f"{timeout:g}s")
        self._first = pb.HeadToDriver.FromString(first[0])
        return self._first.welcome

    def start(self, on_message: Any, on_lost: Any) -> None:
        link = self._link
        link.on_payload = lambda payload: on_message(pb.HeadToDriver.FromString(payload))
        link.on_lost = on_lost
        link.on_idle = self.flush
        link.release_held = self.release_held
        assert self._first is not None
        on_message(self._first)

    def write(self, message: pb.DriverToHead) -> None:
        if self._link.holding and message.release:
            self._held.extend(message.release)
            del message.release[:]
        if message.ByteSize():
            self._link.send(NestedOut(message.SerializeToString()))

    # (write_failed: nothing to do; the daemon is gone and the reader fails every
    # pending future)

    def release_held(self) -> None:
        """Send the releases held back while the task's result was being reported."""
        with self._send_lock:
            held, self._held = self._held, []
            if held:
                try:
                    self._link.send(NestedOut(pb.DriverToHead(release=held)
                                              .SerializeToString()))
                except OSError:
                    pass
        self.flush()

    def close(self) -> None:
        self.flush()


class NestedObjects(ObjectClient):
    """Object bytes of a nested client: large puts (and arguments) are written into this
    node's store through the worker's daemon (the worker holds no cluster secret)."""

    def __init__(self, client: Any, worker: Any) -> None:
        super().__init__(client)
        self._worker = worker

    def store(self, object_id: int, enc: Any) -> pb.Value:
        from cluster.store.objectstore import StoreFullError
        from cluster.worker.worker import WRITES

        worker = self._worker
        try:
            path = worker.alloc(enc.size)
        except StoreFullError as err:
            raise _errors.ObjectStoreFullError(str(err)) from None
        WRITES.write(path, enc.size, enc.write_into)
        node_id = worker.seal(object_id, path)
        return pb.Value(id=object_id, size=enc.size, holders=[node_id], nested=enc.refs)

    def fetch(self, object_id: int, size: int, holders: list[int]) -> Any:
        """As a driver's, but a value only other hosts hold is brought into this node's
        store by the daemon (transfers need the cluster secret, which workers lack)."""
        from cluster.store import objectformat

        nodes = [self._client.nodes.get(h) for h in holders]
        alive = [n for n in nodes if n is not None and n.state == "alive"]
        if not alive or any(self._is_local(n) for n in alive):
            return super().fetch(object_id, size, holders)
        ref = next(_pull_refs)
        self._worker.send(Pull(ref, object_id, [n.store_address for n in alive]))
        reply = self._worker.wait_result(ref)
        assert isinstance(reply, AllocReply)
        if not reply.path:
            raise _errors.ObjectLostError(f"object {object_id:#x} ({size} bytes) could not "
                                          f"be fetched: {reply.error}")
        return objectformat.read(reply.path, self._client.owned_ref)


#: Request numbers of pulls (apart from the worker's own, which count from 1).
_pull_refs = itertools.count(1 << 48)


class NestedClient(Client):
    """A driver client inside a worker: tasks it submits belong to the running task."""

    def __init__(self, link: NestedLink) -> None:
        super().__init__([], "", log_to_driver=False)
        self.link = link
        self.objects = NestedObjects(self, link.worker)

    def submit(self, spec: pb.TaskSpec, fn_blob: bytes, future: _futures.AppFuture,
               local: bool = False) -> None:
        parent = self.link.worker.task_id
        spec.parent_task = parent
        self.link.parents.add(parent)
        super().submit(spec, fn_blob, future, local)


def worker_client(worker: Any) -> NestedClient:
    """This worker's nested client (made and connected on first use)."""
    with _lock:
        if _client and not _client[0].closed:
            return _client[0]
        link = worker.nested if worker.nested is not None else NestedLink(worker)
        worker.nested = link
        client = NestedClient(link)
        transport = NestedTransport(link, client._take)
        hello = pb.DriverToHead(hello=pb.DriverHello(hostname=socket.gethostname(),
                                                     pid=os.getpid()))
        try:
            client.attach(transport, hello, CONNECT_TIMEOUT)
        except OSError as err:
            raise _errors.ConnectionError(
                f"an app could not reach the cluster through its node's daemon: {err}"
            ) from None
        _futures.set_block_hook(link.block)
        _client[:] = [client]
        return client
