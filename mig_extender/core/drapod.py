"""DRA mode at admission: a pod's ``nvidia.com/mig-*`` requests become ResourceClaims from our templates. Pure.

A pod's ``spec.resourceClaims`` cannot change after creation, so this happens on CREATE only. Every MIG
extended resource is stripped from requests and limits of every container (a node served by NVIDIA's DRA
driver advertises none, so a pod keeping one would never be scheduled there), and each slice becomes one
pod claim from the ``mig-extender-<profile>`` template, whose ``firstAvailable`` list holds the profile
and its substitutes (core/dra.py). Claims are numbered per profile so that containers which run side by
side never share one: app containers and sidecars (restartable init containers) get their own, and a
regular init container, which runs before the app containers, reuses the first claims after the
sidecars started before it; the pod thus holds exactly the kubelet's effective demand
(resources.effective_mig_demand). The original demand is recorded in an annotation. A pod created before
its namespace's templates existed keeps its extended resources; ``missed_rewrite`` finds those that the
reconciler may have recreated (by their controller) so that the webhook rewrites the replacement.

Must not: decide anything else about the pod (core/admission.py), or look up templates (the caller says
which exist).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .catalog import ProfileError, is_mig_resource, resource_profile_name
from .dra import subrequest_name, template_name
from .resources import ANN_DRA_DEMAND, DemandError, PodInfo, effective_mig_demand, format_demand, parse_count

Skip = Literal["no-mig", "missing-template", "bad-demand", "has-our-claims"]


@dataclass(frozen=True)
class DraRewrite:
    """The JSON patch that turns the pod's MIG requests into claims, and the claims it adds."""

    patch: list[dict[str, Any]]
    claims: Mapping[str, str]  # pod claim name -> template name
    demand: str                # the original demand, e.g. "nvidia.com/mig-1g.5gb=1"


@dataclass(frozen=True)
class DraSkipped:
    """Why the pod is left as it is (it then keeps its extended resources)."""

    reason: Skip
    missing: tuple[str, ...] = field(default=())  # templates that do not exist yet
    detail: str = ""


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _claim_name(profile: str, index: int) -> str:
    return f"{subrequest_name(profile)}-{index}"


def _container_counts(container: Mapping[str, Any]) -> dict[str, int]:
    """profile -> slices this container asks for (limits win; requests must equal them for extended ones)."""
    resources = container.get("resources") or {}
    counts: dict[str, int] = {}
    for section in ("requests", "limits"):
        for name, quantity in (resources.get(section) or {}).items():
            if is_mig_resource(name):
                counts[resource_profile_name(name)] = parse_count(quantity, name)
    return {profile: n for profile, n in counts.items() if n > 0}


Claims = list[tuple[str, str]]  # (pod claim name, profile)


def _assign(spec: Mapping[str, Any]) -> dict[tuple[str, int], Claims]:
    """(section, container index) -> the claims that container uses."""
    assigned: dict[tuple[str, int], Claims] = {}
    taken: dict[str, int] = {}  # profile -> claims held by sidecars and app containers so far
    sidecars: dict[str, int] = {}  # profile -> claims held by the sidecars started so far
    inits = spec.get("initContainers") or []
    for i, container in enumerate(inits):
        names: Claims = []
        for profile, n in sorted(_container_counts(container).items()):
            if container.get("restartPolicy") == "Always":
                start = taken.get(profile, 0)
                taken[profile] = sidecars[profile] = start + n
            else:
                start = sidecars.get(profile, 0)  # runs before the app containers: their claims are free
            names += [(_claim_name(profile, start + k), profile) for k in range(n)]
        assigned[("initContainers", i)] = names
    for i, container in enumerate(spec.get("containers") or []):
        names = []
        for profile, n in sorted(_container_counts(container).items()):
            start = taken.get(profile, 0)
            taken[profile] = start + n
            names += [(_claim_name(profile, start + k), profile) for k in range(n)]
        assigned[("containers", i)] = names
    return assigned


def _strip_and_refer(spec: Mapping[str, Any], assigned: Mapping[tuple[str, int], Claims]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for (section, i), names in assigned.items():
        container = spec[section][i]
        resources = container.get("resources") or {}
        base = f"/spec/{section}/{i}/resources"
        for kind in ("requests", "limits"):
            ops += [{"op": "remove", "path": f"{base}/{kind}/{_escape(name)}"}
                    for name in (resources.get(kind) or {}) if is_mig_resource(name)]
        if not names:
            continue
        refs = [{"name": n} for n, _ in names]
        if not resources:
            ops.append({"op": "add", "path": base, "value": {"claims": refs}})
        elif "claims" not in resources:
            ops.append({"op": "add", "path": f"{base}/claims", "value": refs})
        else:
            ops += [{"op": "add", "path": f"{base}/claims/-", "value": ref} for ref in refs]
    return ops


def rewrite_for_dra(pod: Mapping[str, Any], templates: Collection[str]) -> DraRewrite | DraSkipped:
    """The patch for a pod created in a DRA namespace, given the names of the templates that exist there."""
    spec = pod.get("spec") or {}
    try:
        demand = effective_mig_demand(spec)
        assigned = _assign(spec)
    except (DemandError, ProfileError) as exc:
        return DraSkipped("bad-demand", detail=str(exc))
    if not demand:
        return DraSkipped("no-mig")
    claims = {name: template_name(profile) for names in assigned.values() for name, profile in names}
    missing = tuple(sorted({t for t in claims.values() if t not in templates}))
    if missing:
        return DraSkipped("missing-template", missing)
    existing = spec.get("resourceClaims") or []
    if any(entry.get("name") in claims for entry in existing):
        return DraSkipped("has-our-claims")
    entries = [{"name": name, "resourceClaimTemplateName": template} for name, template in sorted(claims.items())]
    ops = _strip_and_refer(spec, assigned)
    if existing:
        ops += [{"op": "add", "path": "/spec/resourceClaims/-", "value": e} for e in entries]
    else:
        ops.append({"op": "add", "path": "/spec/resourceClaims", "value": entries})
    text = format_demand(demand)
    meta = pod.get("metadata") or {}
    if isinstance(meta.get("annotations"), Mapping):
        ops.append({"op": "add", "path": "/metadata/annotations/" + _escape(ANN_DRA_DEMAND), "value": text})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {ANN_DRA_DEMAND: text}})
    return DraRewrite(ops, claims, text)


def missed_rewrite(pods: Iterable[PodInfo], dra_namespaces: Collection[str],
                   templates: Collection[tuple[str, str]]) -> list[PodInfo]:
    """Pods of DRA namespaces created before their templates existed: still asking ``nvidia.com/mig-*``,
    found unschedulable by a scheduler, and every template they need now exists in their namespace
    (``templates``: (namespace, name)). Recreated by their controller, the webhook rewrites them."""
    found = []
    for pod in pods:
        if pod.namespace not in dra_namespaces or pod.node or pod.terminating or not pod.unschedulable:
            continue
        try:
            needed = {template_name(resource_profile_name(r)) for r in pod.demand}
        except ProfileError:
            continue
        if needed and all((pod.namespace, name) in templates for name in needed):
            found.append(pod)
    return found
