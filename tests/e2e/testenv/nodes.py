"""Fake GPU Node objects: what GPU feature discovery and the NVIDIA device plugin would publish.

Builds the labels (`nvidia.com/gpu.product`, `nvidia.com/gpu.memory` in MiB, `nvidia.com/gpu.count`,
`nvidia.com/mig.strategy=mixed`, ...) and the capacity (`nvidia.com/mig-<profile>: N`) of a node, and
creates, updates and deletes such nodes through the API. Used by the in-process fake kubelet and by
the `node` CLI commands, which is why it does not depend on a running kubelet.

Must not: admit or run pods (fakekubelet.py does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

MANAGED_LABEL = "fakekubelet.mig-e2e/managed"
BASE_CAPACITY: Mapping[str, str] = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
NODE_IP = "127.0.0.1"  # anything that dials a "kubelet" must stay on loopback
# Added by the TaintNodesByCondition admission plugin on create and normally removed by the
# node-lifecycle controller, which this cluster does not run.
STARTUP_TAINTS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})
MERGE_PATCH = "application/merge-patch+json"
REMOVE = "-"
KEEP = "keep"  # NodeRegistry.apply(gpu=KEEP): leave the GPU model labels as they are


@dataclass(frozen=True)
class GpuModel:
    """Values as GFD reports them: product with spaces turned into dashes, memory in MiB from NVML."""

    product: str
    memory_mib: int
    family: str


GPU_MODELS: Mapping[str, GpuModel] = {
    "A100-40GB": GpuModel("NVIDIA-A100-SXM4-40GB", 40960, "ampere"),
    "A100-80GB": GpuModel("NVIDIA-A100-SXM4-80GB", 81920, "ampere"),
    "A100-PCIE-40GB": GpuModel("NVIDIA-A100-PCIE-40GB", 40960, "ampere"),
    "A30": GpuModel("NVIDIA-A30", 24576, "ampere"),
    "H100-80GB": GpuModel("NVIDIA-H100-80GB-HBM3", 81559, "hopper"),
    "H100-94GB": GpuModel("NVIDIA-H100-NVL", 95830, "hopper"),
    "H200-141GB": GpuModel("NVIDIA-H200", 143771, "hopper"),
}


def gpu_labels(gpu: str | GpuModel | None, gpu_count: int) -> dict[str, str]:
    """GFD-style labels for a node with `gpu_count` GPUs of model `gpu` in MIG mixed strategy."""
    if gpu is None:
        return {}
    model = gpu if isinstance(gpu, GpuModel) else GPU_MODELS.get(gpu)
    if model is None:
        raise KeyError(f"unknown GPU model {gpu!r}; known: {', '.join(GPU_MODELS)} (or pass a GpuModel)")
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": model.product,
        "nvidia.com/gpu.memory": str(model.memory_mib),
        "nvidia.com/gpu.count": str(gpu_count),
        "nvidia.com/gpu.family": model.family,
        "nvidia.com/mig.capable": "true",
        "nvidia.com/mig.strategy": "mixed",
    }
    return labels


def mig_count_labels(capacity: Mapping[str, str]) -> dict[str, str]:
    """GFD's per-profile `nvidia.com/mig-<profile>.count` labels, matching the advertised capacity."""
    return {f"{name}.count": str(qty) for name, qty in capacity.items() if name.startswith("nvidia.com/mig-")}


def ready_conditions(timestamp: str) -> list[dict[str, str]]:
    conditions = [("Ready", "True", "KubeletReady", "kubelet is posting ready status (fake)")]
    conditions += [
        (kind, "False", f"KubeletHas{reason}", "fake")
        for kind, reason in (
            ("MemoryPressure", "SufficientMemory"),
            ("DiskPressure", "NoDiskPressure"),
            ("PIDPressure", "SufficientPID"),
        )
    ]
    return [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": timestamp,
            "lastTransitionTime": timestamp,
        }
        for kind, status, reason, message in conditions
    ]


