"""A worker holds back its releases while a direct result's refs wait for the caller's
DirectAck, and lets them go once every such caller acknowledged or hung up."""

from __future__ import annotations

import socket

from cluster.common.messages import DirectAck
from cluster.worker.worker import Worker


class FakeLink:
    def __init__(self) -> None:
        self.ended: list[int] = []

    def after_task(self, task_id: int, failed: bool) -> None:
        self.ended.append(task_id)


def _worker() -> tuple[Worker, FakeLink]:
    ours, _theirs = socket.socketpair()
    worker = Worker(ours)
    worker.nested = FakeLink()
    return worker, worker.nested


def test_releases_go_once_every_result_is_acknowledged():
    worker, link = _worker()
    a, b = object(), object()
    worker.awaiting_ack.update({1: a, 2: b})
    worker._direct_call(a, DirectAck(1))
    assert link.ended == [] and set(worker.awaiting_ack) == {2}
    worker._direct_call(b, DirectAck(2))
    assert link.ended == [0] and not worker.awaiting_ack


def test_a_caller_that_hangs_up_unblocks_the_releases():
    worker, link = _worker()
    a, b = object(), object()
    worker.awaiting_ack.update({1: a, 2: a, 3: b})
    worker._caller_gone(b)
    assert link.ended == [] and set(worker.awaiting_ack) == {1, 2}
    worker._caller_gone(a)
    assert link.ended == [0] and not worker.awaiting_ack
