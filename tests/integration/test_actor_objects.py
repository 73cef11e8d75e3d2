"""Large actor results stay in the actor's node store and reach the driver by ref (mapped
read-only, not copied), on the direct path and through the head alike."""

from __future__ import annotations

import gc
import mmap
import os
import time

import numpy as np

import api

SIZE = 64 << 20


@api.actor(num_cpus=0)  # the shared cluster has 2 slots: leave them to tasks
class Maker:
    def make(self, n: int, fill: int = 7) -> np.ndarray:
        return np.full(n, fill, dtype=np.uint8)

    def small(self) -> int:
        return 3


@api.python_app
def seven() -> int:
    return 7


def _mapped_from_store(arr: np.ndarray) -> bool:
    """True if `arr` is a read-only view of a mapped store file, not a private copy."""
    base = arr
    while getattr(base, "base", None) is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return not arr.flags.writeable and isinstance(base, mmap.mmap)


def test_a_large_direct_actor_result_arrives_by_ref(cluster):
    maker = Maker()
    assert maker.small().result(timeout=60) == 3   # the route is known: calls go direct
    arr = maker.make(SIZE).result(timeout=60)
    assert arr.nbytes == SIZE and int(arr[0]) == 7 and int(arr[-1]) == 7
    assert _mapped_from_store(arr)
    again = maker.make(SIZE, 9)
    assert _mapped_from_store(again.result(timeout=60))

    @api.python_app
    def total(a: np.ndarray) -> int:
        return int(a[:1000].sum())

    # Registered with the head (as a put): a task on the node can take it by ref.
    assert total(again).result(timeout=60) == 9000
    api.kill(maker)


def test_a_large_actor_result_through_the_head_arrives_by_ref(cluster):
    maker = Maker()
    fut = maker.make(SIZE, seven())                 # a future argument: the head path
    arr = fut.result(timeout=60)
    assert arr.nbytes == SIZE and int(arr[0]) == 7
    assert _mapped_from_store(arr)
    del arr, fut
    assert maker.small().result(timeout=60) == 3
    api.kill(maker)


def _in_a_store(object_id: int) -> bool:
    """True if a node store on this host holds `object_id`'s file."""
    name = f"{object_id:x}"
    client = api._session.client()
    return any(os.path.exists(os.path.join(n.store_dir, name))
               for n in client.nodes.values() if n.store_dir)


def _dropped(object_id: int, guard: float = 20.0) -> bool:
    """Wait (a hang guard) for the store to delete `object_id` once released."""
    deadline = time.monotonic() + guard
    while time.monotonic() < deadline:
        gc.collect()
        seven().result(timeout=60)  # releases ride on the driver's next batch
        if not _in_a_store(object_id):
            return True
        time.sleep(0.05)
    return False


def test_a_released_direct_actor_result_leaves_the_store(cluster):
    maker = Maker()
    assert maker.small().result(timeout=60) == 3
    fut = maker.make(SIZE)
    fut.result(timeout=60)
    object_id = fut.task_id
    assert _in_a_store(object_id)
    del fut
    assert _dropped(object_id)
    api.kill(maker)


def test_a_released_actor_result_through_the_head_leaves_the_store(cluster):
    maker = Maker()
    fut = maker.make(SIZE, seven())
    fut.result(timeout=60)
    object_id = fut.task_id
    assert _in_a_store(object_id)
    del fut
    try:
        assert _dropped(object_id, guard=5.0)
    finally:
        api.kill(maker)
