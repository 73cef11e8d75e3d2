"""The driver's leased worker on a one-CPU cluster: a leased task that waits for a task it
submitted must not hold the only CPU its child needs (api._lease.HELD)."""

from __future__ import annotations

import pytest

import api
from api import _lease, _session

pytestmark = pytest.mark.timeout(120)


@api.python_app
def square(x):
    return x * x


@api.python_app
def outer(x):
    return square(x).result(timeout=60) + 1


def test_a_leased_task_waiting_for_its_child_on_one_cpu(one_slot):
    lease = _session.client().lease
    while not lease.ready:
        assert square(2).result(timeout=60) == 4
    before = lease.sent
    assert [outer(i).result(timeout=60) for i in range(3)] == [1, 2, 5]
    assert lease.sent - before == 3


def test_an_idle_lease_leaves_the_only_cpu_to_tasks_through_the_head(one_slot, monkeypatch):
    monkeypatch.setattr(_lease, "IDLE_SECONDS", 3600.0)  # kept: only its worker lets go
    lease = _session.client().lease
    while not lease.ready:
        assert square(2).result(timeout=60) == 4
    actor = lease.actor_id
    assert square.options(max_retries=1)(5).result(timeout=60) == 25  # through the head
    assert lease.actor_id == actor
