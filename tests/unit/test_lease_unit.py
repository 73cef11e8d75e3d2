"""The driver's lease decisions (api._lease) against a fake client: when a lease starts,
what it takes, when it is given back, and SHOAL_LEASE=0."""

from __future__ import annotations

import pytest

from api import _lease
from cluster.common.protocol import pb


class FakeRoutes:
    def __init__(self) -> None:
        self.learned: list[int] = []
        self.forgotten: list[int] = []

    def learn(self, actor_id, route, retries=None):
        self.learned.append(actor_id)

    def forget(self, actor_id):
        self.forgotten.append(actor_id)


class FakeClient:
    def __init__(self) -> None:
        self.in_flight = 0
        self.submitted: list[pb.TaskSpec] = []
        self.tracked: list[object] = []
        self.killed: list[int] = []
        self.direct = FakeRoutes()
        self.cwd = "/tmp"
        self.secret = "s"
        self.connected = True
        self._ids = iter(range(100, 200))

    def tasks_in_flight(self):
        return self.in_flight

    def new_id(self):
        return next(self._ids)

    def submit(self, spec, blob, future, local=False):
        self.submitted.append(spec)

    def track_local(self, future):
        self.tracked.append(future)

    def kill_actor(self, actor_id):
        self.killed.append(actor_id)


class FakeFuture:
    def __init__(self) -> None:
        self.hooks = []
        self.cancelled = False

    def when_done(self, hook):
        self.hooks.append(hook)

    def done(self):
        return self.cancelled

    def mark_cancelled(self):
        self.cancelled = True
        return True


def _spec(task_id: int, **fields) -> pb.TaskSpec:
    return pb.TaskSpec(task_id=task_id, kind=pb.PYTHON, fn_id=b"f", name="f",
                       resources=_lease.LEASED, **fields)


@pytest.fixture
def lease(monkeypatch):
    monkeypatch.delenv("SHOAL_LEASE", raising=False)
    client = FakeClient()
    return _lease.TaskLease(client, lambda *a: None), client


def test_a_streak_of_sync_submissions_starts_a_lease_holding_the_last(lease):
    lease, client = lease
    for i in range(_lease.START_STREAK - 1):
        assert lease.offer(_spec(i + 1), b"blob", FakeFuture()) is False
    assert not lease.actor_id and not client.submitted
    held = FakeFuture()
    assert lease.offer(_spec(9), b"blob", held) is True  # kept until the lease connects
    create = client.submitted[-1]
    assert create.kind == pb.ACTOR_CREATE and create.resources == _lease.HELD
    assert create.task_id == lease.actor_id and client.tracked == [held]


def test_submissions_while_the_lease_is_made_go_through_the_head(lease):
    lease, client = lease
    for i in range(_lease.START_STREAK):
        lease.offer(_spec(i + 1), b"blob", FakeFuture())
    actor = lease.actor_id
    client.in_flight = 1  # the creation, through the head
    assert lease.offer(_spec(20), b"blob", FakeFuture()) is False
    assert lease.offer(_spec(21, deps=[3]), b"blob", FakeFuture()) is False
    assert not client.killed and lease.actor_id == actor


def test_ineligible_tasks_and_bursts_never_start_a_lease(lease):
    lease, client = lease
    for i in range(10):
        assert lease.offer(_spec(i + 1, deps=[5]), b"", FakeFuture()) is False
    client.in_flight = 3
    for i in range(10):
        assert lease.offer(_spec(i + 50), b"", FakeFuture()) is False
    assert not client.submitted and not lease.actor_id


def test_cancel_of_the_held_task_drops_it(lease):
    lease, client = lease
    held = FakeFuture()
    for i in range(_lease.START_STREAK - 1):
        lease.offer(_spec(i + 1), b"blob", FakeFuture())
    lease.offer(_spec(30), b"blob", held)
    assert lease.cancel(31, force=False) is None  # not the lease's
    assert lease.cancel(30, force=False) is True and held.cancelled


def test_shoal_lease_0_turns_leases_off(monkeypatch):
    monkeypatch.setenv("SHOAL_LEASE", "0")
    client = FakeClient()
    lease = _lease.TaskLease(client, lambda *a: None)
    for i in range(20):
        assert lease.offer(_spec(i + 1), b"blob", FakeFuture()) is False
    assert not client.submitted and not lease.actor_id
