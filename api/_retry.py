"""``retry_handler=``: the driver decides whether a failed task runs again.

The handler runs in the driver, where the exception object is: the head holds the failed
task (``DECIDING``: dependents keep waiting) and sends its failure marked
``retry_pending``; the client calls :meth:`RetryState.decide` on its callback thread (a
handler may block without holding up results) and answers ``retry`` or ``give_up``.

What the handler returns, as in Parsl's ``retry_handler``:

- ``True``/``False``: retry, or not (``max_retries`` is not consulted);
- a number: the failure's cost, added to the task's total; it is retried while the total
  is at most ``max_retries`` (a handler returning 1 is plain ``max_retries``; 0: a free
  retry, e.g. for a failure known to be transient; a large cost: give up at once);
- raising: no retry, and the future fails with what the handler raised (its
  ``__context__`` is the task's own error).

A task whose node stopped by plan (drained, or its Slurm job reached its walltime) is
re-run by the head without asking and without counting.

>>> state = RetryState(lambda err, attempt: isinstance(err, OSError), max_retries=0)
>>> state.decide(OSError("disk busy"), 1)
True
>>> state.decide(ValueError("bad input"), 2)
False
>>> costly = RetryState(lambda err, attempt: 0.6, max_retries=1)
>>> [costly.decide(OSError(), n) for n in (1, 2)]
[True, False]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("api.retry")


class RetryState:
    """One task's retry_handler and what its failures have cost so far."""

    __slots__ = ("handler", "max_retries", "cost", "error")

    def __init__(self, handler: Callable[[BaseException, int], Any], max_retries: int) -> None:
        self.handler = handler
        self.max_retries = max_retries
        self.cost = 0.0
        #: What the handler raised (the future fails with it instead), if it did.
        self.error: BaseException | None = None

    def decide(self, error: BaseException, attempt: int) -> bool:
        """Whether to run the task again after `error`, its `attempt`-th failure (from 1)."""
        try:
            verdict = self.handler(error, attempt)
        except Exception as failure:  # noqa: BLE001 - it becomes the future's error
            _log.warning("retry_handler raised %r: not retrying", failure)
            failure.__context__ = error
            self.error = failure
            return False
        if isinstance(verdict, bool):
            return verdict
        if isinstance(verdict, int | float) and math.isfinite(verdict) and verdict >= 0:
            self.cost += verdict
            return self.cost <= self.max_retries
        self.error = TypeError(f"retry_handler returned {verdict!r}; expected True/False or "
                               "a cost (a number >= 0)")
        self.error.__context__ = error
        return False
