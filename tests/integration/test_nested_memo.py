"""A memoized (``cache=True``) app called inside a task, through the task's nested client,
with a future among its arguments: the memo table resolves it later and submits the task
under the future it already handed out (``Client.submit(..., local=True)``), which the
nested client must accept too. Real embedded cluster."""

from __future__ import annotations

import pytest

import api

pytestmark = pytest.mark.timeout(120)


@api.python_app
def one():
    return 1


@api.python_app(cache=True)
def double(x):
    return 2 * x


@api.python_app
def parent():
    first = double(one())   # a future argument: the memo table waits for it, then submits
    second = double(one())  # the same call again: shared, or a hit once the first is done
    return first.result(timeout=60), second.result(timeout=60)


def test_memoized_call_with_a_future_argument_inside_a_task(cluster):
    assert parent().result(timeout=90) == (2, 2)
