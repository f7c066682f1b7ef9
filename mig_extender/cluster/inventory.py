"""The live MIG accounting: nodes and pods kept current by watch events, handing out snapshots.

Like kube-scheduler's cache (pkg/scheduler/backend/cache), usage is maintained incrementally (a pod
event touches one node) and a bind is *assumed* before the API confirms it::

                 assume(pod, node)                        finish_binding(uid): the Binding got a 2xx
      /bind  ----------------------->  assumed  ------------------------------------->  bound
                                       |     |                                          |     |
      the API refused the Binding:     |     | no answer (timeout, cut off): it may     |     | a relist without the
      forget(uid) -> dropped  <--------+     | exist; expire_assumed() drops it after   |     | pod, begun after
                                             | ASSUME_TTL unless the watch shows it     |     | the 2xx came back
                                             v                                          v     | -> dropped
                  the watch shows the pod bound: confirmed (an ordinary pod from then on)
                  the watch deletes the pod (or it finishes): dropped

A bound assumption never expires, as in the scheduler's cache since kubernetes#106361 (v1.36 has no
expiry at all): a watch lagging a minute behind a successful Binding must not free the slice for a
second pod. Only a Binding whose outcome is unknown expires. A pod event that still shows the pod
unbound is older than our bind and keeps the assumption (with its node).

So a pod placed by the extender counts the moment it is placed, before any watch event. Only pods
that request MIG slices are kept (their PodInfo, not the object): memory is O(MIG pods), and other pods
cost one dict lookup plus, when bound, one small tuple in the cpu/memory book (``_RequestBook``).
``snapshot()`` returns an immutable ClusterSnapshot, cached until something changes, so the hot path
pays nothing when nothing happened. Pure Python; thread-safe with one lock.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..core.placement import NodeFacts
from ..core.repartition_change import ANN_CHANGE, ANNOTATIONS, holds
from ..core.resources import DemandError, PodInfo, mig_allocatable, pod_info, quantity_scaled
from ..core.rulebook import RuleBook
from ..core.rules import Rule
from ..core.snapshot import (
    EMPTY_TEXT,
    LABEL_COUNT,
    NO_HOLDER,
    ClusterSnapshot,
    FreeOrder,
    GpuProblem,
    NodeInfo,
    recognise_gpu,
)

# seconds a bind whose outcome is unknown may wait for the watch to show it; also how long after a
# successful Binding a relist that lacks the pod may still predate it (a paged list takes seconds)
ASSUME_TTL = 30.0


# what snapshot() shares until something changes: nodes, free index, cordoned nodes, the substitute order
_Frozen = tuple[Mapping[str, NodeInfo], Mapping[str, frozenset[str]], frozenset[str], FreeOrder]


@dataclass(frozen=True)
class _Assumption:
    pod: PodInfo                    # as placed: node set
    deadline: float                 # dropped after this unless bound
    bound_at: float | None = None   # when the Binding succeeded: from then on only the watch settles it


def _waiting(info: PodInfo) -> bool:
    """Unbound, alive and not gated: the pod waits for its slices. A pod with schedulingGates (Kueue's
    admission gate, say) is not offered to any scheduler yet, so it has no claim on a freed slice; the
    update that removes its last gate counts it (upsert removes the old PodInfo, then adds the new)."""
    return not info.node and not info.terminating and info.phase == "Pending" and not info.gated


def node_info(obj: Mapping[str, Any], used: Mapping[str, int] | None = None) -> NodeInfo:
    return read_node(obj, used)[0]


def read_node(obj: Mapping[str, Any], used: Mapping[str, int] | None = None) -> tuple[NodeInfo, GpuProblem | None]:
    """A Node's MIG view, and what is wrong with its GPU's recognition (None when nothing is)."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), Mapping) else {}
    alloc = mig_allocatable(status)
    try:
        count = int(labels.get(LABEL_COUNT, 0))
    except (TypeError, ValueError):
        count = 0
    gpu = recognise_gpu(labels, alloc)
    name = str(meta.get("name", ""))
    unschedulable = bool(spec.get("unschedulable", False))
    return NodeInfo(
        name=name,
        gpu=gpu.model,
        allocatable=alloc,
        used=dict(used or {}),
        gpu_count=count,
        schedulable=not unschedulable,
        problems=(str(gpu.problem),) if gpu.problem else (),
        facts=node_facts(name, labels, spec, status, unschedulable),
        repartition=_ours(annotations),
    ), gpu.problem


