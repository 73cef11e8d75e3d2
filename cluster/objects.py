"""The head's object directory: the values the cluster holds, who refers to them, and the
gets waiting for them.

An object is a task's result or an ``api.put``. Each is reference counted: the driver's
handle (future or ref) counts one, every unfinished task that depends on it counts one; at
zero the value is dropped. (Values are held here inline for now; the shared-memory object
store will keep large ones on the nodes, with only their locations here.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cluster.protocol import pb


@dataclass(slots=True)
class Value:
    """A finished object: its status (OK or how it failed), bytes and message."""

    status: int
    data: bytes
    message: str = ""


LOST = Value(pb.OBJECT_LOST, b"", "released or never created")


@dataclass(slots=True)
class _PendingGet:
    replies: list[pb.GetReply]
    request_id: int
    ids: list[int]
    missing: int


class ObjectDirectory:
    """Values, reference counts and waiting gets."""

    def __init__(self) -> None:
        self.values: dict[int, Value] = {}
        self.refs: dict[int, int] = {}
        self._gets: dict[int, list[_PendingGet]] = {}

    def incref(self, object_id: int) -> None:
        """One more holder of `object_id`."""
        self.refs[object_id] = self.refs.get(object_id, 0) + 1

    def decref(self, object_id: int) -> None:
        """One holder fewer; the value goes at zero."""
        count = self.refs.get(object_id, 0) - 1
        if count > 0:
            self.refs[object_id] = count
        else:
            self.refs.pop(object_id, None)
            self.values.pop(object_id, None)

    def referenced(self, object_id: int) -> bool:
        """Whether anybody still holds `object_id`."""
        return self.refs.get(object_id, 0) > 0

    def get(self, object_id: int) -> Value | None:
        """The value, if it is here."""
        return self.values.get(object_id)

    def finish(self, object_id: int, value: Value) -> None:
        """A task finished (or failed): keep its value while referenced; wake gets."""
        if self.refs.get(object_id, 0) > 0:
            self.values[object_id] = value
        self._wake(object_id)

    def put(self, object_id: int, data: bytes) -> None:
        """An ``api.put``: the putting driver holds one reference."""
        self.values[object_id] = Value(pb.OK, data)
        self.incref(object_id)
        self._wake(object_id)

    def request(self, replies: list[pb.GetReply], request: pb.GetRequest,
                pending: Callable[[int], bool]) -> None:
        """Answer a get into `replies` once every id is here (or known to be lost);
        `pending(id)` says whether a task will still produce it."""
        waiting = _PendingGet(replies, request.request_id, list(request.ids), 0)
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
                reply.values.add(task_id=object_id, status=value.status, data=value.data,
                                 message=value.message)
        waiting.replies.append(reply)

    def _wake(self, object_id: int) -> None:
        for waiting in self._gets.pop(object_id, ()):
            waiting.missing -= 1
            if waiting.missing == 0:
                self._reply(waiting)

    def stats(self) -> tuple[int, int]:
        """(objects held, bytes held)."""
        return len(self.values), sum(len(v.data) for v in self.values.values())
