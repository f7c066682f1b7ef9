"""Issue 16 "why not substituted": when every node fails and no substitute is recorded, the filter says why,
for the whole pod (SubstitutionBlocked, the decision's note) or per node (``unsubstituted``), as typed
reasons compared whole, one shared object per distinct reason."""

from __future__ import annotations

from typing import Any

import pytest

from mig_extender.core.planner import (
    NoCompatibleFree,
    NoLargerProfile,
    SubstituteQueued,
    SubstituteReserved,
    SubstitutionBlocked,
    filter_pod,
)
from mig_extender.core.podspec import restart_blocker
from mig_extender.core.resources import ANN_SUBSTITUTE, ResourceCount, pod_info
from mig_extender.core.rules import new_rule
from tests.builders import make_node, make_pod, res, snapshot_of

A40 = "A100-40GB"
RAY = ("RayCluster", "ray", "ray-uid", "ray.io/v1")
SOLD_OUT = {"1g.5gb": 1, "2g.10gb": 1}  # gpu-a: its 1g.5gb held below, one 2g.10gb that could stand in


def _sold_out_node(name: str = "gpu-a", gpu: str = A40, mig: dict | None = None) -> list[dict[str, Any]]:
    """A node whose slices of its first listed type are all held by a running pod."""
    mig = mig or SOLD_OUT
    first, count = next(iter(mig.items()))
    return [make_node(name, gpu, mig), make_pod(mig={first: count}, node=name)]


def _reserving_rule(node: str, substitute: str, pod_name: str = "other-x"):
    other = pod_info(make_pod(pod_name, mig={"1g.5gb": 1}, owner=("ReplicaSet", "other", "rs-o")))
    return new_rule(other, ResourceCount(res("1g.5gb"), 1), ResourceCount(res(substitute), 1), node, 990.0, 300.0)


RULE = _reserving_rule("gpu-a", "2g.10gb")

BLOCKED = [
    pytest.param(make_pod(mig={"1g.5gb": 1}, annotations={ANN_SUBSTITUTE: "false"}),
                 SubstitutionBlocked("pod opted out of substitution (mig-extender.io/substitute=false)"),
                 id="opted-out"),
    pytest.param(make_pod(mig={"1g.5gb": 1, "2g.10gb": 1}),
                 SubstitutionBlocked("pod asks for more than one MIG type"), id="more-than-one-type"),
    pytest.param(make_pod(mig={"1g.5gb": 1}, owner=RAY),
                 SubstitutionBlocked(str(restart_blocker(pod_info(make_pod(owner=RAY)).owner, frozenset()))),
                 id="owner-not-restartable"),
]


@pytest.mark.parametrize("pod, expected", BLOCKED)
def test_pod_wide_blocker_is_one_typed_note(pod: dict, expected: SubstitutionBlocked) -> None:
    snap = snapshot_of(*_sold_out_node(mig={"1g.5gb": 1, "2g.10gb": 2}),
                       make_pod(mig={"2g.10gb": 1}, node="gpu-a"))
    d = filter_pod(pod_info(pod), ["gpu-a"], snap)
    assert d.record is None and d.passed == ()
    assert d.note == expected and d.unsubstituted == {}


PER_NODE = [
    pytest.param([make_node("gpu-a", A40, {"1g.5gb": 1, "7g.40gb": 1})], "7g.80gb", (),
                 NoLargerProfile("7g.80gb", A40), id="no-profile-on-this-gpu-is-large-enough"),
    pytest.param([*_sold_out_node(), make_pod(mig={"2g.10gb": 1}, node="gpu-a")], "1g.5gb", (),
                 NoCompatibleFree("1g.5gb"), id="every-compatible-slice-in-use"),
    pytest.param(_sold_out_node(), "1g.5gb", (RULE,),
                 SubstituteReserved(res("2g.10gb"), RULE.name, "default", "other-x"),
                 id="compatible-free-but-reserved-for-another-pod"),
    pytest.param([*_sold_out_node(), make_pod("waiter", mig={"2g.10gb": 1})], "1g.5gb", (),
                 SubstituteQueued(res("2g.10gb"), 1), id="compatible-free-but-the-queue-has-first-claim"),
]


