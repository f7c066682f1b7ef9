"""Every decision mig-extender makes, as pure functions over a ClusterSnapshot.

filter -> which candidate nodes fit a pod, why the others do not, and which substitution to record;
score  -> 0..10 per node (pack or spread); upgrades -> which recorded rules need their pod restarted;
restores -> which upgraded pods go back to their own size, biggest waster first.

The HTTP extender, the webhook, the reconciler and the simulator all call these functions, so there is
one implementation of fit, substitution and restore. Decisions return reasons (values), not text or
booleans; only the edges format them. No flask, kubernetes or cachetools here, and time is a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from enum import Enum
from itertools import compress
from operator import attrgetter

from .catalog import (
    GpuModel,
    ProfileError,
    ProfileShape,
    can_substitute,
    canonical_shape,
    resource_profile_name,
    resource_shape,
    waste,
)
from .loopguard import RestartIndex, RestartLoop
from .placement import placement_problem, tolerates_unschedulable
from .podspec import restart_blocker
from .resources import ANN_SUBSTITUTE, PodInfo, ResourceCount
from .rules import Phase, Rule, new_rule
from .snapshot import ClusterSnapshot, NodeInfo

MAX_SCORE = 10  # kube-scheduler's extender MaxExtenderPriority


class Policy(str, Enum):
    PACK = "pack"
    SPREAD = "spread"


@dataclass(frozen=True)
class PlanSettings:
    """Knobs of the decisions. Times in seconds."""

    rule_ttl: float = 120.0          # a recorded substitution unused this long is dropped (see Settings)
    restore_ttl: float = 120.0       # a restore reservation unused this long is dropped
    policy: Policy = Policy.PACK
    substitution: bool = True        # False: exact type only (the stock scheduler's behaviour)
    restores_per_pass: int = 2       # rate limit: restores a pass may start...
    restores_in_flight: int = 4      # ...and restores under way at once (each holds a reserved slice)
    loop_window: float = 900.0       # a workload restored this recently and upgraded again is left alone
    settle: float = 1.0              # a rule this young is not acted on yet: every webhook replica's watch must
                                     # have delivered it before the pod's replacement is created
    # owner kinds, beyond ReplicaSet/StatefulSet/Job/ReplicationController, known to recreate a deleted pod
    # ("group/Kind" or "Kind"): only their pods (and bare pods) are substituted, upgraded and restored
    restartable_owners: frozenset[str] = frozenset()
    upgrade_backoff: float = 60.0    # an upgrade whose replacement came back unrewritten (webhook down) is not
                                     # retried sooner: long enough for a webhook restart, short of rule_ttl
    restore_backoff: float = 30.0    # first wait after a refused restore restart; doubles per refusal...
    restore_backoff_max: float = 900.0  # ...up to this (a PDB that refuses for hours is retried 4x an hour)
    # a pod pending longer than this outranks the claim of younger queued pods on a slice it could take as
    # a substitute (aging: the longest waiter gets first claim). Shorter pays waste (a small pod on a large
    # slice) for the tail; longer lets one type's queue starve behind another's (issue 17)
    aging: float = 300.0
    # an Applied rule's pod missing from our watch this long after the rule's last change is looked up in
    # the API; gone there (no pod of that name and uid) -> the rule finishes (soak D3). Short: the API
    # lookup, not this wait, is what tells a deleted pod from a watch that lags
    gone_grace: float = 10.0
    # a restore writes its reservation and restarts the pod only on a pass this long after (soak D7): by
    # then the extender's rule watch has shown the reservation, and a pod it bound into the slice before
    # that shows in our pod watch, so the restore is deferred instead of restarting into a sold-out type.
    # As kube-scheduler's preemptor: nominated first, placed in a later cycle after the node is re-checked
    restore_confirm: float = 3.0
    # at most this many restarts by us (upgrades and restores together) per pod lineage within
    # restart_window seconds: an upgrade plus its restore is 2, a third would be a loop (soak D5, D7;
    # invariant 6 of the soak)
    restart_limit: int = 2
    restart_window: float = 3600.0
    # a restore runs only when a pod queued unbound wants the larger slice it frees (one the original
    # slice could not give it): a restore nobody gains from is a restart for nothing (issue 17)...
    restore_needs_taker: bool = True
    # ...unless the pod started on its substitute less than this ago and the substitute has at least twice
    # the compute it asked for: a young pod loses little work to the restart, and the waste it ends is large
    restore_young: float = 60.0

    def restore_backoff_after(self, attempts: int) -> float:
        """Seconds to wait before the next restore after ``attempts`` refusals (1 -> restore_backoff)."""
        return min(self.restore_backoff * 2 ** max(attempts - 1, 0), self.restore_backoff_max)


# --------------------------------------------------------------------------------------------------
# Filter


@dataclass(frozen=True)
class Insufficient:
    """Why one node cannot take a pod: like kube-scheduler's InsufficientResource, plus what preemption
    could free (``relievable``: slices held here by pods of strictly lower priority than the pod; 0 for a
    pod with preemptionPolicy Never)."""

    resource: str
    requested: int
    free: int
    allocatable: int
    reserved: int = 0
    relievable: int = 0

    @property
    def unresolvable(self) -> bool:
        """Evicting pods (preemption) cannot help. As kube-scheduler's fitsRequest
        (pkg/scheduler/framework/plugins/noderesources/fit.go: ``Unresolvable: podRequest... >
        nodeInfo.GetAllocatable()...``) when more slices are requested than the node has; and, unlike
        cpu, also when the free slices and those lower-priority pods hold fall short: the scheduler can
        evict only those (defaultpreemption isPreemptionAllowed), and reservations are no pods at all."""
        return self.requested > self.allocatable or self.free + self.relievable < self.requested

    def __str__(self) -> str:
        if self.allocatable == 0:
            return f"{self.resource}: none on this node"
        if self.requested > self.allocatable:
            return f"{self.resource}: {self.requested} requested, the node has {self.allocatable}"
        held = f", {self.reserved} reserved for substitutions" if self.reserved else ""
        lower = f", {self.relievable} held by lower-priority pods" if self.relievable else ""
        return (f"{self.resource}: {max(self.free, 0)} free of {self.allocatable}{held}{lower}, "
                f"{self.requested} requested")


@dataclass(frozen=True)
class UnknownNode:
    def __str__(self) -> str:
        return "node not (yet) in mig-extender's inventory"


@dataclass(frozen=True)
class FilterDecision:
    passed: tuple[str, ...]
    failed: Mapping[str, object] = field(default_factory=dict)        # node -> reason (preemption may help)
    unresolvable: Mapping[str, object] = field(default_factory=dict)  # node -> reason
    record: Rule | None = None       # a new substitution to store
    cancel: Rule | None = None       # a rule made moot: the pod fits as it is now
    apply: Rule | None = None        # a Recorded rule whose rewritten replacement pod has arrived
    note: object = ""                # appended to every failure reason ("substitute ... recorded",
                                     # SubstitutionBlocked)
    # node -> why no substitute was found there (NoLargerProfile, SubstituteReserved...): only when the
    # pod may be substituted and none was; appended to that node's failure reason
    unsubstituted: Mapping[str, object] = field(default_factory=dict)
    error: str = ""                  # the request could not be evaluated


_UNKNOWN_NODE = UnknownNode()


@dataclass(frozen=True)
class NodeUnschedulable:
    """The node is cordoned and the pod does not tolerate node.kubernetes.io/unschedulable."""

    def __str__(self) -> str:
        return "node is unschedulable"


_UNSCHEDULABLE = NodeUnschedulable()


@dataclass(frozen=True)
class NotSynced:
    """The node and pod caches (or the rule store) have not synced since the extender started."""

    def __str__(self) -> str:
        return "mig-extender inventory not synced yet"


NOT_SYNCED = NotSynced()


@dataclass(frozen=True)
class ReservedElsewhere:
    def __str__(self) -> str:
        return "fits, but this pod's slice is reserved on another node"


_ELSEWHERE = ReservedElsewhere()


@dataclass(frozen=True)
class RestoreNotRestarted:
    """A restore would take this pod as the replacement of its upgraded pod, but our watch still shows
    that pod running: kube-scheduler saw the replacement first (soak D8). No substitute is recorded for it;
    the scheduler retries on the upgraded pod's next event, and the reconciler requeues it (core/requeue)."""

    rule: str
    upgraded_pod: str

    def __str__(self) -> str:
        return (f"waiting for pod {self.upgraded_pod} to stop in mig-extender's view: restore {self.rule} "
                "reserves the slice for its replacement")


