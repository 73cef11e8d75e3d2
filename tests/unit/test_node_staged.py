"""The daemon's side of staging (cluster.node.staged): which staged task starts, which goes
back to the head, and with what value."""

from __future__ import annotations

from cluster.common.protocol import pb
from cluster.node.staged import StagedTasks


def _staged(after: int, task_id: int) -> pb.TaskSpec:
    return pb.TaskSpec(task_id=task_id, after=after)


def test_a_heir_starts_with_its_inputs_inline_value():
    staged = StagedTasks()
    staged.live.update({1, 2})
    assert staged.hold(_staged(1, 2)) and len(staged.behind) == 1
    start, back = staged.ended(pb.TaskResult(task_id=1, status=pb.OK, data=b"v"))
    assert back is None and start is not None and start.task_id == 2
    assert [(v.id, v.data, v.size) for v in start.dep_values] == [(1, b"v", 0)]
    assert len(staged.behind) == 0


def test_a_stored_value_is_named_by_size_and_found_in_this_nodes_store():
    staged = StagedTasks()
    staged.live.add(1)
    staged.hold(_staged(1, 2))
    start, _ = staged.ended(pb.TaskResult(task_id=1, status=pb.OK, size=5 << 20))
    assert start is not None and [(v.id, v.size) for v in start.dep_values] == [(1, 5 << 20)]


def test_a_heir_goes_back_when_its_input_failed_or_holds_refs():
    for result in (pb.TaskResult(task_id=1, status=pb.APP_ERROR),
                   pb.TaskResult(task_id=1, status=pb.OK, nested=[9])):
        staged = StagedTasks()
        staged.live.add(1)
        staged.hold(_staged(1, 2))
        start, back = staged.ended(result)
        assert start is None and back is not None and back.task_id == 2


def test_a_heir_whose_input_has_ended_is_not_held():
    staged = StagedTasks()
    assert not staged.hold(_staged(1, 2)), "1 was reported already (not live)"
    staged.live.add(1)
    assert staged.hold(_staged(1, 2))
    assert not staged.hold(_staged(1, 3)), "one heir per input"


def test_a_cancelled_heir_is_taken_out():
    staged = StagedTasks()
    staged.live.add(1)
    staged.hold(_staged(1, 2))
    assert staged.take(3) is None
    taken = staged.take(2)
    assert taken is not None and taken.task_id == 2
    assert staged.ended(pb.TaskResult(task_id=1, status=pb.OK)) == (None, None)


def test_the_kinds_staging_names_are_the_protocols():
    # (cluster.policy.staging keeps them as plain ints: the worker imports no protobuf.)
    from cluster.policy import staging

    assert (staging.PYTHON, staging.BASH, staging.ACTOR_CREATE, staging.ACTOR_CALL) == \
        (pb.PYTHON, pb.BASH, pb.ACTOR_CREATE, pb.ACTOR_CALL)
    assert staging.OK == pb.OK
