"""Builders for pods, nodes and snapshots in unit and HTTP tests: ``make_pod(mig={"1g.10gb": 1})``."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mig_extender.cluster.inventory import ClusterInventory
from mig_extender.core.catalog import model, profile_resource
from mig_extender.core.resources import pod_info
from mig_extender.core.rules import Rule
from mig_extender.core.snapshot import ClusterSnapshot

_uids = itertools.count(1)

PRODUCTS = {
    "A100-40GB": ("NVIDIA-A100-SXM4-40GB", 40960),
    "A100-80GB": ("NVIDIA-A100-SXM4-80GB", 81920),
    "H100-80GB": ("NVIDIA-H100-80GB-HBM3", 81559),
    "H100-94GB": ("NVIDIA-H100-NVL", 95830),
    "H200-141GB": ("NVIDIA-H200", 143771),
    "B200-180GB": ("NVIDIA-B200", 183359),
    "A30-24GB": ("NVIDIA-A30", 24576),
    # the models issue 16 added: GPU feature discovery's product string and memory label (MiB)
    "GH200-96GB": ("NVIDIA-GH200-480GB", 97871),
    "GH200-144GB": ("NVIDIA-GH200-144G-HBM3e", 147456),
    "GB200-186GB": ("NVIDIA-GB200", 190464),
    "B300-288GB": ("NVIDIA-B300-SXM6-AC", 275456),
    "GB300-288GB": ("NVIDIA-GB300", 284672),
    "RTX-PRO-6000-96GB": ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", 98304),
    "H20-96GB": ("NVIDIA-H20", 98304),
    "H800-80GB": ("NVIDIA-H800", 81920),
    "H800-94GB": ("NVIDIA-H800-NVL", 96256),
    "A800-40GB": ("NVIDIA-A800-SXM4-40GB", 40960),
    "A800-80GB": ("NVIDIA-A800-SXM4-80GB", 81920),
}


def res(name: str) -> str:
    """``1g.10gb`` -> ``nvidia.com/mig-1g.10gb``; full resource names pass through."""
    return name if name.startswith("nvidia.com/") else profile_resource(name)


def make_node(name: str, gpu: str | None = "A100-40GB", mig: Mapping[str, int] | None = None,
              labels: Mapping[str, str] | None = None, unschedulable: bool = False) -> dict[str, Any]:
    lab = {"kubernetes.io/hostname": name}
    if gpu:
        product, mem = PRODUCTS[gpu]
        lab.update({"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(mem),
                    "nvidia.com/gpu.count": "1", "nvidia.com/mig.strategy": "mixed"})
    lab.update(labels or {})
    alloc = {"cpu": "32", "memory": "256Gi", "pods": "110", **{res(k): str(v) for k, v in (mig or {}).items()}}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": lab},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"capacity": dict(alloc), "allocatable": alloc}}


OWNER_API_VERSIONS = {"Job": "batch/v1", "ReplicationController": "v1"}


def make_pod(name: str = "", namespace: str = "default", mig: Mapping[str, Any] | None = None,
             node: str = "", phase: str = "", owner: tuple[str, ...] | None = None,
             annotations: Mapping[str, str] | None = None, init_mig: Mapping[str, Any] | None = None,
             uid: str | None = None, terminating: bool = False, containers: int = 1,
             created: str = "") -> dict[str, Any]:
    """A pod JSON; ``owner`` is (kind, name, uid[, apiVersion]) of its controller (apiVersion defaults to
    the built-in kind's: apps/v1, batch/v1 for a Job)."""
    n = next(_uids)
    meta: dict[str, Any] = {"name": name or f"pod-{n}", "namespace": namespace,
                            "uid": uid if uid is not None else f"uid-{n:04d}"}
    if owner:
        api_version = OWNER_API_VERSIONS.get(owner[0], "apps/v1") if len(owner) < 4 else owner[3]
        meta["ownerReferences"] = [{"apiVersion": api_version, "kind": owner[0], "name": owner[1], "uid": owner[2],
                                    "controller": True}]
    if annotations:
        meta["annotations"] = dict(annotations)
    if created:
        meta["creationTimestamp"] = created
    if terminating:
        meta["deletionTimestamp"] = "2026-11-23T00:00:00Z"
    limits = {res(k): str(v) for k, v in (mig or {}).items()}
    spec: dict[str, Any] = {"containers": [{"name": f"c{i}", "image": "busybox",
                                            "resources": {"limits": dict(limits), "requests": dict(limits)}}
                                           for i in range(containers)]}
    if init_mig:
        spec["initContainers"] = [{"name": "init", "image": "busybox",
                                   "resources": {"limits": {res(k): str(v) for k, v in init_mig.items()}}}]
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": phase or ("Running" if node else "Pending")}}


RECORDED_REVIEW = json.loads((Path(__file__).parent / "fixtures/admission-review-pod-create.json").read_text())


def admission_review(pod: Mapping[str, Any], operation: str = "CREATE", dry_run: bool = False) -> dict[str, Any]:
    """The recorded AdmissionReview (a ReplicaSet's pod CREATE) carrying ``pod`` instead."""
    body = copy.deepcopy(RECORDED_REVIEW)
    body["request"].update(object=copy.deepcopy(dict(pod)), operation=operation, dryRun=dry_run,
                           namespace=pod["metadata"]["namespace"])
    return body


def inventory_of(*objects: Mapping[str, Any]) -> ClusterInventory:
    inv = ClusterInventory(clock=lambda: 1000.0)
    for obj in objects:
        if obj["kind"] == "Node":
            inv.upsert_node(obj)
    for obj in objects:
        if obj["kind"] == "Pod":
            inv.upsert_pod(obj)
    inv.synced = True
    return inv


def snapshot_of(*objects: Mapping[str, Any], rules: tuple[Rule, ...] = (), now: float = 1000.0) -> ClusterSnapshot:
    return inventory_of(*objects).snapshot(rules, now)


def info(pod: Mapping[str, Any]):
    return pod_info(pod)


def gpu(name: str):
    return model(name)


def make_resource_slice(node: str, gpu: str = "A100-40GB", profiles: tuple[str, ...] = ("1g.5gb",),
                        driver: str = "gpu.nvidia.com") -> dict[str, Any]:
    """A ResourceSlice shaped like NVIDIA's DRA driver's: one MIG device per profile (names need not be
    placeable: the parsers under test do not place)."""
    product = PRODUCTS[gpu][0].replace("-", " ", 1)
    devices = [{"name": f"gpu-0-mig-{i}", "attributes": {"type": {"string": "mig"}, "profile": {"string": p},
                                                         "productName": {"string": product}}}
               for i, p in enumerate(profiles)]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{node}-{driver}"},
            "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "generation": 1,
                                                                   "resourceSliceCount": 1}, "devices": devices}}
