"""The head's state machine: node table, task table, dependency tracking, objects, dispatch.

Everything here runs on one asyncio loop and does no I/O itself: connections (gRPC streams
or an in-process link, see :mod:`cluster.head.server`) hand it messages and it hands them
messages back through ``conn.send``. Its parts (``dispatch``, ``actor_table``,
``lineage``) reach it only through :class:`~cluster.head.interface.HeadCore`.

A task's life is one field, ``task.state`` (:class:`~cluster.head.records.TaskState`),
changed only by :meth:`Head.set_state` along the table in :mod:`cluster.head.records`;
:meth:`Head.validate` checks that every task is where its state says and that resources
and reference counts add up (the unit tests call it after every step).

Object ids are task or put ids made by the driver (:mod:`cluster.common.ids`), so results
and logs route to their driver without a lookup; values and reference counts live in the
object directory (:mod:`cluster.head.directory`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from cluster.common.ids import DRIVER_SHIFT, NODE_CALLER_BASE
from cluster.common.protocol import fill, pb, to_dict
from cluster.head.actors import ActorTable
from cluster.head.cancel import Cancellations
from cluster.head.directory import LOST, ObjectDirectory, Value
from cluster.head.dispatch import Dispatcher
from cluster.head.drivers import driver_left
from cluster.head.failures import Failures
from cluster.head.history import Recorder
from cluster.head.invariants import check
from cluster.head.lineage import Lineage
from cluster.head.nested import NestedDrivers
from cluster.head.records import (
    COMPACT_AFTER,
    LIVE,
    Conn,
    Driver,
    InvalidTransition,
    Node,
    NodeCallerConn,
    Task,
    TaskState,
    allowed,
)
from cluster.head.report import demand, drain_nodes, status_reply, stop_daemon
from cluster.head.staging import Staging
from cluster.policy import liveness, priority, scheduler

log = logging.getLogger("shoal.head")


def priority_of_task(task: Task) -> int:
    """A task's priority (higher runs first)."""
    return task.spec.priority


