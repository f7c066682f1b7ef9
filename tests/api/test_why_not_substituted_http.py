"""Issue 16: the FailedNodes texts kube-scheduler copies into the FailedScheduling event say, per node, why
no substitute was recorded (formatted at the edge from the planner's typed reasons)."""

from __future__ import annotations

from mig_extender.core.resources import ANN_SUBSTITUTE
from tests.api.conftest import pending


def _filter(client, pod: dict) -> dict:
    resp = client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a", "gpu-b", "cpu-c"]})
    assert resp.status_code == 200
    return resp.get_json()


def test_failed_nodes_say_why_no_substitute_per_node(client) -> None:
    out = _filter(client, pending({"4g.40gb": 1}, owner=("ReplicaSet", "big", "rs-big")))
    texts = out["FailedAndUnresolvableNodes"]
    assert texts["gpu-a"] == ("nvidia.com/mig-4g.40gb: none on this node; not substituted here: "
                              "no slice of at least 4g.40gb free on this node")
    assert texts["gpu-b"] == texts["gpu-a"]
    assert texts["cpu-c"] == "nvidia.com/mig-4g.40gb: none on this node"  # no GPU: nothing to add
    assert client.get("/debug/rules").get_json() == []


def test_opted_out_pod_is_told_so_on_every_node(client) -> None:
    out = _filter(client, pending({"1g.10gb": 3}, annotations={ANN_SUBSTITUTE: "false"}))
    suffix = "; not substituted: pod opted out of substitution (mig-extender.io/substitute=false)"
    texts = out["FailedAndUnresolvableNodes"]
    assert set(texts) == {"gpu-a", "gpu-b", "cpu-c"} and all(t.endswith(suffix) for t in texts.values())