def restart_loop(pod: PodInfo, snap: ClusterSnapshot, settings: PlanSettings,
                 index: RestartIndex | None = None) -> RestartLoop | None:
    """Would one more restart of ``pod`` exceed ``settings.restart_limit`` for its lineage? The lineage as
    rules link it (the snapshot, soak D7) or, given ``index``, as unrewritten replacements link it
    (core/loopguard, soak D5): the larger count, so both defects meet one limit."""
    restarts = snap.lineage_restarts(pod, settings.restart_window) if snap.rules else 0
    if index is not None:
        restarts = max(restarts, index.restarts(pod))
    if restarts < settings.restart_limit:
        return None
    return RestartLoop(restarts, settings.restart_limit, settings.restart_window)


# Why no substitute: pod-wide (SubstitutionBlocked, the filter's ``note``) or per node (``unsubstituted``).
# Nodes share these objects, one per distinct reason, so the edge formats each once.


@dataclass(frozen=True)
class SubstitutionBlocked:
    """The pod may not be substituted on any node (opted out, several MIG types, an owner nothing would
    recreate it from, substitution disabled...): one reason for the whole answer."""

    why: str

    def __str__(self) -> str:
        return f"not substituted: {self.why}"


@dataclass(frozen=True)
class NoLargerProfile:
    """No profile of this node's GPU model can stand in for the requested shape: no layout change or
    freed slice will ever give this pod a substitute here."""

    requested: str  # the requested shape, e.g. "1g.20gb"
    gpu: str        # the node's GPU model

    def __str__(self) -> str:
        return f"no profile on this GPU is at least {self.requested}"


@dataclass(frozen=True)
class NoCompatibleFree:
    """The GPU model has larger profiles, but none of this node's slices that could stand in is free."""

    requested: str

    def __str__(self) -> str:
        return f"no slice of at least {self.requested} free on this node"


@dataclass(frozen=True)
class SubstituteReserved:
    """A compatible slice is free but set aside by another rule (a recorded substitution or a restore)."""

    resource: str
    rule: str
    namespace: str
    pod: str

    def __str__(self) -> str:
        return (f"compatible {resource_profile_name(self.resource)} free but reserved for "
                f"{self.namespace}/{self.pod} (rule {self.rule})")


@dataclass(frozen=True)
class SubstituteQueued:
    """A compatible slice is free, but pods wait unbound for exactly that type: they have the first claim
    (``ClusterSnapshot.pending``), so a substitution does not take it from them."""

    resource: str
    waiting: int  # slices of the type pending pods ask for

    def __str__(self) -> str:
        return (f"compatible {resource_profile_name(self.resource)} free, but pending pods wait for "
                f"{self.waiting} of exactly that type (the queue has first claim)")


_Reasons = dict[tuple[str, int, int, int, int, int], Insufficient]  # one object per distinct shortfall


def _fit(snap: ClusterSnapshot, pod: PodInfo, candidates: Sequence[str]) -> tuple[list[str], dict, dict]:
    """(passing nodes, failed reasons, unresolvable reasons) for ``pod`` over ``candidates``.

    The filter's hot loop, O(candidates) with a few dict reads per node, and nodes with the same numbers
    share one reason object (a 5,000-node answer repeats a handful of distinct reasons). A cordoned node
    fails as unschedulable unless the pod tolerates node.kubernetes.io/unschedulable; then its slices
    count like any node's (kube-scheduler's NodeUnschedulable plugin, which normally removes such nodes
    before we are asked). Whether preemption could relieve a shortfall needs a per-node priority lookup
    only when some pod below this one's priority holds a slice somewhere (``snap.lowest_priority``); with
    one priority in the cluster every shortfall is unresolvable at no cost.
    """
    demand = list(pod.demand.items())
    tolerant = tolerates_unschedulable(pod.placement.tolerations)
    relief = pod.preemption_policy != "Never" and pod.priority > snap.lowest_priority
    failed: dict[str, object] = {}
    unresolvable: dict[str, object] = {}
    reasons: _Reasons = {}
    passed: list[str] = []
    if len(demand) == 1:
        passed, candidates = _fit_one_type(snap, demand[0], candidates, tolerant, relief,
                                           failed, unresolvable, reasons)
    passed += _fit_by_arithmetic(snap, pod, demand, candidates, tolerant, relief, failed, unresolvable, reasons)
    return passed, failed, unresolvable


