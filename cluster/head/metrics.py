"""``/metrics``: the cluster in Prometheus' text exposition format (version 0.0.4).

Built from the head's status snapshot (:func:`cluster.head.report.status_reply`) and the
history's task counts, so it is a pure function, tested without a cluster.

>>> from cluster.common.protocol import pb
>>> text = render(pb.StatusReply(cluster_id="c1", nodes_alive=1, tasks_done=3), {})
>>> "shoal_tasks_done_total 3" in text
True
"""

from __future__ import annotations

from cluster.common.protocol import pb, to_dict


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(reply: pb.StatusReply, counts: dict[str, int]) -> str:
    """The metrics text for one snapshot (`counts`: tasks by history state)."""
    out: list[str] = []

    def metric(name: str, kind: str, doc: str, samples: list[tuple[dict[str, str], float]]) \
            -> None:
        out.append(f"# HELP {name} {doc}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    metric("shoal_up", "gauge", "1 while the head answers.", [({"cluster": reply.cluster_id}, 1)])
    metric("shoal_uptime_seconds", "gauge", "Seconds since the head started.",
           [({}, reply.uptime)])
    metric("shoal_nodes", "gauge", "Nodes by state.",
           [({"state": "alive"}, reply.nodes_alive),
            ({"state": "dead"}, reply.nodes_total - reply.nodes_alive)])
    metric("shoal_tasks", "gauge", "Tasks in the cluster now, by state.",
           [({"state": "queued"}, reply.tasks_queued),
            ({"state": "running"}, reply.tasks_running)])
    metric("shoal_tasks_done_total", "counter", "Tasks (and actor calls) that succeeded.",
           [({}, reply.tasks_done)])
    metric("shoal_tasks_failed_total", "counter", "Tasks (and actor calls) that failed.",
           [({}, reply.tasks_failed)])
    metric("shoal_tasks_staged_total", "counter",
           "Tasks that started on their input's node, not through the head.",
           [({}, reply.tasks_staged)])
    metric("shoal_tasks_prefetched_total", "counter",
           "Tasks that started on a worker they were prefetched to while it was busy.",
           [({}, reply.tasks_prefetched)])
    if counts:
        metric("shoal_history_tasks", "gauge", "App tasks in the run history, by state.",
               [({"state": k}, v) for k, v in sorted(counts.items())])
    metric("shoal_drivers", "gauge", "Connected drivers.", [({}, reply.drivers)])
    metric("shoal_objects", "gauge", "Objects the head tracks.", [({}, reply.objects)])
    metric("shoal_object_bytes", "gauge", "Bytes of the objects the head tracks.",
           [({}, reply.object_bytes)])
    total, used = to_dict(reply.total), to_dict(reply.used)
    metric("shoal_resource_total", "gauge", "Resources of the alive nodes.",
           [({"resource": k}, v) for k, v in sorted(total.items())])
    metric("shoal_resource_used", "gauge", "Resources in use.",
           [({"resource": k}, used.get(k, 0.0)) for k in sorted(total)])
    node_total, node_used, store, capacity, running = [], [], [], [], []
    for node in reply.nodes:
        labels = {"node": node.name, "node_id": str(node.node_id)}
        t, u = to_dict(node.total), to_dict(node.used)
        for key in ("cpus", "gpus", "memory"):
            if key in t:
                node_total.append(({**labels, "resource": key}, t[key]))
                node_used.append(({**labels, "resource": key}, u.get(key, 0.0)))
        store.append((labels, node.store.bytes))
        capacity.append((labels, node.store.capacity))
        running.append((labels, node.running))
    metric("shoal_node_resource_total", "gauge", "A node's resources.", node_total)
    metric("shoal_node_resource_used", "gauge", "A node's resources in use.", node_used)
    metric("shoal_node_running_tasks", "gauge", "Tasks running on a node.", running)
    metric("shoal_node_store_bytes", "gauge", "Bytes in a node's object store (memory).", store)
    metric("shoal_node_store_capacity_bytes", "gauge", "A node's object store limit.", capacity)
    states: dict[str, int] = {}
    for actor in reply.actors:
        states[actor.state] = states.get(actor.state, 0) + 1
    metric("shoal_actors", "gauge", "Actors by state.",
           [({"state": k}, v) for k, v in sorted(states.items())])
    metric("shoal_blocks", "gauge", "Slurm blocks by state.",
           [({"state": s}, sum(1 for b in reply.blocks if b.state == s))
            for s in sorted({b.state for b in reply.blocks})])
    return "\n".join(out) + "\n"
