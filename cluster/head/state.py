"""The head's state machine: node table, task table, dependency tracking, objects, dispatch.

Everything here runs on one asyncio loop and does no I/O itself: connections (gRPC streams
or an in-process link, see :mod:`cluster.headserver`) hand it messages and it hands them
messages back through ``conn.send``. Dispatch (placement by the pure functions of
:mod:`cluster.scheduler`, and sending) is in :mod:`cluster.dispatch`.

Object ids are task ids (a task's result) or put ids; both are made by the driver as
``driver_id << 40 | sequence``, so the head can route a task's logs and results to its
driver without a lookup. Values and their reference counts are kept by the object
directory (:mod:`cluster.objects`); actors by the actor table (:mod:`cluster.actors`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cluster.common.ids import DRIVER_SHIFT, NODE_CALLER_BASE
from cluster.common.protocol import fill, pb, to_dict
from cluster.head.actors import ActorTable
from cluster.head.directory import LOST, ObjectDirectory, Value
from cluster.head.dispatch import Dispatcher
from cluster.head.lineage import Lineage
from cluster.policy import scheduler

log = logging.getLogger("shoal.head")

RETRIABLE = frozenset({pb.APP_ERROR, pb.WORKER_CRASHED, pb.TIMEOUT, pb.BASH_EXIT, pb.NODE_LOST})


class Conn(Protocol):
    """A connection the head can send batches on."""

    def send(self, message: object) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Task:
    spec: pb.TaskSpec
    request: dict[str, float]
    shape: bytes
    pending: int = 0
    node_id: int = 0
    attempts: int = 0
    reserved: dict[int, dict[str, float]] = field(default_factory=dict)  # node id -> held


@dataclass(slots=True)
class _Node:
    node_id: int
    name: str
    address: str
    pid: int
    conn: Conn
    view: scheduler.NodeView
    running: dict[int, _Task] = field(default_factory=dict)
    functions: set[bytes] = field(default_factory=set)
    outbox: list[pb.TaskSpec] = field(default_factory=list)
    mean_seconds: float | None = None
    alive: bool = True
    last_seen: float = field(default_factory=time.monotonic)
    heartbeat: pb.Heartbeat = field(default_factory=pb.Heartbeat)
    done: int = 0
    remote: bool = True
    block_id: str = ""
    draining: bool = False
    actors: set[int] = field(default_factory=set)
    idle_since: float | None = field(default_factory=time.monotonic)
    store_address: str = ""
    store_dir: str = ""
    deletes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Driver:
    driver_id: int
    conn: Conn
    hostname: str = ""
    pid: int = 0
    refs: dict[int, int] = field(default_factory=dict)
    results: list[pb.TaskResult] = field(default_factory=list)
    logs: list[pb.LogLine] = field(default_factory=list)
    replies: list[pb.GetReply] = field(default_factory=list)
    nodes: list[pb.NodeInfo] = field(default_factory=list)
    lookups: list[pb.ActorLookupReply] = field(default_factory=list)


class _NodeCallerConn:
    """Results for calls that apps on a node made: delivered to that node's daemon."""

    def __init__(self, node: _Node) -> None:
        self._node = node

    def send(self, message: pb.HeadToDriver) -> None:
        if message.results and self._node.alive:
            self._node.conn.send(pb.HeadToNode(results=message.results))

    def close(self) -> None:
        pass


