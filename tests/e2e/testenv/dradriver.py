"""A fake NVIDIA DRA driver: the DeviceClass and the per-node ResourceSlices the real one publishes.

NVIDIA's GPU DRA driver (NVIDIA/k8s-dra-driver-gpu, now kubernetes-sigs/dra-driver-nvidia-gpu) runs a
kubelet plugin per node that publishes the node's MIG devices in a ResourceSlice of driver
`gpu.nvidia.com`; cmd/gpu-kubelet-plugin/deviceinfo.go names a MIG device
`gpu-<minor>-mig-<GI profile id>-<placement start>-<placement size>` and gives it the attributes
`type: mig`, `uuid`, `parentUUID`, `profile` (e.g. `1g.5gb`), `productName`, ... and a `memory`
capacity. The driver's Helm chart installs the DeviceClass `mig.nvidia.com` selecting
`type == 'mig'` devices of that driver. This module publishes the same shapes from a node's MIG
layout (profile names, placed with the catalog's `pack`), so the real scheduler's DynamicResources
plugin allocates from them exactly as it would on a GPU node. No kubelet plugin runs: claims are
allocated and reserved by the scheduler, and the fake kubelet checks them at admission.

Must not: allocate devices or admit pods (the scheduler and fakekubelet.py do).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from mig_extender.core.catalog import GpuModel, pack
from mig_extender.core.catalog import model as catalog_model

from .nodes import GPU_MODELS, raw

DRIVER = "gpu.nvidia.com"
MIG_CLASS = "mig.nvidia.com"
MIG_SELECTOR = f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'mig'"
# NVML GPU-instance profile ids by (compute slices, memory slices, +me), as `nvidia-smi mig -lgip`
# prints them on the 7-slice GPUs (A100/H100/H200): 1g.5gb is 19, 1g.5gb+me 20, 1g.10gb 15, ...
_GI_PROFILE_IDS = {(1, 1, False): 19, (1, 1, True): 20, (1, 2, False): 15, (2, 2, False): 14,
                   (3, 4, False): 9, (4, 4, False): 5, (7, 8, False): 0}
MIB = 1024 * 1024


def device_class() -> dict[str, Any]:
    """The DeviceClass NVIDIA's chart installs for MIG devices."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": MIG_CLASS},
        "spec": {"selectors": [{"cel": {"expression": MIG_SELECTOR}}]},
    }


def _uuid(prefix: str, *parts: object) -> str:
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()
    return f"{prefix}-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def mig_devices(node: str, gpu: str, layouts: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """The MIG devices of `node`: GPU minor i holds the profiles `layouts[i]` (placed like mig-parted would).

    ValueError when a layout does not fit its GPU (a test asking for an impossible partition)."""
    spec: GpuModel = catalog_model(gpu)
    product = GPU_MODELS[gpu].product.replace("-", " ", 1)  # NVML's name; GFD turned its spaces into dashes
    devices = []
    for minor, profiles in enumerate(layouts):
        placements = pack(spec, list(profiles))
        if placements is None:
            raise ValueError(f"{list(profiles)} does not fit one {gpu}")
        parent = _uuid("GPU", node, minor)
        for placement in sorted(placements, key=lambda p: p.start):
            profile = placement.profile
            gi = _GI_PROFILE_IDS.get((profile.compute_slices, profile.memory_slices, profile.media_extensions), 99)
            name = f"gpu-{minor}-mig-{gi}-{placement.start}-{profile.memory_slices}"
            devices.append({
                "name": name,
                "attributes": {
                    "type": {"string": "mig"},
                    "uuid": {"string": _uuid("MIG", node, name)},
                    "parentUUID": {"string": parent},
                    "profile": {"string": profile.name},
                    "productName": {"string": product},
                },
                "capacity": {"memory": {"value": str(profile.memory_gb * 1024 * MIB)}},
            })
    return devices


class FakeDraDriver:
    """Publishes the DeviceClass once and one ResourceSlice per node (pool = node name)."""

    def __init__(self, api: Any) -> None:
        self.resource = client.ResourceV1Api(api)
        self.core = client.CoreV1Api(api)

    def install(self) -> None:
        """Create the DeviceClass unless it exists (idempotent: every test may call it)."""
        try:
            raw(self.resource.create_device_class, device_class())
        except ApiException as exc:
            if exc.status != 409:
                raise

    def publish(self, node: str, gpu: str, layouts: Sequence[Sequence[str]]) -> dict[str, Any]:
        """Create or replace `node`'s slice; the pool generation goes up on every change, as the driver's
        does (the scheduler then ignores slices of older generations). Owned by the Node, so removing the
        node garbage-collects it, as the kubelet's removal would."""
        self.install()
        name = f"{node}-{DRIVER}"
        node_uid = self.core.read_node(node).metadata.uid
        try:
            current = raw(self.resource.read_resource_slice, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            current = None
        generation = (current["spec"]["pool"]["generation"] + 1) if current else 1
        body: dict[str, Any] = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {
                "name": name,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
            },
            "spec": {
                "driver": DRIVER,
                "nodeName": node,
                "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
                "devices": mig_devices(node, gpu, layouts),
            },
        }
        if current is None:
            return raw(self.resource.create_resource_slice, body)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return raw(self.resource.replace_resource_slice, name, body)

    def withdraw(self, node: str) -> None:
        try:
            self.resource.delete_resource_slice(f"{node}-{DRIVER}")
        except ApiException as exc:
            if exc.status != 404:
                raise
