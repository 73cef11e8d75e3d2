"""The driver's side of the object stores: putting large values, fetching stored ones.

A driver on a node's host writes into that node's store (allocate and seal over the
store's objects lane, :mod:`api._storelane`) and maps objects from it directly: zero-copy,
no transfer. A driver elsewhere (a login node) pushes to and gets from the nodes' transfer
servers over TCP (:mod:`cluster.store.transfer`).

``SHOAL_OBJECTS_VIA_NETWORK=1`` makes a driver behave as if no store were on its host
(to measure or test what a driver on another host sees).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any

from api._storelane import StoreLane
from cluster.common.protocol import pb
from cluster.store import objectformat
from cluster.store.objectstore import WriteMappings

_SOCKET = "objects.sock"


class ObjectClient:
    """Moves object bytes between one driver and the nodes' stores."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lanes: dict[str, StoreLane] = {}
        self._lock = threading.Lock()
        self._buffers = _BufferPool()
        self._tls_context: Any = None
        self._writes = WriteMappings()

    # ---- where ---------------------------------------------------------------------------
    def _local_node(self) -> pb.NodeInfo | None:
        for node in self._client.nodes.values():
            if node.state == "alive" and self._is_local(node):
                return node
        return None

    @staticmethod
    def _is_local(node: pb.NodeInfo) -> bool:
        if os.environ.get("SHOAL_OBJECTS_VIA_NETWORK") == "1":
            return False
        return bool(node.store_dir) and os.access(node.store_dir, os.W_OK)

    def _lane(self, node: pb.NodeInfo) -> StoreLane:
        path = os.path.join(node.store_dir, _SOCKET)
        with self._lock:
            lane = self._lanes.get(path)
            if lane is None:
                lane = self._lanes[path] = StoreLane(path, self._client.secret, node.name)
        return lane

    def _tls(self) -> Any:
        """An ssl context for transfers on a --tls cluster (None otherwise)."""
        if not self._client.tls_ca:
            return None
        if self._tls_context is None:
            from cluster.common.tls import client_context

            self._tls_context = client_context(self._client.tls_ca)
        return self._tls_context

    # ---- put -----------------------------------------------------------------------------
    def store(self, object_id: int, enc: objectformat.Encoded) -> pb.Value:
        """Write an encoded value into a node's store; returns the put message."""
        node = self._local_node()
        if node is None:
            node = self._push(object_id, enc)
        else:
            self._write_local(node, object_id, enc)
        return pb.Value(id=object_id, size=enc.size, holders=[node.node_id],
                        nested=enc.refs)

    def _push(self, object_id: int, enc: objectformat.Encoded) -> pb.NodeInfo:
        from api._errors import ObjectStoreFullError
        from cluster.store import transfer

        alive = [n for n in self._client.nodes.values() if n.state == "alive" and
                 n.store_address]
        if not alive:
            raise ObjectStoreFullError("no node with an object store is up to hold the "
                                       "object; wait for nodes to join")
        node = min(alive, key=lambda n: n.store.bytes)
        try:
            transfer.push(node.store_address, self._client.secret, object_id, enc.parts(),
                          self._tls())
        except transfer.TransferError as err:
            if str(err).startswith("full: "):
                raise ObjectStoreFullError(str(err)[6:]) from None
            raise ConnectionError(f"could not store the object on node {node.name}: "
                                  f"{err}") from None
        except OSError as err:
            raise ConnectionError(f"could not store the object on node {node.name} "
                                  f"({node.store_address}): {err}") from None
        return node

    def _write_local(self, node: pb.NodeInfo, object_id: int,
                     enc: objectformat.Encoded) -> None:
        lane = self._lane(node)
        path = lane.allocate(enc.size)
        try:
            self._writes.write(path, enc.size, enc.write_into)
        except BaseException:  # (Ctrl-C in the middle of a large copy too)
            with contextlib.suppress(ConnectionError):
                lane.abort(path)
            raise
        lane.seal(object_id, path, enc.size)

    def value_message(self, object_id: int, value: Any) -> pb.Value:
        """The put message for `value` under `object_id`: its bytes inline when small,
        else written into a node store first (what :func:`api.put` sends)."""
        from api._errors import SerializationError

        try:
            enc = objectformat.encode(value)
            inline = objectformat.inline_bytes(enc, value)
        except Exception as err:
            raise SerializationError(f"{type(value).__name__} cannot be pickled: "
                                     f"{err}") from err
        if inline is not None:
            return pb.Value(id=object_id, data=inline, nested=enc.refs)
        return self.store(object_id, enc)

    def store_args(self, args: tuple, kwargs: dict) -> tuple[int, list[int], Any]:
        """Put an app's arguments (too large for a message) into a node store; returns
        (object id, the refs inside them, a ref the caller keeps until it submitted)."""
        from cluster.common.serialization import ObjectRef

        client = self._client
        enc = objectformat.encode((args, kwargs))
        object_id = client.new_id()
        client.put(self.store(object_id, enc))
        return object_id, list(enc.refs), ObjectRef(object_id, client)

    # ---- get -----------------------------------------------------------------------------
    def fetch(self, object_id: int, size: int, holders: list[int]) -> Any:
        """Load a stored object from one of its holders (mapped when on this host)."""
        from api._errors import ObjectLostError
        from cluster.store import transfer

        resolve = self._client.owned_ref
        errors = []
        for node_id in holders:
            node = self._client.nodes.get(node_id)
            if node is None or node.state != "alive":
                continue  # (a dead node's files may linger on this host: not ours to read)
            if self._is_local(node):
                try:
                    return objectformat.read(os.path.join(node.store_dir, f"{object_id:x}"),
                                             resolve)
                except FileNotFoundError:
                    pass  # spilled to disk: the node's server restores it
            try:
                data = transfer.fetch(node.store_address, self._client.secret, object_id,
                                      self._buffers.take, self._tls())
            except OSError as err:
                errors.append(f"{node.name}: {err}")
                continue
            return objectformat.decode(memoryview(data.data).toreadonly(), resolve)
        raise ObjectLostError(f"object {object_id:#x} ({size} bytes) could not be fetched: "
                              + ("; ".join(errors) or "no live node holds it"))

    def close(self) -> None:
        """Close the connections to node stores."""
        with self._lock:
            for lane in self._lanes.values():
                lane.close()
            self._lanes.clear()


class _BufferPool:
    """Receive buffers for objects fetched over the network, reused once no value views
    them: filling memory that is already faulted in runs at network speed, fresh memory
    at ~1.7 GB/s here."""

    def __init__(self, limit_bytes: int = 1 << 30) -> None:
        self.limit_bytes = limit_bytes
        self._kept: list[Any] = []   # transfer.Buffer
        self._lock = threading.Lock()

    def take(self, size: int) -> Any:
        with self._lock:
            return self._take(size)

    def _take(self, size: int) -> Any:
        from cluster.store import transfer

        for i, buffer in enumerate(self._kept):
            # Held by the list and getrefcount's argument only: no value views it.
            if len(buffer.data) == max(size, 1) and sys.getrefcount(buffer.data) <= 2:
                self._kept.append(self._kept.pop(i))
                return buffer
        buffer = transfer.Buffer(size)
        self._kept.append(buffer)
        total = 0
        for kept in reversed(list(self._kept)):
            total += len(kept.data)
            if total > self.limit_bytes:
                self._kept.remove(kept)  # forgotten here; freed when its views are
        return buffer