def _fit_one_type(snap: ClusterSnapshot, want: tuple[str, int], candidates: Sequence[str], tolerant: bool,
                  relief: bool, failed: dict, unresolvable: dict, reasons: _Reasons) -> tuple[list[str], list[str]]:
    """The usual pod (one MIG type) through the free index: (certainly passing, still to compute).

    A schedulable node outside the index has none of the type free, so it fails without arithmetic, and
    it can hold no reservation of that type (reservations are carved from free slices); only its
    allocatable is read, for the reason. The index leaves cordoned nodes out: those get the unschedulable
    answer, or arithmetic for a tolerating pod; so do nodes lower-priority pods could make room on.
    """
    resource, n = want
    holders = snap.free_index.get(resource, frozenset())
    # One lookup per candidate in the index: the names arrive as fresh strings, so each lookup hashes and
    # compares against the inventory's copy (the bulk of a 5,000-node filter); the rest of the partition
    # is identity-fast lookups in a set of the very same objects.
    holding = [node for node in candidates if node in holders] if holders else []
    later: list[str] = []
    if len(holding) < len(candidates):
        # sold out (nothing of the type free anywhere): every candidate is outside, no pass over the names
        kept = set(holding)
        outside = [node for node in candidates if node not in kept] if kept else list(candidates)
        if snap.cordoned or relief:
            outside, later = _set_aside(snap, outside, tolerant, relief, unresolvable)
        _none_free(snap, want, outside, failed, unresolvable, reasons)
    if n > 1:
        return [], holding + later
    # a node with a free slice of the type and no reservation at all certainly fits: no arithmetic
    reserved = snap.reserved
    if not reserved:
        return holding, later
    return [node for node in holding if node not in reserved], [node for node in holding if node in reserved] + later


def _none_free(snap: ClusterSnapshot, want: tuple[str, int], outside: list[str], failed: dict, unresolvable: dict,
               reasons: _Reasons) -> None:
    """Nodes with nothing of the type free and nothing preemption could free: unresolvable, one reason per
    distinct allocatable count; a name the inventory does not know fails as unknown. On a sold-out call
    every one of 5,000 names lands here, so the per-name work runs in C loops (``map``, ``dict.update``
    over ``zip``) and Python only touches the handful of distinct counts (issue 19)."""
    resource, n = want
    if not outside:
        return
    totals = list(map(snap.free_order.allocatable(resource).get, outside))  # None: not in the inventory
    distinct = set(totals)
    by_total: dict[int | None, object] = {None: _UNKNOWN_NODE}
    for total in distinct - {None}:
        key = (resource, n, 0, total, 0, 0)
        reason = reasons.get(key)
        if reason is None:
            reason = reasons[key] = Insufficient(resource, n, 0, total, 0)
        by_total[total] = reason
    if None not in distinct:
        unresolvable.update(zip(outside, map(by_total.__getitem__, totals), strict=True))
        return
    for node, total in zip(outside, totals, strict=True):  # some names unknown: rare, per node
        (failed if total is None else unresolvable)[node] = by_total[total]


def _set_aside(snap: ClusterSnapshot, outside: list[str], tolerant: bool, relief: bool,
               unresolvable: dict) -> tuple[list[str], list[str]]:
    """Of nodes outside the free index: (plainly short, to compute). Cordoned ones fail as unschedulable
    or, for a tolerating pod, are computed; with lower-priority holders about, every known node is."""
    cordoned, nodes = snap.cordoned, snap.nodes
    short, later = [], []
    for node in outside:
        if node in cordoned:
            if tolerant:
                later.append(node)
            else:
                unresolvable[node] = _UNSCHEDULABLE
        elif relief and node in nodes:
            later.append(node)
        else:
            short.append(node)
    return short, later


def _fit_by_arithmetic(snap: ClusterSnapshot, pod: PodInfo, demand: list[tuple[str, int]],
                       candidates: Sequence[str], tolerant: bool, relief: bool,
                       failed: dict, unresolvable: dict, reasons: _Reasons) -> list[str]:
    """Free slices per node and type (reservations of others subtracted, the pod's own added back):
    the nodes of ``candidates`` that fit; the others go to ``failed`` or ``unresolvable``."""
    nodes, reserved, priority, cordoned = snap.nodes, snap.reserved, pod.priority, snap.cordoned
    if cordoned and not tolerant:
        unresolvable.update((node, _UNSCHEDULABLE) for node in candidates if node in cordoned)
        candidates = [node for node in candidates if node not in cordoned]
    own = snap.own_reservation(pod) if snap.rules else None  # found once, not per node
    own_node, own_resource, own_count = (own[0], own[1].resource, own[1].count) if own else ("", "", 0)
    passed = []
    for node in candidates:
        info = nodes.get(node)
        if info is None:
            failed[node] = _UNKNOWN_NODE
            continue
        alloc, used, held = info.allocatable, info.used, reserved.get(node)
        short: Insufficient | None = None
        for resource, n in demand:
            total = alloc.get(resource, 0)
            taken = held.get(resource, 0) if held else 0
            free = total - used.get(resource, 0) - taken
            if node == own_node and resource == own_resource:
                free += own_count
            if free < n:
                lower = info.held_below(resource, priority) if relief else 0
                key = (resource, n, free, total, taken, lower)
                reason = reasons.get(key)
                if reason is None:
                    reason = reasons[key] = Insufficient(resource, n, free, total, taken, lower)
                if short is None or reason.unresolvable:
                    short = reason  # one shortfall preemption cannot relieve makes the node unresolvable
                if reason.unresolvable:
                    break
        if short is None:
            passed.append(node)
        else:
            (unresolvable if short.unresolvable else failed)[node] = short
    return passed