def _ours(annotations: Mapping[str, Any]) -> Mapping[str, str]:
    """The repartition annotations (core/repartition_change.py); the shared empty map for most nodes."""
    found = {k: str(annotations[k]) for k in ANNOTATIONS if annotations.get(k)}
    return found or EMPTY_TEXT


def node_facts(name: str, labels: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any],
               unschedulable: bool) -> NodeFacts:
    """What placement checks read about a node (core/placement.py). Usage by pods is filled in later."""
    taints = spec.get("taints") if isinstance(spec.get("taints"), list) else []
    alloc = status.get("allocatable") if isinstance(status.get("allocatable"), Mapping) else {}
    return NodeFacts(
        name=name, labels={str(k): str(v) for k, v in labels.items()},
        taints=tuple(t for t in taints if isinstance(t, Mapping)), unschedulable=unschedulable,
        cpu_milli=quantity_scaled(alloc.get("cpu", 0), 1000), memory_bytes=quantity_scaled(alloc.get("memory", 0), 1),
    )


class _RequestBook:
    """CPU and memory requested by every bound, unfinished pod (MIG or not), summed per node.

    Placement checks of our own decisions (where a restore may reserve a slice) need what a node has
    left, as kube-scheduler's NodeResourcesFit counts it. Per pod only (node, cpu, mem) is kept, so a
    delete can be subtracted: a dict entry and a 3-tuple, ~150 bytes a pod with the node name shared.
    Nodes whose sums changed are returned as dirty; the inventory folds them into NodeInfo lazily.
    """

    def __init__(self) -> None:
        self.by_uid: dict[str, tuple[str, int, int]] = {}
        self.by_node: dict[str, tuple[int, int]] = {}

    def set(self, uid: str, node: str, cpu: int, mem: int) -> set[str]:
        """Record ``uid`` on ``node`` (node '' or 0/0 requests: forget it); returns the nodes changed."""
        old = self.by_uid.get(uid)
        new = (node, cpu, mem) if node and (cpu or mem) else None
        if old == new:
            return set()
        changed = set()
        if old is not None:
            del self.by_uid[uid]
            changed.add(self._add(old, -1))
        if new is not None:
            self.by_uid[uid] = new
            changed.add(self._add(new, +1))
        return changed

    def _add(self, entry: tuple[str, int, int], sign: int) -> str:
        node, cpu, mem = entry
        have_cpu, have_mem = self.by_node.get(node, (0, 0))
        total = (have_cpu + sign * cpu, have_mem + sign * mem)
        if total == (0, 0):
            self.by_node.pop(node, None)
        else:
            self.by_node[node] = total
        return node


