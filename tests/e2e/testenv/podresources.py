"""What the kubelet charges a pod at admission, computed from the pod as the API server returns it.

Mirrors k8s.io/component-helpers/resource.PodRequests: containers add up; a regular init container
runs alone (plus the sidecars started before it), so the pod needs the max of the two; restartable
init containers (sidecars, restartPolicy Always) run alongside everything after them; pod overhead is
added on top; pod-level `spec.resources.requests` (cpu/memory only) replace the container sum.
Requests defaulted from limits are already in the object the API returns, so they need no handling.
An extended resource that DRA serves (KEP-5004: the scheduler maps it to a claim in
`status.extendedResourceClaimStatus.requestMappings`) is not charged: the kubelet removes it before its
resource fit (pkg/kubelet/lifecycle/predicate.go, removeMissingExtendedResources). The claim helpers
below mirror what the kubelet's DRA manager checks before it starts a pod
(pkg/kubelet/cm/dra/manager.go, prepareResources: the claim exists, is allocated and lists the pod in
`reservedFor`, resourceclaim.IsReservedForPod).

Must not: talk to the API server. Pure functions over plain dicts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

Resources = dict[str, Decimal]


def _requests(container: Mapping[str, Any], dra: Collection[tuple[str, str]] = ()) -> Resources:
    raw = (container.get("resources") or {}).get("requests") or {}
    name_ = container.get("name", "")
    return {name: Decimal(parse_quantity(value)) for name, value in raw.items() if (name_, name) not in dra}


def dra_backed(pod: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(container, resource) pairs the scheduler mapped to a DRA claim (KEP-5004 extended resources)."""
    status = (pod.get("status") or {}).get("extendedResourceClaimStatus") or {}
    return {(m.get("containerName", ""), m.get("resourceName", "")) for m in status.get("requestMappings") or ()}


def claim_names(pod: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(ResourceClaim names the pod uses, pod claim entries whose claim is not generated yet).

    A template's claim is named in `status.resourceClaimStatuses` by the resourceclaim controller
    (k8s.io/dynamic-resource-allocation/resourceclaim.Name); the KEP-5004 claim the scheduler created
    is in `status.extendedResourceClaimStatus.resourceClaimName`."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    generated = {s.get("name"): s.get("resourceClaimName") for s in status.get("resourceClaimStatuses") or ()}
    names, missing = [], []
    for entry in spec.get("resourceClaims") or ():
        name = entry.get("resourceClaimName") or generated.get(entry.get("name"))
        (names if name else missing).append(name or entry.get("name", ""))
    extended = (status.get("extendedResourceClaimStatus") or {}).get("resourceClaimName")
    if extended:
        names.append(extended)
    return names, missing


def claim_problem(pod: Mapping[str, Any], claim: Mapping[str, Any]) -> str:
    """Why the kubelet would not start `pod` with `claim` ('' when it would)."""
    status = claim.get("status") or {}
    name = claim["metadata"]["name"]
    if not status.get("allocation"):
        return f"ResourceClaim {name} is not allocated"
    if not any(r.get("uid") == pod["metadata"]["uid"] for r in status.get("reservedFor") or ()):
        return f"pod is not allowed to use ResourceClaim {name}: not in its reservedFor"
    return ""


def claim_devices(claim: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(driver, pool, device) of every device allocated to `claim`."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or ()
    return [(r.get("driver", ""), r.get("pool", ""), r.get("device", "")) for r in results]


def _add(into: Resources, other: Mapping[str, Decimal]) -> None:
    for name, value in other.items():
        into[name] = into.get(name, Decimal(0)) + value


def _max(into: Resources, other: Mapping[str, Decimal]) -> None:
    for name, value in other.items():
        into[name] = max(into.get(name, Decimal(0)), value)


def effective_requests(pod: Mapping[str, Any]) -> Resources:
    """Effective requests of `pod`, including one unit of the `pods` resource."""
    spec = pod.get("spec") or {}
    dra = dra_backed(pod)
    total: Resources = {}
    for container in spec.get("containers") or ():
        _add(total, _requests(container, dra))
    sidecars: Resources = {}
    init_peak: Resources = {}
    for container in spec.get("initContainers") or ():
        request = _requests(container, dra)
        if container.get("restartPolicy") == "Always":
            _add(total, request)
            _add(sidecars, request)
            candidate = dict(sidecars)
        else:
            candidate = dict(request)
            _add(candidate, sidecars)
        _max(init_peak, candidate)
    _max(total, init_peak)
    pod_level = ((spec.get("resources") or {}).get("requests")) or {}
    for name in ("cpu", "memory"):
        if name in pod_level:
            total[name] = Decimal(parse_quantity(pod_level[name]))
    _add(total, {name: Decimal(parse_quantity(v)) for name, v in (spec.get("overhead") or {}).items()})
    total["pods"] = total.get("pods", Decimal(0)) + 1
    return total


def first_shortfall(
    request: Mapping[str, Decimal], used: Mapping[str, Decimal], allocatable: Mapping[str, Decimal]
) -> tuple[str, str] | None:
    """(reason, message) for the first resource the node cannot give, like the kubelet's admission.

    Stricter than the real kubelet in one case, on purpose: an extended resource the node does not
    advertise at all is a shortfall here (the real kubelet ignores resources no device plugin
    registered), because for these tests that is exactly an over-commit to catch.
    """
    for name in sorted(request):
        wanted = request[name]
        if wanted <= 0:
            continue
        in_use = used.get(name, Decimal(0))
        capacity = allocatable.get(name, Decimal(0))
        if wanted + in_use > capacity:
            return (
                f"OutOf{name}",
                f"Pod was rejected: Node didn't have enough resource: {name}, requested: {wanted}, "
                f"used: {in_use}, capacity: {capacity}",
            )
    return None