class Head(Dispatcher):
    """Cluster state and the rules that move tasks through it."""

    def __init__(self, cluster_id: str, node_timeout: float = 10.0) -> None:
        self.cluster_id = cluster_id
        self.node_timeout = node_timeout
        self.started = time.time()
        self.nodes: dict[int, _Node] = {}
        self.drivers: dict[int, _Driver] = {}
        self.tasks: dict[int, _Task] = {}
        self.ready: dict[bytes, deque[_Task]] = {}
        self.gangs: deque[_Task] = deque()  # ready multi-node apps
        self.waiters: dict[int, list[_Task]] = {}
        self.objects = ObjectDirectory()
        self.objects.on_drop = self._object_dropped
        self.functions: dict[bytes, bytes] = {}
        self.done = 0
        self.failed = 0
        self.on_shutdown: Callable[[], None] | None = None
        #: Resources one autoscaled node would bring (empty when nothing autoscales);
        #: tasks that fit it wait for a block instead of failing as unschedulable.
        self.block_shape: dict[str, float] = {}
        self.blocks_status: Callable[[], list[pb.BlockInfo]] | None = None
        self.actor_table = ActorTable(self)
        self.lineage = Lineage(self)
        self._next_node = 1
        self._next_driver = 1
        self._flush_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- helpers ---------------------------------------------------------------------
    def _soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            (self._loop or asyncio.get_event_loop()).call_soon(self._flush)

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the loop and start the node liveness check."""
        self._loop = loop
        loop.call_later(1.0, self._check_nodes)

    def node_info(self, node: _Node) -> pb.NodeInfo:
        """The node as the protocol describes it."""
        info = pb.NodeInfo(node_id=node.node_id, name=node.name, address=node.address,
                           state="alive" if node.alive else "dead", pid=node.pid,
                           running=len(node.running), queued=node.heartbeat.queued,
                           workers=node.heartbeat.workers, done=node.done,
                           block_id=node.block_id, draining=node.draining,
                           store_address=node.store_address, store_dir=node.store_dir)
        info.store.CopyFrom(node.heartbeat.store)
        fill(info.total, node.view.total)
        fill(info.used, {k: v for k, v in node.view.used.items() if v > 1e-9})
        return info

    def _broadcast_node(self, node: _Node) -> None:
        info = self.node_info(node)
        for driver in self.drivers.values():
            driver.nodes.append(info)
        self._soon()

    # ---- nodes -------------------------------------------------------------------------
    def node_joined(self, conn: Conn, register: pb.Register, remote: bool = True) -> _Node:
        """A daemon registered: add it to the table and tell it its id.

        `remote` nodes must heartbeat; an in-process daemon cannot go silent on its own.
        """
        node_id = self._next_node
        self._next_node += 1
        total = to_dict(register.total)
        node = _Node(node_id, register.name, register.address, register.pid, conn,
                     scheduler.NodeView(node_id, total, {}, scheduler.queue_factor(None)),
                     remote=remote, block_id=register.block_id,
                     store_address=register.store_address, store_dir=register.store_dir)
        self.nodes[node_id] = node
        conn.send(pb.HeadToNode(node_id=node_id))
        log.info("node %s joined as %d: %s", node.name, node_id, scheduler.describe(total))
        self._broadcast_node(node)
        self._soon()
        return node

    def node_lost(self, node: _Node, reason: str) -> None:
        """A daemon went away: retry or fail what ran there."""
        if not node.alive:
            return
        node.alive = False
        node.view.schedulable = False
        node.conn.close()  # a daemon that was only cut off reconnects, and joins anew
        log.warning("node %s (%d) lost: %s", node.name, node.node_id, reason)
        self.actor_table.node_lost(node, reason)
        running = [t for t in node.running.values() if not self.actor_table.is_creation(t)]
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
            self._unreserve(task)
            result = pb.TaskResult(task_id=task.spec.task_id, status=pb.NODE_LOST,
                                   node=node.name, attempt=task.spec.attempt,
                                   message=f"node {node.name} was lost ({reason})")
            self._task_failed(task, result)
        caller = self.drivers.get(NODE_CALLER_BASE + node.node_id)
        if caller is not None:
            self.driver_left(caller)
        self._broadcast_node(node)
        self._fail_unschedulable()
        self._soon()

    def on_node_message(self, node: _Node, message: pb.NodeToHead) -> None:
        """One batch from a daemon."""
        node.last_seen = time.monotonic()
        if message.HasField("heartbeat"):
            node.heartbeat = message.heartbeat
        for result in message.results:
            task = node.running.pop(result.task_id, None)
            if task is None:
                self.actor_table.call_result(result)
                continue
            if self.actor_table.is_creation(task):
                ok = result.status == pb.OK
                if ok:
                    node.running[result.task_id] = task  # holds its resources while alive
                else:
                    self._unreserve(task)
                self.actor_table.created(task, node, ok, result.message, result.route)
                if ok:
                    self._task_done(task, result)
                else:
                    self._finish_failed(task, result)
                continue
            self._unreserve(task)
            node.done += 1
            if not node.running:
                node.idle_since = time.monotonic()
            mean = node.mean_seconds
            seconds = result.run_seconds
            node.mean_seconds = seconds if mean is None else 0.8 * mean + 0.2 * seconds
            node.view.factor = scheduler.queue_factor(node.mean_seconds)
            if result.status == pb.OK:
                self._task_done(task, result)
            elif result.status == pb.OBJECT_LOST and self.wait_for_missing(task):
                continue  # an argument is being rebuilt: the task runs once it is back
            else:
                self._task_failed(task, result)
        for object_id in message.copies:
            value = self.objects.get(object_id)
            if value is not None and value.size:
                value.holders.add(node.node_id)
            else:  # dropped while it travelled
                node.deletes.append(object_id)
        for event in message.actor_events:
            self.actor_table.died(event.actor_id, event.message)
        if message.submit:
            caller_id = NODE_CALLER_BASE + node.node_id
            caller = self.drivers.get(caller_id)
            if caller is None:
                caller = self.drivers[caller_id] = _Driver(caller_id, _NodeCallerConn(node))
            for spec in message.submit:
                self._submit(caller, spec)
        if message.logs:
            drivers = self.drivers
            for line in message.logs:
                driver = drivers.get(line.task_id >> DRIVER_SHIFT)
                if driver is not None:
                    driver.logs.append(line)
        self._soon()

    def _check_nodes(self) -> None:
        now = time.monotonic()
        for node in list(self.nodes.values()):
            if node.alive and node.remote and now - node.last_seen > self.node_timeout:
                self.node_lost(node, f"no heartbeat for {self.node_timeout:g}s")
        if self._loop is not None:
            self._loop.call_later(1.0, self._check_nodes)

    # ---- drivers -----------------------------------------------------------------------
    def driver_joined(self, conn: Conn, hello: pb.DriverHello) -> _Driver:
        """A driver connected: give it an id and the node table."""
        driver = _Driver(self._next_driver, conn, hello.hostname, hello.pid)
        self._next_driver += 1
        self.drivers[driver.driver_id] = driver
        welcome = pb.Welcome(driver_id=driver.driver_id, cluster_id=self.cluster_id,
                             nodes=[self.node_info(n) for n in self.nodes.values()])
        fill(welcome.block_shape, self.block_shape)
        conn.send(pb.HeadToDriver(welcome=welcome))
        log.info("driver %d joined from %s pid %d", driver.driver_id, hello.hostname, hello.pid)
        return driver

    def driver_left(self, driver: _Driver) -> None:
        """A driver disconnected: drop its queued tasks and its references."""
        if self.drivers.pop(driver.driver_id, None) is None:
            return
        log.info("driver %d left", driver.driver_id)
        self.actor_table.owner_left(driver.driver_id)
        for key, queue in list(self.ready.items()):
            kept = deque(t for t in queue if t.spec.task_id >> DRIVER_SHIFT != driver.driver_id)
            for task in queue:
                if task.spec.task_id >> DRIVER_SHIFT == driver.driver_id:
                    self.tasks.pop(task.spec.task_id, None)
                    for dep in task.spec.deps:
                        self.objects.decref(dep)
            if kept:
                self.ready[key] = kept
            else:
                del self.ready[key]
        for task in [t for t in self.gangs if t.spec.task_id >> DRIVER_SHIFT == driver.driver_id]:
            self.gangs.remove(task)
            self.tasks.pop(task.spec.task_id, None)
            for dep in task.spec.deps:
                self.objects.decref(dep)
        # Its tasks still waiting for dependencies would wait forever (some of those were
        # just dropped): they end as cancelled, which also releases what they hold.
        for task in [t for t in self.tasks.values() if t.pending > 0 and
                     t.spec.task_id >> DRIVER_SHIFT == driver.driver_id and
                     t.spec.kind in (pb.PYTHON, pb.BASH)]:
            self._fail(task, pb.CANCELLED, "its driver disconnected")
        for object_id, count in driver.refs.items():
            for _ in range(count):
                self.objects.decref(object_id)
        driver.refs.clear()

    def on_driver_message(self, driver: _Driver, message: pb.DriverToHead) -> None:
        """One batch from a driver: puts, submissions, releases, gets (in that order)."""
        for value in message.put:
            holders = {h for h in value.holders if h in self.nodes}
            self.objects.put(value.id, Value(pb.OK, value.data, size=value.size,
                                             holders=holders, nested=list(value.nested)))
            driver.refs[value.id] = driver.refs.get(value.id, 0) + 1
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
        for lookup in message.lookup:
            info = self.actor_table.lookup(lookup.name)
            reply = pb.ActorLookupReply(request_id=lookup.request_id, found=info is not None)
            if info is not None:
                reply.actor.CopyFrom(info)
            driver.lookups.append(reply)
        self._soon()

    # ---- tasks -------------------------------------------------------------------------
    def _submit(self, driver: _Driver, spec: pb.TaskSpec) -> None:
        if spec.fn_blob:
            self.functions[spec.fn_id] = spec.fn_blob
            spec.ClearField("fn_blob")
        task_id = spec.task_id
        request = to_dict(spec.resources)
        task = _Task(spec, request, spec.resources.SerializeToString())
        self.objects.incref(task_id)
        driver.refs[task_id] = driver.refs.get(task_id, 0) + 1
        self.tasks[task_id] = task
        failed_dep: tuple[int, Value] | None = None
        pending = 0
        for dep in spec.deps:
            self.objects.incref(dep)
            value = self.objects.get(dep)
            if value is not None:
                if value.status != pb.OK and failed_dep is None:
                    failed_dep = (dep, value)
            elif dep in self.tasks:
                pending += 1
                self.waiters.setdefault(dep, []).append(task)
            elif failed_dep is None:
                failed_dep = (dep, LOST)
        if spec.kind == pb.ACTOR_CALL:
            self.actor_table.enqueue(task)
        elif spec.fn_id not in self.functions:
            self._fail(task, pb.CANCELLED, "the app's function body was never sent to the head")
            return
        if task_id not in self.tasks:
            return  # refused (dead actor)
        if spec.kind == pb.ACTOR_CREATE:
            refused = self.actor_table.register(task)
            if refused:
                self._fail(task, pb.ACTOR_DIED, refused)
                return
        if failed_dep is not None:
            self._fail_dependency(task, failed_dep[0], failed_dep[1])
            return
        bad = [k for k, v in request.items() if not 0 <= v < float("inf")]
        if bad:  # NaN, infinite or negative amounts would corrupt the node accounting
            self._fail(task, pb.UNSCHEDULABLE, f"invalid resource amounts: {', '.join(bad)}")
            return
        reason = self._infeasible(request, spec.num_nodes)
        if reason:
            self._fail(task, pb.UNSCHEDULABLE, reason)
            return
        task.pending = pending
        if pending == 0:
            self.make_ready(task)

    def _infeasible(self, request: dict[str, float], num_nodes: int = 1) -> str:
        alive = [n.view for n in self.nodes.values() if n.alive]
        if not alive:
            return ""  # nodes may still join; the task waits
        fitting = sum(1 for v in alive if scheduler.can_ever_fit(request, v.total))
        if num_nodes > 1:
            if fitting >= num_nodes:
                return ""
            return (f"the app asks for {num_nodes} nodes with "
                    f"{scheduler.describe(request)} each; the cluster has {fitting} such "
                    f"node{'s' if fitting != 1 else ''}")
        if fitting:
            return ""
        if self.block_shape and scheduler.can_ever_fit(request, self.block_shape):
            return ""  # the autoscaler will add a block that fits
        return (f"no node can ever run this task: it asks for {scheduler.describe(request)}, "
                f"the largest node has {scheduler.describe(scheduler.largest_node(alive))}")

    def _fail_unschedulable(self) -> None:
        for key, queue in list(self.ready.items()):
            if queue and self._infeasible(queue[0].request):
                reason = self._infeasible(queue[0].request)
                del self.ready[key]
                for task in queue:
                    self._fail(task, pb.UNSCHEDULABLE, reason)

    def unready(self, object_ids: set[int]) -> None:
        """Objects are pending again (being rebuilt): queued tasks that need them go back
        to waiting, so a queued task always has all its arguments."""
        for key, queue in list(self.ready.items()):
            needing = [t for t in queue if object_ids.intersection(t.spec.deps)]
            if not needing:
                continue
            kept = deque(t for t in queue if t not in needing)
            if kept:
                self.ready[key] = kept
            else:
                del self.ready[key]
            for task in needing:
                if self.wait_for_missing(task) == 0:
                    self.make_ready(task)

    def wait_for_missing(self, task: _Task) -> int | None:
        """Make `task` wait for those of its arguments that are pending again (being
        rebuilt); returns how many, or None if one is gone for good (the task failed)."""
        missing = 0
        values = self.objects.values
        for dep in set(task.spec.deps):
            if dep in values:
                if values[dep].status != pb.OK:
                    self._fail_dependency(task, dep, values[dep])
                    return None
            elif dep in self.tasks:
                missing += 1
                self.waiters.setdefault(dep, []).append(task)
            else:
                self._fail_dependency(task, dep, LOST)
                return None
        task.pending = missing
        return missing

    def make_ready(self, task: _Task) -> None:
        """Queue a task whose arguments are all there."""
        if task.spec.kind == pb.ACTOR_CALL:
            self.actor_table.ready(task)
            return
        if task.spec.num_nodes > 1:
            self.gangs.append(task)
            return
        queue = self.ready.get(task.shape)
        if queue is None:
            queue = self.ready[task.shape] = deque()
        queue.append(task)

    def _task_done(self, task: _Task, result: pb.TaskResult) -> None:
        task_id = task.spec.task_id
        self.tasks.pop(task_id, None)
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
        if task.spec.kind != pb.ACTOR_CREATE and not kept:  # restarts need them again
            for dep in task.spec.deps:
                self.objects.decref(dep)
        if driver is not None:
            driver.results.append(result)
        waiting = self.waiters.pop(task_id, None)
        if waiting:
            for dependent in waiting:
                dependent.pending -= 1
                if dependent.pending == 0 and dependent.spec.task_id in self.tasks:
                    self.make_ready(dependent)

    def _task_failed(self, task: _Task, result: pb.TaskResult) -> None:
        if result.status in RETRIABLE and task.attempts < task.spec.max_retries:
            task.attempts += 1
            task.spec.attempt = task.attempts
            log.info("retrying task %#x (%s), attempt %d: %s", task.spec.task_id,
                     task.spec.name, task.attempts, result.message)
            self.make_ready(task)
            return
        self._finish_failed(task, result)

    def _fail(self, task: _Task, status: int, message: str) -> None:
        result = pb.TaskResult(task_id=task.spec.task_id, status=status, message=message,
                               attempt=task.spec.attempt)
        self._finish_failed(task, result)

    def _finish_failed(self, task: _Task, result: pb.TaskResult) -> None:
        task_id = task.spec.task_id
        if self.tasks.pop(task_id, None) is None:
            return
        self.failed += 1
        value = Value(result.status, result.data, result.message)
        self.objects.finish(task_id, value)
        for dep in task.spec.deps:
            self.objects.decref(dep)
        driver = self.drivers.get(task_id >> DRIVER_SHIFT)
        if driver is not None:
            driver.results.append(result)
        for dependent in self.waiters.pop(task_id, ()):
            self._fail_dependency(dependent, task_id, value, task.spec.name)

    def _fail_dependency(self, task: _Task, dep: int, value: Value, name: str = "") -> None:
        label = f"{name} " if name else ""
        status = pb.Status.Name(value.status)
        message = (f"dependency {label}(task {dep:#x}) failed with {status}: "
                   f"{value.message or 'see its future for details'}")
        result = pb.TaskResult(task_id=task.spec.task_id, status=pb.DEPENDENCY_FAILED,
                               message=message, data=value.data if value.status == pb.APP_ERROR
                               else b"")
        self._finish_failed(task, result)

    # ---- objects ----------------------------------------------------------------------
    def _object_dropped(self, object_id: int, value: Value) -> None:
        self.lineage.forget(object_id)
        for node_id in value.holders:
            node = self.nodes.get(node_id)
            if node is not None and node.alive:
                node.deletes.append(object_id)
                self._soon()

    def _flush(self) -> None:
        self._flush_pending = False
        self._schedule()
        for node in self.nodes.values():
            if node.outbox or node.deletes:
                if node.alive:
                    node.conn.send(pb.HeadToNode(tasks=node.outbox, delete=node.deletes))
                node.outbox, node.deletes = [], []
        for driver in self.drivers.values():
            if driver.results or driver.logs or driver.replies or driver.nodes or \
                    driver.lookups:
                driver.conn.send(pb.HeadToDriver(results=driver.results, logs=driver.logs,
                                                 replies=driver.replies, nodes=driver.nodes,
                                                 lookups=driver.lookups))
                driver.results, driver.logs, driver.replies, driver.nodes = [], [], [], []
                driver.lookups = []

    # ---- for the autoscaler ---------------------------------------------------------------
    def demand(self) -> tuple[int, float, float, bool]:
        """(queued tasks, their CPUs, CPUs assigned to nodes, whether a queued task fits
        only a block node)."""
        queued = 0
        queued_cpus = 0.0
        unmet = False
        alive = [n.view for n in self.nodes.values() if n.alive and not n.draining]
        for queue in [*self.ready.values(), self.gangs]:
            for task in queue:
                queued += 1
                queued_cpus += task.request.get("cpus", 0.0)
            if queue and self.block_shape:
                request = queue[0].request
                if not any(scheduler.can_ever_fit(request, v.total) for v in alive) and \
                        scheduler.can_ever_fit(request, self.block_shape):
                    unmet = True
        running = sum(n.view.used.get("cpus", 0.0) for n in self.nodes.values() if n.alive)
        return queued, queued_cpus, running, unmet

    def drain(self, node_ids: list[int]) -> None:
        """No new work for these nodes; what runs there finishes."""
        for node_id in node_ids:
            node = self.nodes.get(node_id)
            if node is not None:
                node.draining = True
                node.view.schedulable = False

    def stop_node(self, node_id: int) -> None:
        """Tell a node's daemon to exit."""
        node = self.nodes.get(node_id)
        if node is not None and node.alive:
            node.conn.send(pb.HeadToNode(shutdown=True))

    # ---- status and shutdown -------------------------------------------------------------
    def status(self) -> pb.StatusReply:
        """A snapshot for `clusterctl status`."""
        running = sum(len(n.running) for n in self.nodes.values())
        return pb.StatusReply(
            cluster_id=self.cluster_id,
            nodes=[self.node_info(n) for n in self.nodes.values()],
            tasks_queued=max(0, len(self.tasks) - running), tasks_running=running,
            tasks_done=self.done, tasks_failed=self.failed, drivers=len(self.drivers),
            objects=self.objects.stats()[0], object_bytes=self.objects.stats()[1],
            uptime=time.time() - self.started, head_pid=os.getpid(),
            blocks=self.blocks_status() if self.blocks_status else [],
            actors=self.actor_table.status())

    def shutdown(self) -> None:
        """Tell every daemon to stop, then whoever owns the head."""
        for node in self.nodes.values():
            if node.alive:
                node.conn.send(pb.HeadToNode(shutdown=True))
        if self.on_shutdown is not None:
            self.on_shutdown()
