"""The event loop for the planner-driven policies (stock, upgrade, mig-extender).

One run replays a job stream against a fresh SimCluster. Every decision is the planner's, made the way
the live components make it:

* scheduling (kube-scheduler + the extender): ``filter_pod`` over the candidate nodes, ``score_nodes``
  over those that pass, the best score wins; a Recorded rule whose rewritten pod arrives is Applied
  (``FilterDecision.apply``); the bind marks the rule bound when the pod lands on its reservation
  (``ExtenderService.bind``); when none fits, ``choose_substitute`` over every node records a rule;
* the webhook: the replacement pod of a workload whose Recorded rule ``awaits_upgrade`` it is rewritten
  to the substitute and stamped with the rule's name and the original demand;
* the reconciler, every ``reconcile_interval``: observe (rewritten pod running -> rule bound, restore's
  replacement running -> Restored), ``expired_rules``, ``plan_upgrades`` (restart the pending pod),
  ``plan_restores`` (reserve the original, restart the upgraded pod);
* preemption (policies with ``preemption``): when a pod fits nowhere and no substitute is free,
  ``preemption.plan_preemption`` picks the node and victims (``stock``: its own profile only, as
  kube-scheduler counting MIG would). The freed slices are reserved for the preemptor (the snapshot's
  ``reserved``, like a nominated pod), the victims hold theirs for ``grace_period`` and then stop, the
  preemptor is bound there at once (or, on a substitute, gets the substitution recorded there), and each
  victim's workload re-queues ``restart_delay`` later with the running time it has left.

The loop only models what happens around the decisions::

    arrival --try now (unless older pods of its kind wait)--> running --lifetime used up--> gone
       |                                                        ^   |
       | no fit: queue (FIFO), retried retry_interval after      |   | restore: pod deleted, replacement
       | capacity it could use frees                             |   | after restart_delay, own type
       | substitute recorded -> next reconciler pass deletes it; |   v
       +-- replacement restart_delay later, rewritten ------------+  (remaining lifetime is kept)

Like kube-scheduler, a pod that failed is not retried until something it could use was freed, the
queue is ordered by priority, then arrival, and a filter call sees the first ``feasible_nodes`` nodes
with a free slice of the pod's resource (the scheduler stops filtering once it has enough feasible
nodes; the pod's own reservation is always among them). Must not: decide fit, substitution, restore
or preemption itself, or import flask/kubernetes/cachetools.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from types import MappingProxyType

from ..core.catalog import resource_profile_name, substitutes, waste
from ..core.planner import (
    PlanSettings,
    choose_substitute,
    expired_rules,
    filter_pod,
    plan_restores,
    plan_upgrades,
    score_nodes,
    substitution_blocker,
)
from ..core.preemption import PreemptionPlan, plan_preemption
from ..core.resources import ANN_ORIGINAL, ANN_RULE, ANN_SUBSTITUTED, Owner, PodInfo
from ..core.rules import Phase, Rule, new_rule, rule_for_new_pod
from ..core.snapshot import ClusterSnapshot
from .cluster import ClusterSpec, SimCluster
from .stats import RunResult, Tally
from .workload import Job

NAMESPACE = "sim"


@dataclass(frozen=True)
class PolicySpec:
    """How a policy uses the planner.

    ``reservations``: rules hold their slice (the substitute while the pod restarts, the original while
    it is restored) and the snapshot shows them; without, a rewritten pod competes for its new type
    like any other pod. ``first_fit``: the substitute is taken on the first node (node order) with any
    compatible free slice instead of the planner's least-waste choice over all nodes.
    ``queue_aware``: the snapshot tells the planner what the scheduling queue waits for (its
    ``pending``), so no substitution or restore takes a slice a queued pod asks for exactly. Without
    reservations nothing is "in flight": the peer strategy restores one pod every pass (with no limit
    at all it restarted ~5 pods per arrival in an overloaded run: a restored pod loses its free slice
    to a pending pod, is upgraded again, restored again...).
    ``preemption``: a pod that still fits nowhere evicts lower-priority pods (``plan_preemption``).
    """

    name: str
    plan: PlanSettings
    reservations: bool = True
    first_fit: bool = False
    queue_aware: bool = False
    preemption: bool = False


POLICIES: dict[str, PolicySpec] = {
    # kube-scheduler counting MIG itself: exact type only, and its default preemption
    "stock": PolicySpec("stock", PlanSettings(substitution=False), reservations=False, preemption=True),
    # the peer restores whenever the original type frees, whether anybody wants the slice it frees or not
    "upgrade": PolicySpec("upgrade", PlanSettings(restores_per_pass=1, restore_needs_taker=False), reservations=False,
                          first_fit=True),
    "mig-extender": PolicySpec("mig-extender", PlanSettings(), queue_aware=True),
    "mig-extender+preempt": PolicySpec("mig-extender+preempt", PlanSettings(), queue_aware=True, preemption=True),
}


@dataclass(frozen=True)
class Mechanics:
    """The timing of everything around the decisions, in seconds."""

    restart_delay: float = 2.0        # a deleted pod's replacement is created this long after the delete
    retry_interval: float = 5.0       # kube-scheduler backoff (1 s doubling to 10 s): retry after a free
    reconcile_interval: float = 1.0   # reconciler pass (it runs on every inventory change, polled at 0.5 s)
    # nodes with a free slice one filter call sees. kube-scheduler would pass >= 100 (minFeasibleNodesToFind);
    # under static layouts any node with the free type is as good for the fit, so this only changes which
    # one packs first (placed/utilisation/waste moved < 0.2% between 8 and 32) and costs ~5 us per node
    feasible_nodes: int = 16
    samples: int = 200                # points of the utilisation timeline
    grace_period: float = 30.0        # a preempted pod holds its slices this long (terminationGracePeriodSeconds)


@dataclass(eq=False)
class _Work:
    """One workload's life in the run (mutable); ``pod`` is its current pod."""

    job: Job
    pod: PodInfo
    gen: int = 0
    state: str = "pending"           # pending | awaiting (upgrade recorded) | restarting | running | done
                                     # | nominated (waits for its victims) | terminating (a victim)
    node: str = ""
    held: tuple[str, int] = ("", 0)
    held_compute: int = 0
    started: float = -1.0            # first start (time to run)
    run_since: float = 0.0
    remaining: float = 0.0
    rule: str = ""                   # name of the active rule about this workload
    upgraded_at: float = 0.0         # when its rule was bound (it runs on the substitute since)
    restorable_since: float = -1.0   # first reconciler pass after that which saw its original type free
    restoring: bool = False
    nomination: PreemptionPlan | None = None  # while nominated: the plan it waits on
    waiting_on: set[str] = field(default_factory=set)  # uids of its victims not gone yet
    holding_up: set[int] = field(default_factory=set)  # as a victim: job seqs of the preemptors waiting for it


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: int = field(compare=False)
    work: _Work | None = field(compare=False, default=None)
    gen: int = field(compare=False, default=0)