@pytest.mark.parametrize("objects, wants, rules, expected", PER_NODE)
def test_no_substitute_says_why_per_node(objects: list, wants: str, rules: tuple, expected: object) -> None:
    snap = snapshot_of(*objects, rules=rules)
    pod = pod_info(make_pod("infer-x", mig={wants: 1}, owner=("ReplicaSet", "infer", "rs-i")))
    d = filter_pod(pod, ["gpu-a"], snap)
    assert d.record is None and d.passed == ()
    assert d.unsubstituted == {"gpu-a": expected}
    assert d.note == ""


def test_nodes_with_the_same_reason_share_one_object_and_others_are_left_out() -> None:
    """A 5,000-node answer repeats a few reasons: one object each, so the edge formats each once. Nodes that
    failed for a reason of their own (unknown, cordoned) get no "why no substitute" added."""
    objects = [*_sold_out_node("a1", mig={"1g.5gb": 1, "7g.40gb": 1}), *_sold_out_node("a2", mig={"1g.5gb": 1}),
               *_sold_out_node("h1", "H100-80GB", {"1g.10gb": 1}), make_node("cordoned", A40, {"7g.40gb": 1},
                                                                                unschedulable=True)]
    snap = snapshot_of(*objects, make_pod(mig={"7g.40gb": 1}, node="a1"))
    d = filter_pod(pod_info(make_pod(mig={"4g.40gb": 1})), ["a1", "a2", "h1", "cordoned", "ghost"], snap)
    assert d.unsubstituted == {"a1": NoCompatibleFree("4g.40gb"), "a2": NoCompatibleFree("4g.40gb"),
                               "h1": NoCompatibleFree("4g.40gb")}
    assert d.unsubstituted["a1"] is d.unsubstituted["a2"] is d.unsubstituted["h1"]


def test_no_larger_profile_is_decided_per_gpu_model() -> None:
    snap = snapshot_of(*_sold_out_node("a40", mig={"1g.5gb": 1}), *_sold_out_node("a80", "A100-80GB", {"1g.10gb": 1}),
                       *_sold_out_node("b", mig={"1g.5gb": 1}))
    d = filter_pod(pod_info(make_pod(mig={"7g.80gb": 1})), ["a40", "a80", "b"], snap)
    assert d.unsubstituted == {"a40": NoLargerProfile("7g.80gb", A40), "a80": NoCompatibleFree("7g.80gb"),
                               "b": NoLargerProfile("7g.80gb", A40)}
    assert d.unsubstituted["a40"] is d.unsubstituted["b"]


TEXTS = [
    pytest.param(NoLargerProfile("1g.20gb", A40), "no profile on this GPU is at least 1g.20gb", id="no-larger"),
    pytest.param(SubstituteReserved(res("2g.20gb"), "r-1", "ns", "pod"),
                 "compatible 2g.20gb free but reserved for ns/pod (rule r-1)", id="reserved"),
    pytest.param(SubstituteQueued(res("2g.20gb"), 3),
                 "compatible 2g.20gb free, but pending pods wait for 3 of exactly that type "
                 "(the queue has first claim)", id="queued"),
    pytest.param(NoCompatibleFree("1g.10gb"), "no slice of at least 1g.10gb free on this node", id="none-free"),
    pytest.param(SubstitutionBlocked("pod opted out of substitution (mig-extender.io/substitute=false)"),
                 "not substituted: pod opted out of substitution (mig-extender.io/substitute=false)", id="blocked"),
]


@pytest.mark.parametrize("reason, text", TEXTS)
def test_reason_text(reason: object, text: str) -> None:
    assert str(reason) == text
