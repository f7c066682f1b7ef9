"""An immutable view of the cluster's MIG capacity: what every decision reads. Pure.

A snapshot holds, per node, allocatable and used slices of each ``nvidia.com/mig-*`` resource (and who
holds them, by pod priority, for what preemption could free), the reservations of active substitution
rules, the cordoned nodes, and an index from resource to the schedulable nodes that still have some
free, so a filter call costs O(candidate nodes), never O(pods). It is built by
``inventory.ClusterInventory`` (live cluster) or from a ``kubectl get nodes,pods -o json`` file, and
never changes once built: one request reads one snapshot from start to end.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, ClassVar

from .catalog import MODELS, GpuModel, ProfileError, canonical_shape, match_product, resource_profile_name
from .placement import NodeFacts, Placement, placement_problem
from .resources import PodInfo, ResourceCount
from .rulebook import RuleBook
from .rules import Rule, restart_parents, restore_claims, restore_order

LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"  # MiB, per GPU
LABEL_COUNT = "nvidia.com/gpu.count"

EMPTY: Mapping[str, int] = MappingProxyType({})
EMPTY_TEXT: Mapping[str, str] = MappingProxyType({})
# ClusterSnapshot.lowest_priority when no pod holds a slice: above any pod priority (an int32), so no pod
# outranks it and no filter looks for lower-priority holders
NO_HOLDER = 2**31


@dataclass(frozen=True)
class UnknownGpu:
    """A node with MIG slices whose GPU the catalog does not know (decisions then read each slice's
    shape from its resource name, and the tables of ``guessed``, if any, for aliases)."""

    reason: ClassVar[str] = "MigGpuUnknown"  # of the node Event that reports it
    product: str           # the nvidia.com/gpu.product label, "" when the node has none
    memory_gb: int | None  # what the labels say, None when they do not
    guessed: str | None    # the catalog model whose profiles match the node's resources, if one does

    def __str__(self) -> str:
        gpu = f"GPU {self.product!r}" if self.product else "a GPU without a nvidia.com/gpu.product label"
        size = f" ({self.memory_gb} GB)" if self.memory_gb else ""
        then = f"using the profiles of {self.guessed}, which match its MIG resources" if self.guessed else \
            "its MIG resources are read by their names alone"
        return f"{gpu}{size} is not in the MIG catalog (mig-extender profiles lists it); {then}"


@dataclass(frozen=True)
class ForeignMigResources:
    """MIG resources that are not profiles of the node's (known) GPU model."""

    reason: ClassVar[str] = "MigProfilesNotOfModel"
    model: str
    resources: tuple[str, ...]

    def __str__(self) -> str:
        return (f"{', '.join(self.resources)} {'is not a profile' if len(self.resources) == 1 else 'are not profiles'}"
                f" of {self.model} (from its nvidia.com/gpu.product label); check the label and the MIG layout")


GpuProblem = UnknownGpu | ForeignMigResources


@dataclass(frozen=True)
class GpuRecognition:
    """A node's GPU model (None when unknown) and, for a node with MIG slices, what is wrong with it."""

    model: GpuModel | None
    problem: GpuProblem | None = None


def recognise_gpu(labels: Mapping[str, str], mig_resources: Iterable[str] = ()) -> GpuRecognition:
    """The GPU model of a node, from GPU feature discovery labels, else from its MIG resource names.

    ``nvidia.com/gpu.product`` names the family; ``nvidia.com/gpu.memory`` (MiB) or a size in the name
    picks the model (``catalog.match_product``); when that leaves several, the one whose profiles
    include every MIG resource of the node. Without a product label, the first catalog model that
    offers every MIG resource the node advertises is taken. A node with MIG resources gets a problem
    when its product is not in the catalog, or when some resource is not a profile of its model.
    """
    resources = tuple(mig_resources)
    names = _profile_names(resources)
    product = str(labels.get(LABEL_PRODUCT, ""))
    match = match_product(product, labels.get(LABEL_MEMORY))
    offering = [m for m in match.models if _offers_all(m, names)]
    if match.models:
        gpu = (offering or match.models)[0]
        foreign = tuple(r for r in resources if r not in names or gpu.find(names[r]) is None)
        return GpuRecognition(gpu, ForeignMigResources(gpu.name, foreign) if foreign else None)
    guessed = next((m for m in MODELS if _offers_all(m, names)), None) if names else None
    if not resources or (guessed is not None and not product):
        return GpuRecognition(guessed)
    return GpuRecognition(guessed, UnknownGpu(product, match.memory_gb, guessed.name if guessed else None))


