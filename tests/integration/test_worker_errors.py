"""Code inside workers (an app or actor calling an actor) sees the same exception types as
a driver does."""

from __future__ import annotations

import api


@api.actor
class Target:
    def add(self, k):
        return k + 1

    def fail(self):
        raise KeyError("broken call")


def test_app_calling_a_killed_actor_gets_actor_died_error(cluster):
    t = Target()
    assert t.add(1).result(timeout=30) == 2
    api.kill(t)

    @api.python_app
    def call_dead(handle):
        try:
            handle.add(1).result()
        except api.ActorDiedError as err:
            return ["ActorDiedError", str(err)]
        except BaseException as err:  # noqa: BLE001 - reported to the test
            return [type(err).__name__, str(err)]
        return ["no error", ""]

    kind, text = call_dead(t).result(timeout=60)
    assert kind == "ActorDiedError", text
    assert "killed" in text

    # Uncaught, it reaches the driver as the app's error.
    @api.python_app
    def call_dead_uncaught(handle):
        return handle.add(1).result()

    fut = call_dead_uncaught(t)
    try:
        fut.result(timeout=60)
    except api.TaskError as err:
        assert err.exc_type.endswith("ActorDiedError")
    else:
        raise AssertionError("calling a killed actor must fail")


def test_app_sees_an_actor_methods_error_as_a_driver_would(cluster):
    t = Target()

    @api.python_app
    def call_failing(handle):
        try:
            handle.fail().result()
        except KeyError as err:  # the method's own type, as in a driver
            return [isinstance(err, api.TaskError), err.exc_type]
        return [False, "no error"]

    assert call_failing(t).result(timeout=60) == [True, "KeyError"]
    api.kill(t)
