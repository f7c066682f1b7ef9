"""core/drapod.py: a DRA namespace's pod, its MIG extended resources turned into claims at CREATE."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from mig_extender.core.drapod import DraRewrite, DraSkipped, rewrite_for_dra
from mig_extender.core.resources import ANN_DRA_DEMAND, effective_mig_demand
from tests.builders import make_pod

ALL = {"mig-extender-1g.5gb", "mig-extender-2g.10gb", "mig-extender-1g.5gb.me"}


def rewritten(pod: dict[str, Any], templates: set[str] = ALL) -> dict[str, Any]:
    result = rewrite_for_dra(pod, templates)
    assert isinstance(result, DraRewrite), result
    return jsonpatch.apply_patch(pod, result.patch)


def container(name: str, mig: dict[str, int], **extra: Any) -> dict[str, Any]:
    limits = {f"nvidia.com/mig-{p}": str(n) for p, n in mig.items()}
    return {"name": name, "image": "x", "resources": {"limits": limits, "requests": dict(limits)}, **extra}


def test_one_slice_becomes_one_claim_and_no_mig_resource_is_left() -> None:
    pod = make_pod("p", mig={"1g.5gb": 1})
    pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "1"
    out = rewritten(pod)
    assert out["spec"]["resourceClaims"] == [{"name": "mig-1g-5gb-0",
                                              "resourceClaimTemplateName": "mig-extender-1g.5gb"}]
    assert out["spec"]["containers"][0]["resources"] == {"limits": {"cpu": "1"}, "requests": {},
                                                         "claims": [{"name": "mig-1g-5gb-0"}]}
    assert out["metadata"]["annotations"] == {ANN_DRA_DEMAND: "nvidia.com/mig-1g.5gb=1"}
    assert effective_mig_demand(out["spec"]) == {}


@pytest.mark.parametrize(
    ("containers", "inits", "claims_by_container", "pod_claims"),
    [
        pytest.param([container("a", {"1g.5gb": 2})], [], {"a": ["mig-1g-5gb-0", "mig-1g-5gb-1"]}, 2,
                     id="two-slices-two-claims"),
        pytest.param([container("a", {"1g.5gb": 1}), container("b", {"1g.5gb": 1, "2g.10gb": 1})], [],
                     {"a": ["mig-1g-5gb-0"], "b": ["mig-1g-5gb-1", "mig-2g-10gb-0"]}, 3,
                     id="side-by-side-containers-never-share"),
        pytest.param([container("a", {"1g.5gb": 1})], [container("init", {"1g.5gb": 2})],
                     {"init": ["mig-1g-5gb-0", "mig-1g-5gb-1"], "a": ["mig-1g-5gb-0"]}, 2,
                     id="init-container-reuses-the-app-claims"),
        pytest.param([container("a", {"1g.5gb": 1})],
                     [container("side", {"1g.5gb": 1}, restartPolicy="Always"), container("init", {"1g.5gb": 1})],
                     {"side": ["mig-1g-5gb-0"], "init": ["mig-1g-5gb-1"], "a": ["mig-1g-5gb-1"]}, 2,
                     id="sidecar-keeps-its-own-claim"),
    ],
)
def test_claims_follow_the_kubelets_effective_demand(containers: list[dict[str, Any]], inits: list[dict[str, Any]],
                                                     claims_by_container: dict[str, list[str]],
                                                     pod_claims: int) -> None:
    pod = make_pod("p")
    pod["spec"]["containers"] = containers
    if inits:
        pod["spec"]["initContainers"] = inits
    demand = sum(effective_mig_demand(pod["spec"]).values())
    out = rewritten(pod)
    every = out["spec"].get("initContainers", []) + out["spec"]["containers"]
    assert {c["name"]: [r["name"] for r in c["resources"]["claims"]] for c in every} == claims_by_container
    assert len(out["spec"]["resourceClaims"]) == pod_claims == demand


def test_existing_claims_and_annotations_are_kept() -> None:
    pod = make_pod("p", mig={"2g.10gb": 1}, annotations={"team": "ml"})
    pod["spec"]["resourceClaims"] = [{"name": "nic", "resourceClaimName": "nic-claim"}]
    pod["spec"]["containers"][0]["resources"]["claims"] = [{"name": "nic"}]
    out = rewritten(pod)
    assert [c["name"] for c in out["spec"]["resourceClaims"]] == ["nic", "mig-2g-10gb-0"]
    assert out["spec"]["containers"][0]["resources"]["claims"] == [{"name": "nic"}, {"name": "mig-2g-10gb-0"}]
    assert out["metadata"]["annotations"] == {"team": "ml", ANN_DRA_DEMAND: "nvidia.com/mig-2g.10gb=1"}


def test_media_extension_profile_uses_its_template() -> None:
    out = rewritten(make_pod("p", mig={"1g.5gb+me": 1}))
    assert out["spec"]["resourceClaims"] == [
        {"name": "mig-1g-5gb-me-0", "resourceClaimTemplateName": "mig-extender-1g.5gb.me"}]


@pytest.mark.parametrize(
    ("pod", "templates", "expected"),
    [
        pytest.param(make_pod("p"), ALL, DraSkipped("no-mig"), id="no-mig"),
        pytest.param(make_pod("p", mig={"3g.20gb": 1}), ALL, DraSkipped("missing-template", ("mig-extender-3g.20gb",)),
                     id="template-not-there-yet"),
    ],
)
def test_pods_left_as_they_are(pod: dict[str, Any], templates: set[str], expected: DraSkipped) -> None:
    assert rewrite_for_dra(pod, templates) == expected


def test_a_malformed_demand_is_left_alone() -> None:
    pod = make_pod("p", mig={"1g.5gb": 1})
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.5gb"] = "lots"
    result = rewrite_for_dra(pod, ALL)
    assert isinstance(result, DraSkipped) and result.reason == "bad-demand"
