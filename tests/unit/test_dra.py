"""core/dra.py: the MIG devices of ResourceSlices and the firstAvailable templates built from them."""

from __future__ import annotations

from typing import Any

import pytest

from mig_extender.core.catalog import ProfileShape
from mig_extender.core.dra import (
    ANN_CHOICES,
    MAX_CHOICES,
    ClaimTemplate,
    MigDevice,
    TemplateChange,
    choices,
    desired_templates,
    offered_shapes,
    slice_devices,
    subrequest_name,
    template_changes,
    template_name,
)
from mig_extender.core.resources import LABEL_MANAGED_BY
from tests.builders import make_resource_slice

A100 = make_resource_slice("a", "A100-40GB", ("1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb", "1g.10gb", "7g.40gb"))
H100 = make_resource_slice("h", "H100-80GB", ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb"))


def offered(*slices: dict[str, Any]) -> dict[str, ProfileShape]:
    return offered_shapes(d for s in slices for d in slice_devices(s))


@pytest.mark.parametrize(
    ("resource_slice", "expected"),
    [
        pytest.param(make_resource_slice("a", profiles=("1g.5gb",)),
                     [MigDevice("a", "a", "gpu-0-mig-0", "1g.5gb", "NVIDIA A100-SXM4-40GB")], id="mig-device"),
        pytest.param(make_resource_slice("a", driver="gpu.example.com"), [], id="another-driver"),
        pytest.param({"spec": {"driver": "gpu.nvidia.com", "devices": [
            {"name": "gpu-0", "attributes": {"type": {"string": "gpu"}}}]}}, [], id="full-gpu-not-mig"),
        pytest.param({"spec": {"driver": "gpu.nvidia.com", "nodeName": "n", "pool": {"name": "n"}, "devices": [
            {"name": "d", "attributes": {"gpu.nvidia.com/type": {"string": "mig"},
                                         "gpu.nvidia.com/profile": {"string": "2g.10gb"}}}]}},
                     [MigDevice("n", "n", "d", "2g.10gb", "")], id="qualified-attribute-names"),
        pytest.param({"spec": None}, [], id="malformed"),
    ],
)
def test_slice_devices(resource_slice: dict[str, Any], expected: list[MigDevice]) -> None:
    assert slice_devices(resource_slice) == expected


@pytest.mark.parametrize(
    ("profile", "slices", "expected"),
    [
        pytest.param("1g.5gb", (A100,), ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "7g.40gb"),
                     id="a100-least-waste-first"),
        pytest.param("1g.10gb", (A100, H100),
                     ("1g.10gb", "1g.20gb", "2g.10gb", "2g.20gb", "3g.20gb", "3g.40gb", "7g.40gb"),
                     id="every-model-in-the-cluster-compute-waste-weighs-first"),
        pytest.param("2g.20gb", (A100,), ("2g.20gb", "3g.20gb", "7g.40gb"),
                     id="own-profile-first-even-if-not-offered"),
        pytest.param("7g.40gb", (H100,), ("7g.40gb",), id="nothing-bigger"),
    ],
)
def test_choices_are_own_profile_then_least_waste(profile: str, slices: tuple[dict[str, Any], ...],
                                                  expected: tuple[str, ...]) -> None:
    assert choices(profile, offered(*slices)) == expected


def test_choices_never_exceed_what_the_api_accepts() -> None:
    many = {f"{g}g.{m}gb": ProfileShape(g, m) for g in range(1, 8) for m in (10, 20, 40)}
    assert len(choices("1g.5gb", many)) == MAX_CHOICES


def test_drifted_names_resolve_through_the_catalog() -> None:
    """H100's 7g.80gb is published by some drivers as 7g.79gb; it still stands in for 4g.40gb."""
    shapes = offered(make_resource_slice("h", "H100-80GB", ("7g.79gb",)))
    assert shapes == {"7g.79gb": ProfileShape(7, 80, True)}
    assert choices("4g.40gb", shapes) == ("4g.40gb", "7g.79gb")


def test_template_body_is_a_first_available_request_in_order() -> None:
    body = ClaimTemplate("ns", "1g.5gb+me", ("1g.5gb+me", "7g.40gb")).body()
    assert body["metadata"]["name"] == "mig-extender-1g.5gb.me" == template_name("1g.5gb+me")
    assert body["metadata"]["labels"] == {LABEL_MANAGED_BY: "mig-extender"}
    assert body["metadata"]["annotations"][ANN_CHOICES] == "1g.5gb+me,7g.40gb"
    (request,) = body["spec"]["spec"]["devices"]["requests"]
    assert [(s["name"], s["deviceClassName"], s["selectors"][0]["cel"]["expression"])
            for s in request["firstAvailable"]] == [
        ("mig-1g-5gb-me", "mig.nvidia.com", "device.attributes['gpu.nvidia.com'].profile == '1g.5gb+me'"),
        ("mig-7g-40gb", "mig.nvidia.com", "device.attributes['gpu.nvidia.com'].profile == '7g.40gb'"),
    ]
    assert subrequest_name("1g.5gb+me") == "mig-1g-5gb-me"


def test_desired_templates_cover_offered_and_demanded_profiles_per_namespace() -> None:
    shapes = offered(make_resource_slice("a", profiles=("1g.5gb", "2g.10gb")))
    found = desired_templates(["b", "a"], {"a": {"3g.20gb", "bogus"}}, shapes)
    assert [(t.namespace, t.profile, t.choices) for t in found] == [
        ("a", "1g.5gb", ("1g.5gb", "2g.10gb")),
        ("a", "2g.10gb", ("2g.10gb",)),
        ("a", "3g.20gb", ("3g.20gb",)),
        ("b", "1g.5gb", ("1g.5gb", "2g.10gb")),
        ("b", "2g.10gb", ("2g.10gb",)),
    ]


def _existing(template: ClaimTemplate, choices_text: str, managed: bool = True) -> dict[str, Any]:
    labels = {LABEL_MANAGED_BY: "mig-extender"} if managed else {}
    return {"metadata": {"name": template.name, "namespace": template.namespace, "resourceVersion": "7",
                         "labels": labels, "annotations": {ANN_CHOICES: choices_text}}}


WANT = ClaimTemplate("ns", "1g.5gb", ("1g.5gb", "2g.10gb"))


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        pytest.param({}, [TemplateChange("create", WANT)], id="missing"),
        pytest.param({("ns", WANT.name): _existing(WANT, "1g.5gb,2g.10gb")}, [], id="up-to-date"),
        pytest.param({("ns", WANT.name): _existing(WANT, "1g.5gb")},
                     [TemplateChange("replace", WANT, ("1g.5gb",), "7")], id="models-changed"),
        pytest.param({("ns", WANT.name): _existing(WANT, "", managed=False)},
                     [TemplateChange("foreign", WANT)], id="someone-elses-template"),
    ],
)
def test_template_changes(existing: dict[tuple[str, str], dict[str, Any]], expected: list[TemplateChange]) -> None:
    assert template_changes([WANT], existing) == expected