_ARRIVE, _DEPART, _CREATE, _PASS, _RECONCILE, _TERMINATE = range(6)
_NO_ANNOTATIONS = MappingProxyType({})
# (resource, count, may substitute, priority): pods of one key fail or fit alike
Key = tuple[str, int, bool, int]


class _PodsOnNodes(Mapping[str, Sequence[PodInfo]]):
    """node -> the pods running there, the view plan_preemption reads (built per node on demand)."""

    def __init__(self, works: Mapping[str, Mapping[str, _Work]]) -> None:
        self.works = works

    def __getitem__(self, node: str) -> Sequence[PodInfo]:
        return [w.pod for w in self.works[node].values()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.works)

    def __len__(self) -> int:
        return len(self.works)


class _OldestQueued(Mapping[str, float]):
    """resource -> creation time of the oldest pod queued for exactly one slice of it (the snapshots'
    pending_since, as the inventory keeps it: multi-slice pods' ages are left out), read live from the
    queue heads (each queue is FIFO, so its head is its oldest pod)."""

    def __init__(self, queues: Mapping[Key, deque[_Work]]) -> None:
        self.queues = queues

    def __getitem__(self, resource: str) -> float:
        found = [q[0].pod.created for key, q in self.queues.items() if key[0] == resource and key[1] == 1 and q]
        if not found:
            raise KeyError(resource)
        return min(found)

    def __iter__(self) -> Iterator[str]:
        return iter({key[0] for key, q in self.queues.items() if q and key[1] == 1})

    def __len__(self) -> int:
        return len({key[0] for key, q in self.queues.items() if q and key[1] == 1})


