"""A daemon's object server, and its puller: how objects move between nodes.

The server (gRPC service ``Objects``, on the node's address and on a Unix socket in the
store directory) sends an object as a stream of chunks (``Pull``), takes one from a driver
on another host (``Push``), and lets a writer on this host ``Allocate`` a file in the store
and ``Seal`` it once written. Every chunk stays well under gRPC's 4 MB default message
size, and the server keeps that default, so no configuration anywhere has to be lifted.

The puller fetches objects this node's tasks need from the nodes holding them. Requests
for the same object share one transfer; each transfer writes straight into a store file.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from cluster import shoal_pb2_grpc as pb_grpc
from cluster.auth import call_metadata, server_interceptor
from cluster.objectstore import ObjectStore, StoreFullError, mapped
from cluster.protocol import pb

log = logging.getLogger("shoal.objects")

CHUNK = 2 << 20
#: gRPC's own default; chunks never come near it.
MESSAGE_LIMIT = 4 << 20
OPTIONS = [("grpc.max_send_message_length", MESSAGE_LIMIT),
           ("grpc.max_receive_message_length", MESSAGE_LIMIT),
           ("grpc.so_reuseport", 0)]
SOCKET_NAME = "objects.sock"


def chunks(view: memoryview, object_id: int = 0) -> Iterator[pb.Chunk]:
    """An object's bytes as chunks; the first carries the id and the whole size."""
    size = len(view)
    yield pb.Chunk(object_id=object_id, size=size, data=bytes(view[:CHUNK]))
    for offset in range(CHUNK, size, CHUNK):
        yield pb.Chunk(data=bytes(view[offset:offset + CHUNK]))


class ObjectService(pb_grpc.ObjectsServicer):
    """Serves one store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def Pull(  # noqa: N802 - gRPC method name
        self, request: pb.PullRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Chunk]:
        store = self.store
        try:
            path = store.path(request.object_id)
            store.pin(request.object_id)
        except KeyError:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"object {request.object_id:#x} is not on this node")
            return
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
            with mapping, memoryview(mapping) as view:
                for chunk in chunks(view, request.object_id):
                    yield chunk
        finally:
            store.unpin(request.object_id)

    async def Push(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.Chunk], context: grpc.aio.ServicerContext
    ) -> pb.SealReply:
        store = self.store
        path = ""
        try:
            first = True
            object_id = size = offset = 0
            target: Any = None
            async for chunk in request_iterator:
                if first:
                    first = False
                    object_id, size = chunk.object_id, chunk.size
                    path = await asyncio.to_thread(store.alloc, size)
                    target = await asyncio.to_thread(mapped, path, size)
                    view = target.__enter__()
                end = offset + len(chunk.data)
                if end > size:
                    raise ValueError(f"push of object {object_id:#x} sent more than its "
                                     f"{size} bytes")
                view[offset:end] = chunk.data
                offset = end
            if target is not None:
                target.__exit__(None, None, None)
            if first or offset != size:
                raise ValueError(f"push ended after {offset} of {size} bytes")
            store.seal(object_id, path)
            path = ""
            return pb.SealReply()
        except StoreFullError as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        finally:
            if path:
                store.abort(path)
        raise AssertionError("unreachable")

    async def Allocate(  # noqa: N802
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


async def start(store: ObjectStore, secret: str, host: str) -> tuple[grpc.aio.Server, str]:
    """Serve `store` on ``host:0`` and on its directory's Unix socket; returns the server
    and its TCP address."""
    server = grpc.aio.server(interceptors=[server_interceptor(secret)], options=OPTIONS)
    pb_grpc.add_ObjectsServicer_to_server(ObjectService(store), server)
    bind = f"[{host}]:0" if ":" in host else f"{host}:0"
    port = server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"could not bind the object server's port on {host}")
    server.add_insecure_port(f"unix:{os.path.join(store.directory, SOCKET_NAME)}")
    await server.start()
    return server, f"{host}:{port}"


class Puller:
    """Brings objects into this node's store from the nodes that hold them."""

    def __init__(self, store: ObjectStore, secret: str) -> None:
        self.store = store
        self.secret = secret
        self._inflight: dict[int, asyncio.Future[None]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def fetch(self, object_id: int, sources: list[str]) -> asyncio.Future[None]:
        """A future done once the object is in the store (an error names what failed)."""
        future = self._inflight.get(object_id)
        if future is None:
            future = asyncio.ensure_future(self._pull(object_id, list(sources)))
            self._inflight[object_id] = future
            future.add_done_callback(lambda _: self._inflight.pop(object_id, None))
        return future

    async def _pull(self, object_id: int, sources: list[str]) -> None:
        errors = []
        for address in sources:
            try:
                await self._pull_from(object_id, address)
                return
            except grpc.aio.AioRpcError as err:
                errors.append(f"{address}: {err.details()}")
            except OSError as err:
                errors.append(f"{address}: {err}")
        raise LookupError(f"object {object_id:#x} could not be fetched ("
                          + ("; ".join(errors) or "no node holds it") + ")")

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address,
                                                                         options=OPTIONS)
        return channel

    async def _pull_from(self, object_id: int, address: str) -> None:
        store = self.store
        stub = pb_grpc.ObjectsStub(self._channel(address))
        call = stub.Pull(pb.PullRequest(object_id=object_id),
                         metadata=call_metadata(self.secret))
        path = ""
        target: Any = None
        try:
            offset = size = 0
            async for chunk in call:
                if target is None:
                    size = chunk.size
                    path = await asyncio.to_thread(store.alloc, size)
                    target = await asyncio.to_thread(mapped, path, size)
                    view = target.__enter__()
                end = offset + len(chunk.data)
                view[offset:end] = chunk.data
                offset = end
            if target is None or offset != size:
                raise OSError(f"transfer ended after {offset} of {size} bytes")
            target.__exit__(None, None, None)
            target = None
            store.seal(object_id, path)
            path = ""
        finally:
            if target is not None:
                target.__exit__(None, None, None)
            if path:
                store.abort(path)

    async def close(self) -> None:
        """Close the channels to other nodes."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
