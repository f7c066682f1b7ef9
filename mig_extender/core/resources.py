"""Pods as the decisions see them: MIG demand, identity, owner and our annotations. Pure.

Reads plain dicts shaped like the Kubernetes JSON (what the scheduler posts, what the API returns as
raw JSON); never imports the kubernetes client. Every name our components write on objects lives at
the top of this module so there is one place to look them up.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from .catalog import ProfileError, is_mig_resource, resource_profile_name
from .placement import NO_CONSTRAINTS, Placement

# Annotations and labels (the one place they are spelled).
GROUP = "mig-extender.io"
ANN_SUBSTITUTE = f"{GROUP}/substitute"          # "false": never substitute this pod
ANN_RESTORE = f"{GROUP}/restore"                # "false": never restore this pod to its original type
ANN_ORIGINAL = f"{GROUP}/original-demand"       # "nvidia.com/mig-1g.5gb=1" on an upgraded pod
ANN_SUBSTITUTED = f"{GROUP}/substituted-demand"  # "nvidia.com/mig-2g.10gb=1" on an upgraded pod
ANN_RULE = f"{GROUP}/rule"                      # name of the MigSubstitution rule applied to the pod
ANN_RESTORED_AT = f"{GROUP}/restored-at"        # RFC 3339 time of the last restore (loop guard)
LABEL_SCHEDULER_OPT_IN = f"{GROUP}/inject-scheduler"  # namespace label: "true" sets schedulerName
LABEL_DRA = f"{GROUP}/dra"                      # namespace label: "true" turns MIG requests into DRA claims
ANN_DRA_DEMAND = f"{GROUP}/dra-demand"          # "nvidia.com/mig-1g.5gb=1": what a DRA-rewritten pod asked
ANN_DRA_PROFILE = f"{GROUP}/dra-profile"        # on our ResourceClaimTemplates (and their claims): "1g.5gb"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"  # "mig-extender" on the objects the reconciler owns

# ASCII digits only, as the API server's quantity grammar (\d would also take e.g. Arabic-Indic digits)
_QUANTITY_RE = re.compile(
    r"^(?P<num>[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE])?$")
_SUFFIX = {
    None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
# More MIG slices than any node could ever hold (8 GPUs x 7): a count above this is a typo or an attack,
# and keeping numbers small keeps every sum exact and cheap.
MAX_MIG_COUNT = 1024


class DemandError(ValueError):
    """A pod's MIG request that cannot be evaluated (bad quantity, malformed resource name)."""


def parse_count(value: Any, resource: str = "") -> int:
    """A Kubernetes quantity for an extended resource as an int: ``"2"``, ``2``, ``"1k"``.

    Extended resources are whole numbers >= 0; anything else (``"-1"``, ``"abc"``, ``"500m"``,
    ``"1e9"`` beyond MAX_MIG_COUNT) raises DemandError naming the resource and the value.
    """
    where = f"{resource}: " if resource else ""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DemandError(f"{where}quantity must be a string or integer, got {type(value).__name__}")
    text = str(value).strip()
    match = _QUANTITY_RE.match(text)
    if not match:
        raise DemandError(f"{where}{text!r} is not a quantity")
    try:
        number = Decimal(match["num"]) * _SUFFIX[match["suffix"]]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise DemandError(f"{where}{text!r} is not a quantity") from exc
    if number < 0:
        raise DemandError(f"{where}{text!r} is negative")
    if number != number.to_integral_value():
        raise DemandError(f"{where}{text!r} is not a whole number (extended resources are integers)")
    if number > MAX_MIG_COUNT:
        raise DemandError(f"{where}{text!r} exceeds {MAX_MIG_COUNT}")
    return int(number)


