"""What the kubelet charges a pod at admission, computed from the pod as the API server returns it.

Mirrors k8s.io/component-helpers/resource.PodRequests: containers add up; a regular init container
runs alone (plus the sidecars started before it), so the pod needs the max of the two; restartable
init containers (sidecars, restartPolicy Always) run alongside everything after them; pod overhead is
added on top; pod-level `spec.resources.requests` (cpu/memory only) replace the container sum.
Requests defaulted from limits are already in the object the API returns, so they need no handling.

Must not: talk to the API server. Pure functions over plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

Resources = dict[str, Decimal]


def _requests(container: Mapping[str, Any]) -> Resources:
    raw = (container.get("resources") or {}).get("requests") or {}
    return {name: Decimal(parse_quantity(value)) for name, value in raw.items()}


def _add(into: Resources, other: Mapping[str, Decimal]) -> None:
    for name, value in other.items():
        into[name] = into.get(name, Decimal(0)) + value


def _max(into: Resources, other: Mapping[str, Decimal]) -> None:
    for name, value in other.items():
        into[name] = max(into.get(name, Decimal(0)), value)


def effective_requests(pod: Mapping[str, Any]) -> Resources:
    """Effective requests of `pod`, including one unit of the `pods` resource."""
    spec = pod.get("spec") or {}
    total: Resources = {}
    for container in spec.get("containers") or ():
        _add(total, _requests(container))
    sidecars: Resources = {}
    init_peak: Resources = {}
    for container in spec.get("initContainers") or ():
        request = _requests(container)
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
