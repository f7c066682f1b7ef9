"""The MIG catalog against NVIDIA's documented facts (MIG user guide, "Supported MIG Profiles")."""

from __future__ import annotations

import pytest

from mig_extender.core import catalog as p
from mig_extender.core.catalog import ProfileError, ProfileShape


@pytest.mark.parametrize(
    "gpu, layout, valid",
    [
        pytest.param("A100-40GB", ["1g.5gb"] * 7, True, id="a100-40-seven-1g"),
        pytest.param("A100-40GB", ["1g.5gb"] * 8, False, id="a100-40-eight-1g-too-many"),
        pytest.param("A100-40GB", ["3g.20gb"] * 2, True, id="a100-40-two-3g"),
        pytest.param("A100-40GB", ["4g.20gb"] * 2, False, id="a100-40-one-4g-only"),
        pytest.param("A100-40GB", ["4g.20gb", "3g.20gb"], False, id="a100-40-no-3g-with-4g"),
        pytest.param("A100-40GB", ["4g.20gb", "2g.10gb", "1g.5gb"], True, id="a100-40-4g-2g-1g"),
        pytest.param("A100-40GB", ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"], True, id="a100-40-3g-2g-1g-1g"),
        pytest.param("A100-40GB", ["2g.10gb", "2g.10gb", "3g.20gb"], True, id="a100-40-balanced-ish"),
        pytest.param("A100-40GB", ["1g.10gb"] * 4, True, id="a100-40-four-1g10"),
        pytest.param("A100-40GB", ["1g.10gb"] * 5, False, id="a100-40-five-1g10"),
        pytest.param("A100-40GB", ["7g.40gb"], True, id="a100-40-whole"),
        pytest.param("A100-40GB", ["7g.40gb", "1g.5gb"], False, id="a100-40-whole-plus-one"),
        pytest.param("A100-40GB", ["1g.5gb+me", "1g.5gb+me"], False, id="a100-40-one-me-per-gpu"),
        pytest.param("A100-80GB", ["1g.20gb"] * 4, True, id="a100-80-four-1g20"),
        pytest.param("A100-80GB", ["4g.40gb", "3g.40gb"], False, id="a100-80-no-3g-with-4g"),
        pytest.param("H100-80GB", ["1g.10gb"] * 7, True, id="h100-seven-1g"),
        pytest.param("H100-94GB", ["3g.47gb", "3g.47gb"], True, id="h100-nvl-two-3g"),
        pytest.param("H200-141GB", ["2g.35gb"] * 3 + ["1g.18gb"], True, id="h200-3x2g-1g"),
        pytest.param("B200-180GB", ["7g.180gb"], True, id="b200-whole"),
        pytest.param("A30-24GB", ["1g.6gb"] * 4, True, id="a30-four-1g"),
        pytest.param("A30-24GB", ["2g.12gb", "2g.12gb"], True, id="a30-two-2g"),
        pytest.param("A30-24GB", ["2g.12gb+me", "1g.6gb+me"], False, id="a30-one-me-per-gpu"),
        pytest.param("A30-24GB", ["4g.24gb", "1g.6gb"], False, id="a30-whole-plus-one"),
    ],
)
def test_documented_layouts(gpu: str, layout: list[str], valid: bool) -> None:
    assert p.fits_on_gpu(p.model(gpu), layout) is valid


@pytest.mark.parametrize("gpu", [m.name for m in p.MODELS])
def test_every_model_is_self_consistent(gpu: str) -> None:
    m = p.model(gpu)
    for prof in m.profiles:
        # each profile fills the GPU to its documented instance count, and never beyond
        if not prof.media_extensions:
            assert p.fits_on_gpu(m, [prof.name] * prof.max_instances), prof.name
            assert not p.fits_on_gpu(m, [prof.name] * (prof.max_instances + 1)), prof.name
        for start in prof.placements:
            assert start + prof.memory_slices <= m.memory_slices
        assert prof.compute_slices <= m.compute_slices
    whole = [prof for prof in m.profiles if prof.full_gpu]
    assert len(whole) == 1 and whole[0].memory_gb == m.memory_gb


def test_the_two_slice_1g_profiles_exist() -> None:
    assert p.model("A100-40GB").profile("1g.10gb").memory_slices == 2
    assert p.model("A100-80GB").profile("1g.20gb").memory_slices == 2
    assert p.model("A100-40GB").profile("1g.10gb").placements == (0, 2, 4, 6)


@pytest.mark.parametrize(
    "gpu, name, canonical",
    [
        pytest.param("A100-80GB", "7g.79gb", "7g.80gb", id="alias-7g79"),
        pytest.param("A100-80GB", "3g.39gb", "3g.40gb", id="alias-3g39"),
        pytest.param("H100-94GB", "7g.93gb", "7g.94gb", id="alias-h100nvl"),
        pytest.param("H200-141GB", "3g.70gb", "3g.71gb", id="drift-within-2gb"),
        pytest.param("A100-40GB", "1g.5gb+me", "1g.5gb+me", id="me-plus"),
        pytest.param("A100-40GB", "1g.5gb.me", "1g.5gb+me", id="me-dot"),
    ],
)
def test_names_resolve_through_aliases_and_drift(gpu: str, name: str, canonical: str) -> None:
    assert p.model(gpu).profile(name).name == canonical


@pytest.mark.parametrize("gpu, name", [("A100-40GB", "2g.20gb"), ("A100-40GB", "5g.25gb"), ("A30-24GB", "3g.18gb")])
def test_unknown_profile_names_are_reported(gpu: str, name: str) -> None:
    with pytest.raises(ProfileError, match="no MIG profile"):
        p.model(gpu).profile(name)


@pytest.mark.parametrize(
    "resource, profile",
    [
        ("nvidia.com/mig-1g.10gb", "1g.10gb"),
        ("nvidia.com/mig-1g.10gb.me", "1g.10gb+me"),
        ("nvidia.com/mig-7g.141gb", "7g.141gb"),
    ],
)
def test_resource_names_round_trip(resource: str, profile: str) -> None:
    assert p.resource_profile_name(resource) == profile
    assert p.profile_resource(profile) == resource


@pytest.mark.parametrize("bad", ["nvidia.com/gpu", "nvidia.com/mig-", "nvidia.com/mig-1g", "nvidia.com/mig-0g.5gb",
                                 "nvidia.com/mig-1g.5gb+gfx", "nvidia.com/mig-1c.3g.20gb", "nvidia.com/mig-1g.5GB",
                                 "nvidia.com/mig-999g.5gb"])
def test_malformed_resource_names_raise_profile_error(bad: str) -> None:
    with pytest.raises(ProfileError):
        p.resource_profile_name(bad)


@pytest.mark.parametrize(
    "requested, offered, ok",
    [
        pytest.param(ProfileShape(1, 5), ProfileShape(2, 10), True, id="bigger"),
        pytest.param(ProfileShape(1, 10), ProfileShape(2, 10), True, id="same-mem-more-compute"),
        pytest.param(ProfileShape(2, 10), ProfileShape(1, 10), False, id="less-compute"),
        pytest.param(ProfileShape(1, 10), ProfileShape(1, 5), False, id="less-memory"),
        pytest.param(ProfileShape(1, 5, True), ProfileShape(2, 10), False, id="me-needs-media"),
        pytest.param(ProfileShape(1, 5, True), ProfileShape(7, 40, True), True, id="me-by-full-gpu"),
        pytest.param(ProfileShape(1, 5), ProfileShape(1, 5, True), True, id="plain-by-me"),
    ],
)
def test_compatibility(requested: ProfileShape, offered: ProfileShape, ok: bool) -> None:
    assert p.can_substitute(requested, offered) is ok


def test_substitutes_are_ranked_by_waste() -> None:
    names = [s.name for s in p.substitutes(p.model("A100-40GB"), "1g.10gb")]
    assert names == ["2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]
    # the full GPU (it has every media engine) is the only stand-in for a +me slice
    assert [s.name for s in p.substitutes(p.model("A100-40GB"), "1g.5gb+me")] == ["7g.40gb"]


def test_model_lookup_is_case_insensitive_and_errors_list_models() -> None:
    assert p.model("a100-40gb").name == "A100-40GB"
    with pytest.raises(ProfileError, match="known: A100-40GB"):
        p.model("V100")


def test_item2_every_alias_in_the_catalog_names_the_same_or_less_memory() -> None:
    """An alias absorbs a driver's rounding of the same slice (7g.79gb for 7g.80gb): resolving it may
    only keep or raise the memory the name promises, never lower it."""
    for m in p.MODELS:
        for prof in m.profiles:
            for alias in prof.aliases:
                shape = p.parse_profile_name(alias)
                assert (shape.compute_slices, shape.media_extensions) == (prof.compute_slices, prof.media_extensions)
                assert shape.memory_gb <= prof.memory_gb, f"{m.name}: alias {alias} of {prof.name}"


@pytest.mark.parametrize("gpu, name", [
    pytest.param("H200-141GB", "1g.20gb", id="h200-1g20-not-1g18"),
    pytest.param("A100-80GB", "1g.12gb", id="a100-80-1g12-not-1g10"),
    pytest.param("H100-80GB", "1g.12gb", id="h100-80-1g12-not-1g10"),
    pytest.param("B200-180GB", "1g.24gb", id="b200-1g24-not-1g23"),
    pytest.param("A100-40GB", "3g.21gb", id="a100-40-3g21-not-3g20"),
])
def test_item2_drift_never_resolves_a_name_to_less_memory(gpu: str, name: str) -> None:
    found = p.model(gpu).find(name)
    assert found is None or found.memory_gb >= p.parse_profile_name(name).memory_gb
    with pytest.raises(ProfileError):
        p.model(gpu).profile(name)
    assert p.canonical_shape(p.profile_resource(name), p.model(gpu)) == p.parse_profile_name(name)