@dataclass(frozen=True, order=True)
class ResourceCount:
    """``count`` slices of one MIG resource; the unit of a substitution."""

    resource: str
    count: int

    def __str__(self) -> str:
        return f"{self.resource}={self.count}"

    @classmethod
    def parse(cls, text: str) -> ResourceCount:
        """Inverse of ``str()``: ``nvidia.com/mig-1g.5gb=1``."""
        resource, sep, count = text.partition("=")
        if not sep:
            raise DemandError(f"{text!r} is not RESOURCE=COUNT")
        resource_profile_name(resource)  # raises ProfileError on a non-MIG or malformed name
        return cls(resource, parse_count(count, resource))


def _container_mig(container: Mapping[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise DemandError(f"container {container.get('name')!r}: resources is not an object")
    out: dict[str, int] = {}
    # Limits default the requests of extended resources, and both must be equal for them.
    for section in ("limits", "requests"):
        values = resources.get(section) or {}
        if not isinstance(values, Mapping):
            raise DemandError(f"container {container.get('name')!r}: {section} is not an object")
        for name, qty in values.items():
            if isinstance(name, str) and is_mig_resource(name):
                out[name] = parse_count(qty, name)
    return out


def _add(total: dict[str, int], part: Mapping[str, int]) -> None:
    for name, n in part.items():
        total[name] = total.get(name, 0) + n


def _device_plugin_mig(container: Mapping[str, Any], dra_backed: frozenset[tuple[str, str]]) -> dict[str, int]:
    own = _container_mig(container)
    if dra_backed:
        name = container.get("name")
        own = {r: n for r, n in own.items() if (name, r) not in dra_backed}
    return own


def dra_backed_requests(status: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """(container, resource) pairs of ``status.extendedResourceClaimStatus.requestMappings``: the extended
    resources kube-scheduler served from a DRA claim (KEP-5004) for a bound pod. Malformed entries are
    ignored (the pod's own requests then count, as before)."""
    mappings = (status.get("extendedResourceClaimStatus") or {}) if isinstance(status, Mapping) else {}
    mappings = mappings.get("requestMappings") if isinstance(mappings, Mapping) else None
    if not isinstance(mappings, list):
        return frozenset()
    return frozenset((str(m.get("containerName")), str(m.get("resourceName"))) for m in mappings
                     if isinstance(m, Mapping) and m.get("containerName") and m.get("resourceName"))


def effective_mig_demand(spec: Mapping[str, Any], dra_backed: frozenset[tuple[str, str]] = frozenset()
                         ) -> dict[str, int]:
    """MIG slices a pod holds, computed as the kubelet and scheduler do.

    max(sum of app containers + restartable (sidecar) init containers, each regular init container +
    the sidecars started before it). Zero counts are dropped. ``dra_backed``: (container, resource) pairs
    a DRA claim serves (KEP-5004, ``dra_backed_requests``): not device-plugin slices, so not counted, as
    the kubelet leaves them out of its admission (removeMissingExtendedResources,
    pkg/kubelet/lifecycle/predicate.go).
    """
    containers = spec.get("containers") or []
    inits = spec.get("initContainers") or []
    if not isinstance(containers, list) or not isinstance(inits, list):
        raise DemandError("spec.containers and spec.initContainers must be lists")
    total: dict[str, int] = {}
    for c in containers:
        if not isinstance(c, Mapping):
            raise DemandError("a container is not an object")
        _add(total, _device_plugin_mig(c, dra_backed))
    sidecars: dict[str, int] = {}
    peak: dict[str, int] = {}
    for c in inits:
        if not isinstance(c, Mapping):
            raise DemandError("an init container is not an object")
        own = _device_plugin_mig(c, dra_backed)
        if c.get("restartPolicy") == "Always":
            _add(sidecars, own)
            continue
        during = dict(sidecars)
        _add(during, own)
        for name, n in during.items():
            peak[name] = max(peak.get(name, 0), n)
    _add(total, sidecars)
    for name, n in peak.items():
        total[name] = max(total.get(name, 0), n)
    return {k: v for k, v in total.items() if v > 0}


@dataclass(frozen=True, slots=True)
class Owner:
    kind: str
    name: str
    uid: str
    api_version: str = ""


@dataclass(frozen=True, slots=True)
class PodInfo:
    """The facts about a pod that any decision needs, read once from its JSON.

    One is kept per MIG pod for as long as the pod lives (100k at 5,000 nodes), so it has slots, and
    pod_info shares what pods of one template have in common (owner, demand, placement, vocabulary
    strings) instead of a copy each (issue 19, bench/memory.py)."""

    namespace: str
    name: str
    uid: str
    demand: Mapping[str, int] = field(default_factory=dict)
    owner: Owner | None = None
    node: str = ""
    phase: str = "Pending"
    terminating: bool = False
    scheduler: str = "default-scheduler"
    annotations: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0     # creationTimestamp as epoch seconds (0: not set, e.g. during admission)
    problems: tuple[str, ...] = ()
    priority: int = 0        # spec.priority (the admission plugin resolves priorityClassName into it)
    preemption_policy: str = "PreemptLowerPriority"  # spec.preemptionPolicy: "Never" never preempts
    gated: bool = False      # spec.schedulingGates non-empty: the scheduler does not consider the pod yet
    started: float = 0.0     # status.startTime as epoch seconds (preemption prefers victims started last)
    placement: Placement = NO_CONSTRAINTS  # nodeSelector, required affinity, tolerations, cpu/memory requests
    grace: float = 30.0      # spec.terminationGracePeriodSeconds: how long a preemption victim may hold its slices
    unschedulable: bool = False  # PodScheduled=False/Unschedulable: a scheduler tried and found no node

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def wants_mig(self) -> bool:
        return bool(self.demand)

    @property
    def single_demand(self) -> ResourceCount | None:
        """The one MIG resource the pod asks for; None if it asks for none or for several kinds."""
        if len(self.demand) != 1:
            return None
        ((resource, count),) = self.demand.items()
        return ResourceCount(resource, count)

    @property
    def holds_slices(self) -> bool:
        """Bound and not finished: a terminating pod still holds its slices until it is gone."""
        return bool(self.node) and self.phase not in ("Succeeded", "Failed")

    @property
    def may_substitute(self) -> bool:
        return self.annotations.get(ANN_SUBSTITUTE, "").lower() != "false"

    @property
    def may_restore(self) -> bool:
        return self.annotations.get(ANN_RESTORE, "").lower() != "false"

    @property
    def rule_name(self) -> str:
        return self.annotations.get(ANN_RULE, "")

    @property
    def original_demand(self) -> ResourceCount | None:
        """What an upgraded pod asked for before the webhook rewrote it (None for other pods)."""
        text = self.annotations.get(ANN_ORIGINAL)
        if not text:
            return None
        try:
            return ResourceCount.parse(text)
        except (DemandError, ProfileError):
            return None


def parse_time(text: Any) -> float:
    """An RFC 3339 timestamp as epoch seconds; 0.0 when absent or malformed (never raises)."""
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def controller_owner(meta: Mapping[str, Any]) -> Owner | None:
    refs = meta.get("ownerReferences")
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, Mapping) and ref.get("controller"):
            return Owner(str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("uid", "")),
                         str(ref.get("apiVersion", "")))
    return None


_OUR_ANNOTATIONS = (ANN_SUBSTITUTE, ANN_RESTORE, ANN_ORIGINAL, ANN_SUBSTITUTED, ANN_RULE, ANN_RESTORED_AT)


T = TypeVar("T")


class _Shared:
    """Equal immutable values read from many pods (siblings of one ReplicaSet have one owner, demand and
    placement), kept as one object. The memo is cleared when full, so it stays bounded whatever the
    churn: a value already handed out lives on in its pods, later ones just start a new share."""

    def __init__(self, cap: int = 4096) -> None:
        self._memo: dict[Hashable, Any] = {}
        self._cap = cap

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        value = self._memo.get(key)
        if value is None:
            if len(self._memo) >= self._cap:
                self._memo.clear()
            value = self._memo[key] = make()
        return value


_OWNERS, _DEMANDS, _PLACEMENTS = _Shared(), _Shared(), _Shared()
_NO_ANNOTATIONS: Mapping[str, str] = {}  # shared by every pod without ours; never mutated


def vocabulary(text: str) -> str:
    """One copy of a string from a small, bounded vocabulary (namespace, node, phase, kind, scheduler).

    Only those: sys.intern'd strings are immortal on Python 3.12, so a uid or pod name interned would
    never be freed."""
    return sys.intern(text)


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """Read a pod's JSON; a malformed MIG request becomes ``problems`` (never an exception).

    Raises DemandError only when the object is not a pod at all (no metadata/spec objects).
    """
    meta, spec = pod.get("metadata"), pod.get("spec")
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        raise DemandError("Pod must have metadata and spec objects")
    status = pod.get("status") if isinstance(pod.get("status"), Mapping) else {}
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), Mapping) else {}
    problems: list[str] = []
    try:
        # Any nvidia.com/mig-* name is counted exactly; only substitution needs a shape we can parse.
        demand = effective_mig_demand(spec, dra_backed_requests(status))
    except DemandError as exc:
        demand, problems = {}, [str(exc)]
    ours = {k: str(v) for k, v in annotations.items() if k in _OUR_ANNOTATIONS}
    return PodInfo(
        namespace=vocabulary(str(meta.get("namespace") or "default")),
        name=str(meta.get("name") or meta.get("generateName") or ""),
        uid=str(meta.get("uid") or ""),
        demand=_DEMANDS.get(tuple(sorted(demand.items())), lambda: {vocabulary(k): v for k, v in demand.items()}),
        owner=_shared_owner(meta),
        node=vocabulary(str(spec.get("nodeName") or "")),
        phase=vocabulary(str(status.get("phase") or "Pending")),
        terminating=bool(meta.get("deletionTimestamp")),
        scheduler=vocabulary(str(spec.get("schedulerName") or "default-scheduler")),
        annotations=ours or _NO_ANNOTATIONS,
        created=parse_time(meta.get("creationTimestamp")),
        problems=tuple(problems),
        priority=_priority(spec.get("priority")),
        preemption_policy=vocabulary(str(spec.get("preemptionPolicy") or "PreemptLowerPriority")),
        gated=bool(spec.get("schedulingGates")),
        started=parse_time(status.get("startTime")),
        placement=_shared_placement(spec),
        grace=_grace(spec.get("terminationGracePeriodSeconds")),
        unschedulable=_unschedulable(status.get("conditions")),
    )


