"""MIG-aware priority preemption: which lower-priority pods to evict so a pending MIG pod fits. Pure.

kube-scheduler cannot do this for us: MIG resources are ``ignoredByScheduler``, so its preemption dry run
(``defaultpreemption.SelectVictimsOnNode``) sees every lower-priority pod reprieved, finds no victims and
drops the node. This module makes the same decision with the MIG books, mirroring kube-scheduler v1.36.3
step by step so users get the semantics they know:

* who may preempt: ``DefaultPreemption.PodEligibleToPreemptOthers`` (pkg/scheduler/framework/plugins/
  defaultpreemption/default_preemption.go): not ``preemptionPolicy: Never``, and not while pods it
  already preempted still terminate on its nominated node;
* victims on one node: ``DefaultPreemption.SelectVictimsOnNode``: remove every pod of strictly lower
  priority, check the pod fits, then reprieve (put back) as many as possible, the PDB-violating ones
  first, each group most important first (``util.MoreImportantPod``: priority, then older start);
* PDBs: ``filterPodsWithPDBViolation`` (same file), budgets consumed in importance order;
* the node: ``preemption.pickOneNodeForPreemption`` (pkg/scheduler/framework/preemption/preemption.go):
  fewest PDB violations, lowest highest-victim priority, smallest sum of priorities (each + MaxInt32+1),
  fewest victims, latest start of the highest-priority victims.

What we add, because MIG has substitutes: on each node the pod may also take a compatible larger slice
(``catalog.can_substitute``) when freeing it costs fewer or lower victims by that same order; on a full
tie the pod's own profile wins, then the least waste, then the node that comes first. And where
kube-scheduler dry-runs a random sample of nodes (``GetOffsetAndNumCandidates``), we look at all of
them: the answer is the best by the same order, and deterministic.

``process_preemption`` is the pure core of the extender's ``preempt`` verb (``ProcessPreemption``):
kube-scheduler's candidates (node -> victims chosen for the resources it counts) come in, and per node
the victims needed so the MIG slices fit too go out; nodes where MIG can never fit are dropped.

Must not: talk to the API, read the clock, or import flask, kubernetes or cachetools. Acting on a plan
(the DisruptionTarget condition, the delete, Events, the reservation) belongs to the cluster and
component layers; see docs/preemption.md.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .catalog import ProfileError, ProfileShape, can_substitute, canonical_shape, waste
from .placement import requirement_matches
from .planner import PlanSettings, substitution_blocker
from .resources import PodInfo, ResourceCount
from .rules import ACTIVE_PHASES
from .snapshot import ClusterSnapshot, NodeInfo

# pickOneNodeForPreemption adds MaxInt32+1 to every priority before summing, so that a node with a few
# negative-priority victims is not preferred over one with fewer victims of the same priority.
_PRIORITY_OFFSET = 2**31
PREEMPT_NEVER = "Never"

NodeOk = Callable[[PodInfo, str], bool]
_DEFAULTS = PlanSettings()


# --------------------------------------------------------------------------------------------------
# Reasons


class NoPlanReason(str, Enum):
    """Why no preemption is planned for a pod."""

    NOT_A_MIG_POD = "pod asks for no MIG slices"
    UNREADABLE_DEMAND = "pod's MIG request cannot be read"
    NOT_PENDING = "pod is already bound to a node"
    POLICY_NEVER = "not eligible due to preemptionPolicy=Never"
    VICTIMS_TERMINATING = "not eligible due to a terminating pod on the nominated node"
    FITS_WITHOUT_PREEMPTION = "fits without preemption"
    NO_CANDIDATE = "preemption is not helpful for scheduling"

    def __str__(self) -> str:
        return self.value


class NodeVerdict(str, Enum):
    """Why one node is no preemption candidate for a pod."""

    UNKNOWN_NODE = "node not in mig-extender's inventory"
    UNSCHEDULABLE = "node is unschedulable"
    CONSTRAINTS = "pod's other constraints do not hold on this node"
    NO_SUCH_SLICES = "node has no slice of the requested profile or a compatible one"
    NO_LOWER_PRIORITY_PODS = "no preemption victims found for incoming pod"
    NOT_ENOUGH = "not enough slices even with every lower-priority pod evicted"
    FITS_NOW = "fits without preemption"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class NoPlan:
    """No preemption for the pod; ``nodes`` says per node why it is no candidate."""

    reason: NoPlanReason
    nodes: Mapping[str, NodeVerdict] = field(default_factory=dict)
    fits_on: str = ""  # FITS_WITHOUT_PREEMPTION: a node where it fits (own profile or a free substitute)

    def __str__(self) -> str:
        return str(self.reason) + (f" (on {self.fits_on})" if self.fits_on else "")


# --------------------------------------------------------------------------------------------------
# Pod disruption budgets


@dataclass(frozen=True)
class DisruptionBudgets:
    """PodDisruptionBudgets as preemption reads them: what each still allows and which pods each covers.

    ``allowed[i]`` is PDB i's ``status.disruptionsAllowed``; ``covers[uid]`` the PDBs that select the pod
    with that uid and do not list it in ``status.disruptedPods`` (the API server already counted it).
    Built by ``budgets_from_objects``; a pure value so the caller can build it from its informers.
    """

    allowed: tuple[int, ...] = ()
    covers: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


NO_BUDGETS = DisruptionBudgets()
_OPERATORS_WITH_VALUES = frozenset({"In", "NotIn"})
_OPERATORS_WITHOUT_VALUES = frozenset({"Exists", "DoesNotExist"})


def pdb_selects(selector: Any, labels: Mapping[str, str]) -> bool:
    """Does a PDB's ``spec.selector`` select a pod with ``labels``, as kube-scheduler's preemption reads it?

    filterPodsWithPDBViolation: a nil or empty selector selects nothing (unlike the disruption
    controller), an invalid one (``metav1.LabelSelectorAsSelector`` fails: unknown operator, In/NotIn
    without values, Exists/DoesNotExist with values) selects nothing, and a pod without labels is never
    selected.
    """
    if not labels or not isinstance(selector, Mapping):
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not isinstance(match_labels, Mapping) or not isinstance(expressions, list):
        return False
    if not match_labels and not expressions:
        return False
    for expr in expressions:
        if not isinstance(expr, Mapping):
            return False
        op, values = expr.get("operator"), expr.get("values") or []
        if op in _OPERATORS_WITH_VALUES and not values:
            return False
        if op in _OPERATORS_WITHOUT_VALUES and values:
            return False
        if op not in _OPERATORS_WITH_VALUES and op not in _OPERATORS_WITHOUT_VALUES:
            return False
    return (all(labels.get(k) == v for k, v in match_labels.items())
            and all(requirement_matches(e, labels) for e in expressions))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def budgets_from_objects(pdbs: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> DisruptionBudgets:
    """PDB and pod JSON (``kubectl get pdb,pods -o json`` items) -> DisruptionBudgets. O(pods x PDBs)."""
    pdb_list = [p for p in pdbs if isinstance(p, Mapping)]
    allowed = []
    for pdb in pdb_list:
        value = _mapping(pdb.get("status")).get("disruptionsAllowed", 0)
        allowed.append(value if isinstance(value, int) and not isinstance(value, bool) else 0)
    covers: dict[str, tuple[int, ...]] = {}
    for pod in pods:
        meta = _mapping(pod.get("metadata"))
        labels = _mapping(meta.get("labels"))
        uid, name, namespace = str(meta.get("uid") or ""), meta.get("name"), meta.get("namespace") or "default"
        found = []
        for i, pdb in enumerate(pdb_list):
            pmeta, status = _mapping(pdb.get("metadata")), _mapping(pdb.get("status"))
            if (pmeta.get("namespace") or "default") != namespace:
                continue
            if not pdb_selects(_mapping(pdb.get("spec")).get("selector"), labels):
                continue
            if name in _mapping(status.get("disruptedPods")):
                continue  # already processed by the API server: not a new violation
            found.append(i)
        if found and uid:
            covers[uid] = tuple(found)
    return DisruptionBudgets(tuple(allowed), covers)


def split_by_pdb(pods: Sequence[PodInfo], budgets: DisruptionBudgets) -> tuple[list[PodInfo], list[PodInfo]]:
    """(violating, non-violating) as filterPodsWithPDBViolation: stable, budgets consumed in ``pods`` order.

    A pod decrements every PDB that covers it; it violates when any of them drops below zero.
    """
    left = list(budgets.allowed)
    violating, fine = [], []
    for pod in pods:
        violates = False
        for i in budgets.covers.get(pod.uid, ()):
            left[i] -= 1
            violates = violates or left[i] < 0
        (violating if violates else fine).append(pod)
    return violating, fine


# --------------------------------------------------------------------------------------------------
# Importance and the candidate order


def start_time(pod: PodInfo, now: float) -> float:
    """util.GetPodStartTime: a pod without status.startTime (assumed, not started) counts as starting now."""
    return pod.started if pod.started > 0 else now


def importance(pod: PodInfo, now: float) -> tuple[int, float, str, str]:
    """Sort key, most important first: util.MoreImportantPod (higher priority, then older start).

    The names only make the order total (kube-scheduler's sort.Slice leaves such ties unspecified).
    """
    return -pod.priority, start_time(pod, now), pod.namespace, pod.name


def candidate_order(victims: Sequence[PodInfo], pdb_violations: int, now: float) -> tuple[int, int, int, int, float]:
    """pickOneNodeForPreemption's criteria as one ascending key; ``victims`` most important first.

    1. fewest PDB violations, 2. lowest highest-victim priority, 3. smallest sum of priorities (each plus
    MaxInt32+1), 4. fewest victims, 5. latest earliest-start among the highest-priority victims
    (util.GetEarliestPodStartTime), negated so that smaller is better.
    """
    highest = victims[0].priority
    earliest = min(start_time(p, now) for p in victims if p.priority == highest)
    total = sum(p.priority + _PRIORITY_OFFSET for p in victims)
    return pdb_violations, highest, total, len(victims), -earliest


# --------------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class PreemptionPlan:
    """Evict ``victims`` from ``node`` so ``pod`` fits there, taking ``take`` (resource -> slices).

    ``victims`` are most important first (the order kube-scheduler keeps in extenderv1.Victims);
    ``substitute`` is set when the pod will run on a compatible larger slice instead of its own.
    """

    pod: PodInfo
    node: str
    victims: tuple[PodInfo, ...]
    pdb_violations: int
    take: Mapping[str, int]
    substitute: ResourceCount | None = None
    candidates: int = 1  # nodes where a preemption would have worked (for logs and metrics)

    @property
    def to_delete(self) -> tuple[PodInfo, ...]:
        """Victims to delete; already terminating ones are skipped, as prepareCandidate does."""
        return tuple(p for p in self.victims if not p.terminating)


@dataclass(frozen=True)
class _Option:
    """One way to run the pod on a node: its own demand, or ``count`` slices of a substitute."""

    take: Mapping[str, int]
    substitute: ResourceCount | None = None
    waste: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class _Candidate:
    node: str
    victims: tuple[PodInfo, ...]
    pdb_violations: int
    option: _Option


def _own_option(pod: PodInfo, info: NodeInfo) -> _Option | None:
    if any(info.allocatable.get(r, 0) <= 0 for r in pod.demand):
        return None
    return _Option(dict(pod.demand))


def _substitute_options(pod: PodInfo, info: NodeInfo, snap: ClusterSnapshot,
                        claimed: Callable[[str, int], bool]) -> list[_Option]:
    """Compatible larger slices on ``info``; none for a pod that may not be substituted."""
    want = pod.single_demand
    assert want is not None
    try:
        requested: ProfileShape = canonical_shape(want.resource, info.gpu)
    except ProfileError:
        return []
    out = []
    for resource, offered in info.shapes.items():
        if resource == want.resource or not can_substitute(requested, offered) or claimed(resource, want.count):
            continue
        out.append(_Option({resource: want.count}, ResourceCount(resource, want.count), waste(requested, offered)))
    return out


def _select_victims(pod: PodInfo, node: str, option: _Option, snap: ClusterSnapshot,
                    violating: Sequence[PodInfo], fine: Sequence[PodInfo],
                    forced: Sequence[PodInfo] = ()) -> tuple[tuple[PodInfo, ...], int] | NodeVerdict:
    """SelectVictimsOnNode over the MIG books for one option: (victims, PDB violations) or why not.

    ``violating`` and ``fine`` are the node's lower-priority pods split by split_by_pdb, each most
    important first; ``forced`` are victims already decided (kube-scheduler's, in the preempt verb),
    whose slices count as freed and which are never reprieved. Reprieve order: violating first,
    then the rest, so PDB-protected pods are kept whenever the fit allows.
    """
    deficit = {r: n - snap.free(node, r, pod) - sum(v.demand.get(r, 0) for v in forced)
               for r, n in option.take.items()}
    if all(d <= 0 for d in deficit.values()):
        return NodeVerdict.FITS_NOW
    freed = {r: sum(v.demand.get(r, 0) for v in (*violating, *fine)) for r in deficit}
    if any(freed[r] < d for r, d in deficit.items()):
        return NodeVerdict.NOT_ENOUGH
    victims: list[PodInfo] = []
    violations = 0
    for group, violates in ((violating, True), (fine, False)):
        for p in group:
            if all(freed[r] - p.demand.get(r, 0) >= d for r, d in deficit.items()):
                for r in deficit:  # reprieved: it keeps its slices
                    freed[r] -= p.demand.get(r, 0)
            else:
                victims.append(p)
                violations += violates
    return tuple(victims), violations


def _lower_priority(pod: PodInfo, pods: Iterable[PodInfo], now: float, exclude: Collection[str] = ()) -> list[PodInfo]:
    """Pods on a node that ``pod`` may preempt (strictly lower priority, holding slices), most important first.

    Terminating pods are included, as in kube-scheduler's NodeInfo: they still hold their slices.
    """
    found = [p for p in pods
             if p.priority < pod.priority and p.holds_slices and p.uid != pod.uid and p.uid not in exclude]
    found.sort(key=lambda p: importance(p, now))
    return found


def _eligibility(pod: PodInfo, pods_by_node: Mapping[str, Sequence[PodInfo]], nominated: str,
                 preempted: Collection[str]) -> NoPlanReason | None:
    """PodEligibleToPreemptOthers, plus what makes a pod no MIG preemptor at all."""
    if pod.problems:
        return NoPlanReason.UNREADABLE_DEMAND
    if not pod.wants_mig:
        return NoPlanReason.NOT_A_MIG_POD
    if pod.node:
        return NoPlanReason.NOT_PENDING
    if pod.preemption_policy == PREEMPT_NEVER:
        return NoPlanReason.POLICY_NEVER
    if nominated:
        for p in pods_by_node.get(nominated, ()):
            if p.priority < pod.priority and p.terminating and p.uid in preempted:
                return NoPlanReason.VICTIMS_TERMINATING
    return None


class _Claims:
    """Substitute types whose free slices pending pods of exactly that type wait for (see choose_substitute)."""

    def __init__(self, snap: ClusterSnapshot) -> None:
        self.snap = snap
        self.spare: dict[str, int] = {}

    def __call__(self, resource: str, count: int) -> bool:
        if not self.snap.pending.get(resource):
            return False
        if resource not in self.spare:
            self.spare[resource] = self.snap.spare(resource)
        return self.spare[resource] < count


def _node_candidates(pod: PodInfo, node: str, snap: ClusterSnapshot, lower: Sequence[PodInfo],
                     budgets: DisruptionBudgets, substitutes: bool, claims: _Claims,
                     forced: Sequence[PodInfo] = ()) -> list[_Candidate] | NodeVerdict:
    """Every option's victim set on ``node`` (or why there is none); FITS_NOW if one needs no victim."""
    info = snap.nodes[node]
    options = [o for o in (_own_option(pod, info),) if o is not None]
    if substitutes:
        options += _substitute_options(pod, info, snap, claims)
    if not options:
        return NodeVerdict.NO_SUCH_SLICES
    ordered = sorted((*forced, *lower), key=lambda p: importance(p, snap.now))
    violating, fine = split_by_pdb(ordered, budgets)
    forced_uids = {p.uid for p in forced}
    forced_violating = sum(1 for p in violating if p.uid in forced_uids)
    violating = [p for p in violating if p.uid not in forced_uids]
    fine = [p for p in fine if p.uid not in forced_uids]
    found: list[_Candidate] = []
    verdict = NodeVerdict.NOT_ENOUGH if (lower or forced) else NodeVerdict.NO_LOWER_PRIORITY_PODS
    for option in options:
        chosen = _select_victims(pod, node, option, snap, violating, fine, forced)
        if chosen is NodeVerdict.FITS_NOW:
            if not forced:
                return NodeVerdict.FITS_NOW
            chosen = ((), 0)
        if isinstance(chosen, NodeVerdict):
            continue
        added, violations = chosen
        victims = tuple(sorted((*forced, *added), key=lambda p: importance(p, snap.now)))
        if victims:
            found.append(_Candidate(node, victims, violations + forced_violating, option))
    return found or verdict


def _rank(c: _Candidate, now: float, index: int) -> tuple:
    """candidate_order, then ours: own profile before a substitute, least waste, the first node."""
    return (*candidate_order(c.victims, c.pdb_violations, now), c.option.substitute is not None,
            c.option.waste, index)


def plan_preemption(pod: PodInfo, snap: ClusterSnapshot, pods_by_node: Mapping[str, Sequence[PodInfo]],
                    budgets: DisruptionBudgets = NO_BUDGETS, node_ok: NodeOk = lambda pod, node: True,
                    settings: PlanSettings = _DEFAULTS, nominated: str = "",
                    preempted: Collection[str] = frozenset(),
                    candidates: Iterable[str] | None = None) -> PreemptionPlan | NoPlan:
    """The node and the fewest, least important victims whose eviction lets pending ``pod`` run there.

    ``pods_by_node``: every pod bound to each node (all of them, not only MIG ones: PDB budgets are
    consumed by every potential victim, as in kube-scheduler). ``node_ok(pod, node)``: the pod's other
    constraints (selectors, taints, CPU), which the snapshot does not model. ``nominated`` and
    ``preempted`` (uids of pods terminating because of a preemption, i.e. with the DisruptionTarget
    condition) make a pod wait for its earlier victims instead of preempting again. ``candidates``:
    the nodes to consider (default every node of the snapshot, in its order).

    Returns NoPlan(FITS_WITHOUT_PREEMPTION) when some node already fits the pod or has a compatible
    substitute free: then filter or substitution is the answer, not eviction.
    """
    reason = _eligibility(pod, pods_by_node, nominated, preempted)
    if reason is not None:
        return NoPlan(reason)
    substitutes = not substitution_blocker(pod, settings)
    claims = _Claims(snap)
    verdicts: dict[str, NodeVerdict] = {}
    best: tuple[tuple, _Candidate] | None = None
    count = 0
    for index, node in enumerate(snap.nodes if candidates is None else candidates):
        verdict = _node_verdict(pod, node, snap, node_ok)
        if verdict is not None:
            verdicts[node] = verdict
            continue
        lower = _lower_priority(pod, pods_by_node.get(node, ()), snap.now)
        found = _node_candidates(pod, node, snap, lower, budgets, substitutes, claims)
        if found is NodeVerdict.FITS_NOW:
            return NoPlan(NoPlanReason.FITS_WITHOUT_PREEMPTION, fits_on=node)
        if isinstance(found, NodeVerdict):
            verdicts[node] = found
            continue
        count += 1
        for c in found:
            rank = _rank(c, snap.now, index)
            if best is None or rank < best[0]:
                best = (rank, c)
    if best is None:
        return NoPlan(NoPlanReason.NO_CANDIDATE, verdicts)
    c = best[1]
    return PreemptionPlan(pod, c.node, c.victims, c.pdb_violations, c.option.take, c.option.substitute, count)


def _node_verdict(pod: PodInfo, node: str, snap: ClusterSnapshot, node_ok: NodeOk) -> NodeVerdict | None:
    info = snap.nodes.get(node)
    if info is None:
        return NodeVerdict.UNKNOWN_NODE
    if not info.schedulable:
        return NodeVerdict.UNSCHEDULABLE
    if not node_ok(pod, node):
        return NodeVerdict.CONSTRAINTS
    return None


@dataclass(frozen=True)
class PreemptionSettings:
    """How the reconciler preempts for pending MIG pods. Times in seconds."""

    enabled: bool = True            # False (--no-preemption): MIG pods never preempt (pre-issue-14 behaviour)
    per_pass: int = 4               # preemptions one reconciler pass may start (as restores are limited)
    reservation_margin: float = 60.0  # a hold lasts the victims' longest grace period plus this, then expires:
                                      # time for the kubelet to finish them and the scheduler's backoff (<= 10 s)


def preemptors(snap: ClusterSnapshot, pods: Iterable[PodInfo]) -> list[PodInfo]:
    """Pending MIG pods the reconciler may preempt for, highest priority first, then oldest.

    Only pods a scheduler already found unschedulable (PodScheduled=False/Unschedulable: preemption is
    kube-scheduler's PostFilter, after a failed cycle), that outrank some slice holder, are offered to a
    scheduler (not gated) and have no live rule of their own (a hold, or a substitution under way).
    O(pods): for the reconciler's pass, never /filter.
    """
    found = []
    for pod in pods:
        if (not pod.wants_mig or pod.node or pod.terminating or pod.gated or pod.phase != "Pending"
                or not pod.unschedulable or pod.priority <= snap.lowest_priority):
            continue
        rule = snap.rule_for(pod)
        if rule is not None and rule.pod_uid == pod.uid and rule.phase in ACTIVE_PHASES \
                and not rule.is_expired(snap.now):
            continue
        found.append(pod)
    found.sort(key=lambda p: (-p.priority, p.created, p.namespace, p.name))
    return found


def pods_by_node(pods: Iterable[PodInfo]) -> dict[str, list[PodInfo]]:
    """node -> the pods holding slices on it (what preemption may free)."""
    out: dict[str, list[PodInfo]] = {}
    for pod in pods:
        if pod.holds_slices:
            out.setdefault(pod.node, []).append(pod)
    return out


class Deletion(str, Enum):
    """What became of deleting one preemption victim (the reconciler counts these)."""

    DELETED = "deleted"        # DisruptionTarget set, DELETE accepted (its own grace period applies)
    GONE = "gone"              # already gone or replaced (404, or 409 on the uid precondition): nothing to do
    THROTTLED = "throttled"    # 429 (API priority and fairness): retried next pass, the hold stays

    def __str__(self) -> str:
        return self.value


DISRUPTION_REASON = "PreemptionByScheduler"
DISRUPTION_MESSAGE = "mig-scheduler: preempting to accommodate a higher priority pod"


# --------------------------------------------------------------------------------------------------
# The extender's preempt verb


@dataclass(frozen=True)
class Victims:
    """extenderv1.Victims: the pods to evict on one node (most important first) and their PDB violations."""

    pods: tuple[PodInfo, ...]
    pdb_violations: int = 0
    substitute: ResourceCount | None = None  # MIG runs on this compatible slice instead of the pod's own


@dataclass(frozen=True)
class PreemptAnswer:
    """The preempt verb's decision: victims per kept node, and why the other nodes were dropped."""

    nodes: Mapping[str, Victims]
    dropped: Mapping[str, NodeVerdict] = field(default_factory=dict)
    error: str = ""  # the request could not be evaluated


def process_preemption(pod: PodInfo, proposed: Mapping[str, Victims], snap: ClusterSnapshot,
                       pods_by_node: Mapping[str, Sequence[PodInfo]], budgets: DisruptionBudgets = NO_BUDGETS,
                       settings: PlanSettings = _DEFAULTS) -> PreemptAnswer:
    """kube-scheduler's candidates -> the victims each node needs so the pod's MIG slices fit too.

    kube-scheduler's victims stay (it needs them for what it counts: CPU, memory, in-tree filters);
    the lower-priority pods whose MIG slices must go too are added, chosen by the same reprieve as
    SelectVictimsOnNode, and the victims re-sorted most important first (pickOneNodeForPreemption
    reads the first as the highest priority). A node whose MIG books we lack, or where the slices
    cannot be freed even by evicting every lower-priority pod, is dropped: the extender must never
    return a node it was not given, and kube-scheduler rejects a node with no victims
    (Evaluator.callExtenders). A node needing no extra victim keeps kube-scheduler's answer unchanged.
    """
    if pod.problems:
        return PreemptAnswer({}, error="; ".join(pod.problems))
    if not pod.wants_mig:
        return PreemptAnswer(dict(proposed))
    substitutes = not substitution_blocker(pod, settings)
    claims = _Claims(snap)
    nodes: dict[str, Victims] = {}
    dropped: dict[str, NodeVerdict] = {}
    for node, given in proposed.items():
        if node not in snap.nodes:
            dropped[node] = NodeVerdict.UNKNOWN_NODE
            continue
        forced = {p.uid: p for p in given.pods}
        lower = _lower_priority(pod, pods_by_node.get(node, ()), snap.now, exclude=forced)
        found = _node_candidates(pod, node, snap, lower, budgets, substitutes, claims, tuple(forced.values()))
        if isinstance(found, NodeVerdict):
            dropped[node] = found
            continue
        best = min(enumerate(found), key=lambda ic: _rank(ic[1], snap.now, ic[0]))[1]
        if len(best.victims) == len(given.pods) and best.option.substitute is None:
            nodes[node] = given  # nothing to add: kube-scheduler's victims and PDB count stand
        else:
            nodes[node] = Victims(best.victims, best.pdb_violations, best.option.substitute)
    return PreemptAnswer(nodes, dropped)
