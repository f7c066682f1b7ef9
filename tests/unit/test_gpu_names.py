"""GPU names as operators and GPU feature discovery write them (issue 16, "Names" and "Every MIG-capable GPU").

Product strings are the ``nvidia.com/gpu.product`` values GPU feature discovery writes (the NVML device name,
spaces turned into dashes); memory labels are MiB as NVML reports them.
"""

from __future__ import annotations

import pytest

from mig_extender.core import catalog
from mig_extender.core.catalog import ProfileError
from mig_extender.core.snapshot import ForeignMigResources, GpuRecognition, UnknownGpu, recognise_gpu
from tests.builders import res

PRODUCT, MEMORY = "nvidia.com/gpu.product", "nvidia.com/gpu.memory"


@pytest.mark.parametrize("labels, resources, model", [
    pytest.param({PRODUCT: "NVIDIA-GH200-480GB"}, [], "GH200-96GB", id="gh200-480gb-is-the-96gb-gpu"),
    pytest.param({PRODUCT: "NVIDIA-GH200-480GB", MEMORY: "97871"}, [], "GH200-96GB", id="gh200-memory-label"),
    pytest.param({PRODUCT: "NVIDIA-GH200-144G-HBM3e"}, [], "GH200-144GB", id="gh200-144g-hbm3e"),
    pytest.param({PRODUCT: "NVIDIA-GH200-480GB"}, [res("1g.18gb")], "GH200-144GB", id="gh200-by-its-slices"),
    pytest.param({PRODUCT: "NVIDIA-GB200"}, [], "GB200-186GB", id="gb200"),
    pytest.param({PRODUCT: "NVIDIA-GB300"}, [], "GB300-288GB", id="gb300"),
    pytest.param({PRODUCT: "NVIDIA-B300-SXM6-AC"}, [], "B300-288GB", id="b300"),
    pytest.param({PRODUCT: "NVIDIA-H800"}, [res("1g.10gb")], "H800-80GB", id="h800"),
    pytest.param({PRODUCT: "NVIDIA-H800-NVL"}, [], "H800-94GB", id="h800-nvl"),
    pytest.param({PRODUCT: "NVIDIA-H20"}, [], "H20-96GB", id="h20"),
    pytest.param({PRODUCT: "NVIDIA-A800-SXM4-80GB"}, [], "A800-80GB", id="a800-80"),
    pytest.param({PRODUCT: "NVIDIA-A800-SXM4-40GB"}, [], "A800-40GB", id="a800-40"),
    pytest.param({PRODUCT: "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"}, [], "RTX-PRO-6000-96GB",
                 id="rtx-pro-6000-server"),
    pytest.param({PRODUCT: "NVIDIA-RTX-PRO-6000-Blackwell-Max-Q-Workstation-Edition"}, [], "RTX-PRO-6000-96GB",
                 id="rtx-pro-6000-max-q"),
    pytest.param({PRODUCT: "NVIDIA-H200"}, [], "H200-141GB", id="h200-is-not-h20"),
    pytest.param({PRODUCT: "NVIDIA-A100-PCIE"}, [res("2g.20gb")], "A100-80GB", id="ambiguous-size-by-slices"),
])
def test_gfd_product_names_resolve_to_their_model(labels: dict, resources: list, model: str) -> None:
    assert recognise_gpu(labels, resources) == GpuRecognition(catalog.model(model))


