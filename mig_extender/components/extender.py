"""The extender's use cases, free of HTTP: take one snapshot, ask the planner, keep the books.

``ExtenderService`` is what the Flask blueprint calls (and what a benchmark or test can call
directly): filter records the rule the planner chose, bind assumes the pod in the inventory before
the API confirms it and marks the rule it used. Talking to the API goes through an injected
``Binder`` and ``RuleStore``; nothing here imports flask or kubernetes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from cachetools import TTLCache

from ..cluster.apierrors import api_failure
from ..cluster.inventory import ClusterInventory
from ..cluster.rulestore import RuleStore, update_with_retry
from ..core.planner import NOT_SYNCED, FilterDecision, PlanSettings, expired_rules, filter_pod, score_nodes
from ..core.preemption import NO_BUDGETS, PreemptAnswer, Victims, pods_by_node, process_preemption
from ..core.resources import PodInfo, pod_info
from ..core.rules import Phase, Rule
from ..core.snapshot import ClusterSnapshot
from .metrics import Metrics

if TYPE_CHECKING:  # the book's module imports the kubernetes client; this one needs only its type
    from ..cluster.drainventory import DraInventory

log = logging.getLogger(__name__)


def readiness_problems(inventory: ClusterInventory | None, store: RuleStore,
                       checks: list[Callable[[], str]]) -> list[str]:
    """What keeps a component from answering correctly: caches not synced, or a failing extra check."""
    problems = [] if inventory is None or inventory.synced else ["node/pod inventory not synced"]
    if not store.synced:
        problems.append("rule store not synced")
    problems.extend(p for p in (check() for check in checks) if p)
    return problems


class Binder(Protocol):
    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Create the pod's Binding; raise on failure. An exception with an int ``status`` (the API
        server's answer) means the Binding was refused; any other means its outcome is unknown."""
        ...


class BindError(RuntimeError):
    """The Binding could not be created."""


class BindConflict(BindError):
    """The node no longer has room for the pod (another bind won the last slice)."""


class NotReady(BindError):
    """The caches have not synced since start: the node's free slices are unknown, so nothing is bound."""


@dataclass(frozen=True)
class Explanation:
    """What /debug/pods/<ns>/<name> shows: the pod as the extender knows it, its rules, and what /filter
    would decide for it now over every known node (computed, never recorded)."""

    pod: PodInfo
    source: str                 # "inventory" (the watch), or "filter-cache" (seen only by /filter so far)
    rules: tuple[Rule, ...]     # every rule about the pod, any phase, oldest first
    nodes: tuple[str, ...]      # the nodes the dry run was asked about: all in the inventory
    decision: FilterDecision
    now: float


def rule_concerns(rule: Rule, pod: PodInfo) -> bool:
    """Is ``rule`` about ``pod``: recorded for it, applied to or bound as it, or named on it."""
    if rule.namespace != pod.namespace:
        return False
    return (rule.name == pod.rule_name or pod.uid in (rule.pod_uid, rule.bound_pod, rule.restored_pod)
            or pod.name in (rule.pod_name, rule.applied_pod))


FILTERED_PODS = 20_000  # pods between their /filter and their /bind, kept at most...
FILTERED_TTL = 300.0    # ...this long (a scheduling cycle takes milliseconds; retries filter again)
READ_PODS = 1_000       # pods read by /filter kept for their /prioritize (one cycle at a time, a few in flight)...
READ_TTL = 30.0         # ...this long
UNSTORED_RULES = 10_000  # rule transitions the API could not take, tried again by housekeeping...
UNSTORED_TTL = 300.0     # ...this long (the reconciler's leader records them too, once it sees the pods)


