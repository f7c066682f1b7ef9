"""core/drarestore.py: which DRA pods running on a substitute go back to their own profile, and in what order."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from mig_extender.core.dra import ANN_DRA_PROFILE, MigDevice, offered_shapes
from mig_extender.core.drarestore import (
    ClaimFacts,
    DraRestart,
    DraRestore,
    claim_facts,
    followed,
    match_replacements,
    restores,
)
from mig_extender.core.resources import LABEL_MANAGED_BY, pod_info
from tests.builders import make_pod

DEVICES = [MigDevice("n", "n", "d1a", "1g.5gb", "NVIDIA A100-SXM4-40GB"),
           MigDevice("n", "n", "d1b", "1g.5gb", "NVIDIA A100-SXM4-40GB"),
           MigDevice("n", "n", "d2", "2g.10gb", "NVIDIA A100-SXM4-40GB"),
           MigDevice("n", "n", "d3", "3g.20gb", "NVIDIA A100-SXM4-40GB")]
SHAPES = offered_shapes(DEVICES)


def on(device: str, sub: str, pod: str, profile: str = "1g.5gb") -> ClaimFacts:
    return ClaimFacts("ml", f"{pod}-mig", True, profile, (("gpu.nvidia.com", "n", device),), sub, pod, f"uid-{pod}")


def waiting(pod: str, profile: str = "1g.5gb") -> ClaimFacts:
    return ClaimFacts("ml", f"{pod}-mig", True, profile, (), "", "", "")


TWO_G = DraRestore("ml", "b", "uid-b", "b-mig", "1g.5gb", "2g.10gb", (1, 5, 0))
THREE_G = DraRestore("ml", "c", "uid-c", "c-mig", "1g.5gb", "3g.20gb", (2, 15, 0))


@pytest.mark.parametrize(
    ("claims", "in_flight", "expected"),
    [
        pytest.param([on("d1a", "mig-1g-5gb", "a"), on("d1b", "mig-1g-5gb", "x"), on("d2", "mig-2g-10gb", "b")],
                     {}, [], id="own-profile-sold-out"),
        pytest.param([on("d1a", "mig-1g-5gb", "a"), on("d2", "mig-2g-10gb", "b"), on("d3", "mig-3g-20gb", "c")],
                     {}, [THREE_G], id="one-free-biggest-waster-first"),
        pytest.param([on("d2", "mig-2g-10gb", "b"), on("d3", "mig-3g-20gb", "c")],
                     {}, [THREE_G, TWO_G], id="two-free-both"),
        pytest.param([on("d1a", "mig-1g-5gb", "a"), on("d2", "mig-2g-10gb", "b"), waiting("p")],
                     {}, [], id="a-waiting-pod-takes-the-free-one-first"),
        pytest.param([on("d1a", "mig-1g-5gb", "a"), on("d2", "mig-2g-10gb", "b")],
                     {"1g.5gb": 1}, [], id="a-restore-in-flight-counts-as-waiting"),
        pytest.param([on("d2", "mig-2g-10gb", "b", profile="2g.10gb")], {}, [], id="not-upgraded"),
        pytest.param([ClaimFacts("ml", "foreign", False, "", (("gpu.nvidia.com", "n", "d2"),), "x", "f", "uid-f")],
                     {}, [], id="claims-not-ours-are-never-restored"),
    ],
)
def test_restores(claims: list[ClaimFacts], in_flight: dict[str, int], expected: list[DraRestore]) -> None:
    assert restores(DEVICES, claims, SHAPES, in_flight) == expected


def test_a_pod_with_two_upgraded_claims_is_restarted_once() -> None:
    two = [on("d2", "mig-2g-10gb", "b"), ClaimFacts("ml", "b-mig-2", True, "1g.5gb", (("gpu.nvidia.com", "n", "d3"),),
                                                   "mig-3g-20gb", "b", "uid-b")]
    assert [r.pod for r in restores(DEVICES, two, SHAPES)] == ["b"]


def test_claim_facts_reads_what_the_allocator_wrote() -> None:
    claim: dict[str, Any] = {
        "metadata": {"namespace": "ml", "name": "p-mig-1g-5gb-0-x", "labels": {LABEL_MANAGED_BY: "mig-extender"},
                     "annotations": {ANN_DRA_PROFILE: "1g.5gb"}},
        "status": {"allocation": {"devices": {"results": [
            {"request": "mig/mig-2g-10gb", "driver": "gpu.nvidia.com", "pool": "n", "device": "d2"}]}},
                   "reservedFor": [{"resource": "pods", "name": "p", "uid": "u"}]},
    }
    assert claim_facts(claim) == ClaimFacts("ml", "p-mig-1g-5gb-0-x", True, "1g.5gb",
                                            (("gpu.nvidia.com", "n", "d2"),), "mig-2g-10gb", "p", "u")


def kep5004_claim(device: str) -> dict[str, Any]:
    """The claim kube-scheduler creates for a KEP-5004 extended resource, as v1.36.3 writes it
    (pkg/scheduler/framework/plugins/dynamicresources/extendeddynamicresources.go: generateName
    `<pod>-extended-resources-`, annotation resource.kubernetes.io/extended-resource-claim, request
    `container-<i>-request-<j>`, owned by the pod; none of our labels)."""
    return {
        "metadata": {"namespace": "other", "name": "ext-extended-resources-x7k2p",
                     "annotations": {"resource.kubernetes.io/extended-resource-claim": "true"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "ext", "uid": "uid-ext",
                                          "controller": True}]},
        "status": {"allocation": {"devices": {"results": [
            {"request": "container-0-request-0", "driver": "gpu.nvidia.com", "pool": "n", "device": device}]}},
                   "reservedFor": [{"resource": "pods", "name": "ext", "uid": "uid-ext"}]},
    }


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        pytest.param([kep5004_claim("d1a")], [], id="its-device-is-not-free-for-a-restore"),
        pytest.param([], [TWO_G], id="without-it-that-device-would-be-restored-to"),
    ],
)
def test_a_kep5004_claim_holds_its_device_and_is_never_restored(claims: list[dict[str, Any]],
                                                                 expected: list[DraRestore]) -> None:
    """The DRA walkthrough e2e's layout at the unit level: base holds d1b, b runs upgraded on d2; a
    KEP-5004 pod's claim on d1a is counted taken and is not an upgraded pod of ours."""
    facts = [claim_facts(c) for c in claims] + [on("d1b", "mig-1g-5gb", "a"), on("d2", "mig-2g-10gb", "b")]
    assert restores(DEVICES, facts, SHAPES) == expected


