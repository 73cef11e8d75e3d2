"""Deep structures end to end: chains of nested refs and of failing tasks (the head used to
crash with RecursionError on both)."""

from __future__ import annotations

import pytest

import api


@api.python_app
def link(previous, fail=False):
    if fail:
        raise ValueError("the first link failed")
    return previous


@api.python_app
def ping():
    return "pong"


def test_dropping_a_600_deep_chain_of_nested_puts_keeps_the_head_alive(cluster):
    ref = api.put(0)
    for i in range(600):
        ref = api.put([ref, i])
    del ref
    assert ping().result(timeout=60) == "pong"


def test_a_2000_link_chain_whose_first_link_fails_fails_every_link(cluster):
    futures = [link(None, fail=True)]
    for _ in range(2000):
        futures.append(link(futures[-1]))
    with pytest.raises(api.TaskError):
        futures[0].result(timeout=60)
    for fut in (futures[1], futures[-1]):
        with pytest.raises(api.DependencyError) as info:
            fut.result(timeout=60)
        assert str(info.value).count("the first link failed") <= 1
        assert len(str(info.value)) < 2000
    assert ping().result(timeout=60) == "pong"
