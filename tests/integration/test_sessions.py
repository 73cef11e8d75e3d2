"""Futures, refs and handles from an earlier session never alias this session's objects:
ids restart with every session (a fresh local cluster gives driver id 1 again), so using
one raises a clear error instead of meaning another object."""

from __future__ import annotations

import time

import pytest

import api


@api.python_app
def echo(x):
    return x


@api.python_app
def nap(seconds):
    time.sleep(seconds)
    return seconds


@api.python_app
def blob(n):
    return b"x" * n


@api.actor
class Box:
    def __init__(self, label):
        self.label = label

    def get(self):
        return self.label

    def nap(self, seconds):
        time.sleep(seconds)
        return seconds


@pytest.mark.timeout(90)
def test_futures_refs_and_handles_of_an_earlier_session_raise(no_session):
    api.init(num_cpus=2)
    old = echo("A")
    assert old.result(timeout=60) == "A"
    old_ref = api.put("ref A")
    old_big = blob(1_000_000)
    api.wait([old_big], timeout=60)       # done, its value left in the node store
    old_box = Box("A")
    assert old_box.get().result(timeout=60) == "A"
    unfinished = nap(30)
    in_flight = old_box.nap(30)           # a direct call to the actor's worker
    api.shutdown()

    api.init(num_cpus=2)
    assert echo("B").result(timeout=60) == "B"      # same ids as the old ones again
    api.put("ref B")
    blob(1_000_000).result(timeout=60)
    Box("B").get().result(timeout=60)

    for use in (lambda: echo(old), lambda: echo([1, {"k": old}]), lambda: echo(old_ref),
                lambda: api.get(old_ref), lambda: api.get([old_ref]),
                lambda: api.put([old]), lambda: api.put({"r": old_ref}),
                lambda: old_big.result(timeout=30), lambda: old_box.get(),
                lambda: echo(old_box), lambda: api.kill(old_box)):
        with pytest.raises(api.ShoalError, match="earlier session"):
            use()
    for fut in (unfinished, in_flight):
        with pytest.raises(api.ShoalError, match="session"):
            fut.result(timeout=30)
    # A finished future keeps its own value: that is not aliasing.
    assert old.result() == "A"
    assert api.get(old) == "A"
    # The new session is unharmed.
    assert echo(api.put("fine")).result(timeout=60) == "fine"
    api.shutdown()
