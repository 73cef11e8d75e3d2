"""The driver's connection to a head: futures, batching, results.

User threads append task specs, puts, releases and gets to lists under a lock and ask the
transport (:mod:`api._transport`) to flush; whatever piled up goes out as one batch. Result
batches resolve futures on the transport's reader; done-callbacks run on the client's
callback thread (:class:`api._futures.CallbackThread`).

Results of direct actor calls never pass the head. When one is a dependency of a task or
of an actor call, the head is told its value first: as a put under the call's id (puts go
before submissions), once the call has resolved; until then the submission waits here
(its future is returned at once), behind which later calls to the same actor wait too.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import pickle
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from api import _cancel, _errors
from api._direct import DirectCalls
from api._futures import AppFuture, CallbackThread, FutureLock, Stored, block, format_id
from api._held import HeldSubmissions
from api._lease import TaskLease
from api._objects import ObjectClient
from api._transport import LaneTransport, Transport
from cluster.common import serialization
from cluster.common.ids import DRIVER_SHIFT
from cluster.common.protocol import pb, to_dict


class Client(HeldSubmissions):
    """A connected driver. Made by :func:`api.init`; not part of the public API."""

    def __init__(self, targets: list[str], secret: str, *, log_to_driver: bool = True,
                 tls_ca: str = "") -> None:
        self.tls_ca = tls_ca
        self.targets = targets
        self.secret = secret
        self.log_to_driver = log_to_driver
        self.driver_id = 0
        self.cluster_id = ""
        self.address = ""
        self.nodes: dict[int, pb.NodeInfo] = {}
        self.block_shape: dict[str, float] = {}  # what an autoscaled node would bring
        self.cwd = os.getcwd()
        self.closed = False
        self._lock = threading.Lock()
        self._submits: list[pb.TaskSpec] = []
        self._puts: list[pb.Value] = []
        self._releases: list[int] = []
        self._gets: list[pb.GetRequest] = []
        self._kills: list[int] = []
        self._lookups: list[pb.ActorLookup] = []
        self._futures: dict[int, AppFuture] = {}
        self._get_waiters: dict[int, concurrent.futures.Future] = {}
        self._sent_functions: set[bytes] = set()
        self._seq = itertools.count(1)
        self._transport: Any = None   # a Transport once connected
        self._lost = ""
        #: ``on`` while this thread delivers the head's batches (see on_reader_thread).
        self._delivering = threading.local()
        self._inline: Any = None  # the transport's wait_inline, if it has one
        self.direct = DirectCalls(secret, self._actor_call_via_head, self._complete, self)
        #: The worker this driver leases for its one-at-a-time tasks (see api._lease).
        self.lease = TaskLease(self, self._complete)
        self.objects = ObjectClient(self)
        #: Where this driver's stored puts are (object id -> a result naming the holders).
        self.put_locations: dict[int, pb.TaskResult] = {}
        #: Bumped whenever the node table changes (joins, losses, updates).
        self.nodes_version = 0
        self._resources: tuple[int, list[dict[str, float]]] = (-1, [])
        #: Runs the done-callbacks of this client's futures (never on a reader thread).
        self.callbacks = CallbackThread()
        # Actor calls whose results the head may not know (they went direct): id -> future.
        self._actor_futures: weakref.WeakValueDictionary[int, AppFuture] = \
            weakref.WeakValueDictionary()
        # Submissions waiting for direct-call dependencies, per actor (or per task).
        self._deferred: dict[Any, deque[tuple[list[AppFuture], Callable[[], None],
                                              Callable[[BaseException], None]]]] = {}
        self._defer_lock = threading.RLock()
        #: Submissions held in the driver until their dependencies are known to the head:
        #: task id -> the key of the queue it waits in. A submission depending on one waits
        #: in the same queue (the head must see them in order: it fails a task whose
        #: dependency it never heard of).
        self._held: dict[int, Any] = {}
        #: Held submissions that never reached the head (failed in the driver, or
        #: cancelled): task id -> (name, error), for the submissions held behind them.
        self._held_failed: dict[int, tuple[str, BaseException]] = {}
        self._release_lock = threading.RLock()  # (api._held: releases after held submits)
        self._pinned: dict[int, int] = {}
        self._late_releases: set[int] = set()
        # Workflow control (api._cancel): cancel requests, retry_handler answers, and the
        # tasks whose CANCELLED result ends them as cancelled futures.
        self._cancels: list[pb.CancelRequest] = []
        self._retry: list[int] = []
        self._give_up: list[int] = []
        self.cancelling: set[int] = set()
        #: Tasks that ran on the leased worker, for the head's run history (api._lease).
        self._leased: list[pb.LeasedTask] = []

    # ---- connection --------------------------------------------------------------------
    def connect(self, timeout: float) -> None:
        """Connect to the first reachable target; raises ConnectionError saying what failed."""
        hello = pb.DriverToHead(hello=pb.DriverHello(hostname=socket.gethostname(),
                                                     pid=os.getpid()))
        tried = []
        for target in self.targets:
            if target.startswith(("unix:", "tcp:")):
                transport: Transport = LaneTransport(target, self.secret, self._take)
            else:
                from api._grpc_transport import GrpcTransport

                transport = GrpcTransport(target, self.secret, self._take, self.tls_ca)
            try:
                self.attach(transport, hello, timeout)
            except OSError as err:
                tried.append(str(err))
                continue
            return
        raise _errors.ConnectionError(
            "could not connect to a shoal cluster; tried " + "; ".join(tried)
            + ". Is it up? (`clusterctl status`, or api.init() with no address for a local one)")

    def attach(self, transport: Any, hello: pb.DriverToHead, timeout: float) -> None:
        """Say hello over `transport` and use it (OSError when it cannot connect)."""
        welcome = transport.connect(hello, timeout)
        self._transport, self.address = transport, transport.target
        self.driver_id = welcome.driver_id
        self.cluster_id = welcome.cluster_id
        self._inline = getattr(transport, "wait_inline", None)
        transport.start(self._on_message, self._on_lost)

    def _take(self) -> pb.DriverToHead | None:
        running = self.lease.running_report()
        with self._lock:
            if running is not None:
                self._leased.append(running)
            if not (self._submits or self._puts or self._releases or self._gets or
                    self._kills or self._lookups or self._cancels or self._retry or
                    self._give_up or self._leased):
                return None
            message = pb.DriverToHead(submit=self._submits, put=self._puts,
                                      release=self._releases, get=self._gets,
                                      kill_actor=self._kills, lookup=self._lookups)
            self._submits, self._puts, self._releases, self._gets = [], [], [], []
            self._kills, self._lookups = [], []
            if self._leased:
                message.leased.extend(self._leased)
                self._leased = []
            if self._cancels or self._retry or self._give_up:
                message.cancel.extend(self._cancels)
                message.retry.extend(self._retry)
                message.give_up.extend(self._give_up)
                self._cancels, self._retry, self._give_up = [], [], []
        return message

    def _on_message(self, message: pb.HeadToDriver) -> None:
        # On the transport's reader thread, or on a thread waiting for a result that reads
        # the connection itself (wait_inline): either way, no answer can arrive meanwhile.
        delivering = self._delivering
        delivering.on = True
        try:
            self._deliver(message)
        finally:
            delivering.on = False

    def _on_lost(self, reason: str) -> None:
        delivering = self._delivering
        delivering.on = True
        try:
            self._fail_all(reason)
        finally:
            delivering.on = False

    def wait_inline(self, fut: Any, timeout: float | None) -> float | None:
        """Let the thread about to wait for `fut` read the head's batches itself until
        it is done (the transport decides whether it can); returns the timeout left.
        Not for direct actor calls: their answers come on another socket."""
        inline = self._inline
        cond = fut._condition
        if inline is None or type(cond) is not FutureLock or \
                getattr(self._delivering, "on", False) or fut.task_id in self._actor_futures:
            return timeout
        start = time.monotonic()
        inline(fut.done, timeout, cond)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - start))

    def _deliver(self, message: pb.HeadToDriver) -> None:
        if message.HasField("welcome"):
            for node in message.welcome.nodes:
                self.nodes[node.node_id] = node
            self.nodes_version += 1
            self.block_shape = to_dict(message.welcome.block_shape)
        if message.results:
            self._on_results(message.results)
        if message.logs and self.log_to_driver:
            self._print_logs(message.logs)
        for reply in message.replies:
            waiter = self._get_waiters.pop(reply.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(list(reply.values))
        for lookup in message.lookups:
            waiter = self._get_waiters.pop(lookup.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(lookup)
        for cancel in message.cancel_replies:
            waiter = self._get_waiters.pop(cancel.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(cancel)
        if message.nodes:
            for node in message.nodes:
                self.nodes[node.node_id] = node
            self.nodes_version += 1

    def check_connected(self) -> None:
        """ConnectionError at once when the connection to the head is gone."""
        if self._lost:
            raise _errors.ConnectionError(f"not connected to the cluster: {self._lost}")

    def _fail_all(self, reason: str, shutdown: bool = False) -> None:
        self._lost = reason
        with self._lock:
            futures, self._futures = self._futures, {}
            waiters, self._get_waiters = self._get_waiters, {}
            if shutdown:  # direct calls in flight or held too: nothing answers them now
                futures.update({i: f for i, f in list(self._actor_futures.items())
                                if not f.done()})
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(_errors.TaskCancelledError(reason) if shutdown
                                  else _errors.WorkerCrashedError(reason))
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(_errors.ConnectionError(reason))

    # ---- results -------------------------------------------------------------------------
    def _on_results(self, results: Iterable[pb.TaskResult]) -> None:
        futures = self._futures
        for result in results:
            if result.route:
                self.direct.learn(result.task_id, result.route)
            fut = futures.pop(result.task_id, None)
            if fut is not None and not fut.done():
                if result.status == pb.OK and (result.size or result.nested):
                    # Loaded when asked for (large values stay in the node's store).
                    fut.set_result(Stored(result))
                elif result.status != pb.OK and _cancel.intercept(self, fut, result):
                    pass  # cancelled by request, or its retry_handler is asked first
                elif result.status == pb.OK:
                    # No refs inside (they would be listed in `nested`): plain pickle
                    # loads it as the ref unpickler would, without its set-up per value.
                    try:
                        value = pickle.loads(result.data)
                    except Exception:  # noqa: BLE001 - _complete reports it
                        self._complete(fut, result.status, result.data, result.message,
                                       fut.name, result.task_id)
                    else:
                        fut.set_result(value)
                else:
                    self._complete(fut, result.status, result.data, result.message,
                                   fut.name, result.task_id)
            elif result.retry_pending:  # nobody waits for it any more: no retry
                self.decide(result.task_id, False)
            # Here, on delivery: calls held behind this one must not wait for the
            # callback thread (a user's callback there may be waiting for them).
            self.direct.head_done(result.task_id)

    def _complete(self, fut: AppFuture, status: pb.Status, data: bytes, message: str, name: str,
                  task_id: int = 0) -> None:
        if fut.done():  # (failed already: the session ended while it was in flight)
            return
        if status == pb.OK:
            try:
                value = serialization.loads(data)
            except Exception as err:  # noqa: BLE001
                fut.set_exception(_errors.SerializationError(
                    f"the result of {name} could not be loaded in the driver: {err!r}"))
                return
            fut.set_result(value)
        else:
            fut.set_exception(self.error_for(
                pb.TaskResult(task_id=task_id or fut.task_id, status=status, data=data,
                              message=message), name))

    def owned_ref(self, object_id: int) -> serialization.ObjectRef:
        """A ref loaded from a value: the driver releases it when it is dropped."""
        return serialization.ObjectRef(object_id, self)

    def load(self, result: pb.TaskResult, ask: bool = True) -> Any:
        """The value of an OK result: fetched from a node store, or loaded from its bytes.

        If the nodes that held a stored value are gone, the head is asked where it is now
        (it may be being rebuilt from its lineage: the call then waits for it)."""
        if not result.size:
            return serialization.loads(result.data, self.owned_ref)
        try:
            return self.objects.fetch(result.task_id, result.size, list(result.holders))
        except _errors.ObjectLostError:
            if not ask or getattr(self._delivering, "on", False):
                raise  # (on our reader thread, a done-callback: no answer could arrive)
        (current,) = self.get_values([result.task_id], None)
        if current.status != pb.OK:
            raise self.error_for(current, f"object {format_id(result.task_id)}")
        return self.load(current, ask=False)

    def call_actor(self, actor_id: int, method: str, data: bytes, deps: list[int],
                   future: AppFuture) -> None:
        """Send an actor call: directly to the actor's worker when order allows."""
        self.check_connected()
        with self._lock:
            self._actor_futures[future.task_id] = future
        self.direct.call(actor_id, (future.task_id, method, data, deps, future, future.name,
                                    actor_id))

    def _actor_call_via_head(self, call: tuple) -> None:
        task_id, method, data, deps, future, name, actor_id = call
        spec = pb.TaskSpec(task_id=task_id, kind=pb.ACTOR_CALL, name=method, args=data,
                           deps=deps, actor_id=actor_id, method=method)
        with self._lock:
            self._actor_futures.pop(task_id, None)  # the head sees this one's result
            self._futures[task_id] = future

        def send() -> None:
            cancelled = future.done()
            if not self.held_turn(task_id, future, deps, fail, "actor call"):
                if cancelled:  # (fail() tells the calls behind it otherwise)
                    self.direct.head_done(task_id)
                return
            with self._lock:
                self._submits.append(spec)  # (written by _drain, or just below)

        def fail(err: BaseException) -> None:
            self.held_failed(task_id, future, err)
            self.direct.head_done(task_id)

        with self._defer_lock:
            also = self._held_elsewhere(deps, actor_id) if deps else []
            if actor_id in self._deferred or also or (deps and self._unknown_to_head(deps)):
                self._held[task_id] = actor_id
                self._when_known(actor_id, deps, future, send, fail, also)
                return
        send()
        self._transport.flush()

    def _fail_locally(self, future: AppFuture, err: BaseException) -> None:
        """Fail a submission that never reached the head."""
        with self._lock:
            self._futures.pop(future.task_id, None)
        if isinstance(err, _errors.DependencyError) and not future.done():
            err = _errors.DependencyError(f"app {future.name!r} did not run: {err}",
                                          future.name, err.dependency)
        if not future.done():
            future.set_exception(err)

    def error_for(self, result: pb.TaskResult, name: str) -> BaseException:
        """The exception a failed result stands for (the mapping workers use too)."""
        return _errors.error_for(result.status, result.data, result.message, name,
                                 result.task_id)

    def _print_logs(self, lines: Iterable[pb.LogLine]) -> None:
        for line in lines:
            stream = sys.stderr if line.stderr else sys.stdout
            prefix = f"({line.name} task={format_id(line.task_id)} node={line.node}) "
            text = line.text[:-1] if line.text.endswith("\n") else line.text
            try:
                stream.write("".join(prefix + part + "\n" for part in text.split("\n")))
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stdout must not kill the client
                pass

    # ---- called from user threads ---------------------------------------------------------
    def new_id(self) -> int:
        """A fresh cluster-wide object/task id."""
        return (self.driver_id << DRIVER_SHIFT) | next(self._seq)

    def track_local(self, future: AppFuture) -> None:
        """A future this driver resolves itself (a memoized call's): a submission that
        depends on it waits until it is done, then the head is told its value (as for a
        direct actor call), unless it was submitted with ``submit(..., local=True)``."""
        with self._lock:
            self._actor_futures[future.task_id] = future

    def submit(self, spec: pb.TaskSpec, fn_blob: bytes, future: AppFuture,
               local: bool = False) -> None:
        """Queue a task spec; its result resolves `future`. A spec depending on direct
        actor calls waits (here, not in the caller) until the head knows their values.
        `local`: `future` was tracked (:meth:`track_local`) and is now a task the head
        runs (untracked as its spec is queued, so no dependent reaches the head first)."""
        self.check_connected()
        if not local and spec.kind <= pb.BASH and self.lease.offer(spec, fn_blob, future):
            return  # sent straight to the driver's leased worker
        if spec.deps and (self._actor_futures or self._held) and self._hold(spec, fn_blob,
                                                                            future, local):
            return
        with self._lock:
            if spec.fn_id not in self._sent_functions:
                spec.fn_blob = fn_blob
                self._sent_functions.add(spec.fn_id)
            in_flight = bool(self._futures)  # (none: a sync round trip, sent at once)
            self._futures[spec.task_id] = future
            if local:
                self._actor_futures.pop(spec.task_id, None)
            self._submits.append(spec)
        if in_flight:
            self._transport.flush_soon()
        else:
            self._transport.flush()

    def put(self, value: pb.Value) -> None:
        """Queue a put (its bytes inline, or where a node store holds them)."""
        if value.size:  # gets of it can go straight to the store, without asking the head
            self.put_locations[value.id] = pb.TaskResult(task_id=value.id, size=value.size,
                                                         holders=value.holders)
        with self._lock:
            self._puts.append(value)
        self._transport.flush()

    def release(self, object_id: int) -> None:
        """Drop the driver's reference (sent with the next batch, or when idle)."""
        if not self.closed:
            if self._pinned and self.defer_release(object_id):
                return  # (a held submission depends on it: released after it is sent)
            self._releases.append(object_id)
            self.put_locations.pop(object_id, None)

    def _ask(self, queue: list[Any], make: Any, timeout: float | None, what: str) -> Any:
        """Send a request the head answers by request id; wait for the answer."""
        waiter: concurrent.futures.Future = concurrent.futures.Future()
        request_id = next(self._seq)
        with self._lock:
            self.check_connected()  # (under the lock: _fail_all empties the waiters)
            self._get_waiters[request_id] = waiter
            queue.append(make(request_id))
        self._transport.flush()
        left = block([waiter], 1, timeout)  # (inside a worker: CPUs given back meanwhile)
        try:
            return waiter.result(left)
        except concurrent.futures.TimeoutError:
            self._get_waiters.pop(request_id, None)
            raise TimeoutError(f"{what} within {timeout}s") from None

    def get_values(self, ids: list[int], timeout: float | None) -> list[pb.TaskResult]:
        """Fetch objects from the head (waits until they exist)."""
        return self._ask(self._gets, lambda rid: pb.GetRequest(request_id=rid, ids=ids),
                         timeout, "objects not available")

    def lookup_actor(self, name: str, timeout: float | None) -> pb.ActorLookupReply:
        """Ask the head for the live actor named `name`."""
        return self._ask(self._lookups, lambda rid: pb.ActorLookup(request_id=rid, name=name),
                         timeout, f"no answer about actor {name!r}")

    def kill_actor(self, actor_id: int) -> None:
        """Ask the head to kill an actor."""
        self.check_connected()
        with self._lock:
            self._kills.append(actor_id)
        self._transport.flush()

    def node_resources(self) -> list[dict[str, float]]:
        """Total resources of the alive nodes (converted once per change of the node
        table: converting 2,000 nodes on every app call cost 64% of the driver's time)."""
        version = self.nodes_version
        if self._resources[0] != version:
            self._resources = (version, [to_dict(n.total) for n in self.nodes.values()
                                         if n.state == "alive"])
        return self._resources[1]

    # ---- workflow control (see api._cancel) ----------------------------------------------
    def cancel(self, futures: list[AppFuture], force: bool = False) -> list[bool]:
        """Cancel `futures` (see :func:`api.cancel`); whether each was cancelled."""
        return _cancel.cancel_many(self, futures, force)

    @property
    def connected(self) -> bool:
        """False once the connection to the head is lost."""
        return not self._lost

    def take_unsent(self, task_id: int) -> bool:
        """Take task `task_id` out of the send buffer (or its hold for direct-call results,
        or an actor call held behind the caller's earlier calls) if it is still there;
        True if it was, and so never reaches the head."""
        if self.direct.cancel_held(task_id):
            return True
        # Send what a burst gathered first (see LaneTransport.flush_soon): taken out of the
        # buffer, the task would be unknown to the head, and dependents sent with it would
        # fail there as depending on a lost object instead of on a cancelled task.
        self._transport.flush()
        actor_call = False
        with self._lock:
            submits = self._submits
            for at, spec in enumerate(submits):
                if spec.task_id == task_id:
                    # The flush above may not have sent (another thread was writing, or the
                    # transport sends on its own thread): a dependent still buffered after
                    # it would then reach the head depending on an unknown object. The
                    # head cancels it instead, and fails its dependents as it should.
                    if any(task_id in later.deps for later in submits[at + 1:]):
                        return False
                    del submits[at]
                    if spec.fn_blob:  # the function body travels with the first task only
                        later = next((s for s in submits[at:] if s.fn_id == spec.fn_id), None)
                        if later is not None:
                            later.fn_blob = spec.fn_blob
                        else:
                            self._sent_functions.discard(spec.fn_id)
                    self._futures.pop(task_id, None)
                    actor_call = spec.kind == pb.ACTOR_CALL
                    break
            else:
                if task_id not in self._held:
                    return False
                self._futures.pop(task_id, None)
                return True  # its send() sees the future cancelled and sends nothing
        if actor_call:  # it counted as outstanding through the head: the caller's later
            self.direct.head_done(task_id)  # calls must not wait for it
        return True

    def is_direct_call(self, task_id: int) -> bool:
        """True for an actor call that went (or goes) straight to its actor's worker, or
        a task sent to the driver's leased worker."""
        return task_id in self._actor_futures

    def cancel_direct(self, task_id: int, force: bool) -> bool:
        """Cancel a direct call or leased task (see :meth:`is_direct_call`): only a leased
        task with `force` can be (its worker is killed); whether it was."""
        return bool(self.lease.cancel(task_id, force))

    def report_leased(self, task: pb.LeasedTask) -> None:
        """Queue the record of a task that ran on the leased worker for the head (sent
        with the next batch, or by the transport's idle flush within 0.2 s)."""
        with self._lock:
            self._leased.append(task)

    def tasks_in_flight(self) -> int:
        """How many of this driver's submissions through the head are unanswered."""
        return len(self._futures)

    def on_reader_thread(self) -> bool:
        """True on the thread that delivers results (it must never wait for one)."""
        return getattr(self._delivering, "on", False)

    def ask_cancel(self, task_ids: list[int], force: bool) -> list[concurrent.futures.Future]:
        """Ask the head to cancel `task_ids` (one batch); a future for each answer."""
        waiters = []
        with self._lock:
            for task_id in task_ids:
                waiter: concurrent.futures.Future = concurrent.futures.Future()
                request_id = next(self._seq)
                self._get_waiters[request_id] = waiter
                self.cancelling.add(task_id)
                self._cancels.append(pb.CancelRequest(request_id=request_id, task_id=task_id,
                                                      force=force))
                waiters.append(waiter)
        self._transport.flush()
        return waiters

    def keep_future(self, fut: AppFuture) -> None:
        """Keep waiting for `fut`'s result (its task may run again)."""
        with self._lock:
            self._futures[fut.task_id] = fut

    def decide(self, task_id: int, retry: bool) -> None:
        """Tell the head what the retry_handler decided for `task_id`."""
        with self._lock:
            (self._retry if retry else self._give_up).append(task_id)
        self._transport.flush()

    # ---- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, disconnect, fail what is still pending."""
        if self.closed:
            return
        self.closed = True
        # First: once the head sees us leave it kills our actors, and calls in flight to
        # them would end as "the actor's worker died" instead of as the session's.
        self._fail_all("the session ended (api.shutdown()) before it finished", shutdown=True)
        if self._transport is not None:
            self._transport.close()
        self.direct.close()
        self.lease.close()
        self.objects.close()
        self.callbacks.stop()
