"""A daemon's object services: how objects get into its store and move between nodes.

- The objects lane (framed protobuf on a Unix socket in the store directory, see
  ``ObjectsRequest`` in proto/shoal.proto): a writer on this host (a driver beside the
  node) asks to allocate a file in the store, writes the object into it, and seals it.
- :class:`~cluster.transfer.TransferServer` (TCP, the node's address): other hosts get
  objects from this store and drivers elsewhere push objects into it.
- :class:`Puller`: brings the objects this node's tasks need from the nodes holding them.
  Requests for the same object share one transfer, a few transfers run at once, and each
  writes straight into a store file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, cast

from cluster.common.protocol import pb
from cluster.common.streams import SecretFirstFrames
from cluster.store import transfer
from cluster.store.objectstore import ObjectStore, StoreFullError

log = logging.getLogger("shoal.objects")

SOCKET_NAME = "objects.sock"
#: Transfers one node pulls at once (each is one TCP stream at full speed).
MAX_PULLS = 4


class _ObjectsSession:
    """One connection to the objects lane: the secret, then requests answered in order
    (an allocation that must spill first runs in a thread, so the loop never waits on it;
    the requests after it wait their turn). What it allocated and did not seal is given
    back when it closes: a driver killed in the middle of a put leaks nothing."""

    def __init__(self, store: ObjectStore, secret: bytes) -> None:
        self.store = store
        self.lane = SecretFirstFrames(secret, pb.ObjectsRequest, self.on_request,
                                      self.on_lost, "objects lane")
        self._turn: asyncio.Future[None] | None = None
        self._unsealed: set[str] = set()

    def on_request(self, request: pb.ObjectsRequest) -> None:
        if self._turn is None:
            reply = self._at_once(request)
            if reply is not None:  # the common case: no thread, no task
                self._reply(reply)
                return
        self._turn = asyncio.ensure_future(self._answer(self._turn, request))

    def _at_once(self, request: pb.ObjectsRequest) -> pb.ObjectsReply | None:
        """The reply, or None for an allocation that must spill first (a thread hop costs
        ~0.3 ms, the whole call ~0.05 ms otherwise)."""
        op = request.WhichOneof("op")
        if op == "seal":
            return self.seal(request.seal)
        if op == "abort":
            if request.abort in self._unsealed:  # (only what this connection allocated)
                self._unsealed.discard(request.abort)
                self.store.abort(request.abort)
            return pb.ObjectsReply()
        if op != "allocate":
            return pb.ObjectsReply(invalid="an empty request (from a newer driver?)")
        if not self.store.fits(request.allocate.size):
            return None
        return self._allocate(request.allocate.size)

    async def _answer(self, before: asyncio.Future[None] | None,
                      request: pb.ObjectsRequest) -> None:
        if before is not None:
            await before
        reply = self._at_once(request)
        if reply is None:
            reply = await asyncio.to_thread(self._allocate, request.allocate.size)
        self._reply(reply)
        if self._turn is asyncio.current_task():  # nothing queued behind this one
            self._turn = None

    def _allocate(self, size: int) -> pb.ObjectsReply:
        try:
            path = self.store.alloc(size)
        except StoreFullError as err:
            return pb.ObjectsReply(full=str(err))
        except OSError as err:  # e.g. the store's directory was removed under us
            return pb.ObjectsReply(invalid=f"could not allocate: {err}")
        self._unsealed.add(path)
        return pb.ObjectsReply(path=path)

    def seal(self, request: pb.SealRequest) -> pb.ObjectsReply:
        try:
            self.store.seal(request.object_id, request.path)
        except (ValueError, OSError) as err:
            return pb.ObjectsReply(invalid=str(err))
        self._unsealed.discard(request.path)
        return pb.ObjectsReply()

    def _reply(self, reply: pb.ObjectsReply) -> None:
        self.lane.send(reply)

    def on_lost(self) -> None:
        for path in self._unsealed:
            self.store.abort(path)
        self._unsealed.clear()


class ObjectServers:
    """The objects lane on the store directory's Unix socket and the transfer server."""

    def __init__(self, lane: asyncio.AbstractServer,
                 transfers: transfer.TransferServer) -> None:
        self.lane = lane
        self.transfers = transfers

    async def stop(self) -> None:
        """Stop both; connections open on the lane are closed."""
        self.transfers.close()
        self.lane.close()
        await self.lane.wait_closed()


async def start(store: ObjectStore, secret: str, host: str,
                tls: Any = None) -> ObjectServers:
    """Serve `store`: the objects lane on its directory's Unix socket, transfers on
    ``host`` (TLS with `tls`, an ssl server context)."""
    loop = asyncio.get_running_loop()
    key = secret.encode()
    lane = await loop.create_unix_server(
        lambda: cast(asyncio.BaseProtocol, _ObjectsSession(store, key).lane.protocol),
        path=os.path.join(store.directory, SOCKET_NAME))
    return ObjectServers(lane, transfer.TransferServer(store, secret, host, tls))


class StoreTarget:
    """Where a transfer writes: a new file in `store`, sealed as `object_id` by
    :meth:`seal` (or given back by :meth:`abort`)."""

    def __init__(self, store: ObjectStore, object_id: int, size: int) -> None:
        self.store, self.object_id, self.size = store, object_id, size
        self.path = store.alloc(size)

    def receive(self, sock: Any) -> None:
        transfer.recv_to_file(sock, self.path, self.size)

    def seal(self) -> None:
        self.store.seal(self.object_id, self.path)
        self.path = ""

    def abort(self) -> None:
        if self.path:
            self.store.abort(self.path)
            self.path = ""


class Puller:
    """Brings objects into this node's store from the nodes that hold them."""

    def __init__(self, store: ObjectStore, secret: str, tls: Any = None) -> None:
        self.store = store
        self.secret = secret
        self.tls = tls  # an ssl client context on a --tls cluster
        self._inflight: dict[int, asyncio.Future[None]] = {}
        self._slots: asyncio.Semaphore | None = None

    def fetch(self, object_id: int, sources: list[str]) -> asyncio.Future[None]:
        """A future done once the object is in the store (an error names what failed)."""
        future = self._inflight.get(object_id)
        if future is None:
            future = asyncio.ensure_future(self._pull(object_id, list(sources)))
            self._inflight[object_id] = future
            future.add_done_callback(lambda _: self._inflight.pop(object_id, None))
        return future

    async def _pull(self, object_id: int, sources: list[str]) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_PULLS)
        errors = []
        async with self._slots:
            for address in sources:
                try:
                    await asyncio.to_thread(self._pull_from, object_id, address)
                    return
                except (OSError, ValueError) as err:
                    errors.append(f"{address}: {err}")
        raise LookupError(f"object {object_id:#x} could not be fetched ("
                          + ("; ".join(errors) or "no node holds it") + ")")

    def _pull_from(self, object_id: int, address: str) -> None:
        if object_id in self.store:
            return
        targets: list[StoreTarget] = []

        def allocate(size: int) -> StoreTarget:
            targets.append(StoreTarget(self.store, object_id, size))
            return targets[-1]

        try:
            transfer.fetch(address, self.secret, object_id, allocate, self.tls)
            targets[0].seal()
        finally:
            for target in targets:
                target.abort()
