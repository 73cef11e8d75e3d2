"""The head's invariants, checked by ``Head.validate()`` (the unit tests call it after
every step; it walks everything, so it is for tests and debugging, not the hot path)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

from cluster.common.protocol import pb
from cluster.head.records import HOLDING, LIVE, Node, Task, TaskState

_EPS = 1e-6


def check(tasks: dict[int, Task], ready: dict[bytes, deque[Task]], gangs: deque[Task],
          waiters: dict[int, list[Task]], nodes: dict[int, Node],
          queued_calls: Iterable[Task], inflight_calls: Iterable[Task],
          refs: dict[int, int], deciding: Iterable[int] = ()) -> None:
    """Raise AssertionError naming the first broken invariant.

    Every task is where its state says (see :mod:`cluster.head.records`), each queued
    task in exactly one queue; a waiting task's ``pending`` equals its entries in
    ``waiters``; the resources in use on each node equal those reserved by the tasks
    running or hosted there; reference counts are positive; the DECIDING tasks
    (``deciding``: their ids, waiting for a retry_handler's answer) are exactly those filed
    with the failures table, and hold nothing.
    """
    for task_id, task in tasks.items():
        assert task.task_id == task_id, f"{task_id:#x} filed under the wrong id"
        assert task.state in LIVE, f"{task_id:#x} in tasks but {task.state.name}"
    in_queues: Counter[int] = Counter()
    for queue in [*ready.values(), gangs]:
        for task in queue:
            assert task.state is TaskState.QUEUED, \
                f"{task.task_id:#x} in a ready queue but {task.state.name}"
            in_queues[task.task_id] += 1
    for task in queued_calls:
        assert task.state in (TaskState.WAITING, TaskState.QUEUED), \
            f"call {task.task_id:#x} in its actor's queue but {task.state.name}"
        if task.state is TaskState.QUEUED:
            in_queues[task.task_id] += 1
    waiting: Counter[int] = Counter()
    for dep, dependents in waiters.items():
        assert dep in tasks, f"tasks wait for {dep:#x}, which nothing produces"
        for task in dependents:
            if task.state is TaskState.WAITING:
                waiting[task.task_id] += 1
    running: set[int] = set()
    staged: set[int] = set()  # (what else holds of them: cluster.head.staging checks)
    used: dict[int, Counter[str]] = {n: Counter() for n in nodes}
    for node in nodes.values():
        staged.update(node.staged)
        for task_id, task in node.running.items():
            assert task.state in HOLDING, \
                f"{task_id:#x} on node {node.name} but {task.state.name}"
            assert task.node_id == node.node_id, f"{task_id:#x} on two nodes"
            running.add(task_id)
            for node_id, amounts in task.reserved.items():
                used[node_id].update(amounts)
    inflight = {t.task_id for t in inflight_calls}
    for task in tasks.values():
        tid = task.task_id
        if task.state is TaskState.QUEUED:
            assert in_queues[tid] == 1, f"{tid:#x} is in {in_queues[tid]} queues"
        else:
            assert in_queues[tid] == 0, f"{tid:#x} is {task.state.name} but queued"
        if task.state is TaskState.WAITING:
            assert task.pending > 0 and waiting[tid] == task.pending, \
                f"{tid:#x} waits for {task.pending} but is filed under {waiting[tid]}"
        if task.state is TaskState.STAGED:
            assert tid in staged, f"{tid:#x} is STAGED but on no node"
        if task.state in (TaskState.RUNNING, TaskState.CANCELLING):
            where = inflight if task.spec.kind == pb.ACTOR_CALL else running
            assert tid in where or (task.state is TaskState.CANCELLING and tid in staged), \
                f"{tid:#x} is {task.state.name} but on no node"
    for node in nodes.values():
        for key in set(node.view.used) | set(used[node.node_id]):
            held = used[node.node_id][key]
            assert abs(node.view.used.get(key, 0.0) - held) < _EPS, \
                f"node {node.name}: {key} in use {node.view.used.get(key, 0.0)}, " \
                f"tasks hold {held}"
    asking = set(deciding)
    for task in tasks.values():
        tid = task.task_id
        assert (task.state is TaskState.DECIDING) == (tid in asking), \
            f"{tid:#x} is {task.state.name} but {'' if tid in asking else 'not '}deciding"
        if task.state is TaskState.DECIDING:
            assert not task.reserved, f"{tid:#x} is DECIDING but holds {task.reserved}"
    assert asking <= set(tasks), f"deciding tasks not live: {asking - set(tasks)}"
    for object_id, count in refs.items():
        assert count > 0, f"object {object_id:#x} has {count} references"
