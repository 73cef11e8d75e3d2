"""Dynamic workflows, the worker's side: the link under an app's nested client, and waits
that give the task's CPUs back.

Made the first time an app on this worker calls an app (or ``api.put``, ``api.get``...),
by ``api._nested``, which puts the driver's own client on top of it. From then on a reader
thread owns the daemon socket: :class:`NestedIn` frames go to the client, every other
frame to an inbox the worker's loop reads (:meth:`Worker._fill`). Workers that never nest
keep reading their socket directly (no thread, no queue: the hot path is unchanged).

A task that waits for other tasks (:meth:`NestedLink.block`) tells the daemon
(:class:`Blocked`): its CPUs are free while it waits, and the daemon may hand this worker
one queued task (a :class:`Run`), which runs right here, inside the wait, and reports its
:class:`Done` as usual; the wait then goes on. Before the task continues, it takes its CPUs
back (:class:`Unblocked`). See :mod:`cluster.node.nested` for the daemon's side. Tasks
the daemon prefetched to this worker (queued behind the one that now waits) go back to it
(:class:`HandBack`): what the task waits for may be one of them.

Imports nothing beyond the standard library and the worker's own modules (no protobuf).
"""

from __future__ import annotations

import os
import queue
import select
import selectors
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from cluster.common import wire
from cluster.common.messages import (
    AllocReply,
    Blocked,
    CallResult,
    Done,
    Fn,
    HandBack,
    NestedEnd,
    NestedIn,
    Run,
    RunAfter,
    Unblocked,
)
from cluster.common.status import OK

#: Seconds between flushes of the nested client when nothing else happens (releases of
#: dropped futures are sent lazily, as a driver's are).
IDLE_FLUSH_SECONDS = 0.2
#: Put in the inbox when a future a wait watches is done.
WAKE = object()
#: Seconds a synchronous actor call made inside a task or actor waits before a warning is
#: printed (it reaches the driver): a cycle of actors calling each other synchronously
#: never finishes, since each waits for the other to be free.
CYCLE_WARNING_SECONDS = 10.0
#: Python frames a task run inside a wait adds under the task on top: the recursion limit
#: is raised by this much for each, so every task, however deep in a worker's stack, has
#: the frames of its own that one in a fresh worker has. (Measured ~7 a level: a chain of
#: tasks each waiting for its child hit the limit of 1000 at 139 levels, failing there
#: and everything above it; fib(16) on 2 CPUs stacked 120-139 deep on its 8 workers and
#: failed or hung in 1 of 2-4 runs.)
FRAMES_PER_INLINE = 16
#: Tasks run inside waits on one worker at most, one inside another: past it a wait takes
#: none (the daemon runs the child on another worker). A bound on the worker's C stack
#: too: 10,000 levels ran fine with the limit raised to match.
MAX_INLINE_DEPTH = 1000