def filter_pod(pod: PodInfo, candidates: Sequence[str], snap: ClusterSnapshot,
               settings: PlanSettings = PlanSettings()) -> FilterDecision:
    """Which of ``candidates`` can run ``pod`` now; if none, the best substitution to record."""
    if pod.problems:
        return FilterDecision(passed=(), error="; ".join(pod.problems))
    if not pod.wants_mig:
        return FilterDecision(passed=tuple(candidates))
    if not snap.synced:
        return _not_synced(candidates)
    passed, failed, unresolvable = _fit(snap, pod, candidates)
    own = snap.own_reservation(pod) if snap.rules and len(passed) > 1 else None
    if own is not None and own[0] in passed:
        # the slice set aside for this pod: placing it elsewhere would strand the reservation and take a
        # slice somebody else may be promised
        for node in passed:
            if node != own[0]:
                failed[node] = _ELSEWHERE
        passed = [own[0]]
    existing = snap.rule_for(pod)
    if existing is not None and existing.is_hold and existing.reserved_for(pod):
        return _held_for_preemptor(existing, passed, failed, unresolvable)
    waiting = existing is not None and existing.phase is Phase.RECORDED and existing.pod_uid == pod.uid
    arrived = existing is not None and existing.phase is Phase.RECORDED and existing.reserved_for(pod)
    if arrived:
        return FilterDecision(tuple(passed), failed, unresolvable, apply=existing)
    if passed:
        return FilterDecision(tuple(passed), failed, unresolvable, cancel=existing if waiting else None)
    if waiting:
        note = f"substitute {existing.substitute} recorded on {existing.node}; waiting for the pod to be recreated"
        return FilterDecision((), failed, unresolvable, note=note)
    restore = snap.restore_before_restart(pod) if snap.unrestarted else None
    if restore is not None:
        return FilterDecision((), failed, unresolvable,
                              note=RestoreNotRestarted(restore.name, restore.applied_pod or restore.pod_name))
    loop = restart_loop(pod, snap, settings)
    if loop is not None:  # a substitute would restart the pod once more than its lineage may be (soak D7)
        return FilterDecision((), failed, unresolvable, note=loop)
    rule = choose_substitute(pod, candidates, snap, settings)
    if rule is None:
        return _no_substitute(pod, failed, unresolvable, snap, settings, existing)
    note = f"substitute {rule.substitute.resource} recorded on {rule.node}"
    return FilterDecision((), failed, unresolvable, record=rule, note=note)


def _no_substitute(pod: PodInfo, failed: dict, unresolvable: dict, snap: ClusterSnapshot,
                   settings: PlanSettings, existing: Rule | None) -> FilterDecision:
    """Every node failed and no substitute was found: say why, for the whole pod (opted out, owner nothing
    recreates: the reconciler's Event MigSubstitutionSkipped says that too) or else per node."""
    blocked = substitution_blocker(pod, settings) or _shapeless(pod)
    if blocked:
        return FilterDecision((), failed, unresolvable, note=SubstitutionBlocked(blocked))
    why = why_not_substituted(pod, [*failed, *unresolvable], snap)
    return FilterDecision((), failed, unresolvable, note=_spent_note(existing, pod), unsubstituted=why)


def _shapeless(pod: PodInfo) -> str:
    want = pod.single_demand
    try:
        resource_shape(want.resource) if want is not None else None
    except ProfileError:
        return f"{want.resource} names no MIG shape to compare a substitute with"
    return ""


def why_not_substituted(pod: PodInfo, nodes: Iterable[str], snap: ClusterSnapshot) -> dict[str, object]:
    """Node -> why no slice there may stand in for ``pod``'s single MIG demand (after choose_substitute
    found none). Nodes failed for another reason first (unknown, cordoned, GPU not recognised) are left
    out: their own reason says it.

    On the sold-out path of every /filter call, so no O(nodes x profiles) scan: whether a GPU model has
    any profile large enough is decided once per model, the nodes holding a free compatible slice come
    from the free index once per compatible type, and every other node costs two dict reads and shares
    one reason object.
    """
    want = pod.single_demand
    assert want is not None
    requested = resource_shape(want.resource)
    none_free = NoCompatibleFree(requested.name)
    # C-speed passes over the nodes (map/filter/fromkeys), Python only once per GPU model
    nodes = list(nodes)
    found = list(map(snap.nodes.get, nodes))
    known = list(compress(nodes, found))  # the caller's strings: cheaper to hash again than the inventory's
    infos = list(filter(None, found))     # unknown nodes are left out: their reason says it
    gpus = list(map(_GPU_OF, infos))
    models = dict(zip(map(id, gpus), gpus, strict=True))
    by_model = {key: _model_reason(requested, gpu, none_free) for key, gpu in models.items()}
    if len(by_model) == 1:  # one GPU model in the answer: the usual cluster
        only = next(iter(by_model.values()))
        out: dict[str, object] = dict.fromkeys(known, only) if only is not None else {}
    else:
        out = {node: reason for node, reason in zip(known, map(by_model.__getitem__, map(id, gpus)), strict=True)
               if reason is not None}
    blocked = _Blocked(snap, want.count, none_free)
    for node, types in _compatible_free_types(requested, snap).items():  # the few nodes with a free one
        if out.get(node) is none_free:
            out[node] = blocked.why(node, types)
    for node in snap.cordoned:  # usually none; theirs is "node is unschedulable" (or they are computed)
        out.pop(node, None)
    return out


_GPU_OF = attrgetter("gpu")


def _model_reason(requested: ProfileShape, gpu: GpuModel | None, none_free: NoCompatibleFree) -> object | None:
    """Per GPU model: NoLargerProfile, ``none_free`` (it has one: whether it is free is per node), or None
    for a node whose GPU is not recognised (its own reason says so)."""
    if gpu is None:
        return None
    return _no_larger_profile(requested, gpu) or none_free


def _no_larger_profile(requested: ProfileShape, gpu: GpuModel) -> NoLargerProfile | None:
    """The model's own reason when none of its profiles could ever hold the request (None: one could;
    a re-partition or a freed slice may still give the pod room here)."""
    if any(can_substitute(requested, p.shape) for p in gpu.profiles):
        return None
    return NoLargerProfile(requested.name, gpu.name)


def _compatible_free_types(requested: ProfileShape, snap: ClusterSnapshot) -> dict[str, list[str]]:
    """Node -> the types other than the requested one that could stand in and have a free slice there,
    from the free index (a resource name means the same shape on every model): O(nodes holding one)."""
    types = []
    for resource, holders in snap.free_index.items():
        if not holders or resource == requested.resource:
            continue
        try:
            offered = resource_shape(resource)
        except ProfileError:
            continue
        if can_substitute(requested, offered):  # as choose_substitute: any other name that fits
            types.append((waste(requested, offered), resource, holders))
    out: dict[str, list[str]] = {}
    for _, resource, holders in sorted(types, key=lambda t: t[:2]):  # least waste first: the one reported
        for node in holders:
            out.setdefault(node, []).append(resource)
    return out


