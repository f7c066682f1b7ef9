"""Issue 16: GET /debug/pods/<ns>/<name>: the pod's demand, its rules, and the filter's decision per node now,
as a dry run (nothing recorded). Served by the real Flask app over the conftest cluster."""

from __future__ import annotations

from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.extender import ExtenderService
from mig_extender.components.settings import Settings
from mig_extender.web.app import create_app
from tests.api.conftest import pending
from tests.builders import inventory_of, make_node, make_pod

OWNER = ("ReplicaSet", "infer", "rs-infer")


def _explain(client, namespace: str, name: str):
    return client.get(f"/debug/pods/{namespace}/{name}")


def test_sold_out_pod_shows_demand_verdicts_and_the_substitute_it_would_get_without_recording(client,
                                                                                              service) -> None:
    for obj in (make_pod(mig={"1g.10gb": 2}, node="gpu-a"), make_pod(mig={"1g.10gb": 1}, node="gpu-b")):
        service.inventory.upsert_pod(obj)
    service.inventory.upsert_pod(pending({"1g.10gb": 1}, name="infer-x", owner=OWNER, uid="u-infer-x"))
    resp = _explain(client, "default", "infer-x")
    assert resp.status_code == 200
    out = resp.get_json()
    assert out["pod"] == {"namespace": "default", "name": "infer-x", "uid": "u-infer-x", "node": None,
                          "phase": "Pending", "demand": {"nvidia.com/mig-1g.10gb": 1}, "priority": 0,
                          "source": "inventory"}
    by_node = {v["node"]: v for v in out["decision"]["nodes"]}
    assert set(by_node) == {"gpu-a", "gpu-b", "cpu-c"}
    assert {v["verdict"] for v in by_node.values()} == {"unresolvable"}
    assert by_node["gpu-a"]["reason"] == {
        "kind": "Insufficient", "text": "nvidia.com/mig-1g.10gb: 0 free of 2, 1 requested",
        "resource": "nvidia.com/mig-1g.10gb", "requested": 1, "free": 0, "allocatable": 2, "reserved": 0,
        "relievable": 0, "unresolvable": True}
    chosen = out["decision"]["would_record"]
    assert chosen["substitute"] == {"resource": "nvidia.com/mig-2g.20gb", "count": 1}
    assert out["decision"]["note"] is None and out["rules"] == []
    assert client.get("/debug/rules").get_json() == []  # a dry run: nothing recorded


def test_pod_seen_only_by_filter_is_explained_with_its_rules(client) -> None:
    pod = pending({"1g.10gb": 4}, name="late-x", owner=OWNER, uid="u-late-x")  # 4 of anything fit nowhere
    client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a", "gpu-b"]})
    out = _explain(client, "default", "late-x").get_json()
    assert out["pod"]["source"] == "filter-cache"
    assert out["decision"]["would_record"] is None
    by_node = {v["node"]: v for v in out["decision"]["nodes"]}
    assert by_node["gpu-b"]["substitute"] == {"kind": "NoCompatibleFree", "requested": "1g.10gb",
                                              "text": "no slice of at least 1g.10gb free on this node"}
    assert by_node["cpu-c"]["substitute"] is None  # no GPU: its own reason says it all


def test_rules_of_the_pod_are_listed_in_any_phase(client, service) -> None:
    service.inventory.upsert_pod(make_pod(mig={"1g.10gb": 2}, node="gpu-a"))
    service.inventory.upsert_pod(make_pod(mig={"1g.10gb": 1}, node="gpu-b"))
    pod = pending({"1g.10gb": 1}, name="infer-y", owner=OWNER, uid="u-infer-y")
    service.inventory.upsert_pod(pod)
    client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a", "gpu-b"]})  # records the substitution
    out = _explain(client, "default", "infer-y").get_json()
    assert [(r["pod"]["uid"], r["phase"]) for r in out["rules"]] == [("u-infer-y", "Recorded")]
    assert out["decision"]["note"]["kind"] == "Note" and "waiting for the pod" in out["decision"]["note"]["text"]


def test_unknown_pod_is_a_json_404(client) -> None:
    resp = _explain(client, "default", "nope")
    assert resp.status_code == 404
    assert resp.get_json() == {"Error": "pod default/nope not known to mig-extender (no such pod, not seen yet, "
                                        "or it asks for no MIG slice)"}


def test_disabled_with_the_other_debug_endpoints() -> None:
    service = ExtenderService(inventory_of(make_node("gpu-a", "A100-80GB", {"1g.10gb": 1}),
                                           pending({"1g.10gb": 1}, name="p")),
                              MemoryRuleStore(), Settings().plan)
    client = create_app(Settings(debug_endpoints=False), service).test_client()
    assert client.get("/debug/pods/default/p").status_code == 404
    assert client.get("/debug/rules").status_code == 404


def test_before_the_caches_sync_every_node_says_not_synced(service, client) -> None:
    """After an extender restart, before the pod list: the dry run answers what /filter would, not synced."""
    service.inventory.upsert_pod(pending({"1g.10gb": 1}, name="early-x", uid="u-early-x"))
    service.inventory.synced = False
    out = _explain(client, "default", "early-x").get_json()
    assert {(v["verdict"], v["reason"]["kind"]) for v in out["decision"]["nodes"]} == {("fails", "NotSynced")}
    assert out["decision"]["would_record"] is None
