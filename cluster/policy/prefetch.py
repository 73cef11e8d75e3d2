"""Prefetch: when a daemon may hand a busy worker the next queued task while the worker
still runs one, so it starts the moment that one ends (pure decisions, no I/O; the
mechanism is :mod:`cluster.node.prefetch`; Parsl's ``prefetch_capacity`` is the same idea).

A worker runs one task at a time and reads its socket in order, so a task sent early simply
waits there. Without it, a worker that ends a task sits idle until its daemon has read the
Done and written the next Run: on 2 cores a burst of no-op tasks kept only 1.36 cores busy,
each worker idle ~250 us a task waiting for the daemon's turn.

A prefetched task cannot be taken back (it waits behind a task that is running), so a
daemon prefetches only where the wait is known to be short:

- the worker's task is of a function whose runs on this node so far have all been short
  (:func:`slowest` of them under :data:`PREFETCH_BELOW_SECONDS`), and it has not yet run that
  long itself: a task behind a slow one would wait while another worker idles;
- no more than :data:`PREFETCH_DEPTH` wait in one worker, which is handed them
  :data:`PREFETCH_BATCH` at a time.

>>> may_prefetch(slowest(None, 0.0001), 0.0002, 0)
True
>>> may_prefetch(None, 0.0, 0)                  # nothing known of its function yet
False
>>> may_prefetch(slowest(0.0001, 0.5), 0.0, 0)  # one slow run: not behind it any more
False
>>> may_prefetch(0.0001, 0.01, 0)               # this one runs long already
False
>>> may_prefetch(0.0001, 0.0, PREFETCH_DEPTH - PREFETCH_BATCH)   # room for a batch
True
>>> may_prefetch(0.0001, 0.0, PREFETCH_DEPTH - 1)  # enough wait in that worker
False
"""

from __future__ import annotations

#: Prefetched only behind tasks of functions whose runs here took less than this. The gain
#: is the worker's idle gap between tasks (~0.1-0.3 ms on 2 cores), worth having for
#: tasks this short; the cost of a wrong guess is one task waiting behind one run.
PREFETCH_BELOW_SECONDS = 0.002
#: How many tasks wait in one worker, and how many it is handed at a time (in one write):
#: it gets more once it has room for PREFETCH_BATCH, so it always holds one or more while
#: the daemon answers, and the daemon writes to it once every PREFETCH_BATCH tasks (a
#: send was ~11% of the head-and-daemon process's samples in a no-op burst, one a task).
PREFETCH_DEPTH = 4
PREFETCH_BATCH = 2
#: How fast the memory of a slow run fades: each shorter run takes this share of the gap.
#: A function's first run on each worker is slow (its body is unpickled, its imports run:
#: 0.19 s for a test module importing the api), so this is quick: ~16 no-op runs later it
#: is short again.
FORGET = 0.25


def slowest(previous: float | None, seconds: float) -> float:
    """The slowness kept for a function after a run of `seconds` (`previous`: what was
    kept, None at its first run): a slower run counts at once, shorter ones wear it down
    slowly, so one slow run stops prefetching behind that function for a while.

    >>> slowest(None, 0.25)
    0.25
    >>> slowest(0.001, 0.25)
    0.25
    >>> slowest(0.25, 0.0)
    0.1875
    """
    if previous is None or seconds >= previous:
        return seconds
    return previous - FORGET * (previous - seconds)


def may_prefetch(slowness: float | None, running: float, waiting: int,
                   depth: int = PREFETCH_DEPTH) -> bool:
    """Whether a daemon prefetches a queued task to a worker whose task is of a function
    with `slowness` (:func:`slowest`; None: never run here), has run for `running`
    seconds, and has `waiting` tasks prefetched already."""
    return (slowness is not None and slowness < PREFETCH_BELOW_SECONDS
            and running < PREFETCH_BELOW_SECONDS and waiting + PREFETCH_BATCH <= depth)