def node_status(name: str, capacity: Mapping[str, str], timestamp: str) -> dict[str, Any]:
    return {
        "capacity": dict(capacity),
        "allocatable": dict(capacity),
        "conditions": ready_conditions(timestamp),
        "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": name,
            "systemUUID": name,
            "bootID": name,
            "kernelVersion": "fake",
            "osImage": "fakekubelet",
            "containerRuntimeVersion": "fake://0",
            "kubeletVersion": "fake",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a kubernetes client method and return the JSON body as plain dicts (fast, and no model
    round trip that would drop fields the client does not know)."""
    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data)


class NodeRegistry:
    """Create, change and delete fake nodes through the API."""

    def __init__(self, api: Any) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)

    def apply(
        self,
        name: str,
        *,
        gpu: str | GpuModel | None = KEEP,
        gpu_count: int = 1,
        resources: Mapping[str, object] | None = None,
        labels: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        replace: bool = False,
        timestamp: str,
    ) -> dict[str, Any]:
        """Create the node or update it; returns the Node as the API server stored it.

        resources: {name: quantity or "-" to remove}; replace=True drops extended resources not given.
        gpu: a GPU_MODELS key or GpuModel, None for a node without GPUs, KEEP to leave the labels.
        Capacity and allocatable are always equal (no system reservations on a fake node).
        """
        resources = dict(resources or {})
        try:
            current = raw(self.core.read_node, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            current = None
        old_capacity = ((current or {}).get("status") or {}).get("capacity") or dict(BASE_CAPACITY)
        capacity = {
            key: value
            for key, value in old_capacity.items()
            if not (replace and key not in BASE_CAPACITY and key not in resources)
        }
        capacity.update({key: str(value) for key, value in resources.items()})
        capacity = {key: value for key, value in capacity.items() if value != REMOVE}
        all_labels: dict[str, str | None] = {
            # count labels of MIG resources that went away must go too (null deletes in a merge patch)
            **{f"{key}.count": None for key in old_capacity if key.startswith("nvidia.com/mig-")},
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            MANAGED_LABEL: "true",
            **(gpu_labels(gpu, gpu_count) if gpu != KEEP else {}),
            **mig_count_labels(capacity),
            **dict(labels or {}),
        }
        status = node_status(name, capacity, timestamp)
        if current is None:
            # The kubelet registers with its status in the create; the admission plugin then adds the
            # not-ready taint, which we remove below like the node-lifecycle controller would.
            created_labels = {key: value for key, value in all_labels.items() if value is not None}
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": created_labels},
                "spec": {"taints": taints or []},
                "status": status,
            }
            raw(self.core.create_node, body)
        else:
            patch: dict[str, Any] = {"metadata": {"labels": all_labels}}
            if taints is not None:
                patch["spec"] = {"taints": taints}
            raw(self.core.patch_node, name, patch, _content_type=MERGE_PATCH)
        # a merge patch merges maps key by key (RFC 7386): a resource that went away must be sent as null
        # or it stays in capacity and allocatable with its old quantity
        gone = {key: None for key in old_capacity if key not in capacity}
        status["capacity"] = {**gone, **status["capacity"]}
        status["allocatable"] = {**gone, **status["allocatable"]}
        stored = raw(self.core.patch_node_status, name, {"status": status}, _content_type=MERGE_PATCH)
        return self.clear_startup_taints(stored)

    def clear_startup_taints(self, node: Mapping[str, Any]) -> dict[str, Any]:
        taints = (node.get("spec") or {}).get("taints") or []
        keep = [taint for taint in taints if taint.get("key") not in STARTUP_TAINTS]
        if len(keep) == len(taints):
            return dict(node)
        name = node["metadata"]["name"]
        return raw(self.core.patch_node, name, {"spec": {"taints": keep or None}}, _content_type=MERGE_PATCH)

    def delete(self, name: str, lease_namespace: str = "kube-node-lease") -> None:
        for call, args in (
            (self.coordination.delete_namespaced_lease, (name, lease_namespace)),
            (self.core.delete_node, (name,)),
        ):
            try:
                call(*args)
            except ApiException as exc:
                if exc.status != 404:
                    raise