class NestedLink:
    """The nested channel of one worker process (see the module docstring)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Set by the client: called with each HeadToDriver payload (on the reader thread).
        self.on_payload: Callable[[bytes], None] = lambda payload: None
        self.on_idle: Callable[[], None] = lambda: None
        self.on_lost: Callable[[str], None] = lambda why: None
        #: After the task's function returned and until its Done is sent, the client
        #: holds back releases: the result may hold those futures (the head must see the
        #: Done, which keeps them, first).
        self.holding = False
        self.release_held: Callable[[], None] = lambda: None
        #: Tasks running here that submitted tasks (their end is reported to the head).
        self.parents: set[int] = set()
        self.depth = 0  # tasks run inside waits, one in another, now (MAX_INLINE_DEPTH)
        worker.inbox = self.inbox
        self._wake_w = -1
        if worker.server is not None:
            # An actor's loop waits on its direct callers' sockets and the daemon's: the
            # reader thread owns the latter now, so it wakes the loop through a pipe.
            wake_r, self._wake_w = os.pipe()
            # Non-blocking: the loop drains it only between calls, and a reader blocked on
            # a full pipe could not deliver the reply a waiting method needs. One pending
            # byte wakes the loop; the inbox holds the frames.
            os.set_blocking(self._wake_w, False)
            worker.server.selector.unregister(worker.sock)
            worker.server.selector.register(wake_r, selectors.EVENT_READ,
                                            lambda: self._drain(wake_r))
        threading.Thread(target=self._reader, name="shoal-nested-reader", daemon=True).start()

    def send(self, message: tuple) -> None:
        """One frame to the daemon (any thread)."""
        self.worker.send(message)

    def _reader(self) -> None:
        worker = self.worker
        sock, buf = worker.sock, worker.inbuf
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        idle_ms = int(IDLE_FLUSH_SECONDS * 1000)
        why = "the daemon closed the worker's connection"
        try:
            while True:
                if not poller.poll(idle_ms):
                    self.on_idle()
                    continue
                data = sock.recv(wire.RECV_SIZE)
                if not data:
                    break
                buf += data
                for body in wire.split(buf):
                    message = wire.decode(body)
                    if type(message) is NestedIn:
                        self.on_payload(message.payload)
                    else:
                        self.inbox.put(message)
                        self._wake()
        except OSError as err:
            why = f"lost the daemon: {err}"
        self.inbox.put(None)
        self._wake()
        self.on_lost(why)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # (full: the loop has a wake-up pending already)

    def _drain(self, wake_r: int) -> None:
        """An actor's loop was woken: move what the reader got to the worker's backlog."""
        os.read(wake_r, 65536)
        worker = self.worker
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if item is None:
                worker.eof = True
                return
            worker.backlog.append(item)

    # ---- the task's end ------------------------------------------------------------------
    def after_task(self, task_id: int, failed: bool) -> None:
        """Called once the task's Done is sent: send the releases held back, and tell the
        head the task ended if it started children."""
        if self.holding and not self.worker.awaiting_ack:
            self.holding = False
            self.release_held()
        if task_id in self.parents:
            self.parents.discard(task_id)
            self.send(NestedEnd(task_id, failed))

    # ---- waiting -------------------------------------------------------------------------
    def block(self, futures: list[Any], needed: int, timeout: float | None) -> None:
        """Wait until `needed` of `futures` (concurrent futures) are done, or `timeout`,
        with the task's CPUs given back meanwhile and queued tasks run here if the daemon
        sends them. Returns without raising on a timeout (the caller's own wait raises)."""
        worker = self.worker
        task_id = worker.task_id
        holder = worker.cpus_holder() or task_id
        # Queued tasks may run inside the wait, on this worker: not on an actor's, nor
        # past MAX_INLINE_DEPTH.
        inline = holder == task_id and self.depth < MAX_INLINE_DEPTH
        pending = [f for f in futures if not f.done()]
        missing = needed - (len(futures) - len(pending))
        if missing <= 0 or not task_id or (timeout is not None and timeout <= 0):
            return  # (a poll: no round trip to give the CPUs back and take them again)
        finished: list[None] = []  # one entry per future done (list.append is atomic)

        def wake(_future: Any) -> None:
            finished.append(None)
            self.inbox.put(WAKE)  # (a wait nested in this one may take it: it looks again)

        for fut in pending:
            # AppFuture.when_done runs on the delivering thread; add_done_callback would
            # go through the callback thread, which keeps the last future it saw alive.
            hook = getattr(fut, "when_done", None) or fut.add_done_callback
            hook(wake)
        del fut
        deadline = None if timeout is None else time.monotonic() + timeout
        hand_back_prefetched(worker)
        worker.send(Blocked(holder, inline))
        try:
            while len(finished) < missing:
                item = self._next_run()
                if item is None:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    try:
                        item = self.inbox.get(timeout=left)
                    except queue.Empty:
                        return
                if item is WAKE:
                    continue
                if type(item) is Run:
                    self._inline(item)
                    if len(finished) < missing:
                        worker.send(Blocked(holder, inline))  # ready for one more
                elif type(item) is Fn:
                    worker.functions[item.fn_id] = item.blob
                elif item is None:  # the daemon is gone: nothing will answer
                    worker.backlog.append(None)
                    return
                elif _prefetched(item):
                    worker.send(HandBack([item.run[0]]))
                else:
                    worker.backlog.append(item)
        finally:
            worker.send(Unblocked(holder))

    def _next_run(self) -> Any:
        """A Run frame the worker's loop has not handled yet (it came after an earlier
        wait had ended), to run now."""
        backlog = self.worker.backlog
        for i, item in enumerate(backlog):
            if type(item) is Run:
                return backlog.pop(i)
        return None

    def _inline(self, m: Run) -> None:
        """Run a task inside the current one's wait, then restore the waiting task's
        output capture, working directory and identity."""
        worker = self.worker
        outer = (worker.task_id, worker.task_name)
        worker.out.flush()
        worker.err.flush()
        worker.close_log()
        cwd = os.getcwd()
        holding, self.holding = self.holding, False
        self.depth += 1
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + FRAMES_PER_INLINE)
        try:
            outcome = worker.execute(m.task_id, m.fn_id, m.kind, m.name, m.args, m.deps,
                                     m.gpus, m.stdout, m.stderr, m.cwd, m.env, store=True)
        finally:
            sys.setrecursionlimit(limit)
            self.depth -= 1
        worker.task_id, worker.task_name = outer
        sys.stdout, sys.stderr = worker.out, worker.err
        if os.getcwd() != cwd:
            try:
                os.chdir(cwd)
            except OSError:
                pass
        worker.send(Done(m.task_id, *outcome))
        self.after_task(m.task_id, outcome[0] != OK)
        self.holding = holding