def _shared_owner(meta: Mapping[str, Any]) -> Owner | None:
    owner = controller_owner(meta)
    if owner is None:
        return None
    return _OWNERS.get(owner, lambda: Owner(vocabulary(owner.kind), owner.name, owner.uid,
                                            vocabulary(owner.api_version)))


def _shared_placement(spec: Mapping[str, Any]) -> Placement:
    placement = placement_of(spec)
    if placement is NO_CONSTRAINTS:
        return placement
    # the parts are JSON (dicts in tuples): their repr is a faithful key, and cheap next to parsing them
    return _PLACEMENTS.get(repr(placement), lambda: placement)


def _grace(value: Any) -> float:
    """spec.terminationGracePeriodSeconds; the API server's default (30) when absent or malformed."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 30.0


def _unschedulable(conditions: Any) -> bool:
    """PodScheduled=False with reason Unschedulable: the scheduler's last attempt found no node
    (kube-scheduler's handleSchedulingFailure writes it); preemption waits for that verdict."""
    for cond in conditions if isinstance(conditions, list) else ():
        if isinstance(cond, Mapping) and cond.get("type") == "PodScheduled":
            return cond.get("status") == "False" and cond.get("reason") == "Unschedulable"
    return False


def _priority(value: Any) -> int:
    """spec.priority as an int; absent or malformed counts as 0 (the API server's default class)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def mig_allocatable(status: Mapping[str, Any]) -> dict[str, int]:
    """A node's allocatable MIG resources; malformed entries are skipped (reported by the caller)."""
    out: dict[str, int] = {}
    alloc = status.get("allocatable") or {}
    if not isinstance(alloc, Mapping):
        return out
    for name, qty in alloc.items():
        if isinstance(name, str) and is_mig_resource(name):
            try:
                out[name] = parse_count(qty, name)
            except DemandError:
                continue
    return {k: v for k, v in out.items() if v > 0}


def format_demand(demand: Mapping[str, int] | Iterable[ResourceCount]) -> str:
    items = demand.items() if isinstance(demand, Mapping) else ((rc.resource, rc.count) for rc in demand)
    return ",".join(f"{r}={n}" for r, n in sorted(items))


def quantity_scaled(value: Any, scale: int) -> int:
    """A cpu or memory quantity times ``scale`` (1000 for millicores), rounded up; 0 when malformed.

    Placement checks are advisory (kube-scheduler checks again at bind), so a value we cannot read counts
    as no request rather than failing the pod."""
    return _scaled_text(str(value), scale) if isinstance(value, (int, float, str)) else 0


@functools.lru_cache(maxsize=4096)
def _scaled_text(text: str, scale: int) -> int:
    """quantity_scaled of a text; memoised: a list of 100k pods repeats a handful of quantities, and the
    Decimal arithmetic was the largest part of reading a pod (the time to sync after a start)."""
    match = _QUANTITY_RE.match(text.strip())
    if not match:
        return 0
    number = Decimal(match["num"]) * _SUFFIX[match["suffix"]] * scale
    return max(int(number.to_integral_value(rounding="ROUND_CEILING")), 0)


def _requests(container: Any) -> tuple[int, int]:
    resources = container.get("resources") if isinstance(container, Mapping) else None
    requests = resources.get("requests") if isinstance(resources, Mapping) else None
    if not isinstance(requests, Mapping):
        return 0, 0
    return quantity_scaled(requests.get("cpu", 0), 1000), quantity_scaled(requests.get("memory", 0), 1)


def _effective_requests(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(cpu millicores, memory bytes) as kube-scheduler computes a pod's request: app containers plus
    sidecars, or the largest regular init container with the sidecars started before it, plus overhead."""
    containers = spec.get("containers") if isinstance(spec.get("containers"), list) else []
    inits = spec.get("initContainers") if isinstance(spec.get("initContainers"), list) else []
    cpu = sum(_requests(c)[0] for c in containers)
    mem = sum(_requests(c)[1] for c in containers)
    side_cpu = side_mem = peak_cpu = peak_mem = 0
    for c in inits:
        c_cpu, c_mem = _requests(c)
        if isinstance(c, Mapping) and c.get("restartPolicy") == "Always":
            side_cpu, side_mem = side_cpu + c_cpu, side_mem + c_mem
        else:
            peak_cpu, peak_mem = max(peak_cpu, side_cpu + c_cpu), max(peak_mem, side_mem + c_mem)
    overhead = spec.get("overhead") if isinstance(spec.get("overhead"), Mapping) else {}
    return (max(cpu + side_cpu, peak_cpu) + quantity_scaled(overhead.get("cpu", 0), 1000),
            max(mem + side_mem, peak_mem) + quantity_scaled(overhead.get("memory", 0), 1))


def placement_of(spec: Mapping[str, Any]) -> Placement:
    """The pod's placement constraints (core/placement.py checks them); malformed parts are ignored."""
    selector = spec.get("nodeSelector")
    affinity = spec.get("affinity")
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") \
        if isinstance(node_affinity, Mapping) else None
    terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
    tolerations = spec.get("tolerations")
    cpu, mem = _effective_requests(spec)
    placement = Placement(
        node_selector={str(k): str(v) for k, v in selector.items()} if isinstance(selector, Mapping) else {},
        required_terms=tuple(t for t in terms if isinstance(t, Mapping)) if isinstance(terms, list) else None,
        tolerations=tuple(t for t in tolerations if isinstance(t, Mapping)) if isinstance(tolerations, list) else (),
        cpu_milli=cpu, memory_bytes=mem,
    )
    return NO_CONSTRAINTS if placement == NO_CONSTRAINTS else placement