class _Blocked:
    """Why a node's free compatible slices were not taken: the queue's claim, or another rule's
    reservation. Each reason is built once per type or rule and shared; the cluster-wide sums
    (``spare``) and the reservation map are computed at most once per call."""

    def __init__(self, snap: ClusterSnapshot, count: int, none_free: NoCompatibleFree) -> None:
        self.snap, self.count, self.none_free = snap, count, none_free
        self._queued: dict[str, SubstituteQueued | None] = {}
        self._holders: dict[tuple[str, str], SubstituteReserved] | None = None

    def why(self, node: str, types: list[str]) -> object:
        for resource in types:
            queued = self._queue(resource)
            if queued is not None:
                return queued
        for resource in types:
            if self.snap.free(node, resource) < self.count:
                held = self._reservations().get((node, resource))
                if held is not None:
                    return held
        return self.none_free  # free, but fewer than the pod asks for

    def _queue(self, resource: str) -> SubstituteQueued | None:
        if resource not in self._queued:
            snap = self.snap
            waiting = snap.pending.get(resource, 0)
            self._queued[resource] = (SubstituteQueued(resource, waiting)
                                      if waiting and snap.spare(resource) < self.count else None)
        return self._queued[resource]

    def _reservations(self) -> dict[tuple[str, str], SubstituteReserved]:
        if self._holders is None:
            self._holders = {}
            for rule in self.snap.rules:
                held = rule.reservation(self.snap.now)
                if held is not None:
                    self._holders.setdefault((held[0], held[1].resource), SubstituteReserved(
                        held[1].resource, rule.name, rule.namespace, rule.applied_pod or rule.pod_name))
        return self._holders


def _held_for_preemptor(hold: Rule, passed: list[str], failed: dict, unresolvable: dict) -> FilterDecision:
    """A preemptor with a live hold: it passes where it fits (its own reservation counted back); else it
    waits, and the reason names the node and the victims still holding the slices. No substitute is
    recorded meanwhile: the slices being freed are already promised to it."""
    if passed:
        return FilterDecision(tuple(passed), failed, unresolvable)
    note = (f"preemption: {hold.substitute} reserved on {hold.node}, waiting for {len(hold.victims)} "
            f"preempted pod(s) to terminate")
    return FilterDecision((), failed, unresolvable, note=note)


def _spent_note(existing: Rule | None, pod: PodInfo) -> str:
    """Say that the pod's own rule no longer holds a substitute for it (taken, expired...), so no reason
    text suggests a reservation the pod does not have."""
    if existing is None or existing.pod_uid != pod.uid:
        return ""
    taker = f" by pod {existing.applied_pod}" if existing.applied_pod else ""
    return f"rule {existing.name} is {existing.phase}{taker}: no substitute is held for this pod"


def _not_synced(candidates: Sequence[str]) -> FilterDecision:
    """Every node fails until the caches have synced: nodes are listed before the paginated pod list, so
    in between every slice looks free and a pass would over-commit (the kubelet rejects the pod).

    Resolvable (FailedNodes): we do not know that preemption cannot help, and a pod nominated on a node
    whose victims are still terminating keeps that nomination only while the node is not
    UnschedulableAndUnresolvable (defaultpreemption PodEligibleToPreemptOthers). Either way the pod is
    retried: a pod rejected only by an extender goes back through the backoff queue
    (backend/queue/scheduling_queue.go, no rejector plugins)."""
    return FilterDecision((), failed=dict.fromkeys(candidates, NOT_SYNCED))


def substitution_blocker(pod: PodInfo, settings: PlanSettings) -> str:
    """Why ``pod`` may not be substituted at all ('' when it may)."""
    if not settings.substitution:
        return "substitution disabled"
    if not pod.may_substitute:
        return f"pod opted out of substitution ({ANN_SUBSTITUTE}=false)"
    if pod.single_demand is None:
        return "pod asks for more than one MIG type"
    if pod.rule_name or pod.original_demand is not None:
        return "pod is already a substitute"
    if not pod.uid:
        return "pod has no uid"
    # a substitution needs a restart, and only a pod something recreates can be restarted (issue 13 item 6)
    blocked = restart_blocker(pod.owner, settings.restartable_owners)
    return str(blocked) if blocked else ""


def choose_substitute(pod: PodInfo, candidates: Iterable[str], snap: ClusterSnapshot,
                      settings: PlanSettings = PlanSettings()) -> Rule | None:
    """The least-waste compatible free slice among ``candidates``, as a new rule; None if there is none.

    Cost order: waste (extra compute slices, extra GB, unneeded media engines), then the fewest slices
    of that type left free on the node (take from the node where that type is scarcest, keeping other
    nodes' large slices whole), then the least free compute left on the node (packing), then the name.

    Types are tried least waste first and the search stops at the first waste level with a feasible
    node: with the cluster sold out this is on every scheduling attempt, and scanning every candidate
    for every type cost ~70 ms at 5,000 nodes. A type's waste is read on one node holding it (a resource
    name means the same shape on every GPU model that has it; aliases only absorb drift).

    The demand's shape is the requested name's own (``1g.20gb`` asks for 20 GB on any node), never a
    node model's reading of it: drift resolved per model once turned ``1g.20gb`` into an H200's
    ``1g.18gb`` and substituted the smaller slice at zero waste.
    """
    if substitution_blocker(pod, settings):
        return None
    want = pod.single_demand
    assert want is not None
    try:
        requested = resource_shape(want.resource)
    except ProfileError:
        return None  # counted exactly by name, but no shape to compare a substitute with
    candidate_set = candidates if isinstance(candidates, (set, frozenset)) else set(candidates)
    levels: dict[tuple[int, int, int], list[tuple[str, ProfileShape]]] = {}
    for resource, holders in snap.free_index.items():
        if resource == want.resource or not holders:
            continue
        info = snap.nodes.get(next(iter(holders)))
        offered = info.shapes.get(resource) if info is not None else None
        if offered is not None and can_substitute(requested, offered):
            levels.setdefault(waste(requested, offered), []).append((resource, offered))
    best: tuple[tuple, str, str] | None = None
    for level in sorted(levels):
        for resource, offered in levels[level]:
            if _claimed_by_queue(snap, resource, want.count, pod.created, settings.aging):
                continue  # pods wait for exactly this type: its free slices are theirs first
            found = _cheapest_holder(snap, resource, offered, requested, want.count, candidate_set)
            if found is not None and (best is None or found < best[0]):
                best = (found, found[3], resource)
        if best is not None:
            break  # a cheaper level had nothing feasible; every later level wastes more
    if best is None:
        return None
    _, node, resource = best
    prior = snap.rules_by_pod_uid.get(pod.uid)  # the pod's newest rule, spent: the new one needs its own name
    return new_rule(pod, want, ResourceCount(resource, want.count), node, snap.now, settings.rule_ttl,
                    after=prior.name if prior is not None else "")