def detect_gpu(labels: Mapping[str, str], mig_resources: Iterable[str] = ()) -> GpuModel | None:
    """The model alone (``recognise_gpu`` also says what is wrong)."""
    return recognise_gpu(labels, mig_resources).model


def _profile_names(resources: Iterable[str]) -> dict[str, str]:
    """resource -> profile name, for the well-formed ones."""
    names = {}
    for r in resources:
        try:
            names[r] = resource_profile_name(r)
        except ProfileError:
            continue
    return names


def _offers_all(gpu: GpuModel, names: Mapping[str, str]) -> bool:
    return all(gpu.find(n, strict=True) is not None for n in names.values())


@dataclass(frozen=True)
class NodeInfo:
    """One node's MIG capacity and usage. Immutable: an update builds a new NodeInfo."""

    name: str
    gpu: GpuModel | None
    allocatable: Mapping[str, int] = field(default_factory=dict)
    used: Mapping[str, int] = field(default_factory=dict)
    gpu_count: int = 0
    schedulable: bool = True
    problems: tuple[str, ...] = ()
    facts: NodeFacts | None = None  # labels, taints, cpu/memory: for placement checks (None: unknown, no check)
    # resource -> pod priority -> slices held by bound pods of that priority: what preemption could free
    held_by_priority: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    # the repartition annotations on the Node (core/repartition_change.py), usually none: a change under
    # way holds every MIG slice of the node (ClusterSnapshot.held_nodes)
    repartition: Mapping[str, str] = field(default_factory=lambda: EMPTY_TEXT)

    def free(self, resource: str) -> int:
        """Free slices ignoring reservations (the snapshot adds those)."""
        return self.allocatable.get(resource, 0) - self.used.get(resource, 0)

    @cached_property
    def shapes(self) -> Mapping[str, Any]:
        """Resource -> canonical ProfileShape for this node's GPU (aliases resolved), parsed once."""
        out = {}
        for r in self.allocatable:
            try:
                out[r] = canonical_shape(r, self.gpu)
            except ProfileError:
                continue
        return out  # a plain dict: read-only by convention, ~10x faster to read than a MappingProxyType

    @cached_property
    def scores(self) -> dict[tuple, int]:
        """Scores computed for this node state, by (pod shape, policy): /prioritize asks again for every
        pod and most nodes have not changed since (planner._single_score; issue 19: 27 ms p99 at 5,000
        names before). A node that changes is a new NodeInfo, with an empty memo."""
        return {}

    @cached_property
    def total_compute(self) -> int:
        return sum(self.shapes[r].compute_slices * n for r, n in self.allocatable.items() if r in self.shapes)

    @cached_property
    def busy_compute(self) -> int:
        """Compute slices held by pods (reservations not included): fixed for this NodeInfo."""
        return self.used_compute()

    def held_below(self, resource: str, priority: int) -> int:
        """Slices of ``resource`` held by pods of strictly lower priority than ``priority``: the most a
        preemption for a pod of that priority could free here (kube-scheduler evicts only lower ones)."""
        held = self.held_by_priority.get(resource)
        return sum(n for p, n in held.items() if p < priority) if held else 0

    def placement_problem(self, placement: Placement) -> str:
        """Why a pod with ``placement`` cannot run here apart from MIG ('' when it can, or when unknown)."""
        return placement_problem(placement, self.facts) if self.facts is not None else ""

    def used_compute(self, extra: Mapping[str, int] = EMPTY) -> int:
        return sum(self.shapes[r].compute_slices * (self.used.get(r, 0) + extra.get(r, 0))
                   for r in self.allocatable if r in self.shapes)


