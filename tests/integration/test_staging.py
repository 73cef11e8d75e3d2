"""Staged dependents, end to end on the embedded local cluster (real head, daemon and
workers): a chain's links go to the node running the link they need and start there the
moment it ends, without a round trip through the head (cluster/head/staging.py).

Each chain's first link blocks (``helpers.hold``) until the whole chain has reached the
head, so every later link is staged whatever the machine's speed; the head's status then
says how many started staged."""

from __future__ import annotations

import os
import time

import pytest
from helpers import head_status as _status
from helpers import hold, wait_until

import api


@api.python_app
def inc(x: object) -> int:
    return (0 if x == "released" else int(x)) + 1  # type: ignore[call-overload]


@api.python_app
def grow(blob: object) -> bytes:
    """A result too big to travel inline: it stays in the node's object store."""
    size = 0 if blob == "released" else len(blob)  # type: ignore[arg-type]
    return b"x" * (size + (1 << 20))


@api.python_app
def fail_at(x: object, at: int) -> int:
    value = (0 if x == "released" else int(x)) + 1  # type: ignore[call-overload]
    if value == at:
        raise ValueError(f"link {at} fails")
    return value


def _chain(tmp_path, link, length: int, *args: object) -> tuple[list, str]:
    """The futures of a chain of `length` links after a held first one, and its gate:
    returned once the head holds every link (queued or staged)."""
    gate = str(tmp_path / f"gate-{time.monotonic_ns()}")
    started = gate + ".started"
    first = hold(gate, started)
    futs = [first]
    for _ in range(length):
        futs.append(link(futs[-1], *args))
    wait_until(lambda: os.path.exists(started), 60, "the first link to start")
    wait_until(lambda: _status().tasks_queued >= length, 60, "the chain to reach the head")
    return futs, gate


def test_a_chain_starts_each_link_staged_on_its_node(cluster, tmp_path):
    before = _status().tasks_staged
    futs, gate = _chain(tmp_path, inc, 30)
    open(gate, "w").close()
    assert [f.result(timeout=60) for f in futs[1:]] == list(range(1, 31))
    assert _status().tasks_staged - before == 30, "every link started behind its input"


def test_large_results_pass_along_a_staged_chain_in_the_store(cluster, tmp_path):
    before = _status().tasks_staged
    futs, gate = _chain(tmp_path, grow, 5)
    open(gate, "w").close()
    assert len(futs[-1].result(timeout=60)) == 5 << 20
    assert _status().tasks_staged - before == 5


def test_a_failing_link_fails_the_rest_of_the_staged_chain(cluster, tmp_path):
    futs, gate = _chain(tmp_path, fail_at, 6, 3)
    open(gate, "w").close()
    assert [f.result(timeout=60) for f in futs[1:3]] == [1, 2]
    with pytest.raises(ValueError, match="link 3 fails"):
        futs[3].result(timeout=60)
    for fut in futs[4:]:
        with pytest.raises(api.DependencyError, match="link 3 fails"):
            fut.result(timeout=60)
    assert inc(41).result(timeout=60) == 42, "the node still runs tasks"


def test_cancelling_a_staged_link_fails_what_follows_it(cluster, tmp_path):
    futs, gate = _chain(tmp_path, inc, 4)
    assert futs[2].cancel(), "it has not started: its daemon drops it"
    open(gate, "w").close()
    assert futs[1].result(timeout=60) == 1
    with pytest.raises(api.TaskCancelledError):
        futs[2].result(timeout=60)
    for fut in futs[3:]:
        with pytest.raises(api.DependencyError):
            fut.result(timeout=60)


def test_force_cancelling_the_running_link_fails_its_staged_chain(cluster, tmp_path):
    futs, gate = _chain(tmp_path, inc, 3)
    assert api.cancel(futs[0], force=True)
    with pytest.raises(api.TaskCancelledError):
        futs[0].result(timeout=60)
    for fut in futs[1:]:
        with pytest.raises(api.DependencyError):
            fut.result(timeout=60)
    open(gate, "w").close()
    assert inc(1).result(timeout=60) == 2


def test_a_retried_first_link_still_feeds_its_chain(cluster, tmp_path):
    marker = str(tmp_path / "crashed-once")

    @api.python_app(max_retries=1)
    def crash_once(path: str) -> int:
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(3)
        return 10

    futs = [crash_once(marker)]
    for _ in range(5):
        futs.append(inc(futs[-1]))
    assert futs[-1].result(timeout=60) == 15
