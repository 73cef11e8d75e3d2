"""A daemon's object services: how objects get into its store and move between nodes.

- ``Objects`` (gRPC, on a Unix socket in the store directory): a writer on this host
  (a driver beside the node) asks to ``Allocate`` a file in the store, writes the object
  into it, and ``Seal``s it.
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
from typing import Any

import grpc

from cluster.common import shoal_pb2_grpc as pb_grpc
from cluster.common.auth import server_interceptor
from cluster.common.protocol import pb
from cluster.store import transfer
from cluster.store.objectstore import ObjectStore, StoreFullError

log = logging.getLogger("shoal.objects")

SOCKET_NAME = "objects.sock"
#: Transfers one node pulls at once (each is one TCP stream at full speed).
MAX_PULLS = 4


class ObjectService(pb_grpc.ObjectsServicer):
    """Allocate and Seal for writers on this host."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def Allocate(  # noqa: N802 - gRPC method name
        self, request: pb.AllocRequest, context: grpc.aio.ServicerContext
    ) -> pb.AllocReply:
        try:
            path = await asyncio.to_thread(self.store.alloc, request.size)
        except StoreFullError as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        return pb.AllocReply(path=path)

    async def Seal(  # noqa: N802
        self, request: pb.SealRequest, context: grpc.aio.ServicerContext
    ) -> pb.SealReply:
        try:
            self.store.seal(request.object_id, request.path)
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return pb.SealReply()


async def start(store: ObjectStore, secret: str, host: str,
                tls: Any = None) -> tuple[grpc.aio.Server, transfer.TransferServer]:
    """Serve `store`: gRPC on its directory's Unix socket, transfers on ``host`` (TLS with
    `tls`, an ssl server context)."""
    server = grpc.aio.server(interceptors=[server_interceptor(secret)])
    pb_grpc.add_ObjectsServicer_to_server(ObjectService(store), server)
    server.add_insecure_port(f"unix:{os.path.join(store.directory, SOCKET_NAME)}")
    await server.start()
    return server, transfer.TransferServer(store, secret, host, tls)


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