def _version(pod_obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(uid, resourceVersion) of a pod object, None when either is missing (then it is read every time)."""
    meta = pod_obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    uid, version = meta.get("uid"), meta.get("resourceVersion")
    return (uid, version) if isinstance(uid, str) and uid and isinstance(version, str) and version else None


class ExtenderService:
    def __init__(self, inventory: ClusterInventory, store: RuleStore, plan: PlanSettings,
                 metrics: Metrics | None = None, binder: Binder | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.inventory = inventory
        self.store = store
        self.plan = plan
        self.metrics = metrics or Metrics()
        self.binder = binder
        self.clock = clock
        # extra readiness checks from the edges (e.g. "watch stale for 45 s"); each returns "" when fine
        self.checks: list[Callable[[], str]] = []
        self._commit = threading.Lock()  # check-and-assume of binds
        # the clock read and the rule book asked for it, in one order: a request thread that read its clock
        # first but reached the store second asked for a time before the store's cached book, and the store
        # indexed every rule again for it (O(rules) under the store's lock; issue 19)
        self._book_order = threading.Lock()
        # uid -> PodInfo of MIG pods seen by /filter: /bind carries only names, and the watch may not have
        # delivered a just-created pod yet (a loaded API server lags by seconds). Without this, such a bind
        # went through unchecked and unassumed, and the next filter offered the same slice again.
        self._filtered: TTLCache[str, PodInfo] = TTLCache(maxsize=FILTERED_PODS, ttl=FILTERED_TTL)
        # (uid, resourceVersion) -> the pod as /filter read it: /prioritize of the same scheduling cycle
        # gets the very same object (an object's content at one resourceVersion never changes)
        self._read: TTLCache[tuple[str, str], PodInfo] = TTLCache(maxsize=READ_PODS, ttl=READ_TTL)
        self._filtered_lock = threading.Lock()
        # (namespace, rule name) -> (the rule as read, the change, its event): transitions the API could not
        # take on a verb's path, written again by housekeeping (retry_unstored). Until a 5xx stopped
        # being the answer, kube-scheduler's retries of the pod wrote them again; the reconciler's leader
        # may be recovering from the same outage, and a rule left Recorded under its bound pod can be
        # handed by the webhook to a second new pod of the workload once its claim lapses.
        self._unstored: TTLCache[tuple[str, str], tuple[Rule, Callable[[Rule], Rule], str]] = TTLCache(
            maxsize=UNSTORED_RULES, ttl=UNSTORED_TTL)
        self._unstored_lock = threading.Lock()
        self.expire_rules = True
        self.dra: DraInventory | None = None  # MIG devices served by DRA, for /debug/inventory (None: not watched)
        # names of the watches (nodes, pods, rules) cut off or just back, whose books may be behind the API:
        # no MIG pod is bound meanwhile (process.build_service wires the informers in)
        self.watch_gaps: Callable[[], list[str]] = list

    def snapshot(self) -> ClusterSnapshot:
        """The inventory with the stored rules; not ``synced`` until the rule store is synced too (without
        its reservations a promised slice would look free)."""
        with self._book_order:
            now = self.clock()
            book = self.store.book(now)
        snap = self.inventory.snapshot(book, now)
        return snap if self.store.synced or not snap.synced else replace(snap, synced=False)

    def readiness_problems(self) -> list[str]:
        return readiness_problems(self.inventory, self.store, self.checks)

    def filter(self, pod_obj: Mapping[str, Any], candidates: Sequence[str]) -> FilterDecision:
        pod = pod_info(pod_obj)
        if not pod.wants_mig and not pod.problems:
            return FilterDecision(passed=tuple(candidates))  # zero work for pods without MIG
        if pod.uid and not pod.problems:
            version = _version(pod_obj)
            with self._filtered_lock:
                self._filtered[pod.uid] = pod
                if version is not None:
                    self._read[version] = pod
        snap = self.snapshot()
        decision = filter_pod(pod, candidates, snap, self.plan)
        if decision.record is not None:
            try:
                stored = self.store.record(decision.record)
            except Exception as exc:  # API unreachable: still answer from the cache, promise nothing
                log.warning("rule for pod %s not recorded (%s); the pod waits for the next scheduling attempt",
                            pod.key, exc)
                self.metrics.rules.labels("record_failed").inc()
                return replace(decision, record=None,
                               note=f"substitute {decision.record.substitute.resource} available, but the rule "
                                    "could not be stored (API unreachable); will retry")
            self.metrics.rules.labels("recorded").inc()
            log.info("rule %s/%s: %s for pod %s -> %s on %s", stored.namespace, stored.name, stored.original,
                     pod.key, stored.substitute, stored.node)
        if decision.apply is not None:
            self._transition(decision.apply, lambda r: r.applied(pod.name, self.clock(), self.plan.rule_ttl), "applied")
        if decision.cancel is not None:
            self._finish(decision.cancel, "cancelled")
        return decision

    def housekeeping(self) -> None:
        """Forget binds the API never confirmed; write again the rule transitions the API could not take on
        a verb's path (``retry_unstored``); mark rules past their expiry Expired when this process
        owns the rules' life cycle (``expire_rules``: in-memory rules). With rules in the API the
        reconciler's leader does it: an expired rule's reservation is void by time already, and every
        extender replica writing the same transition would only collide."""
        self.inventory.expire_assumed()
        if self.expire_rules:
            for rule in expired_rules(self.snapshot()):
                self._finish(rule, "expired")
        self.retry_unstored()

    def retry_unstored(self) -> None:
        """Write again each transition the API could not take, while its rule is as it was then: one written
        since (the reconciler's leader made it, or another change came first) is left to its writer."""
        with self._unstored_lock:
            due = list(self._unstored.items())
            self._unstored.clear()
        for i, ((namespace, name), (rule, change, event)) in enumerate(due):
            current = self.store.get(namespace, name)
            if current is None or current.resource_version != rule.resource_version:
                continue
            self._transition(current, change, event)
            with self._unstored_lock:
                if (namespace, name) in self._unstored:  # the API is still away: the rest wait for the next
                    for key, entry in due[i + 1:]:       # round, not each for its own timeout on this thread
                        self._unstored.setdefault(key, entry)
                    return

    def prioritize(self, pod_obj: Mapping[str, Any], nodes: Sequence[str]) -> list[tuple[str, int]]:
        version = _version(pod_obj)
        pod = None
        if version is not None:
            with self._filtered_lock:
                pod = self._read.get(version)
        if pod is None:
            pod = pod_info(pod_obj)
        if not pod.wants_mig:
            return [(n, 0) for n in nodes]
        return score_nodes(pod, nodes, self.snapshot(), self.plan.policy)

    def preempt(self, pod_obj: Mapping[str, Any], proposed: Mapping[str, Victims]) -> PreemptAnswer:
        """The ``preempt`` verb: kube-scheduler's victims per node, plus those MIG needs (core/preemption.py).

        Not the hot path: kube-scheduler calls it only after its own dry run found victims for what it
        counts, so grouping the inventory's MIG pods by node (O(MIG pods)) is affordable here. The
        extender keeps no PDB informer: added victims count no violation, and kube-scheduler's own count
        for a node is kept as the lower bound (the reconciler's path reads PDBs)."""
        pod = pod_info(pod_obj)
        snap = self.snapshot()
        if not snap.synced:
            return PreemptAnswer({}, error=NOT_SYNCED)
        answer = process_preemption(pod, proposed, snap, pods_by_node(self.inventory.pods()), NO_BUDGETS,
                                    self.plan)
        kept = {node: replace(v, pdb_violations=max(v.pdb_violations, proposed[node].pdb_violations))
                for node, v in answer.nodes.items()}
        return replace(answer, nodes=kept)

    def victim(self, uid: str) -> PodInfo:
        """A victim named by uid only (NodeNameToMetaVictims): the inventory's pod, else one that frees nothing."""
        return self.inventory.pod(uid) or PodInfo(namespace="", name="", uid=uid)

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """The commit point: check the node still has room, assume the pod, then create the Binding.

        kube-scheduler binds asynchronously, so /filter for the next pod may run before this pod's
        /bind: both can have been told the same last slice fits. Check-and-assume is atomic under a
        lock, so the second bind finds the slice taken and fails; the scheduler then retries that pod
        against books that include the first. The API call runs outside the lock. The scheduler sends only
        names: the pod's demand comes from the inventory or, when the watch has not delivered the pod yet,
        from its /filter call. A pod known to neither asks for no MIG slice as far as we know: it is
        bound without assuming, and the watch counts it. Before the caches have synced nothing is bound
        (NotReady): neither the node's usage nor, after a restart, the pod's demand is known.
        """
        pod = self.inventory.pod(uid)
        if pod is None:
            with self._filtered_lock:
                pod = self._filtered.get(uid)
        if pod is None:
            pod = PodInfo(namespace=namespace, name=name, uid=uid)
        with self._commit:
            snap = self.snapshot()
            if not snap.synced:  # after a restart, before the pod list: every slice would look free
                raise NotReady(f"{NOT_SYNCED}; the scheduler will retry")
            if pod.wants_mig and (gaps := self.watch_gaps()):
                # soak D12: answers from the cache are fine while the API is away (nothing can be bound then),
                # but once it is back and our watch is not, a node may have lost slices we still count
                raise NotReady(f"mig-extender's watch of {', '.join(gaps)} is reconnecting (our books may be "
                               "behind the API); the scheduler will retry")
            if pod.wants_mig and pod.node != node:
                for resource, n in pod.demand.items():
                    free = snap.free(node, resource, pod)
                    if free < n:
                        self.metrics.requests.labels("bind", "conflict").inc()
                        raise BindConflict(f"{resource}: {max(free, 0)} free on {node}, {n} needed (taken by a pod "
                                           "bound since this one was filtered); the scheduler will retry")
                self.inventory.assume(pod, node)
        try:
            if self.binder is not None:
                self.binder.bind(namespace, name, uid, node)
        except Exception as exc:
            if pod.wants_mig:
                if isinstance(getattr(exc, "status", None), int):  # the API answered: no Binding was made
                    self.inventory.forget(uid)
                else:  # timed out or cut off: it may have been made; the watch (or ASSUME_TTL) settles it
                    log.warning("binding %s/%s to %s: outcome unknown (%s); its slices stay booked until the "
                                "watch shows the pod", namespace, name, node, exc)
            raise BindError(f"binding {namespace}/{name} to {node}: {exc}") from exc
        if pod.wants_mig:
            self.inventory.finish_binding(uid)  # bound: booked until the watch shows the pod, however late
        rule = snap.rule_for(pod)
        if rule is not None and rule.reserved_for(pod):
            held = rule.reservation(snap.now)
            if held is not None and held[0] == node:
                event = "restored" if rule.phase is Phase.RESTORING else "bound"
                self._transition(rule, lambda r: r.bound(uid, name, node, self.clock()), event)

    def _finish(self, rule: Rule, event: str) -> None:
        self._transition(rule, lambda r: r.expired(self.clock()), event)

    def _transition(self, rule: Rule, change: Callable[[Rule], Rule], event: str) -> None:
        """Write a transition decided on a verb's path (Applied, bound, cancelled) or by housekeeping.

        Bookkeeping: the verb's answer does not depend on it, and the reconciler's leader makes the same
        transitions from its own pass (Applied and bound when it sees the pods, cancelled, expired). So a
        write the API server cannot take (it restarts: soak seed 37) is logged, counted as
        ``<event>_failed`` and written again by housekeeping (``retry_unstored``), never turned into an
        error of the verb: kube-scheduler reads a 5xx from /filter
        as a failed attempt and backs the pod off, and from /bind as a failed bind of a pod that is bound
        (v1.36.3: pkg/scheduler/extender.go ``send``, any status but 200 is an error; schedule_one.go
        ``findNodesThatPassExtenders`` and ``extendersBinding`` return it unless the extender is ignorable).
        """
        try:
            stored = update_with_retry(self.store, rule, change)
        except Exception as exc:  # conflicts are update_with_retry's; a defect of ours stays a 500 with its trace
            if not api_failure(exc):
                raise
            log.warning("rule %s/%s: %s not stored (%s); tried again by housekeeping, and the reconciler "
                        "records it once the API answers", rule.namespace, rule.name, event, exc)
            self.metrics.rules.labels(f"{event}_failed").inc()
            with self._unstored_lock:
                self._unstored[(rule.namespace, rule.name)] = (rule, change, event)
            return
        if stored is not None:
            self.metrics.rules.labels(event).inc()
        else:
            log.warning("rule %s/%s: %s not stored (gone, or repeated conflicts)", rule.namespace, rule.name, event)

    def explain(self, namespace: str, name: str) -> Explanation | None:
        """A dry run of the filter for the pod ``namespace/name`` over every known node: no rule recorded,
        applied or cancelled, nothing assumed. None when neither the watch nor /filter has shown the pod
        (or it asks for no MIG slice). O(pods + nodes): for humans, never on the scheduler's path."""
        found = self._find_pod(namespace, name)
        if found is None:
            return None
        pod, source = found
        snap = self.snapshot()
        nodes = tuple(sorted(snap.nodes))
        rules = tuple(sorted((r for r in snap.rules if rule_concerns(r, pod)), key=lambda r: (r.created, r.name)))
        return Explanation(pod, source, rules, nodes, filter_pod(pod, nodes, snap, self.plan), snap.now)

    def _find_pod(self, namespace: str, name: str) -> tuple[PodInfo, str] | None:
        """The pod from the inventory, else from the /filter cache (the watch may lag a new pod)."""
        for pod in self.inventory.pods():
            if pod.name == name and pod.namespace == namespace:
                return pod, "inventory"
        with self._filtered_lock:
            cached = [p for p in self._filtered.values() if p.name == name and p.namespace == namespace]
        return (cached[-1], "filter-cache") if cached else None