def test_claim_facts_of_a_kep5004_claim_holds_its_device_but_is_not_ours() -> None:
    assert claim_facts(kep5004_claim("d1a")) == ClaimFacts("other", "ext-extended-resources-x7k2p", False, "",
                                                           (("gpu.nvidia.com", "n", "d1a"),), "", "ext", "uid-ext")


def _replica(uid: str, created: float, owner: str = "rs-1") -> Any:
    stamp = datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return pod_info(make_pod(uid, namespace="ml", node="n", owner=("ReplicaSet", "web-1", owner), uid=uid,
                             created=stamp))


T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    ("pods", "matched"),
    [
        pytest.param([(_replica("b", T0 + 2), "1g.5gb")], {"b": "a"}, id="created-after-the-restart"),
        pytest.param([(_replica("b", T0 - 60), "1g.5gb")], {}, id="a-sibling-from-before"),
        pytest.param([(_replica("b", T0 + 2), "2g.10gb")], {}, id="another-profile"),
        pytest.param([(_replica("b", T0 + 2, owner="rs-2"), "1g.5gb")], {}, id="another-owner"),
        pytest.param([(_replica("a", T0 - 60), "1g.5gb")], {}, id="the-restarted-pod-itself-still-there"),
        pytest.param([(_replica("c", T0 + 9), "1g.5gb"), (_replica("b", T0 + 2), "1g.5gb")], {"b": "a"},
                     id="one-replacement-per-restore-oldest-first"),
    ],
)
def test_match_replacements(pods: list[Any], matched: dict[str, str]) -> None:
    done = [DraRestart("rs-1", "1g.5gb", "a", T0, 1)]
    assert {uid: r.pod_uid for uid, r in match_replacements(done, pods).items()} == matched


def _claim(pod: str, sub: str = "mig-2g-10gb", profile: str = "1g.5gb", created: float = T0 + 2,
           ours: bool = True) -> ClaimFacts:
    return ClaimFacts("ml", f"{pod}-mig", ours, profile, (("gpu.nvidia.com", "n", "d"),), sub, pod, f"uid-{pod}",
                      created)


@pytest.mark.parametrize(
    ("claim", "kept"),
    [
        pytest.param(_claim("b"), True, id="on-a-substitute-after-the-restore"),
        pytest.param(_claim("b", sub="mig-1g-5gb"), True, id="on-its-own-profile-ends-the-lineage"),
        pytest.param(_claim("b", created=T0 - 3), True, id="within-clock-skew"),
        pytest.param(_claim("b", created=T0 - 60), False, id="created-before-the-restore"),
        pytest.param(_claim("b", created=0.0), True, id="creation-time-unknown"),
        pytest.param(_claim("b", profile="2g.10gb", sub="mig-3g-20gb"), False, id="a-profile-not-restored"),
        pytest.param(_claim("b", ours=False), False, id="not-ours"),
    ],
)
def test_followed(claim: ClaimFacts, kept: bool) -> None:
    assert followed([claim], [DraRestart("rs-1", "1g.5gb", "a", T0, 1)]) == ([claim] if kept else [])

