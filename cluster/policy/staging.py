"""Staging: which waiting task may go ahead to the node making its one missing argument,
and when that node starts it (pure decisions, no I/O; the mechanism is
:mod:`cluster.head.staging` at the head and :mod:`cluster.node.staged` on the daemon).

A chain ``f(f(f(x)))`` used to cost a round trip through the head per link: the daemon
reported a link's result, the head marked it done, found the next link ready and sent it
back. A *staged* task is sent to its input's node while the input runs, and the daemon
starts it the moment the input succeeds, in the input's slot. The head learns of both
from the same result message, so it keeps its books without being on the path.

A task may be staged behind another when:

- both are plain apps (Python or bash) on one node: an actor's calls go to its actor,
  and a multi-node app reserves whole nodes;
- it asks for exactly what its input asks for (the same queue key: resources and
  priority), so taking over the input's slot leaves the node's accounting unchanged;
- its input is its only missing argument (the others' values travel with it);
- nothing else is staged behind that input (one slot, one heir).

>>> may_stage(PYTHON, 1, b"k", PYTHON, 1, b"k", {7}, 7)
True
>>> may_stage(PYTHON, 1, b"k", PYTHON, 1, b"j", {7}, 7)   # another shape or priority
False
>>> may_stage(PYTHON, 1, b"k", PYTHON, 1, b"k", {7, 8}, 7)  # a second argument is missing
False
>>> may_stage(ACTOR_CALL, 1, b"k", PYTHON, 1, b"k", {7}, 7)
False
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

#: The kinds that may stage (TaskSpec.Kind: PYTHON, BASH; plain ints, as in
#: :mod:`cluster.common.status`, so the daemon's side needs no protobuf here).
PYTHON, BASH, ACTOR_CREATE, ACTOR_CALL = 0, 1, 2, 3
STAGE_KINDS = frozenset({PYTHON, BASH})
#: TaskResult.status OK.
OK = 0


def may_stage(heir_kind: int, heir_nodes: int, heir_key: bytes, input_kind: int,
              input_nodes: int, input_key: bytes, missing: Collection[int],
              input_id: int) -> bool:
    """Whether a task (the *heir*) may be staged behind the running task `input_id`:
    the kinds, node counts and queue keys (resource shape and priority) of both, and the
    heir's arguments still `missing`."""
    return (heir_kind in STAGE_KINDS and input_kind in STAGE_KINDS
            and heir_nodes <= 1 and input_nodes <= 1 and heir_key == input_key
            and len(missing) == 1 and input_id in missing)


def heir_runs(status: int, nested: Sequence[int]) -> bool:
    """Whether a daemon starts the task staged behind a task that ended with `status`,
    its value holding the refs `nested`; otherwise it sends the heir back to the head.
    Both sides decide from the same result, so the head knows without being told.

    A value with refs inside waits for the head: the driver must take those refs over
    (the head does it when it marks the input done) before anything else may use them.

    >>> heir_runs(OK, [])
    True
    >>> heir_runs(OK, [0x42])
    False
    >>> heir_runs(1, [])  # APP_ERROR: the head fails or retries, as for any task
    False
    """
    return status == OK and not nested


def worker_runs(status: int, data: object) -> bool:
    """Whether a worker starts the task its daemon sent ahead behind the one that just
    ended there with `status` and result `data` (the worker's Done): a success whose value
    travels inline, as plain bytes (no refs inside, not in the store). The worker has that
    value, so the heir starts with no message in between; both sides decide from the same
    Done.

    >>> worker_runs(OK, b"\\x80\\x05K\\x01.")
    True
    >>> worker_runs(OK, ("stored", "/dev/shm/x", 1 << 20, []))   # the daemon seals it first
    False
    >>> worker_runs(OK, ("inline", b"...", [0x42]))             # refs inside: see heir_runs
    False
    """
    return status == OK and type(data) is bytes
