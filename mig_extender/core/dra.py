"""MIG on DRA: the devices NVIDIA's DRA driver offers, and the ResourceClaimTemplates that ask for them. Pure.

Kubernetes DRA (`resource.k8s.io/v1`) allocates a claim's request from the first entry of its
`firstAvailable` list that any free device matches; it never moves a pod back and takes devices in
slice order. NVIDIA's DRA driver (NVIDIA/k8s-dra-driver-gpu, cmd/gpu-kubelet-plugin/deviceinfo.go)
publishes each MIG device of a node in a ResourceSlice of driver ``gpu.nvidia.com`` with the
attributes ``type: mig``, ``profile`` (``1g.10gb``), ``productName`` and ``parentUUID``; its chart
installs the DeviceClass ``mig.nvidia.com``. So the substitution order this project computes for the
device plugin translates into one template per profile: its own profile first, then every compatible
profile offered anywhere in the cluster, least waste first (``catalog.can_substitute`` and ``waste``,
the same order as the planner's). A pod's claims come from these templates (core/drapod.py).

A template's spec is immutable (the API server's ValidateResourceClaimTemplateUpdate), so a template
whose choices changed is replaced (delete, then create); its choices are recorded in an annotation so
that a change is found without comparing server-defaulted specs.

Must not: import the kubernetes client or do I/O (cluster/draobjects.py reads and writes these objects).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .catalog import ProfileError, ProfileShape, can_substitute, match_product, parse_profile_name, waste
from .resources import ANN_DRA_PROFILE, GROUP, LABEL_MANAGED_BY

DRIVER = "gpu.nvidia.com"
DEVICE_CLASS = "mig.nvidia.com"
API_VERSION = "resource.k8s.io/v1"
MANAGER = "mig-extender"
TEMPLATE_PREFIX = "mig-extender-"
REQUEST_NAME = "mig"
ANN_CHOICES = f"{GROUP}/dra-choices"  # "1g.10gb,2g.10gb,...": the firstAvailable order a template was written with
# resource.k8s.io FirstAvailableDeviceRequestMaxSize (pkg/apis/resource/types.go): the API refuses more
MAX_CHOICES = 8


@dataclass(frozen=True)
class MigDevice:
    """One MIG device a ResourceSlice offers."""

    node: str
    pool: str
    name: str
    profile: str
    product: str


def _attribute(attributes: Mapping[str, Any], name: str) -> str:
    # An attribute without a domain belongs to the driver's: `profile` and `gpu.nvidia.com/profile` are one.
    value = attributes.get(name) or attributes.get(f"{DRIVER}/{name}") or {}
    return str(value.get("string", "")) if isinstance(value, Mapping) else ""


def slice_devices(resource_slice: Mapping[str, Any]) -> list[MigDevice]:
    """The MIG devices of one ResourceSlice (none for another driver's slice or a malformed one)."""
    spec = resource_slice.get("spec") or {}
    if not isinstance(spec, Mapping) or spec.get("driver") != DRIVER:
        return []
    node, pool = str(spec.get("nodeName") or ""), str((spec.get("pool") or {}).get("name") or "")
    found = []
    for device in spec.get("devices") or ():
        attributes = (device or {}).get("attributes") or {}
        if _attribute(attributes, "type") != "mig" or not _attribute(attributes, "profile"):
            continue
        found.append(MigDevice(node, pool, str(device.get("name", "")), _attribute(attributes, "profile"),
                               _attribute(attributes, "productName")))
    return found


def _shape(profile: str, product: str) -> ProfileShape:
    """The catalog's shape of ``profile`` on ``product`` (aliases and drifted names resolve, upward only);
    the name's own shape when the model is unknown. ProfileError for a malformed name."""
    for gpu in match_product(product).models[:1]:
        found = gpu.find(profile)
        if found is not None:
            return found.shape
    return parse_profile_name(profile)


def offered_shapes(devices: Iterable[MigDevice]) -> dict[str, ProfileShape]:
    """Every profile name offered in the cluster -> its shape. A name two models resolve differently keeps
    the smaller shape, so no substitute is ever assumed bigger than it is. Malformed names are skipped."""
    shapes: dict[str, ProfileShape] = {}
    for device in devices:
        try:
            shape = _shape(device.profile, device.product)
        except ProfileError:
            continue
        shapes[device.profile] = min(shapes.get(device.profile, shape), shape)
    return shapes


def choices(profile: str, offered: Mapping[str, ProfileShape]) -> tuple[str, ...]:
    """The ``firstAvailable`` order for a pod asking ``profile``: itself, then every offered profile that
    may stand in for it, least waste first, at most MAX_CHOICES. ProfileError for a malformed name."""
    want = parse_profile_name(profile)
    stand_ins = sorted((name for name, shape in offered.items() if name != profile and can_substitute(want, shape)),
                       key=lambda name: (waste(want, offered[name]), name))
    return (profile, *stand_ins)[:MAX_CHOICES]


def template_name(profile: str) -> str:
    """``1g.10gb`` -> ``mig-extender-1g.10gb`` (``+`` is not allowed in object names: ``1g.10gb.me``)."""
    return TEMPLATE_PREFIX + profile.replace("+", ".")


def subrequest_name(profile: str) -> str:
    """``1g.10gb+me`` -> ``mig-1g-10gb-me``: subrequest names are DNS labels."""
    return "mig-" + re.sub(r"[^a-z0-9]+", "-", profile.lower()).strip("-")


def profile_selector(profile: str) -> str:
    return f"device.attributes['{DRIVER}'].profile == '{profile}'"


@dataclass(frozen=True)
class ClaimTemplate:
    """The ResourceClaimTemplate that serves pods of ``namespace`` asking for ``profile``."""

    namespace: str
    profile: str
    choices: tuple[str, ...]

    @property
    def name(self) -> str:
        return template_name(self.profile)

    def body(self) -> dict[str, Any]:
        subrequests = [{"name": subrequest_name(p), "deviceClassName": DEVICE_CLASS,
                        "selectors": [{"cel": {"expression": profile_selector(p)}}]} for p in self.choices]
        return {
            "apiVersion": API_VERSION,
            "kind": "ResourceClaimTemplate",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {LABEL_MANAGED_BY: MANAGER},
                "annotations": {ANN_DRA_PROFILE: self.profile, ANN_CHOICES: ",".join(self.choices)},
            },
            "spec": {
                # the generated claims say which profile their pod asked for: what restore will read
                "metadata": {"labels": {LABEL_MANAGED_BY: MANAGER}, "annotations": {ANN_DRA_PROFILE: self.profile}},
                "spec": {"devices": {"requests": [{"name": REQUEST_NAME, "firstAvailable": subrequests}]}},
            },
        }


