"""Placement checks (core/placement.py): node selectors, required node affinity, taints, cordons, cpu/memory.

Expected values follow kube-scheduler's NodeAffinity, TaintToleration, NodeUnschedulable and NodeResourcesFit.
"""

from __future__ import annotations

from typing import Any

import pytest

from mig_extender.cluster.inventory import node_info
from mig_extender.core.placement import NodeFacts, placement_problem, tolerates
from mig_extender.core.resources import pod_info
from tests.builders import make_node, make_pod

NODE = NodeFacts("n1", {"zone": "a", "gpu-gen": "9", "pool": "serve"}, taints=(), cpu_milli=4000,
                 memory_bytes=8 << 30, used_cpu_milli=1000, used_memory_bytes=1 << 30)


def pod_with(**spec: Any) -> Any:
    obj = make_pod(mig={"1g.5gb": 1})
    obj["spec"].update(spec)
    return pod_info(obj).placement


def term(*exprs: dict, fields: tuple = ()) -> dict:
    out: dict[str, Any] = {"matchExpressions": list(exprs)}
    if fields:
        out["matchFields"] = list(fields)
    return out


def affinity(*terms: dict) -> dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


@pytest.mark.parametrize(("spec", "node", "problem"), [
    pytest.param({}, NODE, "", id="no-constraints"),
    pytest.param({"nodeSelector": {"zone": "a"}}, NODE, "", id="selector-matches"),
    pytest.param({"nodeSelector": {"zone": "b"}}, NODE, "node does not match the pod's nodeSelector",
                 id="selector-mismatch"),
    pytest.param({"affinity": affinity(term({"key": "zone", "operator": "In", "values": ["b"]}),
                                       term({"key": "pool", "operator": "Exists"}))}, NODE, "",
                 id="affinity-terms-are-ored"),
    pytest.param({"affinity": affinity(term({"key": "zone", "operator": "In", "values": ["a"]},
                                            {"key": "pool", "operator": "NotIn", "values": ["serve"]}))},
                 NODE, "node does not match the pod's required node affinity", id="affinity-expressions-are-anded"),
    pytest.param({"affinity": affinity(term({"key": "gpu-gen", "operator": "Gt", "values": ["8"]}))}, NODE, "",
                 id="affinity-gt"),
    pytest.param({"affinity": affinity(term({"key": "gpu-gen", "operator": "Lt", "values": ["8"]}))}, NODE,
                 "node does not match the pod's required node affinity", id="affinity-lt"),
    pytest.param({"affinity": affinity(term({"key": "zone", "operator": "DoesNotExist"}))}, NODE,
                 "node does not match the pod's required node affinity", id="affinity-does-not-exist"),
    pytest.param({"affinity": affinity(term(fields=({"key": "metadata.name", "operator": "In", "values": ["n1"]},)))},
                 NODE, "", id="affinity-match-fields-name"),
    pytest.param({"affinity": affinity({})}, NODE, "node does not match the pod's required node affinity",
                 id="empty-term-matches-nothing"),
    pytest.param({}, NodeFacts("n1", {}, taints=({"key": "gpu", "value": "x", "effect": "NoSchedule"},)),
                 "node has taint gpu=x:NoSchedule that the pod does not tolerate", id="untolerated-taint"),
    pytest.param({"tolerations": [{"key": "gpu", "operator": "Exists"}]},
                 NodeFacts("n1", {}, taints=({"key": "gpu", "value": "x", "effect": "NoSchedule"},)), "",
                 id="tolerated-taint"),
    pytest.param({}, NodeFacts("n1", {}, taints=({"key": "gpu", "effect": "PreferNoSchedule"},)), "",
                 id="prefer-no-schedule-never-blocks"),
    pytest.param({}, NodeFacts("n1", {}, unschedulable=True), "node is unschedulable (cordoned)", id="cordoned"),
    pytest.param({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists",
                                   "effect": "NoSchedule"}]}, NodeFacts("n1", {}, unschedulable=True), "",
                 id="cordon-tolerated"),
    pytest.param({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3500m"}}}]}, NODE,
                 "insufficient cpu (3500m requested, 3000m free)", id="cpu-short"),
    pytest.param({"containers": [{"name": "c", "resources": {"requests": {"memory": "8Gi"}}}]}, NODE,
                 "insufficient memory", id="memory-short"),
    pytest.param({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "7Gi"}}}]}, NODE,
                 "", id="cpu-and-memory-fit-exactly"),
])
def test_placement_problem(spec: dict, node: NodeFacts, problem: str) -> None:
    assert placement_problem(pod_with(**spec), node) == problem


@pytest.mark.parametrize(("toleration", "taint", "expected"), [
    pytest.param({"operator": "Exists"}, {"key": "k", "effect": "NoExecute"}, True, id="empty-key-exists-all"),
    pytest.param({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True,
                 id="equal-is-default"),
    pytest.param({"key": "k", "value": "w"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, False,
                 id="equal-value-differs"),
    pytest.param({"key": "k", "operator": "Exists", "effect": "NoExecute"}, {"key": "k", "effect": "NoSchedule"},
                 False, id="effect-differs"),
    pytest.param({"operator": "Equal"}, {"key": "k", "effect": "NoSchedule"}, False, id="equal-needs-a-key"),
])
def test_tolerates(toleration: dict, taint: dict, expected: bool) -> None:
    assert tolerates(toleration, taint) is expected


def test_effective_requests_follow_the_scheduler() -> None:
    """App containers plus sidecars, or the largest init container with earlier sidecars; plus overhead."""
    spec = {
        "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                       {"name": "b", "resources": {"requests": {"cpu": "500m"}}}],
        "initContainers": [{"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "250m"}}},
                           {"name": "big", "resources": {"requests": {"cpu": "4", "memory": "512Mi"}}}],
        "overhead": {"cpu": "100m", "memory": "64Mi"},
    }
    placement = pod_with(**spec)
    assert (placement.cpu_milli, placement.memory_bytes) == (4250 + 100, (1 << 30) + (64 << 20))


def test_inventory_node_carries_its_placement_facts() -> None:
    obj = make_node("n1", mig={"1g.5gb": 2}, unschedulable=True)
    obj["spec"]["taints"] = [{"key": "gpu", "effect": "NoSchedule"}]
    info = node_info(obj)
    assert info.facts is not None
    assert (info.facts.cpu_milli, info.facts.memory_bytes, info.facts.unschedulable) == (32000, 256 << 30, True)
    assert info.facts.taints == ({"key": "gpu", "effect": "NoSchedule"},)
    assert info.placement_problem(pod_with()) == "node is unschedulable (cordoned)"