def _older_queue(snap: ClusterSnapshot, resource: str, created: float, aging: float) -> bool:
    """Do pods queued for ``resource`` have a claim against a pod created at ``created``? Yes unless the
    pod has waited longer than ``aging`` and longer than all of them (the longest waiter gets first claim
    on what frees); when either age is unknown, always (the claim as it was before ages were known)."""
    since = snap.pending_since.get(resource)
    return since is None or not created or snap.now - created < aging or since <= created


def _claimed_by_queue(snap: ClusterSnapshot, resource: str, count: int, created: float, aging: float) -> bool:
    """Would taking ``count`` free slices of ``resource`` as a substitute leave a queued pod without one?

    Pods queued for exactly ``resource`` have first claim on its free slices, unless the asking pod has
    waited longer than ``aging`` and longer than all of them (``_older_queue``): without that, a type
    in short supply starved behind the queue of a larger type it could use (issue 17: 3g pods on the
    Alibaba trace made the time-to-run tail, p99 1.33x the peer's). O(nodes with a free slice of it),
    and only when somebody queues for it."""
    if not snap.pending.get(resource) or not _older_queue(snap, resource, created, aging):
        return False
    return snap.spare(resource) < count


def _cheapest_holder(snap: ClusterSnapshot, resource: str, offered: ProfileShape, requested: ProfileShape,
                     count: int, candidates: Set[str]) -> tuple[tuple[int, int, int], int, int, str] | None:
    """The cost ``(waste, free left, compute left, node)`` of the best candidate to take ``count`` slices of
    ``resource`` from, or None.

    Reads the snapshot's FreeOrder, sorted by (free, idle compute, name) without reservations: the first
    candidate in it without a reservation of this type is the best of those, usually the first entry. The
    few nodes that hold reservations of it, and any node whose GPU reads the name as another shape (an
    alias), are costed one by one, as the plain definition does.
    """
    nodes = snap.nodes
    extra = waste(requested, offered)
    reserved = set(snap.reserved_nodes(resource))
    holders = snap.nodes_with_free(resource)
    odd = [node for node in reserved if node in holders and node in candidates]
    best = None
    for free, idle, node in snap.free_order.of(resource, count):
        if node not in candidates or node in reserved:
            continue
        if nodes[node].shapes.get(resource) != offered:
            odd.append(node)
            continue
        best = (extra, free - count, idle - offered.compute_slices * count, node)
        break
    for node in odd:
        info = nodes[node]
        shape = info.shapes.get(resource)
        free = snap.free(node, resource)
        if shape is None or free < count or not can_substitute(requested, shape):
            continue
        cost = (waste(requested, shape), free - count,
                info.total_compute - info.busy_compute - shape.compute_slices * count, node)
        if best is None or cost < best:
            best = cost
    return best


# --------------------------------------------------------------------------------------------------
# Scores


def score_nodes(pod: PodInfo, nodes: Sequence[str], snap: ClusterSnapshot,
                policy: Policy = Policy.PACK) -> list[tuple[str, int]]:
    """0..10 per node. PACK prefers nodes whose MIG slices are already in use and on which this
    type becomes scarce (best fit), so whole nodes and large slices stay free elsewhere; SPREAD is
    its mirror image. Pods without MIG demand score 0 everywhere (we have no opinion).

    Reserved slices count as busy, except the pod's own reservation (it is the pod's demand, counted
    once). O(nodes) with the node's usage precomputed (NodeInfo.busy_compute)."""
    if not pod.wants_mig:
        return [(n, 0) for n in nodes]
    own = snap.own_reservation(pod) if snap.rules else None
    demand = list(pod.demand.items())
    single = demand[0] if len(demand) == 1 else None
    spread = policy is Policy.SPREAD
    key = (single, spread)
    all_nodes, reserved = snap.nodes, snap.reserved
    out = []
    for node in nodes:
        info = all_nodes.get(node)
        if info is None or info.total_compute == 0:
            out.append((node, 0))
            continue
        if single is not None and node not in reserved:  # the usual case: remembered on the node's state
            memo = info.scores
            score = memo.get(key)
            if score is None:
                score = memo[key] = _single_score(info, single, spread)
            out.append((node, score))
            continue
        shapes, alloc, used = info.shapes, info.allocatable, info.used
        held = dict(reserved.get(node) or {})
        if own is not None and own[0] == node:
            held[own[1].resource] = held.get(own[1].resource, 0) - own[1].count
        busy = info.busy_compute + sum(shapes[r].compute_slices * k for r, k in held.items() if r in shapes)
        busy += sum(shapes[r].compute_slices * n for r, n in demand if r in shapes)
        utilisation = min(busy / info.total_compute, 1.0)
        fit = [1.0 - max(alloc[r] - used.get(r, 0) - held.get(r, 0) - n, 0) / alloc[r]
               for r, n in demand if alloc.get(r)]
        best_fit = sum(fit) / len(fit) if fit else 0.0
        score = round(MAX_SCORE * (0.7 * utilisation + 0.3 * best_fit))
        score = MAX_SCORE - score if spread else score
        out.append((node, max(0, min(MAX_SCORE, score))))
    return out


def _single_score(info: NodeInfo, want: tuple[str, int], spread: bool) -> int:
    """The score of a node without reservations for a pod asking for one type: a function of the node's
    state alone, so NodeInfo.scores keeps it until the node changes (a new NodeInfo)."""
    r, n = want
    shape, a = info.shapes.get(r), info.allocatable.get(r, 0)
    busy = info.busy_compute + (shape.compute_slices * n if shape else 0)
    fit = 1.0 - max(a - info.used.get(r, 0) - n, 0) / a if a else 0.0
    score = round(MAX_SCORE * (0.7 * min(busy / info.total_compute, 1.0) + 0.3 * fit))
    score = MAX_SCORE - score if spread else score
    return max(0, min(MAX_SCORE, score))


# --------------------------------------------------------------------------------------------------
# Reconciler decisions


@dataclass(frozen=True)
class Upgrade:
    """Restart ``pod`` so the webhook rewrites its replacement per ``rule``."""

    rule: Rule
    pod: PodInfo


def plan_upgrades(snap: ClusterSnapshot, pods: Mapping[str, PodInfo],
                  settings: PlanSettings = PlanSettings()) -> tuple[list[Upgrade], list[Rule]]:
    """Recorded rules whose pod still waits unbound -> restart it; rules whose pod was placed as it
    is, or that nothing would recreate (recorded before --restartable-owners changed) -> drop.
    Returns (upgrades, rules to cancel)."""
    upgrades, cancel = [], []
    for rule in snap.rules:
        if rule.phase is not Phase.RECORDED or rule.is_expired(snap.now):
            continue
        pod = pods.get(rule.pod_uid)
        if rule.is_hold:  # a preemption hold restarts nobody; it ends once its pod is placed or gone
            if pod is None or pod.node:
                cancel.append(rule)
            continue
        if pod is None:
            continue  # already restarted: the webhook will apply the rule to its replacement
        if (pod.node or restart_blocker(pod.owner, settings.restartable_owners) is not None
                or restart_loop(pod, snap, settings) is not None):
            cancel.append(rule)
        elif not pod.terminating and snap.now - rule.created >= settings.settle:
            upgrades.append(Upgrade(rule, pod))
    return upgrades, cancel