def desired_templates(namespaces: Iterable[str], demanded: Mapping[str, Collection[str]],
                      offered: Mapping[str, ProfileShape]) -> list[ClaimTemplate]:
    """One template per DRA namespace and profile that is offered anywhere (a pod may ask for any) or that
    a pod of the namespace asks for (``demanded``: namespace -> profile names). Malformed names are skipped."""
    found = []
    for namespace in sorted(set(namespaces)):
        for profile in sorted(set(offered) | set(demanded.get(namespace, ()))):
            try:
                found.append(ClaimTemplate(namespace, profile, choices(profile, offered)))
            except ProfileError:
                continue
    return found


def is_ours(obj: Mapping[str, Any]) -> bool:
    """Written by mig-extender (a template, or a claim generated from one)."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGER


Action = Literal["create", "replace", "foreign"]


@dataclass(frozen=True)
class TemplateChange:
    """What the reconciler must do about one template, and why.

    create: none exists; replace: ours, written with other choices (the spec is immutable); foreign: a
    template of that name that we did not write, left alone (pods then use it as it is)."""

    action: Action
    template: ClaimTemplate
    was: tuple[str, ...] = ()
    resource_version: str = ""


def template_changes(desired: Iterable[ClaimTemplate],
                     existing: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[TemplateChange]:
    """The changes that make ``existing`` ((namespace, name) -> template as the API returns it) ``desired``.
    Templates no longer desired are kept: pods of a ReplicaSet still reference them."""
    changes = []
    for template in desired:
        current = existing.get((template.namespace, template.name))
        if current is None:
            changes.append(TemplateChange("create", template))
            continue
        meta = current.get("metadata") or {}
        if not is_ours(current):
            changes.append(TemplateChange("foreign", template))
            continue
        written = tuple(filter(None, str((meta.get("annotations") or {}).get(ANN_CHOICES, "")).split(",")))
        if written != template.choices:
            changes.append(TemplateChange("replace", template, written, str(meta.get("resourceVersion", ""))))
    return changes


@dataclass(frozen=True)
class ProfileUsage:
    """One node's devices of one profile: how many there are and how many a claim holds."""

    devices: int
    allocated: int

    @property
    def free(self) -> int:
        return self.devices - self.allocated


def device_usage(devices: Iterable[MigDevice], taken: Collection[tuple[str, str, str]]
                 ) -> dict[str, dict[str, ProfileUsage]]:
    """node -> profile -> usage; ``taken``: (driver, pool, device) held by any claim."""
    counts: dict[str, dict[str, list[int]]] = {}
    for device in devices:
        slot = counts.setdefault(device.node, {}).setdefault(device.profile, [0, 0])
        slot[0] += 1
        slot[1] += (DRIVER, device.pool, device.name) in taken
    return {node: {p: ProfileUsage(n, a) for p, (n, a) in sorted(by.items())} for node, by in sorted(counts.items())}