class Head:
    """Cluster state and the rules that move tasks through it."""

    def __init__(self, cluster_id: str, node_timeout: float = 10.0) -> None:
        self.cluster_id = cluster_id
        self.node_timeout = node_timeout
        self.started = time.time()
        self.nodes: dict[int, Node] = {}
        self.drivers: dict[int, Driver] = {}
        #: Tasks in a live state (WAITING, QUEUED, RUNNING), by id.
        self.tasks: dict[int, Task] = {}
        self.ready: dict[bytes, deque[Task]] = {}
        self.gangs: deque[Task] = deque()  # queued multi-node apps
        self.waiters: dict[int, list[Task]] = {}
        self.objects = ObjectDirectory()
        self.failures = Failures(self)
        self.cancels = Cancellations(self)
        self.objects.on_drop = self.failures.object_dropped
        self.functions: dict[bytes, bytes] = {}
        self.done = 0
        self.failed = 0
        self.on_shutdown: Callable[[], None] | None = None
        self._block_shape: dict[str, float] = {}
        self.blocks_status: Callable[[], list[pb.BlockInfo]] | None = None
        self.dispatch = Dispatcher(self.nodes, self.objects, self.functions, self._started)
        self.actor_table = ActorTable(self)
        self.lineage = Lineage(self)
        self.nested = NestedDrivers(self)  # apps' nested clients (dynamic workflows)
        self.staging = Staging(self)  # dependents sent ahead to their input's node
        self._next_node = 1
        self._next_driver = 1
        self.alive_nodes = 0
        self.heartbeat_interval = liveness.heartbeat_interval(0)  # what nodes were told
        #: Feasibility by (request shape, nodes); cleared when nodes or block shape change.
        self._feasible: dict[tuple[bytes, int], str] = {}
        self._shapes: dict[bytes, tuple[dict[str, float], str, bytes]] = {}
        self._flush_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.history: Recorder | None = None  # the run history (cluster.head.history)
        #: Tasks running on drivers' leased workers (api._lease), as their drivers reported
        #: them (one still running at the driver's idle flush): id -> its lease's node.
        self.leased_running: dict[int, int] = {}

    @property
    def block_shape(self) -> dict[str, float]:
        """Resources an autoscaled node would bring ({} if none): tasks fitting it wait."""
        return self._block_shape

    @block_shape.setter
    def block_shape(self, shape: dict[str, float]) -> None:
        self._block_shape = shape
        self._feasible.clear()   # verdicts change with it

    # ---- the lifecycle -----------------------------------------------------------------
    def set_state(self, task: Task, state: TaskState) -> None:
        """Move `task` to `state` (the only place a task's state changes), keeping
        ``self.tasks`` equal to the tasks in a live state."""
        old = task.state
        if not allowed(old, state):
            raise InvalidTransition(f"task {task.task_id:#x} ({task.spec.name}): "
                                    f"{old.name} -> {state.name}")
        task.state = state
        if self.history is not None:
            self.history.state(task, old, state)
        if state in LIVE:
            self.tasks[task.task_id] = task
        elif old in LIVE and self.tasks.get(task.task_id) is task:
            del self.tasks[task.task_id]

    def validate(self) -> None:
        """Check the invariants (see :func:`cluster.head.invariants.check`); raises
        AssertionError naming the first one broken."""
        check(self.tasks, self.ready, self.gangs, self.waiters, self.nodes,
              self.actor_table.queued_calls(), self.actor_table.inflight_calls(),
              self.objects.refs, self.failures.deciding)
        self.dispatch.check()
        self.staging.check(self.nodes)

    def _started(self, task: Task, node: Node) -> None:
        """Dispatch placed `task` on `node`."""
        task.node_id = node.node_id  # first: the history records where it runs
        self.set_state(task, TaskState.RUNNING)
        node.running[task.task_id] = task
        node.idle_since = None
        if task.task_id in self.waiters and self.staging.enabled:
            self.staging.placed(task, node)

    # ---- helpers ---------------------------------------------------------------------
    def soon(self) -> None:
        """Flush (schedule and send) at the end of this loop turn."""
        if not self._flush_pending:
            self._flush_pending = True
            (self._loop or asyncio.get_event_loop()).call_soon(self._flush)

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the loop and start the node liveness check."""
        self._loop = loop
        loop.call_later(1.0, self._check_nodes)

    def _broadcast_node(self, node: Node) -> None:
        if self.history is not None:  # it joined, or was lost
            self.history.node(node)
        info = node.info()
        for driver in self.drivers.values():
            driver.nodes.append(info)
        self.soon()

    # ---- nodes -------------------------------------------------------------------------
    def node_joined(self, conn: Conn, register: pb.Register, remote: bool = True) -> Node:
        """A daemon registered: add it to the table and tell it its id.

        `remote` nodes must heartbeat; an in-process daemon cannot go silent on its own.
        """
        node_id = self._next_node
        self._next_node += 1
        total = to_dict(register.total)
        node = Node(node_id, register.name, register.address, register.pid, conn,
                    scheduler.NodeView(node_id, total, {}, scheduler.queue_factor(None)),
                    remote=remote, block_id=register.block_id,
                    store_address=register.store_address, store_dir=register.store_dir)
        self.nodes[node_id] = node
        self.dispatch.gained.add(node)
        self._feasible.clear()
        self.alive_nodes += 1
        self._retune_heartbeats()
        conn.send(pb.HeadToNode(node_id=node_id, heartbeat_interval=self.heartbeat_interval))
        log.info("node %s joined as %d: %s", node.name, node_id, scheduler.describe(total))
        self._broadcast_node(node)
        self.soon()
        return node

    def node_lost(self, node: Node, reason: str) -> None:
        """A daemon went away: retry or fail what ran there."""
        if not node.alive:
            return
        node.alive = False
        node.lost_reason = reason
        node.view.schedulable = False
        self._feasible.clear()
        self.alive_nodes -= 1
        self._retune_heartbeats()
        node.conn.close()  # a daemon that was only cut off reconnects, and joins anew
        log.warning("node %s (%d) lost: %s", node.name, node.node_id, reason)
        self.actor_table.node_lost(node, reason)
        # Left after the actor table's turn: tasks, and actors still being created.
        running = list(node.running.values())
        node.running.clear()
        lost = self.objects.node_lost(node.node_id)
        if lost:
            rebuilt = self.lineage.rebuild(lost)
            for object_id in lost:
                if object_id not in rebuilt:
                    self.objects.mark_lost(object_id,
                                           self.lineage.lost_value(object_id, node.name))
            log.warning("%d objects were held only by %s: %d being rebuilt", len(lost),
                        node.name, len(rebuilt))
        for task in running:
            self.dispatch.unreserve(task)
            if task.spec.kind == pb.ACTOR_CREATE:
                self.actor_table.creation_lost(task, f"node {node.name} was lost ({reason})")
                continue
            if task.state is TaskState.CANCELLING:
                self.fail(task, pb.CANCELLED, self.cancels.reason(task))
                continue
            if node.draining:  # a planned stop (drain, walltime): not the task's fault
                self.failures.rerun_free(task, f"node {node.name} stopped ({reason})")
                continue
            result = pb.TaskResult(task_id=task.task_id, status=pb.NODE_LOST,
                                   node=node.name, attempt=task.spec.attempt,
                                   message=f"node {node.name} was lost ({reason})")
            self._task_failed(task, result)
        self.staging.node_lost(node)  # (now that their inputs were retried or failed)
        caller = self.drivers.get(NODE_CALLER_BASE + node.node_id)
        if caller is not None:
            self.driver_left(caller)
        self.cancels.node_lost()
        self.nested.node_lost(node)
        self._broadcast_node(node)
        self._fail_unschedulable()
        self.soon()

    def on_node_message(self, node: Node, message: pb.NodeToHead) -> None:
        """One batch from a daemon."""
        node.last_seen = time.monotonic()
        if self.history is not None:
            self.history.node_batch(node, message)
        if message.HasField("heartbeat"):
            node.heartbeat = message.heartbeat
        if message.results:  # it answered: a batch held for it may go (dispatch.flush)
            node.awaiting = False
        staging = self.staging
        for result in message.results:
            task = node.running.pop(result.task_id, None)
            if task is None:
                task = node.staged.pop(result.task_id, None) if node.staged else None
                if task is not None:  # sent back unrun, or dropped by a cancel
                    staging.returned(task, node, result)
                else:
                    self.actor_table.call_result(result)
                continue
            if task.spec.kind == pb.ACTOR_CREATE:
                self._creation_finished(task, node, result)
                continue
            if staging.heirs and task.task_id in staging.heirs:
                staging.input_ended(task, node, result)
            self.dispatch.unreserve(task)
            if result.status == pb.BOUNCED:  # staged, and came after its input ended
                staging.returned(task, node, result)
                continue
            node.finished(result.run_seconds)
            if task.state is TaskState.CANCELLING:
                self.fail(task, pb.CANCELLED, self.cancels.reason(task))
                continue
            if result.status == pb.OK:
                self.task_done(task, result)
            elif result.status == pb.OBJECT_LOST:
                missing = self.missing_args(task)
                if missing:  # an argument is being rebuilt: the task runs once it is back
                    self.wait(task, missing)
                elif missing is not None:
                    self._task_failed(task, result)
            else:
                self._task_failed(task, result)
        for object_id in message.copies:
            value = self.objects.get(object_id)
            if value is not None and value.size:
                value.holders.add(node.node_id)
            else:  # dropped while it travelled
                self.dispatch.delete(node, object_id)
        if message.cancel_replies:
            self.cancels.answered(list(message.cancel_replies))
        if message.leaving:  # SIGTERM (walltime, scancel): what runs here re-runs free
            self.drain([node.node_id])
        for event in message.actor_events:
            self.actor_table.died(event.actor_id, event.message)
        if message.nested or message.blocked or message.unblocked:  # (before calls: an
            self.nested.on_node_message(node, message)  # app creates an actor, calls it)
        if message.submit:
            caller_id = NODE_CALLER_BASE + node.node_id
            caller = self.drivers.get(caller_id)
            if caller is None:
                caller = self.drivers[caller_id] = Driver(caller_id, NodeCallerConn(node))
            for spec in message.submit:
                self._submit(caller, spec)
        if message.logs:
            drivers = self.drivers
            for line in message.logs:
                driver = drivers.get(line.task_id >> DRIVER_SHIFT)
                if driver is not None:
                    driver.logs.append(line)
        self.soon()

    def _creation_finished(self, task: Task, node: Node, result: pb.TaskResult) -> None:
        """An actor's __init__ finished on `node`: it lives there (holding its resources),
        or its creation failed."""
        if result.status == pb.OK:
            node.running[task.task_id] = task
            self.task_done(task, result)
            self.actor_table.created(task, node, result.route)
        else:
            self.dispatch.unreserve(task)
            self.finish_failed(task, result)  # the actor table hears of it there

    def _retune_heartbeats(self) -> None:
        """Tell every node a new heartbeat interval when the cluster has grown or shrunk
        enough (see :mod:`cluster.policy.liveness`)."""
        wanted = liveness.heartbeat_interval(self.alive_nodes)
        if not liveness.needs_update(self.heartbeat_interval, wanted):
            return
        self.heartbeat_interval = wanted
        message = pb.HeadToNode(heartbeat_interval=wanted)
        for node in self.nodes.values():
            if node.alive and node.remote:
                node.conn.send(message)

    def _check_nodes(self) -> None:
        now = time.monotonic()
        timeout = liveness.node_timeout(self.node_timeout, self.heartbeat_interval)
        for node in list(self.nodes.values()):
            if node.alive and node.remote and now - node.last_seen > timeout:
                self.node_lost(node, f"no heartbeat for {timeout:g}s")
        self._retune_heartbeats()
        if self._loop is not None:
            self._loop.call_later(liveness.check_period(timeout), self._check_nodes)

    # ---- drivers -----------------------------------------------------------------------
    def driver_joined(self, conn: Conn, hello: pb.DriverHello) -> Driver:
        """A driver connected: give it an id and the node table."""
        driver = Driver(self._next_driver, conn, hello.hostname, hello.pid)
        self._next_driver += 1
        self.drivers[driver.driver_id] = driver
        welcome = pb.Welcome(driver_id=driver.driver_id, cluster_id=self.cluster_id,
                             nodes=[n.info() for n in self.nodes.values()])
        fill(welcome.block_shape, self.block_shape)
        conn.send(pb.HeadToDriver(welcome=welcome))
        log.info("driver %d joined from %s pid %d", driver.driver_id, hello.hostname, hello.pid)
        return driver

    def driver_left(self, driver: Driver) -> None:
        """A driver disconnected: drop its queued tasks and its references."""
        driver_left(self, driver)

    def _leased_ran(self, tasks: Iterable[pb.LeasedTask]) -> None:
        """Tasks a driver ran on the worker it leases (api._lease), never seen here: one
        still running (``finished`` 0) counts as running until its end is reported; an
        ended one's node counts it and learns its run time (its queue allowance follows
        it, as for tasks through here). The history records both."""
        running = self.leased_running
        history = self.history
        for task in tasks:
            task_id, node_id = task.spec.task_id, self._node_of_actor(task.lease)
            if not task.finished:
                running[task_id] = node_id
                if history is not None:
                    history.leased(task, node_id, started=True)
                continue
            seen = running.pop(task_id, None) is not None
            if task.result.status == pb.OK:
                self.done += 1
            else:
                self.failed += 1
            node = self.nodes.get(node_id)
            if node is not None:
                node.finished(max(0.0, task.finished - task.submitted))
            if history is not None:
                history.leased(task, node_id, started=not seen)

    def _node_of_actor(self, actor_id: int) -> int:
        actor = self.actor_table.actors.get(actor_id)
        return actor.node_id if actor is not None else 0

    def on_driver_message(self, driver: Driver, message: pb.DriverToHead) -> None:
        """One batch from a driver: puts, submissions, releases, gets (in that order)."""
        if message.leased:  # (before its submissions: they may follow what it reports)
            self._leased_ran(message.leased)
        for value in message.put:
            holders = {h for h in value.holders if h in self.nodes}
            self.objects.put(value.id, Value(pb.OK, value.data, size=value.size,
                                             holders=holders, nested=list(value.nested)))
            driver.hold(value.id)
        for spec in message.submit:
            self._submit(driver, spec)
        for object_id in message.release:
            held = driver.refs.get(object_id, 0)
            if held:
                if held == 1:
                    del driver.refs[object_id]
                else:
                    driver.refs[object_id] = held - 1
                self.objects.decref(object_id)
        for request in message.get:
            self.objects.request(driver.replies, request, self.tasks.__contains__, driver.refs)
        for actor_id in message.kill_actor:
            self.actor_table.kill(actor_id)
        for request in message.cancel:
            self.cancels.request(driver, request)
        if message.retry or message.give_up:
            for task_id in message.retry:
                self.failures.decided(driver, task_id, True)
            for task_id in message.give_up:
                self.failures.decided(driver, task_id, False)
        for lookup in message.lookup:
            info = self.actor_table.lookup(lookup.name)
            reply = pb.ActorLookupReply(request_id=lookup.request_id, found=info is not None)
            if info is not None:
                reply.actor.CopyFrom(info)
            driver.lookups.append(reply)
        self.soon()

    # ---- tasks -------------------------------------------------------------------------
    def _submit(self, driver: Driver, spec: pb.TaskSpec) -> None:
        if spec.fn_blob:
            self.functions[spec.fn_id] = spec.fn_blob
            spec.ClearField("fn_blob")
        task_id = spec.task_id
        shape = spec.resources.SerializeToString()
        known = self._shapes.get(shape)
        if known is None:  # converted once per shape: 11% of the head's time per task
            if len(self._shapes) > 4096:
                self._shapes.clear()
            request = to_dict(spec.resources)
            known = self._shapes[shape] = (request, ", ".join(
                k for k, v in request.items() if not 0 <= v < float("inf")), shape)
        request, bad, shape = known   # shared by every task of the shape: never mutated
        if spec.priority:  # one ready queue per (shape, priority): see policy.priority
            shape = priority.queue_key(shape, spec.priority)
        task = Task(spec, request, shape, task_id=task_id)
        self.objects.incref(task_id)
        driver.hold(task_id)
        failed_dep: tuple[int, Value] | None = None
        pending: list[int] = []
        for dep in spec.deps:
            self.objects.incref(dep)
            value = self.objects.get(dep)
            if value is not None:
                if value.status != pb.OK and failed_dep is None:
                    failed_dep = (dep, value)
            elif dep in self.tasks:
                pending.append(dep)
            elif failed_dep is None:
                failed_dep = (dep, LOST)
        if spec.kind == pb.ACTOR_CALL:
            refused = self.actor_table.refuse_call(spec.actor_id)
            if refused:
                self.fail(task, pb.ACTOR_DIED, refused)
                return
        elif spec.fn_id not in self.functions:
            self.fail(task, pb.CANCELLED, "the app's function body was never sent to the head")
            return
        elif spec.kind == pb.ACTOR_CREATE:
            refused = self.actor_table.register(task)
            if refused:
                self.fail(task, pb.ACTOR_DIED, refused)
                return
        if failed_dep is not None:
            self._fail_dependency(task, failed_dep[0], failed_dep[1])
            return
        if bad:  # NaN, infinite or negative amounts would corrupt the node accounting
            self.fail(task, pb.UNSCHEDULABLE, f"invalid resource amounts: {bad}")
            return
        reason = self._infeasible(request, spec.num_nodes, task.shape)
        if reason:
            self.fail(task, pb.UNSCHEDULABLE, reason)
            return
        if spec.kind == pb.ACTOR_CALL:
            self.actor_table.enqueue(task)
        if pending:
            self.wait(task, pending)
        else:
            self.make_ready(task)

    def wait(self, task: Task, pending: list[int]) -> None:
        """`task` waits for the objects `pending` (one entry per argument)."""
        self.set_state(task, TaskState.WAITING)
        task.pending = len(pending)
        for dep in pending:
            self.waiters.setdefault(dep, []).append(task)
        if self.staging.enabled:
            self.staging.submitted(task, pending)

    def _infeasible(self, request: dict[str, float], num_nodes: int = 1,
                    shape: bytes | None = None) -> str:
        # Cached per request shape (see _feasible): the scan over every node cost 14-17%
        # of the head's time at 1,000-5,000 nodes.
        if shape is not None:
            key = (shape, num_nodes)
            if key not in self._feasible:
                self._feasible[key] = self._infeasible(request, num_nodes)
            return self._feasible[key]
        reason = scheduler.infeasible(
            request, [n.view.total for n in self.nodes.values() if n.alive], num_nodes,
            self.block_shape if num_nodes == 1 else None)
        return f"no node can ever run this task: {reason}" if reason else ""

    def _fail_unschedulable(self) -> None:
        for key, queue in list(self.ready.items()):
            reason = self._infeasible(queue[0].request) if queue else ""
            if reason:
                del self.ready[key]
                for task in queue:
                    self.fail(task, pb.UNSCHEDULABLE, reason, queued=False)

    def dequeue(self, task: Task) -> None:
        """Take a QUEUED task out of its queue (rare: cancellation paths)."""
        if task.spec.num_nodes > 1:
            self.gangs.remove(task)
            return
        queue = self.ready.get(task.shape)
        if queue is not None:
            queue.remove(task)
            if not queue:
                del self.ready[task.shape]

    def unready(self, object_ids: set[int]) -> None:
        """Objects are pending again (being rebuilt): queued tasks that need them go back
        to waiting, so a queued task always has all its arguments."""
        for key, queue in list(self.ready.items()):
            needing = [t for t in queue if object_ids.intersection(t.deps())]
            if not needing:
                continue
            kept = deque(t for t in queue if t not in needing)
            if kept:
                self.ready[key] = kept
            else:
                del self.ready[key]
            for task in needing:
                missing = self.missing_args(task, queued=False)
                if missing is None:
                    continue
                if missing:
                    self.wait(task, missing)
                else:  # nothing to wait for after all: back in line
                    self.ready.setdefault(task.shape, deque()).append(task)
                    self.dispatch.new_work = True

    def missing_args(self, task: Task, queued: bool = True) -> list[int] | None:
        """The task's arguments still to be produced (each once), or None when one is gone
        for good (the task then failed; `queued`: it is still in its queue)."""
        missing = []
        values = self.objects.values
        for dep in set(task.spec.deps):
            if dep in values:
                if values[dep].status != pb.OK:
                    self._fail_dependency(task, dep, values[dep], queued=queued)
                    return None
            elif dep in self.tasks:
                missing.append(dep)
            else:
                self._fail_dependency(task, dep, LOST, queued=queued)
                return None
        return missing

    def make_ready(self, task: Task) -> None:
        """Queue a task whose arguments are all there."""
        self.set_state(task, TaskState.QUEUED)
        task.pending = 0
        if task.spec.kind == pb.ACTOR_CALL:
            self.actor_table.ready(task)
            return
        self.dispatch.new_work = True
        if task.spec.num_nodes > 1:  # (rare: ordered by priority on the way in)
            priority.insert(self.gangs, task, task.spec.priority, priority_of_task)
            return
        queue = self.ready.get(task.shape)
        if queue is None:
            queue = self.ready[task.shape] = deque()
        if task.spec.parent_task:  # submitted inside a task: newest first (depth-first)
            queue.appendleft(task)
        else:
            queue.append(task)
            if len(queue) > COMPACT_AFTER:  # far back: its spec as bytes (head memory)
                task.compact()

    def task_done(self, task: Task, result: pb.TaskResult) -> None:
        """`task` succeeded with `result`: keep its value, wake what waits for it."""
        task_id = task.task_id
        creation = task.spec.kind == pb.ACTOR_CREATE
        self.set_state(task, TaskState.HOSTING if creation else TaskState.DONE)
        self.done += 1
        driver = self.drivers.get(task_id >> DRIVER_SHIFT)
        if result.size:
            result.holders.append(task.node_id)
        if driver is not None:
            self.objects.hand_over(result.nested, driver.refs)
        # A stored result keeps its task's arguments alive, to be rebuilt if lost.
        kept = self.lineage.record(task, result)
        self.objects.finish(task_id, Value(pb.OK, result.data, size=result.size,
                                           holders={task.node_id} if result.size else set(),
                                           nested=list(result.nested)))
        if not creation and not kept:  # restarts need a creation's arguments again
            for dep in task.spec.deps:
                self.objects.decref(dep)
        if driver is not None:
            driver.results.append(result)
        waiting = self.waiters.pop(task_id, None)
        if waiting:
            for dependent in waiting:
                if dependent.state is not TaskState.WAITING:
                    continue  # failed meanwhile
                dependent.pending -= 1
                if dependent.pending == 0:
                    self.make_ready(dependent)

    def _task_failed(self, task: Task, result: pb.TaskResult) -> None:
        self.failures.task_failed(task, result)

    def fail(self, task: Task, status: pb.Status, message: str, queued: bool = True) -> None:
        """End `task` with `status` and `message` (no retry); see :meth:`finish_failed`."""
        self.failures.fail(task, status, message, queued)

    def finish_failed(self, task: Task, result: pb.TaskResult, queued: bool = True) -> None:
        """`task` failed for good (see :meth:`cluster.head.failures.Failures.finish_failed`)."""
        self.failures.finish_failed(task, result, queued)

    def end_hosting(self, task: Task) -> None:
        """An actor's creation that held its node's resources ends (the actor is dead)."""
        self.failures.end_hosting(task)

    def _fail_dependency(self, task: Task, dep: int, value: Value, name: str = "",
                         queued: bool = True) -> None:
        self.failures.fail_dependency(task, dep, value, name, queued)

    # ---- objects ----------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_pending = False
        self.dispatch.schedule(self.ready, self.gangs)
        self.dispatch.flush()
        for driver in self.drivers.values():
            message = driver.take_batch()
            if message is not None:
                driver.conn.send(message)

    def demand(self) -> tuple[int, float, float, bool]:
        """What the autoscaler needs (see :func:`cluster.head.report.demand`)."""
        return demand(self.nodes, [*self.ready.values(), self.gangs], self.block_shape)

    def blocks_info(self) -> list[pb.BlockInfo]:
        """The autoscaler's blocks (none when nothing autoscales)."""
        return self.blocks_status() if self.blocks_status else []

    def drain(self, node_ids: list[int]) -> None:
        """No new work for these nodes; what runs there finishes."""
        drain_nodes(self.nodes, node_ids)

    def stop_node(self, node_id: int) -> None:
        """Tell a node's daemon to exit."""
        stop_daemon(self.nodes, node_id)

    def status(self, node_limit: int = 0) -> pb.StatusReply:
        """A snapshot for `clusterctl status` (see :func:`cluster.head.report.status_reply`)."""
        reply = status_reply(self, node_limit)
        reply.nested_records = self.nested.live_records()
        return reply

    def shutdown(self) -> None:
        """Tell every daemon to stop, then whoever owns the head."""
        for node in self.nodes.values():
            if node.alive:
                node.conn.send(pb.HeadToNode(shutdown=True))
        if self.on_shutdown is not None:
            self.on_shutdown()
