"""Quantities and effective pod requests, computed as the kubelet does."""

from __future__ import annotations

from typing import Any

import pytest

from mig_extender.core.resources import (
    ANN_ORIGINAL,
    DemandError,
    ResourceCount,
    effective_mig_demand,
    parse_count,
    pod_info,
)
from tests.builders import make_pod, res


@pytest.mark.parametrize("value, count", [("1", 1), (2, 2), ("0", 0), ("1k", 1000), ("1e2", 100), ("2.0", 2)])
def test_quantities(value: object, count: int) -> None:
    assert parse_count(value) == count


@pytest.mark.parametrize("value, message", [
    ("-1", "negative"), ("abc", "not a quantity"), ("500m", "not a whole number"), ("1e9", "exceeds"),
    (1.5, "string or integer"), (None, "string or integer"), (True, "string or integer"), ("", "not a quantity"),
    ("\u0661", "not a quantity"),
])
def test_bad_quantities_say_why(value: object, message: str) -> None:
    with pytest.raises(DemandError, match=message):
        parse_count(value, "nvidia.com/mig-1g.5gb")


def _spec(containers: list[dict], inits: list[dict] | None = None) -> dict:
    def c(r: dict, **kw: str) -> dict:
        return {"name": "x", "resources": {"limits": {res(k): str(v) for k, v in r.items()}}, **kw}
    return {"containers": [c(r) for r in containers],
            "initContainers": [c(r, **({"restartPolicy": "Always"} if side else {})) for r, side in (inits or [])]}


@pytest.mark.parametrize("spec, demand", [
    pytest.param(_spec([{"1g.5gb": 1}, {"1g.5gb": 2}]), {"1g.5gb": 3}, id="sum-of-containers"),
    pytest.param(_spec([{"1g.5gb": 1}], [({"1g.5gb": 3}, False)]), {"1g.5gb": 3}, id="init-bigger-wins"),
    pytest.param(_spec([{"1g.5gb": 2}], [({"1g.5gb": 1}, False)]), {"1g.5gb": 2}, id="containers-bigger-win"),
    pytest.param(_spec([{"1g.5gb": 1}], [({"2g.10gb": 1}, False)]), {"1g.5gb": 1, "2g.10gb": 1}, id="per-resource"),
    pytest.param(_spec([{"1g.5gb": 1}], [({"1g.5gb": 1}, True)]), {"1g.5gb": 2}, id="sidecar-adds"),
    pytest.param(_spec([{"1g.5gb": 1}], [({"1g.5gb": 1}, True), ({"1g.5gb": 2}, False)]), {"1g.5gb": 3},
                 id="init-after-sidecar-counts-sidecar"),
    pytest.param(_spec([{}]), {}, id="no-mig"),
])
def test_effective_demand(spec: dict, demand: dict) -> None:
    assert effective_mig_demand(spec) == {res(k): v for k, v in demand.items()}


def test_requests_only_and_limits_only_both_count() -> None:
    spec = {"containers": [{"name": "a", "resources": {"requests": {res("1g.5gb"): "1"}}},
                           {"name": "b", "resources": {"limits": {res("1g.5gb"): "1"}}}]}
    assert effective_mig_demand(spec) == {res("1g.5gb"): 2}


def test_pod_info_reads_identity_owner_and_our_annotations() -> None:
    pod = make_pod("web-1", mig={"1g.5gb": 1}, owner=("ReplicaSet", "web", "rs-1"),
                   annotations={ANN_ORIGINAL: "nvidia.com/mig-1g.5gb=1", "other": "x"})
    info = pod_info(pod)
    assert (info.namespace, info.name, info.owner.kind, info.owner.uid) == ("default", "web-1", "ReplicaSet", "rs-1")
    assert info.single_demand == ResourceCount(res("1g.5gb"), 1)
    assert info.original_demand == ResourceCount(res("1g.5gb"), 1)
    assert "other" not in info.annotations


def test_malformed_mig_quantity_becomes_a_problem_not_an_exception() -> None:
    info = pod_info(make_pod(mig={"1g.5gb": "abc"}))
    assert not info.wants_mig and "not a quantity" in info.problems[0]


@pytest.mark.parametrize("phase, node, terminating, holds", [
    ("Running", "n1", False, True), ("Pending", "", False, False), ("Succeeded", "n1", False, False),
    ("Failed", "n1", False, False), ("Running", "n1", True, True),
])
def test_which_pods_hold_slices(phase: str, node: str, terminating: bool, holds: bool) -> None:
    info = pod_info(make_pod(mig={"1g.5gb": 1}, node=node, phase=phase, terminating=terminating))
    assert info.holds_slices is holds


def test_not_a_pod_is_an_error() -> None:
    with pytest.raises(DemandError):
        pod_info({"metadata": "nope"})