@pytest.mark.parametrize("gpu, layout", [
    # the instance counts of NVIDIA's `nvidia-smi mig -lgip` tables (see core/catalog.py for the sources)
    pytest.param("GB200-186GB", ["1g.23gb"] * 7, id="gb200-seven-1g"),
    pytest.param("GB200-186GB", ["1g.47gb"] * 4, id="gb200-four-1g47"),
    pytest.param("GB200-186GB", ["3g.93gb"] * 2, id="gb200-two-3g"),
    pytest.param("GH200-96GB", ["2g.24gb"] * 3, id="gh200-96-three-2g"),
    pytest.param("GH200-144GB", ["1g.36gb"] * 4, id="gh200-144-four-1g36"),
    pytest.param("B300-288GB", ["1g.34gb"] * 7, id="b300-seven-1g"),
    pytest.param("GB300-288GB", ["2g.70gb"] * 3, id="gb300-three-2g"),
    pytest.param("H20-96GB", ["3g.48gb", "2g.24gb", "1g.12gb", "1g.12gb"], id="h20-balanced"),
    pytest.param("RTX-PRO-6000-96GB", ["1g.24gb"] * 4, id="rtx-pro-four-1g"),
    pytest.param("RTX-PRO-6000-96GB", ["2g.48gb", "1g.24gb", "1g.24gb"], id="rtx-pro-balanced"),
])
def test_new_models_hold_their_documented_layouts(gpu: str, layout: list[str]) -> None:
    assert catalog.fits_on_gpu(catalog.model(gpu), layout)
    assert not catalog.fits_on_gpu(catalog.model(gpu), [*layout, layout[0]])


@pytest.mark.parametrize("labels, resources, problem", [
    pytest.param({PRODUCT: "NVIDIA-H20", MEMORY: "144384"}, [res("1g.18gb")],
                 UnknownGpu("NVIDIA-H20", 141, "H200-141GB"), id="known-family-unknown-size"),
    pytest.param({PRODUCT: "NVIDIA-Future-X1"}, [res("1g.5gb")], UnknownGpu("NVIDIA-Future-X1", None, "A100-40GB"),
                 id="unknown-product-guessed-from-slices"),
    pytest.param({}, [res("5g.77gb")], UnknownGpu("", None, None), id="no-label-no-matching-model"),
    pytest.param({PRODUCT: "NVIDIA-A100-SXM4-40GB"}, [res("1g.5gb"), res("1g.18gb")],
                 ForeignMigResources("A100-40GB", (res("1g.18gb"),)), id="slice-of-another-model"),
    pytest.param({PRODUCT: "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition"}, ["nvidia.com/mig-1g.24gb.gfx"],
                 ForeignMigResources("RTX-PRO-6000-96GB", ("nvidia.com/mig-1g.24gb.gfx",)), id="unmodelled-variant"),
])
def test_node_with_unknown_gpu_or_foreign_slices_has_a_problem(labels: dict, resources: list, problem) -> None:
    assert recognise_gpu(labels, resources).problem == problem


@pytest.mark.parametrize("labels, resources", [
    pytest.param({PRODUCT: "Tesla-T4"}, [], id="gpu-without-mig"),
    pytest.param({}, [], id="cpu-node"),
    pytest.param({}, [res("1g.5gb"), res("3g.20gb")], id="no-label-but-slices-match"),
    pytest.param({PRODUCT: "NVIDIA-A100-SXM4-80GB"}, [res("7g.79gb")], id="driver-drift-alias"),
])
def test_nodes_without_a_problem(labels: dict, resources: list) -> None:
    assert recognise_gpu(labels, resources).problem is None


@pytest.mark.parametrize("name, models", [
    pytest.param("H200", ["H200-141GB"], id="family-one-model"),
    pytest.param("A100", ["A100-40GB", "A100-80GB"], id="family-every-model"),
    pytest.param("a100-40gb", ["A100-40GB"], id="model-any-case"),
    pytest.param("NVIDIA-A100-SXM4-40GB", ["A100-40GB"], id="gfd-product"),
    pytest.param("NVIDIA-GH200-480GB", ["GH200-96GB", "GH200-144GB"], id="gfd-product-without-size"),
    pytest.param("RTX PRO 6000", ["RTX-PRO-6000-96GB"], id="family-with-spaces"),
])
def test_lookup_accepts_what_the_extender_accepts(name: str, models: list[str]) -> None:
    assert [m.name for m in catalog.lookup_models(name)] == models


def test_lookup_of_an_unknown_name_says_what_is_accepted() -> None:
    with pytest.raises(ProfileError, match=r"unknown GPU 'V100'; give a model \(A100-40GB, .*\), a family \(A100, "):
        catalog.lookup_models("V100")
