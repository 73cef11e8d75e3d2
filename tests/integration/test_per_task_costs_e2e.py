"""End to end on the shared local cluster (tests/conftest.py's ``cluster``): the batched
submissions of a burst (the local lane), plain-pickle arguments and results, and
AppFuture's light lock keep every result right."""

from __future__ import annotations

import concurrent.futures

import pytest

import api

pytestmark = pytest.mark.timeout(180)


@api.python_app
def echo(*args, **kwargs):
    return args, kwargs


@api.python_app
def inc(x):
    return x + 1


@api.python_app
def wrap():
    return [api.put(5)]  # a result with a ref inside (TaskResult.nested)


def test_a_burst_of_plain_arguments_comes_back_whole_and_in_order(cluster):
    assert type(api._session.client()._transport).__name__ == "LaneTransport"
    futs = [echo(i, 2.5, "s", b"b", None, True, k=i) for i in range(3000)]
    values = [f.result(timeout=120) for f in futs]
    assert values == [((i, 2.5, "s", b"b", None, True), {"k": i}) for i in range(3000)]


def test_sync_calls_while_a_burst_runs_and_waits_from_many_threads(cluster):
    burst = [inc(i) for i in range(2000)]
    assert [inc(i).result(timeout=60) for i in range(20)] == list(range(1, 21))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda f: f.result(timeout=120), burst))
    assert got == list(range(1, 2001))
    done, pending = concurrent.futures.wait(burst, timeout=60)
    assert not pending and len(done) == 2000


def test_values_with_refs_and_futures_inside_still_resolve(cluster):
    ref = api.put({"a": 1})
    inner = inc(41)
    nested = echo([ref], {"f": inner})  # (not plain: through the ref pickler)
    assert nested.result(timeout=60) == (([{"a": 1}], {"f": 42}), {})
    holder = wrap().result(timeout=60)
    assert isinstance(holder[0], api.ObjectRef) and api.get(holder[0]) == 5  # (result refs)
    chain = inc(0)
    for _ in range(50):
        chain = inc(chain)
    assert chain.result(timeout=60) == 51


def test_a_burst_cancelled_while_gathered_fails_its_dependents_as_cancelled(cluster):
    futs = [inc(i) for i in range(500)]
    last = futs[-1]
    dependent = inc(last)
    if last.cancel():  # (it may have run already: then there is nothing to check)
        with pytest.raises(api.DependencyError):
            dependent.result(timeout=60)
    else:
        assert dependent.result(timeout=60) == 501
    assert [f.result(timeout=60) for f in futs[:-1]] == list(range(1, 500))
