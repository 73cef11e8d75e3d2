"""The head's actor table: placement, ordered call delivery, names, restarts, kills.

An actor's creation is placed like a task; once its ``__init__`` succeeded the creation is
``HOSTING`` (it keeps the actor's resources held while it lives); its daemon runs it in a
dedicated worker. Calls are forwarded to that daemon without scheduling, in order per
caller: a call waiting for its dependencies holds back the later calls of the same caller
only. When the actor's worker or node dies it is restarted (its ``__init__`` runs again)
up to ``max_restarts`` times; calls that were in flight are retried up to
``max_task_retries`` times; after that every call fails with ACTOR_DIED.

An actor's ``state`` (:class:`ActorState`) changes only in :meth:`ActorTable._set_state`,
along :data:`ACTOR_TRANSITIONS`.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import pb
from cluster.head.interface import HeadCore
from cluster.head.records import InvalidTransition, Node, Task, TaskState

log = logging.getLogger("shoal.head")


class ActorState(enum.Enum):
    """An actor's life; the values are what `clusterctl status` shows."""

    PENDING = "pending"          # its creation is being placed or run
    ALIVE = "alive"
    RESTARTING = "restarting"    # died, being created again
    DEAD = "dead"


_A = ActorState
ACTOR_TRANSITIONS: dict[ActorState, frozenset[ActorState]] = {
    _A.PENDING: frozenset({_A.ALIVE, _A.DEAD, _A.RESTARTING}),
    _A.ALIVE: frozenset({_A.RESTARTING, _A.DEAD}),
    _A.RESTARTING: frozenset({_A.ALIVE, _A.DEAD, _A.RESTARTING}),
    _A.DEAD: frozenset(),
}


@dataclass(eq=False)
class Actor:
    """The head's record of one actor."""

    actor_id: int
    create: Task
    options: pb.ActorOptions
    state: ActorState = ActorState.PENDING
    route: str = ""
    node_id: int = 0
    restarts: int = 0
    message: str = ""
    waiting: dict[int, deque[Task]] = field(default_factory=dict)   # caller -> calls
    inflight: dict[int, Task] = field(default_factory=dict)


