"""When a daemon sends its gathered results to the head (Daemon.schedule_flush): at once
when little work waits on the node, a moment later while plenty does, and at once again
when the queue runs low before that moment (else the workers idle until the head, which
refills only after it has the results, answers)."""

from __future__ import annotations

from typing import Any

from cluster.node import daemon as daemon_mod
from cluster.node.daemon import Daemon


class _Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """Records what the daemon schedules instead of running it."""

    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.later: list[tuple[float, Any, _Timer]] = []

    def call_soon(self, fn: Any) -> None:
        self.soon.append(fn)

    def call_later(self, delay: float, fn: Any) -> _Timer:
        timer = _Timer()
        self.later.append((delay, fn, timer))
        return timer


def _daemon(tmp_path: Any, workers: int, queued: int) -> tuple[Daemon, _Loop]:
    d = Daemon("n1", {"cpus": 2.0}, str(tmp_path))
    loop = _Loop()
    d.loop = loop  # type: ignore[assignment]
    d.workers = [object()] * workers  # type: ignore[list-item]
    d.queue.extend([object()] * queued)  # type: ignore[list-item]
    return d, loop


def test_an_idle_node_answers_at_once(tmp_path):
    d, loop = _daemon(tmp_path, workers=0, queued=0)
    d.schedule_flush()
    assert loop.soon == [d._flush] and loop.later == []


def test_a_short_queue_answers_at_once(tmp_path):
    low = daemon_mod.LOW_WATER_PER_WORKER * 2
    d, loop = _daemon(tmp_path, workers=2, queued=low - 1)
    d.schedule_flush()
    assert loop.soon == [d._flush] and loop.later == []


def test_a_long_queue_holds_results_until_it_runs_low(tmp_path):
    low = daemon_mod.LOW_WATER_PER_WORKER * 2
    d, loop = _daemon(tmp_path, workers=2, queued=low + 3)
    d.schedule_flush()
    assert loop.soon == []
    [(delay, fn, timer)] = loop.later
    assert delay == daemon_mod.RESULT_BATCH_SECONDS and fn == d._flush
    d.schedule_flush()  # more results while the queue is still long: one held flush
    assert loop.soon == [] and len(loop.later) == 1 and not timer.cancelled
    while len(d.queue) >= low:
        d.queue.popleft()
    d.schedule_flush()  # the queue ran low: the held results go now, once
    assert timer.cancelled and loop.soon == [d._flush]
    d.schedule_flush()
    assert loop.soon == [d._flush] and len(loop.later) == 1
    d._flush()  # (nothing gathered, no link: sends nothing) the next one starts afresh
    d.queue.extend([object()] * (low + 3))  # type: ignore[list-item]
    d.schedule_flush()
    assert len(loop.later) == 2
