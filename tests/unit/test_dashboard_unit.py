"""The dashboard's node records at scale, without a cluster: 5,000 nodes are built once,
reused while every page polls, rebuilt only for the nodes that changed, and at once when a
node is lost (with its reason)."""

from __future__ import annotations

import pytest

from cluster.common.protocol import pb
from cluster.head import dashboard
from cluster.head.dashboard import NodeRecords
from cluster.head.records import Node
from cluster.policy import scheduler

pytestmark = pytest.mark.timeout(60)


def _nodes(n: int) -> dict[int, Node]:
    return {i: Node(i, f"node{i:04d}", "10.0.0.1", 1000 + i, None,
                    scheduler.NodeView(i, {"cpus": 4.0, "memory": 8e9}, {}, 1.0))
            for i in range(1, n + 1)}


def test_five_thousand_nodes_are_built_once_then_only_what_changed(monkeypatch):
    nodes = _nodes(5000)
    cache = NodeRecords()
    first = cache.get(nodes, 5000)
    assert len(first) == 5000 and cache.built == 5000
    assert first[0]["name"] == "node0001" and first[0]["total"] == {"cpus": 4.0,
                                                                    "memory": 8e9}
    for _ in range(10):                       # ten pages polling within the second
        assert cache.get(nodes, 5000) is first
    assert cache.built == 5000

    monkeypatch.setattr(dashboard, "NODE_RECORDS_SECONDS", 0.0)   # a second later
    nodes[7].heartbeat = pb.Heartbeat(workers=4)                  # a heartbeat came
    nodes[9].done += 1                                            # a task ended there
    again = cache.get(nodes, 5000)
    assert cache.built == 5002 and again[6]["workers"] == 4 and again[8]["done"] == 1
    assert again[0] is first[0]                                   # the rest reused

    monkeypatch.setattr(dashboard, "NODE_RECORDS_SECONDS", 3600.0)
    nodes[3].alive = False                                        # lost: at once
    nodes[3].lost_reason = "no heartbeat for 30 s"
    lost = cache.get(nodes, 4999)
    assert (lost[2]["state"], lost[2]["reason"]) == ("lost", "no heartbeat for 30 s")
    assert cache.built == 5003


def test_the_overview_json_takes_the_node_records_text_once():
    import json

    cache = NodeRecords()
    records = cache.get(_nodes(3), 3)
    data = {"live": True, "counts": {"done": 2}, "nodes": records}
    assert json.loads(dashboard.dumps(data)) == json.loads(json.dumps(data))
    assert records.json is records.json                       # encoded once
    assert json.loads(dashboard.dumps({"nodes": records}))["nodes"][1]["name"] == "node0002"
    assert dashboard.dumps({"nodes": []}) == '{"nodes": []}'
