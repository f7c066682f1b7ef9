"""Which parked pods to hand back to kube-scheduler: it cannot see what our ``/filter`` decides by.

kube-scheduler parks a pod our extender refused among its unschedulable pods and retries it on the next
cluster event it sees (an extender's rejection names no plugin, so any event will do:
``PriorityQueue.isPodWorthRequeuing`` in pkg/scheduler/backend/queue/scheduling_queue.go). What lets the pod
fit in our books is often no event of its own: a reservation released (a rule expired or cancelled, a restore
deferred), or an event it saw before our watch did (a preemption victim's delete reaching the scheduler
first, so the retry it caused was refused by our older view). Nothing wakes the pod then until
podMaxInUnschedulablePodsDuration (5 min), past a preemption hold's lifetime.

So the reconciler, each pass, looks for pods the scheduler found unschedulable that fit now in our view, and
requeues one that has fitted for ``after`` seconds (the scheduler's own retry, with its backoff of at most
10 s, comes first), then again after doubling delays up to ``max_delay``: a pod that still does not schedule
(a constraint we do not model) costs one status write per delay, never a loop. Pure: the reconciler owns the
per-pod memory (``Parked``) and the write.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from .resources import PodInfo
from .rules import ACTIVE_PHASES
from .schedconfig import SCHEDULER_NAME
from .snapshot import ClusterSnapshot

NODES_PER_POD = 64  # nodes tried per pod and pass: a pod that fits nowhere among them is tried next pass


@dataclass(frozen=True)
class RequeueSettings:
    after: float = 10.0       # fitting this long (kube-scheduler's max pod backoff) before the first requeue
    max_delay: float = 300.0  # delays double up to this: the scheduler's own flush of unschedulable pods
    per_pass: int = 20        # status writes a pass may make
    # the schedulers that run our extender: a pod of another (Volcano, YuniKorn...) was refused by a
    # scheduler that never asked us, and our condition would be a write to someone else's pod
    schedulers: frozenset[str] = frozenset({"default-scheduler", SCHEDULER_NAME})


@dataclass(frozen=True)
class Parked:
    """A pod seen unschedulable while it fits in our view: since when, and how often we requeued it."""

    since: float
    requeues: int = 0
    next_at: float = 0.0


@dataclass(frozen=True)
class Requeue:
    pod: PodInfo
    node: str  # a node it fits on now (for the message)
    attempt: int  # 1 for the first requeue of this episode


def fits_now(snap: ClusterSnapshot, pod: PodInfo, placement_ok: Callable[[PodInfo, str], bool]) -> str | None:
    """A node where ``pod`` gets every slice it asks for in our view (its own reservation counted for it,
    others' against it) and kube-scheduler's other constraints allow it; None when there is none."""
    if not pod.demand:
        return None
    first, *rest = sorted(pod.demand, key=lambda r: len(snap.nodes_with_free(r)))
    # the first NODES_PER_POD by name (schedulable nodes only), without sorting thousands to try 64
    for node in heapq.nsmallest(NODES_PER_POD, snap.nodes_with_free(first)):
        if (snap.free(node, first, pod) >= pod.demand[first]
                and all(snap.free(node, r, pod) >= pod.demand[r] for r in rest) and placement_ok(pod, node)):
            return node
    return None


def plan_requeues(snap: ClusterSnapshot, pods: Iterable[PodInfo], parked: Mapping[str, Parked],
                  placement_ok: Callable[[PodInfo, str], bool],
                  settings: RequeueSettings = RequeueSettings()) -> tuple[list[Requeue], dict[str, Parked]]:
    """The pods to requeue this pass, oldest first, and the memory for the next pass (pods bound, gone or
    no longer parked are forgotten; a parked pod that does not fit now keeps its requeues, so the delays
    keep doubling across fits, and its next requeue waits ``after`` from its last pass without a fit).
    A pod with a substitution of its own under way is left to the reconciler's restart; a preemption
    hold's pod is not (its hold is what fits)."""
    now = snap.now
    keep: dict[str, Parked] = {}
    due: list[tuple[float, str, PodInfo, str, Parked]] = []
    for pod in pods:
        if (not pod.wants_mig or pod.node or pod.terminating or pod.gated or pod.phase != "Pending"
                or not pod.unschedulable or pod.scheduler not in settings.schedulers):
            continue
        rule = snap.rule_for(pod)
        if (rule is not None and rule.pod_uid == pod.uid and not rule.is_hold and rule.phase in ACTIVE_PHASES
                and not rule.is_expired(now)):
            continue
        node = fits_now(snap, pod, placement_ok)
        if node is None:
            # still parked: keep its requeues (else churn of free slices restarted the delays at ``after``
            # for a pod refused for a reason we do not model) and give a later fit ``after`` again
            if pod.uid in parked:
                old = parked[pod.uid]
                keep[pod.uid] = replace(old, next_at=max(old.next_at, now + settings.after))
            continue
        seen = parked.get(pod.uid) or Parked(since=now, next_at=now + settings.after)
        keep[pod.uid] = seen
        if now >= seen.next_at:
            due.append((pod.created, pod.uid, pod, node, seen))
    due.sort(key=lambda d: (d[0], d[1]))
    out = []
    for _, uid, pod, node, seen in due[:settings.per_pass]:
        delay = min(settings.after * 2 ** (seen.requeues + 1), settings.max_delay)
        keep[uid] = Parked(since=seen.since, requeues=seen.requeues + 1, next_at=now + delay)
        out.append(Requeue(pod, node, seen.requeues + 1))
    return out, keep