@pytest.mark.parametrize(("spec", "status", "expected"), [
    pytest.param({}, {}, (0, "PreemptLowerPriority", False, 0.0), id="defaults"),
    pytest.param({"priority": 1000, "preemptionPolicy": "Never", "schedulingGates": [{"name": "kueue"}]},
                 {"startTime": "2026-01-01T00:00:00Z"}, (1000, "Never", True, 1767225600.0), id="all-set"),
    pytest.param({"priority": "high", "schedulingGates": []}, {}, (0, "PreemptLowerPriority", False, 0.0),
                 id="malformed-priority-empty-gates"),
    pytest.param({"priority": True}, {}, (0, "PreemptLowerPriority", False, 0.0), id="bool-is-not-a-priority"),
])
def test_pod_info_reads_priority_gates_and_start(spec: dict, status: dict, expected: tuple) -> None:
    pod = pod_info({"metadata": {"name": "p", "uid": "u"}, "spec": {"containers": [], **spec}, "status": status})
    assert (pod.priority, pod.preemption_policy, pod.gated, pod.started) == expected


def _sibling(i: int) -> dict:
    pod = make_pod(name=f"web-{i}", mig={"1g.5gb": 1}, node=f"n{i}", owner=("ReplicaSet", "web-7d9", "rs-uid"))
    pod["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "2", "memory": "8Gi"}
    pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    # strings built at run time, as a JSON parser makes them: equal, but separate objects per pod
    pod["metadata"]["namespace"] = "".join(["team-", "a"])
    pod["status"]["phase"] = "".join(["Run", "ning"])
    return pod


@pytest.mark.parametrize("part", [
    pytest.param(lambda info: info.owner, id="owner"),
    pytest.param(lambda info: info.demand, id="demand"),
    pytest.param(lambda info: info.placement, id="placement"),
    pytest.param(lambda info: info.annotations, id="no-annotations"),
    pytest.param(lambda info: info.namespace, id="namespace"),
    pytest.param(lambda info: info.phase, id="phase"),
])
def test_issue19_pods_of_one_template_share_what_they_have_in_common(part: Any) -> None:
    # one PodInfo lives per MIG pod (100k at 5,000 nodes): a copy of each part per pod was most of the
    # extender's memory after a list (bench/memory.py)
    first, second = pod_info(_sibling(1)), pod_info(_sibling(2))
    assert part(first) == part(second)
    assert part(first) is part(second)


def test_issue19_pod_info_keeps_no_per_instance_dict() -> None:
    assert not hasattr(pod_info(_sibling(1)), "__dict__")


def kep5004(pod: dict, *mappings: tuple[str, str]) -> dict:
    """``pod`` bound by kube-scheduler with these (container, resource) requests served by a DRA claim."""
    pod["status"]["extendedResourceClaimStatus"] = {
        "resourceClaimName": "p-extended-resources-x",
        "requestMappings": [{"containerName": c, "resourceName": r, "requestName": f"container-0-request-{i}"}
                            for i, (c, r) in enumerate(mappings)]}
    return pod


@pytest.mark.parametrize("mappings, demand", [
    pytest.param([("c0", res("1g.5gb"))], {}, id="served-by-dra-not-a-device-plugin-slice"),
    pytest.param([("c1", res("1g.5gb"))], {res("1g.5gb"): 1}, id="another-containers-mapping-leaves-it-counted"),
    pytest.param([("c0", res("2g.10gb"))], {res("1g.5gb"): 1}, id="another-resources-mapping-leaves-it-counted"),
])
def test_issue20_kep5004_requests_a_dra_claim_serves_are_not_device_plugin_demand(mappings, demand) -> None:
    """The helper's finding on the DRA walkthrough: a bound KEP-5004 pod was booked as using a
    device-plugin nvidia.com/mig-1g.5gb on a node that advertises none (used 1 of 0). The kubelet leaves
    DRA-backed requests out of admission (removeMissingExtendedResources), and so do our books."""
    pod = kep5004(make_pod("ext", mig={"1g.5gb": 1}, node="dra-node"), *mappings)
    assert dict(pod_info(pod).demand) == demand


@pytest.mark.parametrize("status_value", [
    pytest.param("nonsense", id="not-an-object"), pytest.param({"requestMappings": "x"}, id="mappings-not-a-list"),
    pytest.param({"requestMappings": [1, {"containerName": "c0"}]}, id="entries-malformed"),
])
def test_issue20_a_malformed_extended_resource_claim_status_counts_the_requests_as_before(status_value) -> None:
    pod = make_pod("ext", mig={"1g.5gb": 1}, node="n")
    pod["status"]["extendedResourceClaimStatus"] = status_value
    assert dict(pod_info(pod).demand) == {res("1g.5gb"): 1}