@dataclass(frozen=True)
class Restore:
    """Restart upgraded ``pod`` so it comes back on its original type, reserved on ``node``."""

    rule: Rule
    pod: PodInfo
    node: str
    waste: tuple[int, int, int]


@dataclass(frozen=True)
class Skip:
    """An upgraded pod left on its substitute, and why (reported as an Event)."""

    rule: Rule
    pod: PodInfo
    reason: str


def _shape(resource: str, snap: ClusterSnapshot, node: str) -> ProfileShape | None:
    info = snap.nodes.get(node)
    if info is not None and resource in info.shapes:
        return info.shapes[resource]  # the same canonical_shape, parsed once per node
    try:
        return canonical_shape(resource, info.gpu if info else None)
    except ProfileError:
        return None


def _recently_restored(rule: Rule, snap: ClusterSnapshot, window: float,
                       restored: Iterable[Rule] | None = None) -> Rule | None:
    """A restore of the same workload within ``window`` (Restored, or one that expired: its replacement
    could not land and was upgraded again): restoring again would loop.
    ``restored``: the snapshot's restore rules, when the caller has them at hand (else all rules)."""
    for other in snap.rules if restored is None else restored:
        if (other.was_restore and other.phase is not Phase.RESTORING and other.name != rule.name
                and other.namespace == rule.namespace and snap.now - other.updated < window
                and ((rule.owner and other.owner and other.owner.uid == rule.owner.uid)
                     or (not rule.owner and other.pod_name == rule.pod_name))):
            return other
    return None


def _can_run_on(snap: ClusterSnapshot, node: str, pod: PodInfo) -> bool:
    """Could ``pod``'s replacement run on ``node`` apart from MIG (selectors, affinity, taints, cpu/memory)?

    On the pod's own node its own cpu/memory requests are freed by the restart, so they do not count."""
    info = snap.nodes.get(node)
    if info is None:
        return False
    if node != pod.node or info.facts is None:
        return not info.placement_problem(pod.placement)
    facts = replace(info.facts, used_cpu_milli=max(info.facts.used_cpu_milli - pod.placement.cpu_milli, 0),
                    used_memory_bytes=max(info.facts.used_memory_bytes - pod.placement.memory_bytes, 0))
    return not placement_problem(pod.placement, facts)


def plan_restores(snap: ClusterSnapshot, pods: Mapping[str, PodInfo], settings: PlanSettings = PlanSettings(),
                  blocked: Mapping[str, object] | None = None) -> tuple[list[Restore], list[Skip]]:
    """Upgraded pods whose original type is free again, biggest waster first (``catalog.waste`` order:
    extra compute, extra GB, unneeded media engine; ties: the oldest rule first), at most
    ``settings.restores_per_pass``; each gets a node whose free original slice is set aside for it, and
    only a node the pod can run on (placement_problem), or the replacement would strand the reservation.
    A restore refused before (PDB) waits for its backoff (``rule.retry_restore_at``).
    A restore takes a freed slice that pods waiting for exactly that type would otherwise get, so it is
    made only when none wait for it, or when pods wait for the larger type the upgraded pod occupies
    (then freeing that slice is what the queue needs).
    Skips (opt-out, loop guard, nothing would recreate the pod, ``blocked``: rule name -> reason, e.g. a
    Job a restart would harm) are returned so the caller can say why on the pod."""
    in_flight = sum(1 for r in snap.rules if r.phase is Phase.RESTORING and r.reservation(snap.now))
    budget = min(settings.restores_per_pass, settings.restores_in_flight - in_flight)
    if budget <= 0:
        return [], []  # enough restores under way: the rate limit
    candidates: list[tuple[tuple[int, int, int], Rule, PodInfo]] = []
    skips: list[Skip] = []
    # once per call, not once per candidate: with thousands of upgraded pods that was O(rules^2)
    restored = [r for r in snap.rules if r.was_restore and r.phase is not Phase.RESTORING]
    index = RestartIndex.build(snap.rules, snap.now, settings.restart_window)
    for rule in snap.rules:
        if rule.phase is not Phase.APPLIED or not rule.bound_pod or snap.now < rule.retry_restore_at:
            continue
        pod = pods.get(rule.bound_pod)
        if pod is None or not pod.holds_slices or pod.terminating or pod.phase != "Running":
            continue
        if not pod.may_restore:
            skips.append(Skip(rule, pod, "pod opted out of restore (mig-extender.io/restore=false)"))
            continue
        why = restart_blocker(pod.owner, settings.restartable_owners) or (blocked or {}).get(rule.name)
        if why is not None:
            skips.append(Skip(rule, pod, f"not restored: {why}"))
            continue
        looping = restart_loop(pod, snap, settings, index)
        if looping is not None:
            skips.append(Skip(rule, pod, str(looping)))
            continue
        loop = _recently_restored(rule, snap, settings.loop_window, restored) if restored else None
        if loop is not None:
            skips.append(Skip(rule, pod, f"workload was restored by {loop.name} less than "
                                         f"{int(settings.loop_window)}s ago and upgraded again; "
                                         "left alone to avoid a loop"))
            continue
        orig, sub = _shape(rule.original.resource, snap, pod.node), _shape(rule.substitute.resource, snap, pod.node)
        if orig is None or sub is None:
            continue
        if settings.restore_needs_taker and not _wanted_by_queue(snap, orig, sub) and not _young_and_wasteful(
                snap, pod, orig, sub, settings.restore_young):
            continue
        candidates.append((waste(orig, sub), rule, pod))
    candidates.sort(key=lambda c: (tuple(-x for x in c[0]), c[1].created, c[1].name))
    taken: dict[tuple[str, str], int] = {}
    spare: dict[str, int] = {}
    plans: list[Restore] = []
    for cost, rule, pod in candidates:
        if len(plans) >= budget:
            break
        want = rule.original
        if want.resource not in spare:
            spare[want.resource] = snap.spare(want.resource)
        if spare[want.resource] < want.count and not snap.pending.get(rule.substitute.resource):
            # pods wait for exactly the freed type, and nobody waits for the larger slice this pod
            # holds: the queue gets the freed slice, a restart would gain nothing
            continue
        # prefer the pod's own node (its substitute frees there too), then the fullest node
        holders = sorted(snap.nodes_with_free(want.resource),
                         key=lambda n: (n != pod.node, -snap.nodes[n].used_compute(), n))
        for node in holders:
            if (snap.free(node, want.resource) - taken.get((node, want.resource), 0) >= want.count
                    and _can_run_on(snap, node, pod)):
                taken[(node, want.resource)] = taken.get((node, want.resource), 0) + want.count
                spare[want.resource] -= want.count
                plans.append(Restore(rule, pod, node, cost))
                break
    return plans, skips