class ClusterInventory:
    """Mutable, thread-safe accounting of MIG slices per node; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._nodes: dict[str, NodeInfo] = {}
        self._pods: dict[str, PodInfo] = {}          # uid -> MIG pod
        self._assumed: dict[str, _Assumption] = {}
        self._used: dict[str, dict[str, int]] = {}   # node -> resource -> slices held by pods
        self._held: dict[str, dict[str, dict[int, int]]] = {}  # node -> resource -> pod priority -> slices
        self._priorities: dict[int, int] = {}        # pod priority -> pods holding slices at it
        self._pending: dict[str, int] = {}           # resource -> slices wanted by unbound, live pods
        # resource -> uid -> creation time of those pods, and a heap of (created, uid) with lazy deletion:
        # the oldest waiter per resource in O(log pods) amortised (the snapshots' pending_since, aging)
        self._waiters: dict[str, dict[str, float]] = {}
        self._oldest: dict[str, list[tuple[float, str]]] = {}
        self._index: dict[str, set[str]] = {}
        self._gpu_problems: dict[str, GpuProblem] = {}  # node -> why its GPU is not (fully) recognised
        self._frozen: _Frozen | None = None
        self._requests = _RequestBook()
        self._usage_dirty: set[str] = set()          # nodes whose cpu/memory sums are not in NodeInfo yet
        self._cordoned: set[str] = set()             # nodes with spec.unschedulable
        self._repartitioning: set[str] = set()       # nodes with a change record (annotation ANN_CHANGE)...
        self._holding: set[str] = set()              # ...and those it holds (core/repartition_change.holds)
        self.synced = False
        self.generation = 0

    # -- nodes ------------------------------------------------------------------------------------

    def upsert_node(self, obj: Mapping[str, Any]) -> None:
        with self._lock:
            info, problem = read_node(obj)
            if problem is None:
                self._gpu_problems.pop(info.name, None)
            else:
                self._gpu_problems[info.name] = problem
            self._set_node(info.name, info)

    def delete_node(self, name: str) -> None:
        with self._lock:
            self._gpu_problems.pop(name, None)
            old = self._nodes.pop(name, None)
            if old is not None:
                for r in old.allocatable:
                    self._index.get(r, set()).discard(name)
                self._cordoned.discard(name)
                self._repartitioning.discard(name)
                self._holding.discard(name)
                self._changed()

    def _set_node(self, name: str, info: NodeInfo) -> None:
        held = {r: dict(by) for r, by in self._held.get(name, {}).items()}
        info = replace(info, used=dict(self._used.get(name, {})), held_by_priority=held,
                       facts=self._facts_with_usage(info))
        self._usage_dirty.discard(name)
        old = self._nodes.get(name)
        self._nodes[name] = info
        if info.schedulable:
            self._cordoned.discard(name)
        else:
            self._cordoned.add(name)
        record = info.repartition.get(ANN_CHANGE)
        (self._repartitioning.add if record else self._repartitioning.discard)(name)
        (self._holding.add if record and holds(record, info) else self._holding.discard)(name)
        for r in set(info.allocatable) | set(old.allocatable if old else ()):
            members = self._index.setdefault(r, set())
            if info.schedulable and info.free(r) > 0:
                members.add(name)
            else:
                members.discard(name)
        self._changed()

    def _facts_with_usage(self, info: NodeInfo) -> NodeFacts | None:
        if info.facts is None:
            return None
        cpu, mem = self._requests.by_node.get(info.name, (0, 0))
        if (info.facts.used_cpu_milli, info.facts.used_memory_bytes) == (cpu, mem):
            return info.facts
        return replace(info.facts, used_cpu_milli=cpu, used_memory_bytes=mem)

    def _track_requests(self, info: PodInfo) -> None:
        """Book the pod's cpu/memory on its node. A pod without MIG changes no slice count, so the cached
        snapshot is kept (``/filter`` reads no cpu/memory): its node is only marked, and folded in when a
        snapshot is built anyway or one is asked for with ``usage=True`` (the reconciler)."""
        node = info.node if info.holds_slices else ""
        known = self._nodes.get(node) if node else None
        node = known.name if known is not None else node  # share the inventory's name object, not the pod's
        changed = self._requests.set(info.uid, node, info.placement.cpu_milli, info.placement.memory_bytes)
        if changed:
            self._usage_dirty.update(n for n in changed if n in self._nodes)
            self.generation += 1

    def _fold_usage(self) -> None:
        for name in list(self._usage_dirty):
            if name in self._nodes:
                self._set_node(name, self._nodes[name])
        self._usage_dirty.clear()

    # -- pods -------------------------------------------------------------------------------------

    def upsert_pod(self, obj: Mapping[str, Any]) -> PodInfo | None:
        try:
            info = pod_info(obj)
        except DemandError:
            return None
        with self._lock:
            self._track_requests(info)
            old = self._pods.get(info.uid)
            if not info.wants_mig:
                if old is not None:
                    self._remove_pod(old)
                return None
            if old is not None:
                self._remove_pod(old)
            assumed = self._assumed.pop(info.uid, None)
            if assumed is not None and not info.node:
                # the watch is older than our bind: keep the assumption until it catches up
                self._assumed[info.uid] = assumed
                info = replace(info, node=assumed.pod.node)
            self._add_pod(info)
            return info

    def delete_pod(self, uid: str) -> None:
        with self._lock:
            self._assumed.pop(uid, None)
            for node in self._requests.set(uid, "", 0, 0):
                self._usage_dirty.add(node)
            old = self._pods.get(uid)
            if old is not None:
                self._remove_pod(old)

    def replace_pods(self, objs: Iterable[Mapping[str, Any]]) -> None:
        """Relist: forget every pod not in ``objs`` (its delete event may have been missed).

        ``objs`` may be the informer's page-by-page stream: each pod is booked under the lock on its own,
        never the lock held across a page fetch (readers would wait for the API). Meanwhile a reader sees
        each pod either as it was or as listed. An assumed pod missing from the list stays only while its
        Binding may postdate the list: in flight (unknown outcome: its deadline settles it) or answered
        after the list began; the watch from the list's resourceVersion then shows it. A Binding that
        succeeded before the list began is in the list's consistent snapshot unless the pod is gone or
        finished since, so it is dropped (soak D9: a 30 s grace kept three such pods booked for good
        when no later relist came)."""
        began = self._clock()  # before the first page is asked for: ``objs`` is lazy
        seen, listed = set(), set()
        for obj in objs:
            info = self.upsert_pod(obj)
            if info is not None:
                seen.add(info.uid)
            uid = ((obj.get("metadata") or {}) if isinstance(obj, Mapping) else {}).get("uid")
            listed.add(str(uid or ""))
        with self._lock:
            for uid in [u for u in self._pods if u not in seen]:
                assumed = self._assumed.get(uid)
                if assumed is not None and (assumed.bound_at is None or assumed.bound_at >= began):
                    continue
                self._assumed.pop(uid, None)
                self._remove_pod(self._pods[uid])
            for uid in [u for u in self._requests.by_uid if u not in listed]:
                self._usage_dirty.update(self._requests.set(uid, "", 0, 0))

    def replace_nodes(self, objs: Iterable[Mapping[str, Any]]) -> None:
        """Relist of nodes; as ``replace_pods``, each node is booked on its own, the lock not held across pages."""
        names = set()
        for obj in objs:
            self.upsert_node(obj)
            names.add(node_info(obj).name)
        with self._lock:
            for name in [n for n in self._nodes if n not in names]:
                self.delete_node(name)
            self._compact_names()

    def _compact_names(self) -> None:
        """Re-key nodes and the free index with fresh copies of the names, allocated back to back.

        ``/filter`` looks every candidate name up in the free index. The names arrive as new strings,
        so each hit compares against the index's copy; copies scattered over a large heap (each was
        parsed with its Node object) cost a cache and TLB miss per candidate: 1.5-2 ms of a 5,000-name
        filter against ~0.3 ms for names packed together. Done after a full list (start, relist), not
        per event: a node added later is one string elsewhere.
        """
        fresh = {name: name.encode().decode() for name in sorted(self._nodes)}
        self._nodes = {fresh[n]: replace(info, name=fresh[n]) for n, info in self._nodes.items()}
        self._gpu_problems = {fresh.get(n, n): p for n, p in self._gpu_problems.items()}
        self._used = {fresh.get(n, n): used for n, used in self._used.items()}
        self._held = {fresh.get(n, n): held for n, held in self._held.items()}
        self._index = {r: {fresh.get(n, n) for n in members} for r, members in self._index.items()}
        self._cordoned = {fresh.get(n, n) for n in self._cordoned}
        self._repartitioning = {fresh.get(n, n) for n in self._repartitioning}
        self._holding = {fresh.get(n, n) for n in self._holding}
        self._changed()

    def assume(self, pod: PodInfo, node: str) -> PodInfo:
        """Count ``pod`` on ``node`` now, before the API confirms the bind."""
        with self._lock:
            old = self._pods.get(pod.uid)
            if old is not None:
                self._remove_pod(old)
            placed = replace(pod, node=node)
            self._assumed[pod.uid] = _Assumption(placed, self._clock() + ASSUME_TTL)
            self._add_pod(placed)
            return placed

    def finish_binding(self, uid: str) -> None:
        """The Binding of an assumed pod succeeded: keep it until the watch confirms or deletes the pod
        (kube-scheduler's FinishBinding). No-op when the watch already confirmed it."""
        with self._lock:
            assumed = self._assumed.get(uid)
            if assumed is not None and assumed.bound_at is None:
                self._assumed[uid] = replace(assumed, bound_at=self._clock())

    def forget(self, uid: str) -> None:
        """Undo an assume whose bind failed."""
        with self._lock:
            if self._assumed.pop(uid, None) is not None and uid in self._pods:
                self._remove_pod(self._pods[uid])

    def expire_assumed(self) -> int:
        """Drop assumptions whose Binding has no known outcome and the watch never showed; bound ones stay."""
        now = self._clock()
        with self._lock:
            stale = [uid for uid, a in self._assumed.items() if a.bound_at is None and a.deadline < now]
            for uid in stale:
                self.forget(uid)
            return len(stale)

    def _add_pod(self, info: PodInfo) -> None:
        self._pods[info.uid] = info
        if info.holds_slices:
            self._account(info, +1)
        elif _waiting(info):
            self._wait(info, +1)

    def _remove_pod(self, info: PodInfo) -> None:
        self._pods.pop(info.uid, None)
        if info.holds_slices:
            self._account(info, -1)
        elif _waiting(info):
            self._wait(info, -1)

    def _wait(self, info: PodInfo, sign: int) -> None:
        for r, n in info.demand.items():
            self._pending[r] = self._pending.get(r, 0) + sign * n
            if self._pending[r] <= 0:
                del self._pending[r]
            if not info.created or n != 1:
                # no age known: it claims, but cannot make the queue look older. A pod asking for several
                # slices of one type waits for a node to free them all and can head its queue for hours
                # (8 x 7g on the Alibaba trace: 4,349 s): its age would keep every pod from aging
                continue
            waiters = self._waiters.setdefault(r, {})
            if sign > 0:
                waiters[info.uid] = info.created
                heapq.heappush(self._oldest.setdefault(r, []), (info.created, info.uid))
            else:
                waiters.pop(info.uid, None)
        # nodes and the free index are unchanged: keep their cached copy (snapshot() copies pending on
        # its own); only tell generation watchers (the reconciler) that something moved
        self.generation += 1

    def _account(self, info: PodInfo, sign: int) -> None:
        """Add (+1) or remove (-1) the slices ``info`` holds on its node, in total and per its priority."""
        node, priority = info.node, info.priority
        used = self._used.setdefault(node, {})
        held = self._held.setdefault(node, {})
        for r, n in info.demand.items():
            used[r] = used.get(r, 0) + sign * n
            if used[r] == 0:
                del used[r]
            by = held.setdefault(r, {})
            by[priority] = by.get(priority, 0) + sign * n
            if by[priority] == 0:
                del by[priority]
                if not by:
                    del held[r]
        self._priorities[priority] = self._priorities.get(priority, 0) + sign
        if self._priorities[priority] == 0:
            del self._priorities[priority]
        if node in self._nodes:
            self._set_node(node, self._nodes[node])
        else:
            self._changed()

    def _changed(self) -> None:
        self._frozen = None
        self.generation += 1

    # -- reads ------------------------------------------------------------------------------------

    def pod(self, uid: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get(uid)

    def pods(self) -> list[PodInfo]:
        with self._lock:
            return list(self._pods.values())

    def gpu_problems(self) -> dict[str, GpuProblem]:
        """Nodes with MIG slices whose GPU is unknown or whose slices are not its model's (a copy)."""
        with self._lock:
            return dict(self._gpu_problems)

    def snapshot(self, rules: Iterable[Rule] | RuleBook = (), now: float | None = None,
                 usage: bool = False) -> ClusterSnapshot:
        """The cached snapshot; ``usage=True`` first folds in cpu/memory changes of pods without MIG
        (for placement checks; the filter does not need them and keeps its cache). ``rules``: a rule
        store's ``book(now)`` (indexed once per store state) or the rules themselves."""
        now = self._clock() if now is None else now
        book = RuleBook.at(rules, now)
        with self._lock:
            if self._usage_dirty and (usage or self._frozen is None):
                self._fold_usage()
            if self._frozen is None:
                nodes, index = dict(self._nodes), {r: frozenset(s) for r, s in self._index.items() if s}
                # one FreeOrder per inventory state: the substitute search's sort is paid once, not per call
                self._frozen = (nodes, index, frozenset(self._cordoned), FreeOrder(nodes, index))
            nodes, index, cordoned, order = self._frozen
            synced, pending = self.synced, dict(self._pending)
            since = self._pending_since()
            lowest = min(self._priorities, default=NO_HOLDER)  # a handful of distinct priorities at most
            held, recorded = frozenset(self._holding), frozenset(self._repartitioning)
            unrestarted = frozenset(r.bound_pod for r in book.restoring
                                    if (p := self._pods.get(r.bound_pod)) is not None and not p.terminating)
        return ClusterSnapshot.build(nodes, index, book, now, synced, pending, lowest, cordoned, since, order,
                                     held, recorded, unrestarted)

    def _pending_since(self) -> dict[str, float]:
        """resource -> creation time of its oldest waiting pod; heap entries of pods gone are dropped here."""
        out = {}
        for r, heap in list(self._oldest.items()):
            waiters = self._waiters.get(r, {})
            while heap and waiters.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)
            if heap:
                out[r] = heap[0][0]
            else:
                del self._oldest[r]
                self._waiters.pop(r, None)
        return out


def load_list(inventory: ClusterInventory, doc: Mapping[str, Any]) -> int:
    """Fill ``inventory`` from a ``kubectl get nodes,pods -A -o json`` v1 List; returns objects read."""
    items = doc.get("items")
    if not isinstance(items, list):
        raise ValueError("snapshot file must be a v1 List with an 'items' array (kubectl get nodes,pods -A -o json)")
    nodes = [o for o in items if isinstance(o, Mapping) and o.get("kind") == "Node"]
    pods = [o for o in items if isinstance(o, Mapping) and o.get("kind") == "Pod"]
    inventory.replace_nodes(nodes)
    inventory.replace_pods(pods)
    inventory.synced = True
    return len(nodes) + len(pods)
