"""Placement is a pure function: tested without processes."""

from cluster.policy import scheduler
from cluster.policy.scheduler import NodeView, place


def node(node_id, total, used=None, factor=1.0, schedulable=True):
    return NodeView(node_id, dict(total), dict(used or {}), factor, schedulable)


def test_least_loaded_node_wins():
    a = node(1, {"cpus": 4}, {"cpus": 3})
    b = node(2, {"cpus": 4}, {"cpus": 1})
    assert place({"cpus": 1}, [a, b]) == 2


def test_full_nodes_take_nothing_without_queue_allowance():
    a = node(1, {"cpus": 2}, {"cpus": 2})
    assert place({"cpus": 1}, [a]) is None


def test_queue_allowance_lets_a_node_take_more_than_its_slots():
    a = node(1, {"cpus": 2}, {"cpus": 2}, factor=2.0)
    assert place({"cpus": 1}, [a]) == 1
    a.used["cpus"] = 4
    assert place({"cpus": 1}, [a]) is None


def test_resources_a_node_lacks_are_never_placed_there():
    cpu_only = node(1, {"cpus": 8})
    gpu = node(2, {"cpus": 2, "gpus": 1}, {"cpus": 0.5})
    assert place({"cpus": 1, "gpus": 1}, [cpu_only, gpu]) == 2
    assert place({"licence": 1}, [cpu_only, gpu]) is None


def test_request_larger_than_node_never_fits_even_with_queue_allowance():
    a = node(1, {"cpus": 2}, factor=17.0)
    assert place({"cpus": 3}, [a]) is None
    assert not scheduler.can_ever_fit({"cpus": 3}, a.total)


def test_unschedulable_nodes_are_skipped():
    a = node(1, {"cpus": 2}, schedulable=False)
    b = node(2, {"cpus": 2}, {"cpus": 1})
    assert place({"cpus": 1}, [a, b]) == 2


def test_locality_prefers_node_holding_argument_bytes():
    a = node(1, {"cpus": 4}, {"cpus": 2})
    b = node(2, {"cpus": 4}, {"cpus": 0})
    assert place({"cpus": 1}, [a, b], local_bytes={1: 10_000_000}) == 1
    # ...but not when that node cannot take the task.
    a.used["cpus"] = 4
    assert place({"cpus": 1}, [a, b], local_bytes={1: 10_000_000}) == 2


def test_queue_factor_shrinks_for_long_tasks():
    assert scheduler.queue_factor(0.00001) == 1 + scheduler.MAX_EXTRA_PER_SLOT
    assert scheduler.queue_factor(10.0) < 1.001
    assert scheduler.queue_factor(0.001) > scheduler.queue_factor(0.01)


def test_infeasible_names_the_largest_node_and_describe():
    totals = [{"cpus": 2, "memory": 2**30}, {"cpus": 8, "gpus": 1}]
    assert scheduler.infeasible({"cpus": 16}, totals).endswith("largest node has cpus=8 gpus=1")
    assert scheduler.infeasible({"gpus": 1}, totals) == ""
    assert scheduler.describe({"cpus": 8, "gpus": 1}) == "cpus=8 gpus=1"
    assert scheduler.describe({"memory": 2**31}) == "memory=2.0GiB"


def test_least_loaded_chooses_what_place_would_task_after_task():
    # With no queue allowance (factor 1) there is nothing to batch: the same choices.
    import random

    rng = random.Random(7)
    for _ in range(50):
        nodes = [node(i, {"cpus": rng.choice([1, 2, 4, 8]), "memory": 8.0},
                      {"cpus": rng.choice([0, 0.5, 1])}) for i in range(1, 30)]
        for n in nodes:
            n.factor = 1.0
        twins = [scheduler.NodeView(n.node_id, dict(n.total), dict(n.used), n.factor)
                 for n in nodes]
        request = {"cpus": rng.choice([0.5, 1, 2]), "memory": 1.0}
        by_index = {n.node_id: n for n in nodes}
        expected = []
        while (chosen := scheduler.place(request, twins)) is not None:
            expected.append(chosen)
            twin = next(t for t in twins if t.node_id == chosen)
            for k, v in request.items():
                twin.used[k] = twin.used.get(k, 0.0) + v
        got = []
        for chosen in scheduler.least_loaded(request, nodes):
            got.append(chosen)
            for k, v in request.items():
                by_index[chosen].used[k] = by_index[chosen].used.get(k, 0.0) + v
        assert got == expected


def test_least_loaded_refills_a_busy_node_in_batches():
    busy = node(1, {"cpus": 2}, {"cpus": 12}, factor=9.0)    # 10 queued, allowance 16
    for _ in scheduler.least_loaded({"cpus": 1}, [busy]):
        raise AssertionError("refilled with room for only 6 of 16")
    busy.used["cpus"] = 9.0                                   # room for 9
    taken = 0
    for _ in scheduler.least_loaded({"cpus": 1}, [busy]):
        busy.used["cpus"] += 1
        taken += 1
    assert taken == 9, "once started, filled up in one pass"
    idle = node(2, {"cpus": 2}, {"cpus": 1}, factor=9.0)
    assert next(scheduler.least_loaded({"cpus": 1}, [idle])) == 2, "a free slot: at once"
