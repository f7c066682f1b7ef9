"""The ``preempt`` verb (ProcessPreemption) over HTTP, fed the payload a real kube-scheduler (v1.36) sent.

kube-scheduler calls it only when its own dry run found victims for what it counts (CPU, memory, in-tree
filters); the extender adds the lower-priority pods whose MIG slices must go too, and drops the nodes
where MIG cannot fit even then (docs/preemption.md item 5).
"""

from __future__ import annotations

import copy

import pytest

from tests.api.conftest import fixture
from tests.builders import make_node, make_pod

VICTIM_A = "826125bd-f2dd-4e6d-a987-6f1cfb877e7c"  # on gpu-a in the recording
VICTIM_B = "366f983f-6057-4342-b80b-90bfb08b80b8"  # on gpu-b


def _low(uid: str, node: str, started: str) -> dict:
    pod = make_pod(uid=uid, mig={"1g.10gb": 1}, node=node, owner=("ReplicaSet", "batch", "rs-batch"))
    pod["spec"]["priority"] = 100
    pod["status"]["startTime"] = started
    return pod


def _high(node: str, mig: dict) -> dict:
    pod = make_pod(mig=mig, node=node)
    pod["spec"]["priority"] = 1_000_000
    return pod


@pytest.fixture
def cluster_objects() -> list[dict]:
    """gpu-a: both 1g.10gb held by low pods (the recorded victim and an older one), its 2g.20gb by a
    high pod; gpu-b: its one 1g.10gb held by the recorded victim, every 2g.20gb by high pods."""
    return [
        make_node("gpu-a", "A100-80GB", {"1g.10gb": 2, "2g.20gb": 1}),
        make_node("gpu-b", "A100-80GB", {"1g.10gb": 1, "2g.20gb": 3}),
        _low(VICTIM_A, "gpu-a", "2026-11-23T17:38:47Z"),
        _low("uid-older", "gpu-a", "2026-11-23T17:00:00Z"),
        _high("gpu-a", {"2g.20gb": 1}),
        _low(VICTIM_B, "gpu-b", "2026-11-23T17:38:47Z"),
        *(_high("gpu-b", {"2g.20gb": 1}) for _ in range(3)),
    ]


def _asking(body: dict, count: int) -> dict:
    body = copy.deepcopy(body)
    for c in body["Pod"]["spec"]["containers"]:
        for kind in ("limits", "requests"):
            c["resources"][kind]["nvidia.com/mig-1g.10gb"] = str(count)
    return body


def test_recorded_request_keeps_schedulers_victims_when_they_free_the_slice_too(client) -> None:
    body = fixture("preempt-request.json")  # 1 x 1g.10gb; one victim per node, each holding 1g.10gb
    resp = client.post("/preempt", json=body)
    assert resp.status_code == 200
    assert resp.get_json() == {"NodeNameToMetaVictims": {
        "gpu-a": {"Pods": [{"UID": VICTIM_A}], "NumPDBViolations": 0},
        "gpu-b": {"Pods": [{"UID": VICTIM_B}], "NumPDBViolations": 0}}}


def test_adds_the_mig_victims_needed_and_drops_nodes_where_mig_cannot_fit(client) -> None:
    body = _asking(fixture("preempt-request.json"), 2)
    out = client.post("/preempt", json=body).get_json()
    # gpu-a: the older low pod must go too (most important first: the older start); gpu-b has one 1g.10gb
    assert out == {"NodeNameToMetaVictims": {
        "gpu-a": {"Pods": [{"UID": "uid-older"}, {"UID": VICTIM_A}], "NumPDBViolations": 0}}}


def test_meta_victims_are_looked_up_in_the_inventory(client) -> None:
    body = _asking(fixture("preempt-request.json"), 2)
    body["NodeNameToMetaVictims"] = {n: {"Pods": [{"UID": p["metadata"]["uid"]} for p in v["Pods"]],
                                         "NumPDBViolations": v["NumPDBViolations"]}
                                     for n, v in body.pop("NodeNameToVictims").items()}
    out = client.post("/preempt", json=body).get_json()
    assert list(out["NodeNameToMetaVictims"]) == ["gpu-a"]
    assert out["NodeNameToMetaVictims"]["gpu-a"]["Pods"] == [{"UID": "uid-older"}, {"UID": VICTIM_A}]


def test_schedulers_pdb_count_is_kept_when_victims_are_added(client) -> None:
    body = _asking(fixture("preempt-request.json"), 2)
    body["NodeNameToVictims"]["gpu-a"]["NumPDBViolations"] = 1
    out = client.post("/preempt", json=body).get_json()
    assert out["NodeNameToMetaVictims"]["gpu-a"]["NumPDBViolations"] == 1


@pytest.mark.parametrize("body, message", [
    pytest.param({"Pod": None}, "ExtenderArgs.Pod must be a Pod object", id="no-pod"),
    pytest.param({"Pod": {"metadata": {}, "spec": {}}, "NodeNameToVictims": []},
                 "ExtenderPreemptionArgs.NodeNameToVictims must be an object", id="victims-not-an-object"),
    pytest.param({"Pod": {"metadata": {}, "spec": {}}, "NodeNameToMetaVictims": {"gpu-a": {"Pods": [{}]}}},
                 "ExtenderPreemptionArgs.NodeNameToMetaVictims[gpu-a].Pods[].UID must be a string",
                 id="meta-victim-without-uid"),
])
def test_malformed_preempt_requests_are_400_with_error(client, body: dict, message: str) -> None:
    resp = client.post("/preempt", json=body)
    assert resp.status_code == 400
    assert resp.get_json() == {"NodeNameToMetaVictims": None, "Error": message}