class Engine:
    def __init__(self, spec: ClusterSpec, jobs: Sequence[Job], policy: PolicySpec, duration: float,
                 mech: Mechanics = Mechanics(), demand: dict[int, float] | None = None,
                 progress: Callable[[float], None] | None = None) -> None:
        self.cluster = SimCluster(spec, demand)
        self.jobs = jobs
        self.policy = policy
        self.plan = policy.plan
        self.exact = replace(policy.plan, substitution=False)  # the filter step; substitution comes after
        self.mech = mech
        self.duration = duration
        self.progress = progress
        self.now = 0.0
        self.tally = Tally(self.cluster.compute_capacity, duration, mech.samples)
        self._heap: list[_Event] = []
        self._seq = 0
        self.rules: dict[str, Rule] = {}                     # every active rule
        self.pending_rules: dict[str, Rule] = {}             # of which Recorded, Applied-unbound, Restoring
        self.bound_rules: dict[str, dict[str, Rule]] = {}    # original resource -> Applied + bound
        self.restored: deque[Rule] = deque()                 # Restored within loop_window (the loop guard)
        self.works: dict[str, _Work] = {}                    # rule name -> workload
        self.queues: dict[Key, deque[_Work]] = {}
        self.waiting_for: dict[str, int] = {}  # resource -> slices the queue asks for (the snapshots' pending)
        self.dirty: set[Key] = set()
        self.triggers: dict[str, set[Key]] = {}
        self._pass_at = -1.0
        self._compatible: dict[str, frozenset[str]] = {}
        self._orders: dict[str, list[str] | None] = {}
        # counts every change plan_restores reads (frees, rule transitions, the loop guard's window)
        self.changes = 0
        self._restores_idle = -1
        self.rules_gen = 0
        self.restore_order: dict[str, list[tuple[tuple, str]]] = {}  # original resource -> sorted (key, name)
        self._keys: dict[str, tuple] = {}
        self.free_runs: dict[str, list[list[float]]] = {}
        self._snap: ClusterSnapshot | None = None
        self._snap_gen = -1
        self._snap_until = 0.0
        # preemption: running pods by node (victims to choose from), slices promised to nominated preemptors,
        # and how many pods run per priority (no lower-priority pod running: nothing to plan)
        self.running_on: dict[str, dict[str, _Work]] = {}
        self.victims: dict[str, _Work] = {}                  # uid -> terminating victim
        self.nominated: dict[str, dict[str, int]] = {}       # node -> resource -> slices promised
        self.running_priorities: dict[int, int] = {}
        self._pods_on = _PodsOnNodes(self.running_on)
        self._nominees: dict[int, _Work] = {}                # preemptor's job seq -> its workload, while nominated
        self._oldest = _OldestQueued(self.queues)

    # -- event plumbing -------------------------------------------------------------------------

    def _at(self, time: float, kind: int, work: _Work | None = None, gen: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Event(time, self._seq, kind, work, gen))

    def run(self) -> RunResult:
        for job in self.jobs:
            if job.arrival < self.duration:
                self._at(job.arrival, _ARRIVE, _Work(job, self._pod(job, 0)))
        self._at(self.mech.reconcile_interval, _RECONCILE)
        count = 0
        while self._heap and self._heap[0].time <= self.duration:
            ev = heapq.heappop(self._heap)
            self.tally.advance(ev.time)
            self.now = ev.time
            count += 1
            if self.progress is not None and count % 4096 == 0:
                self.progress(self.now / self.duration)
            w = ev.work
            if ev.kind == _ARRIVE:
                self._arrive(w)
            elif ev.kind == _DEPART:
                if w.state == "running" and w.gen == ev.gen:
                    self._depart(w)
            elif ev.kind == _CREATE:
                self._create(w)
            elif ev.kind == _PASS:
                self._retry_pass()
            elif ev.kind == _TERMINATE:
                if w.state == "terminating" and w.gen == ev.gen:
                    self._terminated(w)
            else:
                self._reconcile()
                self._at(self.now + self.mech.reconcile_interval, _RECONCILE)
        self.tally.advance(self.duration)
        self.now = self.duration
        if self.progress is not None:
            self.progress(1.0)
        self.tally.events = count
        # slices promised to nominated preemptors are still held by their victims: not free, not stranded
        rules = list(self.pending_rules.values()) if self.policy.reservations else []
        reserved = self.cluster.snapshot(rules, self.now).reserved
        return self.tally.result(self.policy.name, self.cluster.free_compute(reserved))

    # -- pods and the scheduling queue ------------------------------------------------------------

    def _pod(self, job: Job, gen: int, demand: tuple[str, int] | None = None,
             annotations: dict[str, str] | None = None) -> PodInfo:
        """The workload's pod number ``gen``: the first is created at the job's arrival, a replacement now."""
        resource, count = demand or (job.resource, job.count)
        # one ReplicaSet per job: replacements get new names and uids; rules match them by owner uid
        return PodInfo(namespace=NAMESPACE, name=f"job-{job.seq}-{gen}", uid=f"uid-{job.seq}-{gen}",
                       demand={resource: count},
                       owner=Owner("ReplicaSet", f"job-{job.seq}", f"rs-{job.seq}", "apps/v1"),
                       annotations=annotations or _NO_ANNOTATIONS, priority=job.priority,
                       created=job.arrival if gen == 0 else self.now)

    def _key(self, pod: PodInfo) -> Key:
        ((resource, count),) = pod.demand.items()
        return resource, count, not substitution_blocker(pod, self.plan), pod.priority

    def _arrive(self, w: _Work) -> None:
        self.tally.arrived(w.job)
        w.remaining = w.job.lifetime
        self._submit(w)

    def _submit(self, w: _Work) -> None:
        """A new pod: tried at once, unless older pods of its kind wait (they go first, FIFO)."""
        key = self._key(w.pod)
        if self.queues.get(key) or not self._attempt(w):
            queue = self.queues.get(key)
            if queue is None:
                queue = self.queues[key] = deque()
                resource, _, may_substitute, _ = key
                for r in (resource, *(self._compatible_with(resource) if may_substitute else ())):
                    self.triggers.setdefault(r, set()).add(key)
            queue.append(w)
            self.waiting_for[key[0]] = self.waiting_for.get(key[0], 0) + key[1]

    def _compatible_with(self, resource: str) -> frozenset[str]:
        found = self._compatible.get(resource)
        if found is None:
            found = self._compatible[resource] = self.cluster.compatible(resource)
        return found

    def _freed(self, resource: str) -> None:
        """Slices of ``resource`` became free: pods that could use them are retried after the backoff."""
        self.changes += 1
        keys = self.triggers.get(resource)
        if keys:
            self.dirty |= keys
            if self._pass_at < self.now:
                self._pass_at = self.now + self.mech.retry_interval
                self._at(self._pass_at, _PASS)

    def _retry_pass(self) -> None:
        """Pending pods by priority, then FIFO (kube-scheduler's PrioritySort); a kind whose oldest pod
        fails waits for the next free."""
        heads = [(-key[3], q[0].job.seq, key) for key in self.dirty if (q := self.queues.get(key))]
        self.dirty.clear()
        heapq.heapify(heads)
        while heads:
            _, _, key = heapq.heappop(heads)
            queue = self.queues[key]
            if self._attempt(queue[0]):
                queue.popleft()
                self.waiting_for[key[0]] -= key[1]
                if queue:
                    heapq.heappush(heads, (-key[3], queue[0].job.seq, key))

    # -- one scheduling cycle: /filter, /prioritize, /bind ----------------------------------------

    def _pending(self) -> Mapping[str, int] | None:
        """The live queue demand (read by the planner through the snapshot), for a queue-aware policy."""
        return self.waiting_for if self.policy.queue_aware else None

    def _pending_since(self) -> Mapping[str, float] | None:
        """The oldest queued pod's creation time per resource (live view), for a queue-aware policy."""
        return self._oldest if self.policy.queue_aware else None

    def _snapshot(self) -> ClusterSnapshot:
        """The snapshot the scheduler would see now. Nodes are read live; only the reservations and the
        time are frozen in it: while no reservation changed or ran out, the last one is reused with the
        new time (``replace`` keeps its reservation maps, the planner stamps new rules with ``now``)."""
        if self._snap is None or self._snap_gen != self.rules_gen or self.now >= self._snap_until:
            rules = list(self.pending_rules.values()) if self.policy.reservations else []
            self._snap = self.cluster.snapshot(rules, self.now, self._pending(), self._pending_since())
            if self.nominated:
                self._snap = replace(self._snap, reserved=_merged(self._snap.reserved, self.nominated))
            self._snap_gen = self.rules_gen
            self._snap_until = min((r.expires for r in rules), default=math.inf)
        elif self._snap.now != self.now:
            self._snap = replace(self._snap, now=self.now)
        return self._snap

    def _attempt(self, w: _Work) -> bool:
        """Place ``w`` or record its substitution; False when it stays pending."""
        pod = w.pod
        snap = self._snapshot()
        passed = self._feasible(pod, snap)
        if passed:
            scores = score_nodes(pod, passed, snap, self.plan.policy)
            best = max(range(len(scores)), key=lambda i: (scores[i][1], -i))
            self._bind(w, scores[best][0], snap)
            return True
        if not substitution_blocker(pod, self.plan):
            rule = self._first_fit(pod, snap) if self.policy.first_fit else self._least_waste(pod, snap)
            if rule is not None:
                self._record(w, rule)
                return True
        return self.policy.preemption and self._preempt(w, snap)

    def _feasible(self, pod: PodInfo, snap: ClusterSnapshot) -> tuple[str, ...]:
        ((resource, _),) = pod.demand.items()
        own = snap.own_reservation(pod) if snap.rules else None
        first = [own[0]] if own is not None and own[1].resource == resource else []
        nodes = iter(self.cluster.free_nodes(resource))
        candidates = first + [n for n in islice(nodes, self.mech.feasible_nodes) if n not in first]
        while candidates:
            decision = filter_pod(pod, candidates, snap, self.exact)
            if decision.apply is not None:  # the rewritten replacement arrived: the extender marks it Applied
                self._set_rule(decision.apply.applied(pod.name, self.now, self.plan.rule_ttl))
            if decision.passed:
                return decision.passed
            candidates = list(islice(nodes, self.mech.feasible_nodes))
        return ()

    def _least_waste(self, pod: PodInfo, snap: ClusterSnapshot) -> Rule | None:
        """``choose_substitute`` over every node, computed in fewer node visits.

        On a one-model cluster each resource has one waste, and the planner's cost puts waste first;
        so asking it about the nodes with a free slice of each compatible resource, least waste first,
        and taking the first answer that *is* that resource gives the all-nodes answer (a resource
        reserved away everywhere answers with another, larger one, or nothing: try the next).
        Mixed-model clusters ask about all nodes at once.
        """
        ((resource, _),) = pod.demand.items()
        order = self._waste_order(resource)
        if order is None:
            return choose_substitute(pod, self.cluster.all_nodes, snap, self.plan)
        ((_, count),) = pod.demand.items()
        for r in order:
            nodes = self.cluster.free_nodes(r)
            if not nodes:
                continue
            candidates = set(nodes)
            # nodes whose free slices of r are all reserved for others cannot give r: leave them out so
            # the answer is r when r is possible anywhere (one call instead of one per size)
            candidates.difference_update([n for n, held in snap.reserved.items()
                                          if r in held and n in candidates and snap.free(n, r) < count])
            if candidates:
                rule = choose_substitute(pod, candidates, snap, self.plan)
                if rule is not None and rule.substitute.resource == r:
                    return rule
        return None

    def _waste_order(self, resource: str) -> list[str] | None:
        if resource not in self._orders:
            order = None
            if len(self.cluster.spec.models) == 1:
                gpu = self.cluster.spec.models[0]
                want = gpu.find(resource_profile_name(resource))
                if want is not None:
                    order = [p.resource for p in substitutes(gpu, want.name) if p.resource in self.cluster.resources]
            self._orders[resource] = order
        return self._orders[resource]

    def _first_fit(self, pod: PodInfo, snap: ClusterSnapshot) -> Rule | None:
        """The peer tools' choice: the first node with any compatible free slice (the planner still
        judges compatibility: ``choose_substitute`` over that one node)."""
        ((resource, _),) = pod.demand.items()
        nodes: set[str] = set()
        for r in self._compatible_with(resource):
            nodes.update(self.cluster.free_nodes(r))
        for node in sorted(nodes):
            rule = choose_substitute(pod, {node}, snap, self.plan)
            if rule is not None:
                return rule
        return None

    def _bind(self, w: _Work, node: str, snap: ClusterSnapshot) -> None:
        pod = w.pod
        ((resource, count),) = pod.demand.items()
        w.held_compute = self.cluster.allocate(node, resource, count)
        w.held = (resource, count)
        w.pod = replace(pod, node=node, phase="Running", started=self.now)
        if self.policy.preemption:
            self.running_on.setdefault(node, {})[w.pod.uid] = w
            self.running_priorities[w.job.priority] = self.running_priorities.get(w.job.priority, 0) + 1
        w.node, w.state, w.run_since = node, "running", self.now
        self._at(self.now + w.remaining, _DEPART, w, w.gen)
        self.tally.started(w.job, w.held_compute, self.now, first=w.started < 0, substitute=resource != w.job.resource)
        if w.started < 0:
            w.started = self.now
        if w.restoring and resource == w.job.resource:
            since = w.restorable_since if w.restorable_since >= 0 else self.now
            self.tally.restored(self.now - since)
        w.restoring, w.restorable_since = False, -1.0
        rule = self._rule_of(w)
        # ExtenderService.bind: the rule is bound when the pod used its reservation; elsewhere the
        # reconciler's observe step catches up on its next pass
        if self.policy.reservations and rule is not None and rule.reserved_for(pod):
            held = rule.reservation(snap.now)
            if held is not None and held[0] == node:
                self._set_rule(rule.bound(pod.uid, pod.name, node, self.now))
            else:
                self.tally.off_reservation += 1

    def _depart(self, w: _Work) -> None:
        self._stop(w)
        w.state = "done"
        rule = self._rule_of(w)
        if rule is not None and rule.phase is Phase.APPLIED and rule.bound_pod:
            self._forget_rule(rule.name)  # the workload is gone: nothing left to restore

    def _stop(self, w: _Work) -> None:
        if self.policy.preemption:
            del self.running_on[w.node][w.pod.uid]
            self.running_priorities[w.job.priority] -= 1
        resource, count = w.held
        self.cluster.release(w.node, resource, count)
        self.tally.stopped(w.job, w.held_compute)
        w.remaining = max(w.remaining - (self.now - w.run_since), 0.0)
        w.held, w.held_compute, w.node = ("", 0), 0, ""
        w.gen += 1  # voids its departure event
        self._freed(resource)

    def _create(self, w: _Work) -> None:
        """The controller's replacement pod, through the admission webhook."""
        w.gen += 1
        pod = self._pod(w.job, w.gen)
        rule = self._rule_of(w)
        # webhook.mutate: a Recorded rule waiting for this workload rewrites its new pod and stamps it
        if rule is not None and rule_for_new_pod(pod, (rule,), self.now) is rule:
            sub = rule.substitute
            pod = self._pod(w.job, w.gen, (sub.resource, sub.count),
                            {ANN_ORIGINAL: str(rule.original), ANN_SUBSTITUTED: str(sub), ANN_RULE: rule.name})
        w.pod = pod
        if w.waiting_on:  # a preemptor's rewritten replacement: it waits for the victims, nominated
            w.state = "nominated"
            return
        w.state = "pending"
        self._submit(w)

    # -- preemption -----------------------------------------------------------------------------

    def _preempt(self, w: _Work, snap: ClusterSnapshot) -> bool:
        """PostFilter: plan a preemption for ``w``; True when it is nominated and waits for its victims.

        The freed slices are the preemptor's from now on: its own profile through a reservation on the
        node (a nominated pod, as kube-scheduler counts it), a substitute through the rule recorded on
        the node at once, so the restart that rewrites the pod overlaps the victims' grace period.
        """
        if not any(n for p, n in self.running_priorities.items() if p < w.job.priority):
            return False  # nobody to preempt: skip the node scan
        plan = plan_preemption(w.pod, snap, self._pods_on, settings=self.plan)
        if not isinstance(plan, PreemptionPlan):
            return False
        self.tally.preemptions += 1
        if plan.substitute is not None:
            want = w.pod.single_demand
            assert want is not None
            self._record(w, new_rule(w.pod, want, plan.substitute, plan.node, self.now, self.plan.rule_ttl))
        else:
            self._promise(plan.node, plan.take, +1)
            w.state = "nominated"
        w.nomination = plan
        w.waiting_on = {v.uid for v in plan.victims}
        for victim in plan.victims:
            if victim.uid not in self.victims:
                self._evict(self.running_on[plan.node][victim.uid])
            self.victims[victim.uid].holding_up.add(w.job.seq)
        self._nominees[w.job.seq] = w
        return True

    def _promise(self, node: str, take: Mapping[str, int], sign: int) -> None:
        """Reserve (sign +1) or release (-1) slices on ``node`` for a nominated preemptor."""
        held = self.nominated.setdefault(node, {})
        for resource, count in take.items():
            held[resource] = held.get(resource, 0) + sign * count
            if not held[resource]:
                del held[resource]
        if not held:
            del self.nominated[node]
        self.rules_gen += 1  # the snapshot's reservations changed

    def _evict(self, victim: _Work) -> None:
        """Delete a victim with its grace period: it holds its slices until it is gone (or done sooner)."""
        self.tally.preempted_pod(victim.job)
        self.victims[victim.pod.uid] = victim
        victim.state = "terminating"
        victim.pod = replace(victim.pod, terminating=True)
        self.running_on[victim.node][victim.pod.uid] = victim
        left = victim.remaining - (self.now - victim.run_since)
        self._at(self.now + max(min(self.mech.grace_period, left), 0.0), _TERMINATE, victim, victim.gen)
        rule = self._rule_of(victim)
        if rule is not None:
            self._forget_rule(rule.name)  # its replacement comes from the template: its own type again

    def _terminated(self, victim: _Work) -> None:
        """A victim is gone: its workload re-queues; preemptors waiting on nothing else take their node."""
        uid = victim.pod.uid
        self.victims.pop(uid, None)
        self._stop(victim)
        if victim.remaining <= 0:
            victim.state = "done"
        else:
            victim.state = "restarting"
            self.tally.requeued(victim.job, self.now)
            self._at(self.now + self.mech.restart_delay, _CREATE, victim)
        for seq in sorted(victim.holding_up):
            w = self._nominees.get(seq)
            if w is not None:
                w.waiting_on.discard(uid)
                if not w.waiting_on:
                    self._take_nomination(w)
        victim.holding_up = set()

    def _take_nomination(self, w: _Work) -> None:
        """Victims gone: the nominated node is tried first (schedulePod's evaluateNominatedNode)."""
        plan = w.nomination
        assert plan is not None
        del self._nominees[w.job.seq]
        w.nomination = None
        if plan.substitute is None:
            self._promise(plan.node, plan.take, -1)
        if w.state != "nominated":
            return  # a substitute's pod is still restarting: its replacement finds the rule's reservation
        w.state = "pending"
        snap = self._snapshot()
        decision = filter_pod(w.pod, [plan.node], snap, self.exact)
        if decision.apply is not None:  # the rewritten replacement: the extender marks its rule Applied
            self._set_rule(decision.apply.applied(w.pod.name, self.now, self.plan.rule_ttl))
            snap = self._snapshot()
        if decision.passed:
            self._bind(w, plan.node, snap)
        else:
            self._submit(w)  # taken after all (another preemptor's promise on the same slices): queue again

    # -- rules ----------------------------------------------------------------------------------

    def _rule_of(self, w: _Work) -> Rule | None:
        return self.rules.get(w.rule) if w.rule else None

    def _drop_rule(self, name: str) -> None:
        rule = self.rules.pop(name, None)
        if rule is not None:
            if self.pending_rules.pop(name, None) is not None:
                self.rules_gen += 1  # the reservations changed
            group = self.bound_rules.get(rule.original.resource)
            if group is not None and group.pop(name, None) is not None:
                key = self._keys.pop(name, None)
                if key is not None:
                    order = self.restore_order[rule.original.resource]
                    del order[bisect.bisect_left(order, (key, name))]

    def _forget_rule(self, name: str) -> None:
        self._drop_rule(name)
        w = self.works.pop(name, None)
        if w is not None and w.rule == name:
            w.rule = ""

    def _set_rule(self, rule: Rule) -> None:
        """Store ``rule`` where the decisions read it, by its phase."""
        self.changes += 1
        self._drop_rule(rule.name)
        if rule.phase is Phase.EXPIRED:
            self.tally.expired += 1
            self._forget_rule(rule.name)
        elif rule.phase is Phase.RESTORED:
            self.restored.append(rule)
            self._forget_rule(rule.name)
        else:
            self.rules[rule.name] = rule
            if rule.phase is Phase.APPLIED and rule.bound_pod:
                self.bound_rules.setdefault(rule.original.resource, {})[rule.name] = rule
                w = self.works.get(rule.name)
                key = self._restore_key(rule, w.node) if w is not None and w.node else None
                if key is not None:
                    self._keys[rule.name] = key
                    bisect.insort(self.restore_order.setdefault(rule.original.resource, []), (key, rule.name))
                    w.upgraded_at = self.now
            else:
                self.pending_rules[rule.name] = rule
                self.rules_gen += 1

    def _record(self, w: _Work, rule: Rule) -> None:
        """The extender stored a substitution; the pod waits for the reconciler to restart it."""
        old = self._rule_of(w)
        if old is not None:
            self._set_rule(old.expired(self.now))
        self.works[rule.name] = w
        w.rule = rule.name
        w.state = "awaiting"
        self._set_rule(rule)

    # -- the reconciler -------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """One pass, in the live reconciler's order: observe, expire, upgrade, restore."""
        if self.pending_rules:
            self._observe()
        if self.pending_rules:
            snap = self.cluster.snapshot(self.pending_rules.values(), self.now, self._pending())
            for rule in expired_rules(snap):
                resource = (rule.original if rule.phase is Phase.RESTORING else rule.substitute).resource
                self._set_rule(rule.expired(self.now))
                if self.policy.reservations:
                    self._freed(resource)
            self._upgrades()
        while self.restored and self.now - self.restored[0].updated >= self.plan.loop_window:
            self.restored.popleft()
            self.changes += 1
        if self.plan.substitution and self.bound_rules:
            self._restores()

    def _observe(self) -> None:
        """Rewritten pod seen -> Applied; bound -> bound; a restore's replacement bound -> Restored."""
        for seen in list(self.pending_rules.values()):
            w = self.works.get(seen.name)
            if w is None or w.state != "running":
                continue
            pod, rule = w.pod, seen
            if rule.phase is Phase.RECORDED and pod.rule_name == rule.name:
                rule = rule.applied(pod.name, self.now, self.plan.rule_ttl)
            if (rule.phase is Phase.APPLIED and pod.rule_name == rule.name) or rule.awaits_restore(pod):
                rule = rule.bound(pod.uid, pod.name, pod.node, self.now)
            if rule is not seen:
                self._set_rule(rule)

    def _upgrades(self) -> None:
        recorded = [r for r in self.pending_rules.values() if r.phase is Phase.RECORDED]
        if not recorded:
            return
        pods = {}
        for rule in recorded:
            w = self.works.get(rule.name)
            if w is not None and w.state == "awaiting":
                pods[w.pod.uid] = w.pod
        snap = self.cluster.snapshot(recorded, self.now, self._pending())
        upgrades, cancel = plan_upgrades(snap, pods, self.plan)
        for rule in cancel:
            self._set_rule(rule.expired(self.now))
        for up in upgrades:
            self._set_rule(up.rule.restarting(self.now))  # the reconciler's mark: the replacement may take it
            w = self.works[up.rule.name]
            w.state = "restarting"
            self.tally.upgrades += 1
            if w.job.seq in self.tally.restored_jobs:
                self.tally.reupgrades += 1
            self._at(self.now + self.mech.restart_delay, _CREATE, w)

    def _restores(self) -> None:
        """plan_restores, asked about as few upgraded pods as give the same answer.

        It plans the first ``restores_per_pass`` pods of its own order (waste, then age, descending)
        that have a free original slice, so a prefix of that order gives the same plans as all of them
        whenever the prefix yields enough; otherwise the prefix grows (4x) until it does or is everything.
        Only pods whose original type has a free slice somewhere are candidates at all.
        """
        self._note_free_runs()
        in_flight = sum(1 for r in self.pending_rules.values() if r.phase is Phase.RESTORING)
        if self.policy.reservations and in_flight >= self.plan.restores_in_flight:
            return  # plan_restores would plan nothing: enough restores under way
        free = self.cluster.free_nodes
        groups = [order for resource, order in self.restore_order.items() if order and free(resource)]
        if not groups or self.changes == self._restores_idle:
            return  # nothing to restore to, or nothing it reads changed since it last planned nothing
        merged = heapq.merge(*groups)
        held = list(self.pending_rules.values()) if self.policy.reservations else []
        prefix: list[Rule] = []
        size = 8 * self.plan.restores_per_pass
        while True:
            more = [self.rules[name] for _, name in islice(merged, size - len(prefix))]
            prefix += more
            # the loop guard matches Restored rules by workload: others cannot change a plan
            owners = {rule.owner.uid for rule in prefix if rule.owner}
            recent = [r for r in self.restored if r.owner and r.owner.uid in owners]
            snap = self.cluster.snapshot([*held, *prefix, *recent], self.now, self._pending())
            plans, _ = plan_restores(snap, {r.bound_pod: self.works[r.name].pod for r in prefix}, self.plan)
            if len(plans) >= self.plan.restores_per_pass or len(prefix) < size:
                break
            size *= 4
        if not plans:
            self._restores_idle = self.changes
        for plan in plans:
            w = self.works[plan.rule.name]
            self._set_rule(plan.rule.restoring(plan.node, self.now, self.plan.restore_ttl))
            w.restorable_since = self._free_since(plan.rule.original.resource, w.upgraded_at)
            self._stop(w)
            w.state, w.restoring = "restarting", True
            self.tally.restores += 1
            self.tally.restored_jobs.add(w.job.seq)
            if not self._queued_for(plan.rule.substitute.resource):
                self.tally.restores_no_taker += 1
            self.tally.requeued(w.job, self.now)
            self._at(self.now + self.mech.restart_delay, _CREATE, w)

    def _queued_for(self, resource: str) -> bool:
        """Does a queued pod wait that a free slice of ``resource`` could take (its own type or a substitute)?"""
        return any(q and (key[0] == resource or (key[2] and resource in self._compatible_with(key[0])))
                   for key, q in self.queues.items())

    def _note_free_runs(self) -> None:
        """Per resource, the runs of reconciler passes that saw a free slice (for restore_delay)."""
        last = self.now - self.mech.reconcile_interval
        for resource in self.restore_order:
            if self.cluster.free_nodes(resource):
                runs = self.free_runs.setdefault(resource, [])
                if runs and runs[-1][1] >= last - 1e-9:
                    runs[-1][1] = self.now
                else:
                    runs.append([self.now, self.now])

    def _free_since(self, resource: str, since: float) -> float:
        """The first pass at or after ``since`` that saw ``resource`` free."""
        runs = self.free_runs.get(resource, [])
        i = bisect.bisect_left(runs, since, key=lambda run: run[1])
        return max(runs[i][0], since) if i < len(runs) else self.now

    def _restore_key(self, rule: Rule, node: str) -> tuple | None:
        """plan_restores' order, ascending: (waste, created) descending, then name (any fixed tie order)."""
        info = self.cluster.nodes[node]
        orig, sub = info.shapes.get(rule.original.resource), info.shapes.get(rule.substitute.resource)
        if orig is None:
            gpu = info.gpu
            found = gpu.find(resource_profile_name(rule.original.resource)) if gpu else None
            orig = found.shape if found else None
        if orig is None or sub is None:
            return None  # plan_restores skips it as well
        return tuple(-x for x in waste(orig, sub)), -rule.created, rule.name

def _merged(a: Mapping[str, Mapping[str, int]], b: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Two node -> resource -> slices maps added up."""
    out = {node: dict(per) for node, per in a.items()}
    for node, per in b.items():
        into = out.setdefault(node, {})
        for resource, count in per.items():
            into[resource] = into.get(resource, 0) + count
    return out


def with_aging(policy: PolicySpec, aging: float | None) -> PolicySpec:
    """``policy`` with the planner's aging set, for mig-extender's queue-aware policies only (the peer and
    stock keep no queues, so aging means nothing to them); None leaves it as it is."""
    if aging is None or not policy.queue_aware:
        return policy
    return replace(policy, plan=replace(policy.plan, aging=aging))


def run_policy(spec: ClusterSpec, jobs: Sequence[Job], policy: str, duration: float, mech: Mechanics = Mechanics(),
               demand: dict[int, float] | None = None,
               progress: Callable[[float], None] | None = None, aging: float | None = None) -> RunResult:
    return Engine(spec, jobs, with_aging(POLICIES[policy], aging), duration, mech, demand, progress).run()
