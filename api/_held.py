"""Submissions the driver holds until the head can take them (a part of
:class:`api._client.Client`: a mixin, the same object, split out so neither file grows
past the layout test's cap).

The head fails a task whose dependency it never heard of. Two kinds of value are known
only here: the results of direct actor calls and of tasks run on the driver's leased
worker (:mod:`api._lease`), and the submissions held here themselves. A submission
depending on the first kind waits until that value is done, and the head is told it (a
put); one depending on a held submission waits in the same queue, behind it, so the head
sees them in order (a chain whose first link ran leased, as the benchmark's chain does
right after its sync round trips).
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from api import _errors
from api._futures import AppFuture, format_id
from cluster.common.protocol import pb


class HeldSubmissions:
    """The client's held submissions (see the module docstring)."""

    # Set by the client (declared for readers and type checkers).
    _actor_futures: weakref.WeakValueDictionary[int, AppFuture]
    _futures: dict[int, AppFuture]
    _lock: threading.Lock
    _defer_lock: threading.RLock
    _deferred: dict[Any, deque[tuple[list[AppFuture], Callable[[], None],
                                     Callable[[BaseException], None]]]]
    _held: dict[int, Any]
    _held_failed: dict[int, tuple[str, BaseException]]
    _submits: list[pb.TaskSpec]
    _lost: str
    _transport: Any
    objects: Any

    _release_lock: threading.RLock
    _pinned: dict[int, int]  # dependency id -> held submissions depending on it
    _late_releases: set[int]  # releases held back until those are sent

    def put(self, value: pb.Value) -> None: ...

    def release(self, object_id: int) -> None: ...

    def _fail_locally(self, future: AppFuture, err: BaseException) -> None: ...

    # ---- dependencies the head does not know (direct actor calls) --------------------------
    def _unknown_to_head(self, deps: list[int]) -> list[AppFuture]:
        """The direct-call futures among `deps` (results the head never heard of)."""
        if not self._actor_futures:
            return []
        found = []
        for dep in deps:
            fut = self._actor_futures.get(dep)
            if fut is not None:
                found.append(fut)
        return found

    def _when_known(self, key: Any, deps: list[int], future: AppFuture,
                    send: Callable[[], None], fail: Callable[[BaseException], None],
                    also: list[AppFuture] | None = None) -> None:
        """Run `send()` once the head knows every one of `deps`, after every earlier
        submission of the same `key` (an actor id: a caller's calls keep their order);
        `fail(err)` instead when a direct call among `deps` failed. `also`: futures to
        wait for as well (submissions held in other queues)."""
        self._hold_back_releases(deps)

        def sent() -> None:
            try:
                send()
            finally:  # (after its spec is queued: a batch carries submits before releases)
                self._release_held_back(deps)

        def failed(err: BaseException) -> None:
            try:
                fail(err)
            finally:
                self._release_held_back(deps)

        with self._defer_lock:
            waiting = self._unknown_to_head(deps) + (also or [])
            self._deferred.setdefault(key, deque()).append((waiting, sent, failed))
            self._drain(key)

    # ---- releases that wait for held submissions ----------------------------------------
    # A held submission's other dependencies may finish, and their futures be dropped,
    # before it goes: their releases must reach the head after it does, or the head has
    # dropped the value it needs (OBJECT_LOST "released or never created": seen once in a
    # clean-clone run, a dependency sent to the head finishing before one on the leased
    # worker). Guarded by a reentrant lock of its own: release() runs in __del__, which
    # garbage collection may call on any thread, inside these very methods too.

    def defer_release(self, object_id: int) -> bool:
        """Hold back the release of `object_id` if a held submission depends on it (it
        is sent once the last such submission is); False: release it now."""
        with self._release_lock:
            if object_id not in self._pinned:
                return False
            self._late_releases.add(object_id)
            return True

    def _hold_back_releases(self, deps: Iterable[int]) -> None:
        with self._release_lock:
            pinned = self._pinned
            for dep in deps:
                pinned[dep] = pinned.get(dep, 0) + 1

    def _release_held_back(self, deps: Iterable[int]) -> None:
        late = []
        with self._release_lock:
            pinned = self._pinned
            for dep in deps:
                count = pinned.get(dep, 0) - 1
                if count > 0:
                    pinned[dep] = count
                    continue
                pinned.pop(dep, None)
                if dep in self._late_releases:
                    self._late_releases.discard(dep)
                    late.append(dep)
        for dep in late:
            self.release(dep)

    def _drain(self, key: Any) -> None:
        """Send the submissions of `key` whose dependencies have resolved, in order; wait
        (a completion hook, not a thread) on the first that has one unresolved."""
        sent = False
        try:
            with self._defer_lock:
                queue = self._deferred.get(key)
                while queue:
                    waiting, send, fail = queue[0]
                    pending = next((f for f in waiting if not f.done()), None)
                    if pending is not None:
                        pending.when_done(lambda _done: self._drain(key))
                        return
                    queue.popleft()
                    failure = None
                    for fut in waiting:
                        failure = self._publish(fut)
                        if failure is not None:
                            break
                    if failure is not None:
                        fail(failure)
                    elif not self._lost:
                        send()  # (queues the submission; written below, in one batch)
                        sent = True
                self._deferred.pop(key, None)
        finally:
            # One write for all: a chain held behind its first link (a leased task) is
            # 999 submissions, one write each was 999 batches for the head.
            if sent:
                self._transport.flush()

    def _publish(self, fut: AppFuture) -> BaseException | None:
        """Tell the head the value of a finished direct call (a put under its id), once;
        returns the call's error instead when it failed."""
        if self._actor_futures.get(fut.task_id) is not fut:
            return None  # published already
        if fut.stored:  # stored results are registered with the head
            with self._lock:
                self._actor_futures.pop(fut.task_id, None)
            return None
        err = fut.exception()
        if err is not None:
            text = str(err).split("\n", 1)[0]
            return _errors.DependencyError(
                f"dependency {fut.name} (task {format_id(fut.task_id)}) failed: {text}",
                dependency=fut.name)
        try:
            self.put(self.objects.value_message(fut.task_id, fut.result()))
        except Exception as failure:  # noqa: BLE001 - the dependent fails with it
            return failure
        with self._lock:
            self._actor_futures.pop(fut.task_id, None)
        return None

    def make_known(self, ids: list[int]) -> None:
        """Tell the head the values of the direct calls among `ids` now, waiting for
        those still running: a put nesting them makes the head hold them. Raises the
        DependencyError of one that failed."""
        for fut in self._unknown_to_head(ids):
            fut.exception()  # waits until it is done
            with self._defer_lock:
                err = self._publish(fut)
            if err is not None:
                raise err

    def _hold(self, spec: pb.TaskSpec, fn_blob: bytes, future: AppFuture, local: bool) -> bool:
        """Hold `spec` here if the head cannot take it yet: a dependency is a direct call's
        (or leased task's) result the head has not been told, or a submission held here
        itself. False: send it now."""
        task_id = spec.task_id
        with self._defer_lock:
            key = self._held_key(spec.deps)
            if key is None and not self._unknown_to_head(spec.deps):
                return False
            key = key or ("task", task_id)
            self._held[task_id] = key
            spec.fn_blob = fn_blob  # (sent later: it cannot count on an earlier spec's)
            with self._lock:
                self._futures[task_id] = future

            def send() -> None:
                if not self.held_turn(task_id, future, spec.deps, fail, "app"):
                    return
                with self._lock:
                    if local:
                        self._actor_futures.pop(task_id, None)
                    self._submits.append(spec)  # (_drain flushes once for all it sends)

            def fail(err: BaseException) -> None:
                self.held_failed(task_id, future, err)

            self._when_known(key, list(spec.deps), future, send, fail,
                             self._held_elsewhere(spec.deps, key))
        return True

    def held_turn(self, task_id: int, future: AppFuture, deps: Iterable[int],
                  fail: Callable[[BaseException], None], what: str) -> bool:
        """A held submission's turn to go to the head: True to send it. False if it was
        cancelled meanwhile (recorded, so what is held behind it fails), or a dependency
        of it never reached the head (then `fail` was called with the DependencyError)."""
        self._held.pop(task_id, None)
        if future.done():
            self._held_failed[task_id] = (future.name, _errors.TaskCancelledError(
                f"{what} {future.name!r} was cancelled"))
            return False
        failure = self._failed_dependency(deps)
        if failure is not None:
            fail(failure)
            return False
        return True

    def held_failed(self, task_id: int, future: AppFuture, err: BaseException) -> None:
        """A held submission failed in the driver: its future, and what is held behind."""
        self._held.pop(task_id, None)
        self._held_failed[task_id] = (future.name, err)
        self._fail_locally(future, err)

    def _held_key(self, deps: Iterable[int]) -> Any:
        """The queue of a submission among `deps` still held here, or None (call with
        the defer lock held)."""
        if not self._held:
            return None
        for dep in deps:
            key = self._held.get(dep)
            if key is not None:
                return key
        return None

    def _held_elsewhere(self, deps: Iterable[int], key: Any) -> list[AppFuture]:
        """Futures of submissions among `deps` held in a queue other than `key`: waited
        for until done (by then they reached the head)."""
        if not self._held:
            return []
        return [f for d in deps if self._held.get(d, key) != key
                and (f := self._futures.get(d)) is not None]

    def _failed_dependency(self, deps: Iterable[int]) -> BaseException | None:
        """The DependencyError for a held submission whose dependency never reached the
        head (it failed or was cancelled here), or None."""
        if not self._held_failed:
            return None
        for dep in deps:
            failed = self._held_failed.get(dep)
            if failed is not None:
                name, err = failed
                text = str(err).split("\n", 1)[0]
                return _errors.DependencyError(
                    f"dependency {name} (task {format_id(dep)}) did not run: {text}",
                    dependency=name)
        return None