class ActorTable:
    """Owned by the head; the head calls these hooks."""

    def __init__(self, head: HeadCore) -> None:
        self.head = head
        self.actors: dict[int, Actor] = {}
        self.names: dict[str, int] = {}
        self.calls: dict[int, Actor] = {}       # in-flight call id -> actor

    def _set_state(self, actor: Actor, state: ActorState) -> None:
        if state not in ACTOR_TRANSITIONS[actor.state]:
            raise InvalidTransition(f"actor {actor.actor_id:#x}: {actor.state.name} -> "
                                    f"{state.name}")
        actor.state = state

    # ---- creation ------------------------------------------------------------------------
    def register(self, task: Task) -> str:
        """A creation was submitted; returns an error message (name taken) or ""."""
        spec = task.spec
        options = spec.actor
        name = options.name
        if name:
            other = self.actors.get(self.names.get(name, 0))
            if other is not None and other.state is not ActorState.DEAD:
                refused = (f"an actor named {name!r} already exists "
                           f"({other.options.class_name}); use api.get_actor() to reach it")
                # Kept, dead from the start, so calls on its handle say why.
                self.actors[spec.task_id] = Actor(spec.task_id, task, options,
                                                  state=ActorState.DEAD, message=refused)
                return refused
            self.names[name] = spec.task_id
        self.actors[spec.task_id] = Actor(spec.task_id, task, options)
        return ""

    def created(self, task: Task, node: Node, route: str = "") -> None:
        """The creation succeeded on `node` (its resources stay held while it lives)."""
        actor = self.actors.get(task.task_id)
        if actor is None:
            return
        self._set_state(actor, ActorState.ALIVE)
        actor.node_id, actor.route = node.node_id, route
        node.actors.add(actor.actor_id)
        log.info("actor %s %#x alive on %s", actor.options.class_name, actor.actor_id,
                 node.name)
        self._pump(actor)

    def creation_failed(self, task: Task, message: str) -> None:
        """The creation task failed for good (its __init__ raised, it could not be placed,
        ...): the actor is dead."""
        actor = self.actors.get(task.task_id)
        if actor is not None and actor.state is not ActorState.DEAD:
            self._dead(actor, f"its creation failed: {message}")

    def creation_lost(self, task: Task, message: str) -> None:
        """The node running the actor's __init__ was lost: create it again elsewhere while
        restarts remain."""
        actor = self.actors.get(task.task_id)
        if actor is not None and actor.state is not ActorState.DEAD and \
                actor.restarts < actor.options.max_restarts:
            actor.restarts += 1
            self._set_state(actor, ActorState.RESTARTING)
            self.head.make_ready(task)
            return
        self.head.fail(task, pb.ACTOR_DIED, f"actor died while being created: {message}")

    # ---- calls -----------------------------------------------------------------------------
    def refuse_call(self, actor_id: int) -> str:
        """Why a call to `actor_id` cannot be taken, or "" if it can."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state is ActorState.DEAD:
            why = actor.message if actor else "no such actor (killed, or never created)"
            return f"actor {actor_id:#x} is dead: {why}"
        return ""

    def enqueue(self, task: Task) -> None:
        """A call was accepted (its dependencies may still be pending): it keeps its place
        in its caller's order."""
        actor = self.actors[task.spec.actor_id]
        caller = task.task_id >> DRIVER_SHIFT
        actor.waiting.setdefault(caller, deque()).append(task)

    def drop_call(self, task: Task) -> None:
        """A call that waited in its actor's queue failed (a dependency failed, ...)."""
        actor = self.actors.get(task.spec.actor_id)
        queue = actor.waiting.get(task.task_id >> DRIVER_SHIFT) if actor else None
        if queue is not None and task in queue:
            queue.remove(task)
            if actor is not None and not queue:
                del actor.waiting[task.task_id >> DRIVER_SHIFT]
            if actor is not None:
                self._pump(actor)  # the calls behind it may go now

    def ready(self, task: Task) -> None:
        """A call's dependencies are all available."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is not None:
            self._pump(actor)

    def _pump(self, actor: Actor) -> None:
        if actor.state is not ActorState.ALIVE:
            return
        node = self.head.nodes.get(actor.node_id)
        if node is None or not node.alive:
            return
        for caller, queue in list(actor.waiting.items()):
            while queue and queue[0].state is not TaskState.WAITING:
                task = queue.popleft()
                if task.state is not TaskState.QUEUED:
                    continue  # failed meanwhile (a dependency failed)
                actor.inflight[task.task_id] = task
                self.calls[task.task_id] = actor
                task.node_id = node.node_id   # a stored result is held there
                self.head.set_state(task, TaskState.RUNNING)
                self.head.dispatch.send(task, node)
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
        if result.status == pb.ACTOR_DIED and actor.state is ActorState.ALIVE:
            # The daemon lost the actor before we heard of it: its death event follows,
            # and died() retries or fails this call with the real reason.
            self.calls[result.task_id] = actor
            return True
        del actor.inflight[result.task_id]
        if result.status == pb.OK:
            self.head.task_done(task, result)
        else:
            self.head.finish_failed(task, result)
        return True

    def queued_calls(self) -> Iterator[Task]:
        """Every call waiting in an actor's ordered queues (for invariant checks)."""
        for actor in self.actors.values():
            for queue in actor.waiting.values():
                yield from queue

    def inflight_calls(self) -> Iterator[Task]:
        """Every call sent to an actor and not answered yet (for invariant checks)."""
        for actor in self.actors.values():
            yield from actor.inflight.values()

    # ---- death, restarts, kills --------------------------------------------------------------
    def died(self, actor_id: int, message: str) -> None:
        """The actor's worker or node died."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state is not ActorState.ALIVE:
            return
        node = self.head.nodes.get(actor.node_id)
        if node is not None:
            node.actors.discard(actor_id)
        inflight = list(actor.inflight.values())
        actor.inflight.clear()
        for task in inflight:
            self.calls.pop(task.task_id, None)
        if actor.restarts >= actor.options.max_restarts:
            why = f"{message} (after {actor.restarts} restarts)"
            for task in inflight:
                self.head.fail(task, pb.ACTOR_DIED, f"actor died: {why}")
            self._dead(actor, why)
            return
        actor.restarts += 1
        self._set_state(actor, ActorState.RESTARTING)
        log.warning("actor %#x died (%s); restart %d of %d", actor_id, message, actor.restarts,
                    actor.options.max_restarts)
        retry = []
        for task in inflight:
            if task.attempts < actor.options.max_task_retries:
                task.attempts += 1
                task.spec.attempt = task.attempts
                retry.append(task)
            else:
                self.head.fail(task, pb.ACTOR_DIED,
                               f"actor died while running the call: {message}")
        for task in reversed(retry):  # back to the front, in their original order
            self.head.make_ready(task)  # QUEUED; not sent while the actor restarts
            caller = task.task_id >> DRIVER_SHIFT
            actor.waiting.setdefault(caller, deque()).appendleft(task)
        create = actor.create
        if node is not None:
            node.running.pop(actor_id, None)
        self.head.dispatch.unreserve(create)
        self.head.make_ready(create)  # place __init__ again
        self.head.soon()

    def kill(self, actor_id: int, why: str = "killed with api.kill()") -> None:
        """Kill an actor now: no restart; pending calls fail."""
        actor = self.actors.get(actor_id)
        if actor is None or actor.state is ActorState.DEAD:
            return
        create = actor.create
        node = self.head.nodes.get(create.node_id)
        if node is not None and create.state in (TaskState.RUNNING, TaskState.HOSTING):
            if node.alive:
                node.conn.send(pb.HeadToNode(kill_actor=[actor_id]))
            node.actors.discard(actor_id)
        for task in list(actor.inflight.values()):
            self.calls.pop(task.task_id, None)
            self.head.fail(task, pb.ACTOR_DIED, f"actor {why}")
        actor.inflight.clear()
        self._dead(actor, why)

    def _dead(self, actor: Actor, message: str) -> None:
        self._set_state(actor, ActorState.DEAD)
        actor.message = message
        log.info("actor %s %#x is dead: %s", actor.options.class_name, actor.actor_id, message)
        if actor.options.name and self.names.get(actor.options.name) == actor.actor_id:
            del self.names[actor.options.name]
        waiting = [t for queue in actor.waiting.values() for t in queue]
        actor.waiting.clear()
        for task in waiting:
            self.head.fail(task, pb.ACTOR_DIED, f"actor is dead: {message}")
        create = actor.create
        if create.state is TaskState.HOSTING:
            self.head.end_hosting(create)
        elif create.state is TaskState.RUNNING:  # being created: it must not come alive
            node = self.head.nodes.get(create.node_id)
            if node is not None:
                node.running.pop(create.task_id, None)
            self.head.dispatch.unreserve(create)
            self.head.fail(create, pb.ACTOR_DIED, f"actor is dead: {message}")
        elif create.state in (TaskState.QUEUED, TaskState.WAITING):  # must not be placed
            self.head.fail(create, pb.ACTOR_DIED, f"actor is dead: {message}")

    def node_lost(self, node: Node, reason: str) -> None:
        """Every actor on a lost node died."""
        for actor_id in list(node.actors):
            self.died(actor_id, f"node {node.name} was lost ({reason})")

    def owner_left(self, caller: int) -> None:
        """A driver disconnected: its non-detached actors die with it."""
        for actor in list(self.actors.values()):
            if actor.actor_id >> DRIVER_SHIFT == caller and not actor.options.detached:
                self.kill(actor.actor_id, "killed: its driver disconnected")

    # ---- names and status ------------------------------------------------------------------
    def info(self, actor: Actor) -> pb.ActorInfo:
        """The actor as the protocol describes it."""
        node = self.head.nodes.get(actor.node_id)
        alive = actor.state is ActorState.ALIVE
        return pb.ActorInfo(actor_id=actor.actor_id, class_name=actor.options.class_name,
                            name=actor.options.name, node=node.name if node else "",
                            state=actor.state.value, restarts=actor.restarts,
                            detached=actor.options.detached, methods=actor.options.methods,
                            message=actor.message, route=actor.route if alive else "",
                            max_task_retries=actor.options.max_task_retries)

    def lookup(self, name: str) -> pb.ActorInfo | None:
        """The live actor named `name`."""
        actor = self.actors.get(self.names.get(name, 0))
        if actor is None or actor.state is ActorState.DEAD:
            return None
        return self.info(actor)

    def status(self) -> list[pb.ActorInfo]:
        """Every actor the head knows of, dead ones included."""
        return [self.info(a) for a in self.actors.values()]
