"""Cancelling tasks from the driver: ``fut.cancel()`` and ``api.cancel(futs, force=)``.

A future still in the driver's send buffer (or held back waiting for a direct actor call)
is taken out there and never reaches the head. Otherwise the head is asked, all at once
for a list of futures, and its answers say which were cancelled (see
:mod:`cluster.head.cancel` for where a task can be stopped and how). A cancelled future
is in the ``CANCELLED`` state of :class:`concurrent.futures.Future`: ``cancelled()`` is
True, ``wait``/``as_completed`` count it done, and ``result()`` raises
:class:`api.TaskCancelledError`, which is also a ``concurrent.futures.CancelledError``.

Also the retry_handler's side of results (:func:`intercept`), which, like a cancellation,
is a non-OK result that must not simply fail its future.
"""

from __future__ import annotations

import time
from typing import Any

from cluster.common.protocol import pb

#: How long to wait for the head's answers (it answers at once unless a daemon must be
#: asked; a head that does not answer in this time is as good as gone).
REPLY_TIMEOUT = 30.0


def cancel_futures(futures: list[Any], force: bool = False) -> list[bool]:
    """Cancel `futures`, which may belong to several clients (sessions)."""
    done = [False] * len(futures)
    by_client: dict[int, list[int]] = {}
    for i, fut in enumerate(futures):
        by_client.setdefault(id(fut._client), []).append(i)
    for indexes in by_client.values():
        client = futures[indexes[0]]._client
        if client is None:
            continue
        answers = cancel_many(client, [futures[i] for i in indexes], force)
        for i, ok in zip(indexes, answers, strict=True):
            done[i] = ok
    return done


def cancel_many(client: Any, futures: list[Any], force: bool = False) -> list[bool]:
    """Cancel `futures` (AppFutures of `client`); for each, whether it was cancelled."""
    out = [False] * len(futures)
    ask: list[tuple[int, Any]] = []
    for i, fut in enumerate(futures):
        if fut.done():
            out[i] = fut.cancelled()
        elif client.closed or not client.connected:
            out[i] = False
        elif client.take_unsent(fut.task_id):
            out[i] = fut.mark_cancelled()
        elif client.is_direct_call(fut.task_id):
            # A direct actor call (only its actor's worker knows it: False), or a task on
            # the driver's leased worker (with force, that worker is killed).
            out[i] = client.cancel_direct(fut.task_id, force)
        else:
            ask.append((i, fut))
    if not ask:
        return out
    waiters = client.ask_cancel([fut.task_id for _, fut in ask], force)
    if client.on_reader_thread():
        return out  # (a completion hook on the reader: no answer could arrive; asked anyway)
    deadline = time.monotonic() + REPLY_TIMEOUT  # (one bound for the whole list)
    for (i, fut), waiter in zip(ask, waiters, strict=True):
        try:
            reply = waiter.result(max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - no answer (timeout, connection lost): not cancelled
            reply = None
        if reply is not None and reply.cancelled:
            fut.mark_cancelled()  # (its CANCELLED result usually came first, in the batch)
            out[i] = fut.cancelled()
        client.cancelling.discard(fut.task_id)
    return out


def intercept(client: Any, fut: Any, result: pb.TaskResult) -> bool:
    """Handle a non-OK result that does not simply fail its future: a failure the
    future's retry_handler must judge first, or the end of a task this driver cancelled.
    True when handled."""
    if result.retry_pending:
        retry = fut.retry
        client.keep_future(fut)
        if retry is None:  # (cannot happen: the flag is set with the handler)
            client.decide(result.task_id, False)
            return True
        error = client.error_for(result, fut.name)

        def judge(_fut: Any) -> None:
            client.decide(result.task_id, retry.decide(error, result.attempt + 1))

        client.callbacks.run(fut, [judge])
        return True
    if result.status == pb.CANCELLED and result.task_id in client.cancelling:
        return fut.mark_cancelled()
    retry = fut.retry
    if retry is not None and retry.error is not None:
        fut.set_exception(retry.error)
        return True
    return False