class FreeOrder:
    """Per resource, the schedulable nodes with a free slice of it, in the substitute search's order:
    ``(free, idle compute, name)`` ascending, reservations not subtracted (the search corrects the few
    nodes that hold one). Built lazily, once per resource, from nodes that never change: the inventory
    hands the same FreeOrder to every snapshot until a node changes, so a sold-out ``/filter`` reads the
    first few entries instead of every holder (issue 19: 33 ms at 5,000 nodes before).

    The memo is the only mutable part; two threads building the same entry at once both compute the
    same value, so it needs no lock. ``memo=False`` is for the simulator, whose snapshots read live,
    changing nodes: every call sorts afresh.
    """

    __slots__ = ("_allocatable", "_free", "_index", "_nodes", "_orders")

    def __init__(self, nodes: Mapping[str, NodeInfo], free_index: Mapping[str, frozenset[str]],
                 memo: bool = True) -> None:
        self._nodes, self._index = nodes, free_index
        self._orders: dict[str, tuple[tuple[int, int, str], ...]] | None = {} if memo else None
        self._free: dict[str, int] | None = {} if memo else None
        self._allocatable: dict[str, dict[str, int]] | None = {} if memo else None

    def allocatable(self, resource: str) -> Mapping[str, int]:
        """Node name -> allocatable slices of ``resource`` (0 when it has none), for every node: a sold-out
        ``/filter`` reads one number per candidate from here in a C loop (``map(....get, names)``) instead
        of three dict reads per node in Python (issue 19). Without the memo (the simulator's live nodes),
        a view that reads the nodes on each lookup."""
        table = self._allocatable.get(resource) if self._allocatable is not None else None
        if table is None:
            if self._allocatable is None:
                return _AllocatableView(self._nodes, resource)
            table = self._allocatable[resource] = {name: info.allocatable.get(resource, 0)
                                                   for name, info in self._nodes.items()}
        return table

    def of(self, resource: str, at_least: int = 1) -> tuple[tuple[int, int, str], ...]:
        """``(free, idle compute, node)`` of the holders of ``resource``, fewest free first; only those with
        ``at_least`` free (before reservations)."""
        order = self._orders.get(resource) if self._orders is not None else None
        if order is None:
            nodes = self._nodes
            order = tuple(sorted((info.free(resource), info.total_compute - info.busy_compute, name)
                                 for name, info in ((n, nodes[n]) for n in self._index.get(resource, ()))))
            if self._orders is not None:
                self._orders[resource] = order
        return order[bisect_left(order, (at_least,)):] if at_least > 1 else order

    def total_free(self, resource: str) -> int:
        """Free slices of ``resource`` on schedulable nodes, reservations not subtracted."""
        total = self._free.get(resource) if self._free is not None else None
        if total is None:
            total = sum(entry[0] for entry in self.of(resource))
            if self._free is not None:
                self._free[resource] = total
        return total


class _AllocatableView:
    """``FreeOrder.allocatable`` over nodes that may change: reads them on each lookup."""

    __slots__ = ("_nodes", "_resource")

    def __init__(self, nodes: Mapping[str, NodeInfo], resource: str) -> None:
        self._nodes, self._resource = nodes, resource

    def get(self, name: str, default: int | None = None) -> int | None:
        info = self._nodes.get(name)
        return default if info is None else info.allocatable.get(self._resource, 0)