def _wanted_by_queue(snap: ClusterSnapshot, original: ProfileShape, freed: ProfileShape) -> bool:
    """Does a pod queued unbound want the ``freed`` slice a restore gives up, one that the ``original``
    slice the restore takes could not give it? (Pods of the original size gain nothing: the restore
    takes their slice and frees a larger one they would take as a substitute.) O(types queued for)."""
    for resource, waiting in snap.pending.items():
        if waiting <= 0:
            continue
        try:
            wanted = resource_shape(resource)
        except ProfileError:
            continue
        if can_substitute(wanted, freed) and not can_substitute(wanted, original):
            return True
    return False


def _young_and_wasteful(snap: ClusterSnapshot, pod: PodInfo, original: ProfileShape, held: ProfileShape,
                        young: float) -> bool:
    """Restore even with no taker: the pod started less than ``young`` ago (little work lost to the restart)
    and holds at least twice the compute it asked for. An unknown start counts as young: the kubelet sets
    ``status.startTime`` before a pod is Running (and only Running pods are restored), so in a cluster this
    is a pod our view has not caught up with; the unit tests' pods carry none."""
    return ((not pod.started or snap.now - pod.started < young)
            and held.compute_slices >= 2 * original.compute_slices)


def expired_rules(snap: ClusterSnapshot) -> list[Rule]:
    """Active rules past their expiry: their reservations are already void; mark them Expired."""
    return [r for r in snap.rules if r.is_expired(snap.now)]


@dataclass(frozen=True)
class RestoreWait:
    """The reservation is younger than ``restore_confirm``: watches may not show it (or a bind racing it)."""

    left: float

    def __str__(self) -> str:
        return f"reservation confirmed in {self.left:.1f}s"


@dataclass(frozen=True)
class RestoreSliceTaken:
    """The reserved original slice is no longer free on ``node``: a pod was bound into it before the
    extender saw the reservation (``free`` counts the reservations, ours included), or the node went away
    or no longer fits the pod. Restarting now would find the type sold out and upgrade it again."""

    node: str
    resource: str
    free: int
    placement: str = ""

    def __str__(self) -> str:
        if self.placement:
            return f"{self.node} no longer fits the pod: {self.placement}"
        return (f"{self.resource} reserved on {self.node} was taken by a pod bound before the reservation was "
                f"seen ({self.free} free after reservations)")


def confirm_restore(rule: Rule, pod: PodInfo, snap: ClusterSnapshot,
                    settings: PlanSettings) -> RestoreWait | RestoreSliceTaken | None:
    """May the Restoring ``rule`` restart its upgraded ``pod`` now? None: yes (reserve first, confirm later).

    Soak D7: the restart used to follow the reservation at once; the extender, whose rule watch had not
    shown the reservation yet, bound another pod into the slice, and the restarted pod found its type sold
    out and was upgraded again. kube-scheduler does the same in two steps: preemption only nominates the
    pod (status.nominatedNodeName, counted for the node by RunFilterPluginsWithNominatedPods in
    pkg/scheduler/framework/runtime/framework.go), and a later cycle re-checks the nominated node first
    (schedulePod -> evaluateNominatedNode, pkg/scheduler/schedule_one.go) before the pod is placed."""
    left = rule.updated + settings.restore_confirm - snap.now
    if left > 0:
        return RestoreWait(left)
    node, want = rule.restore_node, rule.original
    if node not in snap.nodes:
        return RestoreSliceTaken(node, want.resource, 0, placement="node is gone")
    free = snap.free(node, want.resource)
    if free < 0:
        return RestoreSliceTaken(node, want.resource, free)
    if not _can_run_on(snap, node, pod):
        problem = snap.nodes[node].placement_problem(pod.placement)
        return RestoreSliceTaken(node, want.resource, free, placement=str(problem or "cpu/memory taken"))
    return None


@dataclass(frozen=True)
class PodGone:
    """An Applied rule whose pod our watch no longer has: finish it once the API confirms the pod is gone.

    ``pod_uid`` is the bound pod's uid; '' for a rewritten replacement not bound yet, which is recognised
    by the rule name it carries instead (it was never bound, so no uid was recorded)."""

    rule: Rule
    pod_name: str
    pod_uid: str


def rules_whose_pod_is_gone(snap: ClusterSnapshot, pods: Mapping[str, PodInfo], grace: float) -> list[PodGone]:
    """Applied rules whose pod (bound, or rewritten and not yet bound) is missing from ``pods`` ``grace``
    seconds after the rule last changed (soak D3: such a rule stayed Applied for ever, and while unbound
    kept its reservation until its TTL). Never one holding a stash: that bare pod is ours to recreate, and
    never a Restoring rule, whose restart hands it to the replacement. Nothing while the pods are not
    synced (every pod would look gone). The caller confirms each in the API: our watch may lag."""
    if not snap.synced:
        return []
    carried = {(p.namespace, p.rule_name) for p in pods.values() if p.rule_name}
    out = []
    for rule in snap.rules:
        if rule.phase is not Phase.APPLIED or rule.stash or snap.now - rule.updated < grace:
            continue
        if rule.bound_pod and rule.bound_pod not in pods:
            out.append(PodGone(rule, rule.applied_pod, rule.bound_pod))
        elif not rule.bound_pod and (rule.namespace, rule.name) not in carried:
            out.append(PodGone(rule, rule.applied_pod, ""))
    return out


def finished_rules(snap: ClusterSnapshot, retention: float) -> list[Rule]:
    """Rules done (Expired, Restored) for longer than ``retention``: delete them. Never one still holding a
    bare pod's stashed manifest: the pod is deleted already and the stash is all that recreates it."""
    return [r for r in snap.rules
            if r.phase in (Phase.EXPIRED, Phase.RESTORED) and snap.now - r.updated > retention and not r.stash]
