"""The head's object directory: the values the cluster holds, who refers to them, and the
gets waiting for them.

An object is a task's result or an ``api.put``. Small values are held here inline; large
ones stay in the stores of the nodes that hold them (``holders``) and only their size and
locations are kept here. Each object is reference counted: a driver's handle (future or
ref) counts one, every unfinished task that depends on it counts one, and every object
that has it nested inside counts one. At zero the value is dropped, and ``on_drop`` tells
the head to delete the copies in node stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cluster.common.protocol import pb


@dataclass(slots=True)
class Value:
    """A finished object: its status (OK or how it failed), bytes and message."""

    status: pb.Status
    data: bytes
    message: str = ""
    size: int = 0                                  # > 0: held in node stores
    holders: set[int] = field(default_factory=set)   # node ids
    nested: list[int] = field(default_factory=list)  # refs inside the value


LOST = Value(pb.OBJECT_LOST, b"", "released or never created")


@dataclass(slots=True)
class _PendingGet:
    replies: list[pb.GetReply]
    request_id: int
    ids: list[int]
    missing: int
    driver_refs: dict[int, int]


class ObjectDirectory:
    """Values, reference counts and waiting gets."""

    def __init__(self) -> None:
        self.values: dict[int, Value] = {}
        self.refs: dict[int, int] = {}
        self._gets: dict[int, list[_PendingGet]] = {}
        self._dropping: list[tuple[int, Value]] | None = None
        #: Called with (id, value) when a value is dropped (to delete stored copies).
        self.on_drop: Callable[[int, Value], None] | None = None

    def incref(self, object_id: int) -> None:
        """One more holder of `object_id`."""
        self.refs[object_id] = self.refs.get(object_id, 0) + 1

    def decref(self, object_id: int) -> None:
        """One holder fewer; the value goes at zero (and with it the references it holds
        to the objects nested inside it)."""
        count = self.refs.get(object_id, 0) - 1
        if count > 0:
            self.refs[object_id] = count
            return
        self.refs.pop(object_id, None)
        value = self.values.pop(object_id, None)
        if value is not None:
            self._dropped(object_id, value)

    def _dropped(self, object_id: int, value: Value) -> None:
        # Iterative, not recursive: a chain of 100,000 nested refs (or of stored results
        # whose lineage holds the previous link, released through ``on_drop``) must not
        # overflow the stack. A drop that happens while one is being processed joins it.
        if self._dropping is not None:
            self._dropping.append((object_id, value))
            return
        stack = self._dropping = [(object_id, value)]
        try:
            while stack:
                oid, val = stack.pop()
                if val.size and self.on_drop is not None:
                    self.on_drop(oid, val)   # may decref more: they land on the stack
                for inner in val.nested:
                    self.decref(inner)
        finally:
            self._dropping = None

    def make_pending(self, object_id: int) -> None:
        """The object will be produced again (lineage): forget its value, keep its refs."""
        self.values.pop(object_id, None)

    def get(self, object_id: int) -> Value | None:
        """The value, if it is here."""
        return self.values.get(object_id)

    def finish(self, object_id: int, value: Value) -> None:
        """A task finished (or failed): keep its value while referenced; wake gets."""
        for inner in value.nested:
            self.incref(inner)
        if self.refs.get(object_id, 0) > 0:
            self.values[object_id] = value
        else:
            self._dropped(object_id, value)
        self._wake(object_id)

    def put(self, object_id: int, value: Value) -> None:
        """An ``api.put``: the putting driver holds one reference."""
        for inner in value.nested:
            self.incref(inner)
        self.values[object_id] = value
        self.incref(object_id)
        self._wake(object_id)

    def request(self, replies: list[pb.GetReply], request: pb.GetRequest,
                pending: Callable[[int], bool], driver_refs: dict[int, int]) -> None:
        """Answer a get into `replies` once every id is here (or known to be lost);
        `pending(id)` says whether a task will still produce it. Refs nested in the
        values sent count as the driver's (`driver_refs`): it releases each it loads."""
        waiting = _PendingGet(replies, request.request_id, list(request.ids), 0, driver_refs)
        for object_id in request.ids:
            if object_id not in self.values and pending(object_id):
                waiting.missing += 1
                self._gets.setdefault(object_id, []).append(waiting)
        if waiting.missing == 0:
            self._reply(waiting)

    def _reply(self, waiting: _PendingGet) -> None:
        reply = pb.GetReply(request_id=waiting.request_id)
        for object_id in waiting.ids:
            value = self.values.get(object_id)
            if value is None:
                reply.values.add(task_id=object_id, status=pb.OBJECT_LOST,
                                 message=f"object {object_id:#x} is not held by the cluster "
                                         "(released, or never created)")
            else:
                reply.values.append(self.describe(object_id, value, waiting.driver_refs))
        waiting.replies.append(reply)

    def describe(self, object_id: int, value: Value,
                 driver_refs: dict[int, int]) -> pb.TaskResult:
        """The value as sent to a driver; its nested refs become the driver's."""
        self.hand_over(value.nested, driver_refs)
        return pb.TaskResult(task_id=object_id, status=value.status, data=value.data,
                             message=value.message, size=value.size,
                             holders=sorted(value.holders), nested=value.nested)

    def hand_over(self, nested: Iterable[int], driver_refs: dict[int, int]) -> None:
        """A value with refs inside goes to a driver: each ref it will load (and release
        once dropped) counts as the driver's."""
        for inner in nested:
            self.incref(inner)
            driver_refs[inner] = driver_refs.get(inner, 0) + 1

    def node_lost(self, node_id: int) -> list[int]:
        """Forget `node_id`'s copies; returns the stored objects it alone held."""
        lost = []
        for object_id, value in self.values.items():
            if node_id in value.holders:
                value.holders.discard(node_id)
                if not value.holders:
                    lost.append(object_id)
        return lost

    def mark_lost(self, object_id: int, lost: Value) -> None:
        """The object's last copy is gone for good: it now stands for the loss."""
        value = self.values.get(object_id)
        if value is not None:
            lost.nested = value.nested
            self.values[object_id] = lost

    def _wake(self, object_id: int) -> None:
        for waiting in self._gets.pop(object_id, ()):
            waiting.missing -= 1
            if waiting.missing == 0:
                self._reply(waiting)

    def stats(self) -> tuple[int, int]:
        """(objects held, bytes held)."""
        return len(self.values), sum(len(v.data) + v.size for v in self.values.values())