@dataclass(frozen=True)
class ClusterSnapshot:
    """Nodes, rules and reservations at one instant. Build with ``ClusterSnapshot.build``."""

    nodes: Mapping[str, NodeInfo]
    free_index: Mapping[str, frozenset[str]]
    rules: tuple[Rule, ...] = ()
    now: float = 0.0
    synced: bool = True
    reserved: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    rules_by_name: Mapping[str, Rule] = field(default_factory=dict)
    rules_by_pod_uid: Mapping[str, Rule] = field(default_factory=dict)
    # resource -> slices wanted by pods that wait unbound for exactly that type: they have the first claim
    # on a freed slice, before a substitution or a restore takes it
    pending: Mapping[str, int] = field(default_factory=dict)
    # resource -> creationTimestamp (epoch s) of the oldest pod waiting for exactly one slice of it (a pod
    # asking for several waits for a whole node and would stop all aging behind it): a claim by pods
    # younger than the one asking for a substitute does not hold (aging, see planner._claimed_by_queue);
    # a resource missing here claims as before (no ages known)
    pending_since: Mapping[str, float] = field(default_factory=dict)
    # the lowest priority of any pod holding a slice: a pod at or below it can preempt no slice anywhere,
    # so the filter skips every per-node priority lookup (one priority in the cluster: the usual case).
    # NO_HOLDER when unknown (a snapshot built without the inventory): nothing counts as relievable.
    lowest_priority: int = NO_HOLDER
    # names of the cordoned nodes (NodeInfo.schedulable False): usually none, and then the filter reads no
    # node's flag at all
    cordoned: frozenset[str] = frozenset()
    # the substitute search's index over ``nodes`` and ``free_index`` (shared by snapshots of one inventory
    # state); None only while __post_init__ has not made one
    free_order: FreeOrder | None = field(default=None, compare=False, repr=False)
    # uids of the upgraded pods of Restoring rules that are still there and not terminating: not restarted
    # yet, so no new pod can be their replacement (a controller recreates a pod only once it is going).
    # Those restores wait for nobody: a sibling replica created within CLOCK_SKEW of the reservation
    # finished one in a blink, and the upgraded pod was never moved back (soak D8). Causal, not clocked.
    unrestarted: frozenset[str] = frozenset()
    # nodes a repartition holds (annotation mig-extender.io/repartition-change, until the MIG manager
    # reports success: core/repartition_change.holds): every MIG slice there counts as reserved in
    # ``reserved``, so /filter, substitution, restores and preemption leave them alone while the MIG
    # manager works; ``repartitioning`` is every node with a change record (the actuator follows them);
    # ``rules_reserved`` is the rules' share of ``reserved`` alone
    held_nodes: frozenset[str] = frozenset()
    repartitioning: frozenset[str] = frozenset()
    rules_reserved: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # the rule store's book the rules came from (``build``): its restore order and claims are read from
    # it, not computed per snapshot over every rule; None for a snapshot made otherwise
    book: RuleBook | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.free_order is None:
            object.__setattr__(self, "free_order", FreeOrder(self.nodes, self.free_index))

    @classmethod
    def build(cls, nodes: Mapping[str, NodeInfo], free_index: Mapping[str, frozenset[str]] | None = None,
              rules: Iterable[Rule] | RuleBook = (), now: float = 0.0, synced: bool = True,
              pending: Mapping[str, int] | None = None, lowest_priority: int = NO_HOLDER,
              cordoned: frozenset[str] | None = None,
              pending_since: Mapping[str, float] | None = None,
              free_order: FreeOrder | None = None, held_nodes: frozenset[str] = frozenset(),
              repartitioning: frozenset[str] = frozenset(),
              unrestarted: frozenset[str] = frozenset()) -> ClusterSnapshot:
        if free_index is None:
            free_index = build_free_index(nodes.values())
        if cordoned is None:
            cordoned = frozenset(name for name, info in nodes.items() if not info.schedulable)
        book = RuleBook.at(rules, now)  # a rule store's book is reused while it holds (core/rulebook.py)
        by_rules = reserved = book.reserved
        if held_nodes:
            reserved = {**reserved, **_holds(nodes, held_nodes, reserved)}
        return cls(
            nodes=nodes, free_index=free_index, rules=book.rules, now=now, synced=synced, reserved=reserved,
            held_nodes=held_nodes, repartitioning=repartitioning | held_nodes, rules_reserved=by_rules,
            rules_by_name=book.by_name, rules_by_pod_uid=book.by_pod_uid, pending=pending or {},
            pending_since=pending_since or {},
            lowest_priority=lowest_priority, cordoned=cordoned, free_order=free_order, unrestarted=unrestarted,
            book=book,
        )

    def with_rule(self, rule: Rule) -> ClusterSnapshot:
        """This snapshot plus ``rule`` (and its reservation): the reconciler plans the next preemption of
        a pass over the holds made earlier in it, so two preemptors are never promised the same slices."""
        return ClusterSnapshot.build(self.nodes, self.free_index, (*self.rules, rule), self.now, self.synced,
                                     self.pending, self.lowest_priority, self.cordoned,
                                     held_nodes=self.held_nodes, repartitioning=self.repartitioning,
                                     unrestarted=self.unrestarted)

    def rule_reserved(self, node: str) -> Mapping[str, int]:
        """Slices of each resource rules reserve on ``node`` (a repartition's hold not included)."""
        return self.rules_reserved.get(node, EMPTY)

    def free(self, node: str, resource: str, pod: PodInfo | None = None) -> int:
        """Free slices of ``resource`` on ``node`` for ``pod``: reservations of other pods subtracted."""
        info = self.nodes.get(node)
        if info is None:
            return 0
        free = info.free(resource) - self.reserved.get(node, EMPTY).get(resource, 0)
        if pod is not None and self.rules:  # no rules, no reservation of its own (skip rule_for per node)
            own = self.own_reservation(pod)
            if own is not None and own[0] == node and own[1].resource == resource:
                free += own[1].count
        return free

    def own_reservation(self, pod: PodInfo) -> tuple[str, ResourceCount] | None:
        """The reservation made for ``pod`` (its applied upgrade, or the restore waiting for it)."""
        rule = self.rule_for(pod)
        if rule is not None and rule.reserved_for(pod):
            return rule.reservation(self.now)
        return None

    def rule_for(self, pod: PodInfo) -> Rule | None:
        """The rule about ``pod``: by its rule annotation, its uid, or a restore awaiting it."""
        if pod.rule_name and pod.rule_name in self.rules_by_name:
            rule = self.rules_by_name[pod.rule_name]
            if rule.namespace == pod.namespace:
                return rule
        if pod.uid in self.rules_by_pod_uid:
            return self.rules_by_pod_uid[pod.uid]
        if pod.uid in self.restore_claims:  # another rule's pod already: no restore's replacement (soak D4)
            return None
        return first_awaiting(self.restoring, pod)

    @cached_property
    def restoring(self) -> tuple[Rule, ...]:
        """Restoring rules that still reserve, in the order they take new pods (rules.restore_order)."""
        return tuple(r for r in self._restore_order if r.reservation(self.now) and r.bound_pod not in self.unrestarted)

    @cached_property
    def restoring_unrestarted(self) -> tuple[Rule, ...]:
        """Restoring rules that reserve but take nobody yet: their upgraded pod is in ``unrestarted``."""
        return tuple(r for r in self._restore_order if r.bound_pod in self.unrestarted and r.reservation(self.now))

    @property
    def _restore_order(self) -> Sequence[Rule]:
        return self.book.restoring if self.book is not None else restore_order(self.rules)

    def restore_before_restart(self, pod: PodInfo) -> Rule | None:
        """The restore that would take ``pod`` as its replacement once our watch shows the upgraded pod going.
        kube-scheduler may show /filter the replacement first (soak D8): such a pod must wait, not be
        substituted away from the slice reserved for it."""
        if not self.restoring_unrestarted or pod.uid in self.restore_claims:
            return None
        return first_awaiting(self.restoring_unrestarted, pod)

    @cached_property
    def restore_claims(self) -> Collection[str]:
        """Uids of pods some rule counts as its own (rules.restore_claims)."""
        return self.book.claims if self.book is not None else restore_claims(self.rules)

    @cached_property
    def restart_parents(self) -> Mapping[str, tuple[str, float]]:
        """pod uid -> (uid of the pod one of our restarts replaced with it, when): the upgrade's pod ->
        its bound replacement, the upgraded pod -> the replacement that finished its restore. A preemption
        hold's pod is bound as it is (no restart). Read from the book: indexed once per rule-store state."""
        return self.book.restart_parents if self.book is not None else restart_parents(self.rules)

    def lineage_restarts(self, pod: PodInfo, window: float) -> int:
        """Restarts by us in ``pod``'s lineage within ``window`` seconds: the loop guard (soak D7).

        Walks back through the rules (restart_parents); a pod a restore still waits for (its rule has no
        restored_pod yet) descends from that restore's upgraded pod. O(lineage) once the index is built."""
        count, uid, seen = 0, pod.uid, set()
        if uid not in self.restart_parents:
            rule = first_awaiting(self.restoring, pod)
            if rule is not None and pod.uid not in self.restore_claims:
                count += self.now - rule.updated < window
                uid = rule.bound_pod
        while uid in self.restart_parents and uid not in seen:
            seen.add(uid)
            uid, when = self.restart_parents[uid]
            count += self.now - when < window
        return count

    def nodes_with_free(self, resource: str) -> frozenset[str]:
        return self.free_index.get(resource, frozenset())

    def spare(self, resource: str) -> int:
        """Free slices of ``resource`` cluster-wide (after reservations) beyond what pending pods wait for.

        O(reservations) once the free order has the resource's total: the sold-out path asks on every call."""
        holders = self.nodes_with_free(resource)
        free = self.free_order.total_free(resource)
        for node in self.reserved_nodes(resource):
            if node in holders:  # the total counts its free slices whole: count what is left after the reservation
                own = self.nodes[node].free(resource)
                free += max(self.free(node, resource), 0) - own
        return free - self.pending.get(resource, 0)

    def reserved_nodes(self, resource: str) -> list[str]:
        """Nodes where active rules reserve slices of ``resource``: O(nodes with reservations)."""
        return [node for node, held in self.reserved.items() if held.get(resource)]


def _holds(nodes: Mapping[str, NodeInfo], held: frozenset[str],
           by_rules: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Reservations of the held nodes: all their MIG allocatable, plus what rules reserve there, so even
    a pod whose own rule reserves a slice on such a node (its reservation is added back) finds none."""
    out = {}
    for name in held:
        info = nodes.get(name)
        if info is None:
            continue
        rules = by_rules.get(name, EMPTY)
        out[name] = {r: info.allocatable.get(r, 0) + rules.get(r, 0) for r in {*info.allocatable, *rules}}
    return out


def build_free_index(nodes: Iterable[NodeInfo]) -> dict[str, frozenset[str]]:
    index: dict[str, set[str]] = {}
    for info in nodes:
        if not info.schedulable:
            continue
        for r in info.allocatable:
            if info.free(r) > 0:
                index.setdefault(r, set()).add(info.name)
    return {r: frozenset(s) for r, s in index.items()}


def first_awaiting(restores: Iterable[Rule], pod: PodInfo) -> Rule | None:
    """The first of ``restores`` (in restore order) that ``pod`` would finish as its replacement."""
    return next((r for r in restores if r.awaits_restore(pod)), None)