def wait_reply(worker: Any, ref: int, what: str, timeout: float | None) -> Any:
    """The answer to request `ref` of `worker` (an actor call made inside a task or an
    actor), as :meth:`Worker.wait_result`, but raising TimeoutError after `timeout`
    seconds, and printing a warning on the task's stderr every
    :data:`CYCLE_WARNING_SECONDS` while it waits (see there)."""
    results = worker.results
    if ref in results:
        return results.pop(ref)
    # A task (not an actor) gives its CPUs back while it waits, as for app futures.
    blocked = worker.cpus_holder()
    if blocked:
        worker.send(Blocked(blocked, False))
    deadline = None if timeout is None else time.monotonic() + timeout
    warn_at = time.monotonic() + CYCLE_WARNING_SECONDS
    hand_back_prefetched(worker)
    kept: list[Any] = []
    try:
        while ref not in results:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"{what} did not answer within {timeout:g}s")
            if now >= warn_at:
                print(f"shoal: still waiting for {what} after {CYCLE_WARNING_SECONDS:g}s; "
                      "actors that call each other synchronously (A waits for B, which "
                      "waits for A) never finish: pass result(timeout=...) or make one "
                      "of the calls without waiting", file=sys.stderr, flush=True)
                warn_at = now + CYCLE_WARNING_SECONDS
            step = min(warn_at, deadline if deadline is not None else warn_at) - now
            message = _read_for(worker, max(step, 0.0))
            if message is _NOTHING:
                continue
            if message is None:
                raise ConnectionError("lost the daemon while waiting for an answer")
            if type(message) is CallResult or type(message) is AllocReply:
                results[message.ref] = message
            elif _prefetched(message):
                worker.send(HandBack([message.run[0]]))
            else:
                kept.append(message)
    finally:
        worker.backlog[:0] = kept  # handled by the serve loop afterwards, in order
        if blocked:
            worker.send(Unblocked(blocked))
    return results.pop(ref)


_NOTHING = object()


def _prefetched(message: Any) -> bool:
    return type(message) is RunAfter and not message.after


def hand_back_prefetched(worker: Any) -> None:
    """Give the daemon back the prefetched tasks `worker` has read and not run (its task
    is about to wait; those read during the wait go back as they come)."""
    backlog = worker.backlog
    ids = [m.run[0] for m in backlog if _prefetched(m)]
    if ids:
        backlog[:] = [m for m in backlog if not _prefetched(m)]
        worker.send(HandBack(ids))


def _read_for(worker: Any, seconds: float) -> Any:
    """The worker's next frame, waiting at most `seconds` (:data:`_NOTHING` if none came;
    None at EOF)."""
    if worker.backlog:
        return worker.backlog.pop(0)
    if worker.inbox is not None:
        try:
            return worker.inbox.get(timeout=seconds)
        except queue.Empty:
            return _NOTHING
    readable, _, _ = select.select([worker.sock], [], [], seconds)
    if not readable:
        return _NOTHING
    if not worker._fill():
        return None
    return worker.backlog.pop(0) if worker.backlog else _NOTHING
