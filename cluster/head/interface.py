"""The head's public interface for its parts: what the actor table and lineage may call.

A Protocol rather than an import of :class:`cluster.head.state.Head`, so the parts do not
import the state machine that owns them (no import circles).
"""

from __future__ import annotations

from typing import Protocol

from cluster.common.protocol import pb
from cluster.head.directory import ObjectDirectory
from cluster.head.records import Node, Task, TaskState


class Dispatch(Protocol):
    """The part of the head's dispatcher its parts use."""

    def unreserve(self, task: Task) -> None: ...

    def send(self, task: Task, node: Node) -> None: ...


class HeadCore(Protocol):
    """The head as its actor table and lineage see it."""

    nodes: dict[int, Node]
    tasks: dict[int, Task]
    objects: ObjectDirectory

    @property
    def dispatch(self) -> Dispatch: ...

    def soon(self) -> None: ...

    def set_state(self, task: Task, state: TaskState) -> None: ...

    def make_ready(self, task: Task) -> None: ...

    def wait(self, task: Task, pending: list[int]) -> None: ...

    def missing_args(self, task: Task, queued: bool = True) -> list[int] | None: ...

    def unready(self, object_ids: set[int]) -> None: ...

    def task_done(self, task: Task, result: pb.TaskResult) -> None: ...

    def fail(self, task: Task, status: pb.Status, message: str, queued: bool = True) -> None: ...

    def finish_failed(self, task: Task, result: pb.TaskResult,
                      queued: bool = True) -> None: ...

    def end_hosting(self, task: Task) -> None: ...
