"""The head's actor table: placement, ordered call delivery, names, restarts, kills.

An actor's creation is placed like a task (its resources stay held while it lives); its
daemon runs it in a dedicated worker. Calls are forwarded to that daemon without
scheduling, in order per caller: a call waiting for its dependencies holds back the later
calls of the same caller only. When the actor's worker or node dies it is restarted (its
``__init__`` runs again) up to ``max_restarts`` times; calls that were in flight are
retried up to ``max_task_retries`` times; after that every call fails with ACTOR_DIED.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import pb

if TYPE_CHECKING:
    from cluster.head.state import Head, _Node, _Task

log = logging.getLogger("shoal.head")


@dataclass
class _Actor:
    actor_id: int
    create: _Task
    options: pb.ActorOptions
    state: str = "pending"              # pending, alive, restarting, dead
    route: str = ""
    node_id: int = 0
    restarts: int = 0
    message: str = ""
    waiting: dict[int, deque[_Task]] = field(default_factory=dict)   # caller -> calls
    inflight: dict[int, _Task] = field(default_factory=dict)


class ActorTable:
    """Owned by the head; the head calls these hooks."""

    def __init__(self, head: Head) -> None:
        self.head = head
        self.actors: dict[int, _Actor] = {}
        self.names: dict[str, int] = {}
        self.calls: dict[int, _Actor] = {}       # in-flight call id -> actor

    # ---- creation ------------------------------------------------------------------------
    def register(self, task: _Task) -> str:
        """A creation was submitted; returns an error message (name taken) or ""."""
        spec = task.spec
        options = spec.actor
        name = options.name
        if name:
            other = self.actors.get(self.names.get(name, 0))
            if other is not None and other.state != "dead":
                refused = (f"an actor named {name!r} already exists "
                           f"({other.options.class_name}); use api.get_actor() to reach it")
                self.actors[spec.task_id] = _Actor(spec.task_id, task, options, state="dead",
                                                   message=refused)
                return refused
            self.names[name] = spec.task_id
        self.actors[spec.task_id] = _Actor(spec.task_id, task, options)
        return ""

    def created(self, task: _Task, node: _Node, ok: bool, message: str,
                route: str = "") -> None:
        """The creation finished on `node` (resources stay held while the actor lives)."""
        actor = self.actors.get(task.spec.task_id)
        if actor is None:
            return
        if not ok:
            self._dead(actor, f"its __init__ failed: {message}")
            return
        actor.state, actor.node_id, actor.route = "alive", node.node_id, route
        node.actors.add(actor.actor_id)
        log.info("actor %s %#x alive on %s", actor.options.class_name, actor.actor_id,
                 node.name)
        self._pump(actor)

    def is_creation(self, task: _Task) -> bool:
        """True for an actor's creation task."""
        return task.spec.kind == pb.ACTOR_CREATE

    # ---- calls -----------------------------------------------------------------------------
    def enqueue(self, task: _Task) -> None:
        """A call was submitted (its dependencies may still be pending)."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is None or actor.state == "dead":
            why = actor.message if actor else "no such actor (killed, or never created)"
            self.head._fail(task, pb.ACTOR_DIED, f"actor {task.spec.actor_id:#x} is dead: {why}")
            return
        caller = task.spec.task_id >> DRIVER_SHIFT
        actor.waiting.setdefault(caller, deque()).append(task)

    def ready(self, task: _Task) -> None:
        """A call's dependencies are all available."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is not None:
            self._pump(actor)

    def _pump(self, actor: _Actor) -> None:
        if actor.state != "alive":
            return
        node = self.head.nodes.get(actor.node_id)
        if node is None or not node.alive:
            return
        for caller, queue in list(actor.waiting.items()):
            while queue and queue[0].pending == 0:
                task = queue.popleft()
                if task.spec.task_id not in self.head.tasks:
                    continue  # failed meanwhile (a dependency failed)
                actor.inflight[task.spec.task_id] = task
                self.calls[task.spec.task_id] = actor
                self.head._send_to_node(task, node)
            if not queue:
                del actor.waiting[caller]

    def call_result(self, result: pb.TaskResult) -> bool:
        """A call's result from the actor's daemon; False when it is not an actor call."""
        actor = self.calls.pop(result.task_id, None)
        if actor is None:
            return False
        task = actor.inflight.get(result.task_id)
        if task is None:
            return True
        if result.status == pb.ACTOR_DIED and actor.state == "alive":
            # The daemon lost the actor before we heard of it: its death event follows,
            # and died() retries or fails this call with the real reason.
            self.calls[result.task_id] = actor
            return True
        del actor.inflight[result.task_id]
        if result.status == pb.OK:
            self.head._task_done(task, result)
        else:
            self.head._finish_failed(task, result)
        return True

    # ---- death, restarts, kills --------------------------------------------------------------
    def died(self, actor_id: int, message: str) -> None:
        """The actor's worker or node died."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state == "dead":
            return
        node = self.head.nodes.get(actor.node_id)
        if node is not None:
            node.actors.discard(actor_id)
        self.head._unreserve(actor.create)
        if node is not None:
            node.running.pop(actor_id, None)
        inflight = list(actor.inflight.values())
        actor.inflight.clear()
        if actor.restarts >= actor.options.max_restarts:
            why = f"{message} (after {actor.restarts} restarts)"
            for task in inflight:
                self.calls.pop(task.spec.task_id, None)
                self.head._fail(task, pb.ACTOR_DIED, f"actor died: {why}")
            self._dead(actor, why)
            return
        actor.restarts += 1
        actor.state = "restarting"
        log.warning("actor %#x died (%s); restart %d of %d", actor_id, message, actor.restarts,
                    actor.options.max_restarts)
        retry = []
        for task in inflight:
            self.calls.pop(task.spec.task_id, None)
            if task.attempts < actor.options.max_task_retries:
                task.attempts += 1
                task.spec.attempt = task.attempts
                retry.append(task)
            else:
                self.head._fail(task, pb.ACTOR_DIED,
                                f"actor died while running the call: {message}")
        for task in reversed(retry):  # back to the front, in their original order
            caller = task.spec.task_id >> DRIVER_SHIFT
            actor.waiting.setdefault(caller, deque()).appendleft(task)
        self.head.tasks[actor_id] = actor.create
        self.head.make_ready(actor.create)  # place __init__ again
        self.head._soon()

    def kill(self, actor_id: int, why: str = "killed with api.kill()") -> None:
        """Kill an actor now: no restart; pending calls fail."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state == "dead":
            return
        node = self.head.nodes.get(actor.node_id)
        if node is not None and actor.state == "alive":
            node.conn.send(pb.HeadToNode(kill_actor=[actor_id]))
            node.actors.discard(actor_id)
            node.running.pop(actor_id, None)
        self.head._unreserve(actor.create)
        for task in list(actor.inflight.values()):
            self.calls.pop(task.spec.task_id, None)
            self.head._fail(task, pb.ACTOR_DIED, f"actor {why}")
        actor.inflight.clear()
        self._dead(actor, why)

    def _dead(self, actor: _Actor, message: str) -> None:
        actor.state = "dead"
        actor.message = message
        log.info("actor %s %#x is dead: %s", actor.options.class_name, actor.actor_id, message)
        if actor.options.name and self.names.get(actor.options.name) == actor.actor_id:
            del self.names[actor.options.name]
        for queue in actor.waiting.values():
            for task in queue:
                self.head._fail(task, pb.ACTOR_DIED, f"actor is dead: {message}")
        actor.waiting.clear()
        # A creation still queued for placement must not be placed.
        self.head.tasks.pop(actor.actor_id, None)

    def node_lost(self, node: _Node, reason: str) -> None:
        """Every actor on a lost node died."""
        for actor_id in list(node.actors):
            self.died(actor_id, f"node {node.name} was lost ({reason})")

    def owner_left(self, caller: int) -> None:
        """A driver disconnected: its non-detached actors die with it."""
        for actor in list(self.actors.values()):
            if actor.actor_id >> DRIVER_SHIFT == caller and not actor.options.detached:
                self.kill(actor.actor_id, "killed: its driver disconnected")

    # ---- names and status ------------------------------------------------------------------
    def info(self, actor: _Actor) -> pb.ActorInfo:
        """The actor as the protocol describes it."""
        node = self.head.nodes.get(actor.node_id)
        return pb.ActorInfo(actor_id=actor.actor_id, class_name=actor.options.class_name,
                            name=actor.options.name, node=node.name if node else "",
                            state=actor.state, restarts=actor.restarts,
                            detached=actor.options.detached, methods=actor.options.methods,
                            message=actor.message,
                            route=actor.route if actor.state == "alive" else "",
                            max_task_retries=actor.options.max_task_retries)

    def lookup(self, name: str) -> pb.ActorInfo | None:
        """The live actor named `name`."""
        actor = self.actors.get(self.names.get(name, 0))
        if actor is None or actor.state == "dead":
            return None
        return self.info(actor)

    def status(self) -> list[pb.ActorInfo]:
        """Every actor not dead, and the dead ones still named or recent."""
        return [self.info(a) for a in self.actors.values()]

    def any_waiting(self) -> Any:
        """Actors with calls waiting (for tests and status)."""
        return [a for a in self.actors.values() if a.waiting]
