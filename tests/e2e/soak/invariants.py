"""The soak's invariants: each a small class, checked on a period (``check``), at quiet points (``quiet``:
no churn, no fault, the cluster settled) and once at the end (``final``). A violation carries what was
seen and the history around it, so it can be chased from the seed.

The checks read the soak's own observations (the pod watch in ledger.py, MigSubstitutions, Jobs and
Events listed from the API, the fake kubelet's admission record), and compare the product's books
(``/debug/inventory``) against a recount, never the product's books against themselves. Rule
reservations are recomputed from the documented phases (core/rules.py's diagram), not by calling Rule.

Must not: change the cluster.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mig_extender.core.catalog import model, resource_profile_name, substitutes
from mig_extender.core.repartition import LABEL_MIG_CONFIG, LABEL_MIG_CONFIG_STATE, LABEL_REPARTITION
from mig_extender.core.repartition_change import ANN_CHANGE, ANN_LAST
from mig_extender.core.resources import ANN_RULE, parse_time

from ..testenv.stack import GROUP, PLURAL, VERSION
from .ledger import PodRecord
from .repartition import CONFIGS, SETTLE, SLACK, TIMEOUT
from .world import GPU, PROFILES, NodeState, SoakWorld, mig_demand

PENDING_LIMIT_S = 30.0   # invariant 4: "no pod stays Pending for more than N seconds while..."
LOST_AFTER_S = 60.0      # invariant 2: a bare pod the product deleted is back within this
EXPIRY_GRACE_S = 30.0    # invariant 5: an expired rule leaves its active phase within this
GONE_GRACE_S = 30.0      # invariant 5: a rule whose pod is gone finishes within this
LOOP_LIMIT = 2           # invariant 6: restarts by us per pod lineage per hour
ACTIVE = ("Recorded", "Applied", "Restoring")
RULE_IN_MESSAGE = re.compile(r"\(rule ([a-z0-9-]+)\)")


@dataclass(frozen=True)
class Violation:
    invariant: str
    t: float
    message: str
    context: tuple[str, ...] = ()

    def render(self, seed: int) -> str:
        lines = [f"[{self.invariant}] at {self.t:.1f} s (seed {seed}): {self.message}"]
        lines += [f"    {line}" for line in self.context]
        return "\n".join(lines)


# ---- what a check reads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleView:
    """A MigSubstitution as stored, read without the product's Rule class."""

    name: str
    phase: str
    pod_uid: str
    pod_name: str
    node: str
    original: tuple[str, int]
    substitute: tuple[str, int]
    restore_node: str
    applied_pod: str
    bound_pod: str
    restored_pod: str
    expires: float
    updated: float

    def reservation(self, now: float) -> tuple[str, str, int] | None:
        """(node, resource, count) held from other pods: the substitute on ``node`` while Recorded or
        Applied and not yet bound, the original on ``restore_node`` while Restoring; nothing once expired."""
        if now >= self.expires:
            return None
        if self.phase in ("Recorded", "Applied") and not self.bound_pod:
            return self.node, *self.substitute
        if self.phase == "Restoring" and self.restore_node:
            return self.restore_node, *self.original
        return None

    def __str__(self) -> str:
        return (f"rule {self.name} {self.phase} pod={self.pod_name}/{self.pod_uid[:8]} "
                f"{self.original[0].removeprefix('nvidia.com/mig-')}->{self.substitute[0].removeprefix('nvidia.com/mig-')}"
                f" node={self.node} restore_node={self.restore_node or '-'} bound={self.bound_pod[:8] or '-'} "
                f"restored={self.restored_pod[:8] or '-'} expires_in={self.expires - time.time():.0f}s")


def rule_view(obj: Mapping[str, Any]) -> RuleView:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}

    def count(part: Mapping[str, Any]) -> tuple[str, int]:
        return str(part.get("resource", "")), int(part.get("count", 0))

    return RuleView(
        name=meta["name"], phase=status.get("phase") or "Recorded", pod_uid=spec.get("podUID", ""),
        pod_name=spec.get("podName", ""), node=spec.get("nodeName", ""), original=count(spec.get("original") or {}),
        substitute=count(spec.get("substitute") or {}), restore_node=status.get("restoreNode", ""),
        applied_pod=status.get("appliedPod", ""), bound_pod=status.get("boundPod", ""),
        restored_pod=status.get("restoredPod", ""),
        expires=parse_time(status.get("expiresAt")) or parse_time(spec.get("expiresAt")),
        updated=parse_time(status.get("updatedAt")),
    )


@dataclass
class Observation:
    """One look at the cluster, shared by every invariant of a check."""

    t: float       # history time
    wall: float    # time.time(), for rule expiry
    mono: float    # time.monotonic(), for impairment windows
    pods: list[PodRecord]
    rules: list[RuleView]
    jobs: list[dict[str, Any]]
    events: list[dict[str, Any]]  # our restart Events (MigUpgrading, MigRestoring)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # the soak's Nodes as listed (JSON)

    def changing(self) -> set[str]:
        """Nodes that hold a repartition change record (every MIG slice there may be held)."""
        return {name for name, node in self.nodes.items() if ANN_CHANGE in _meta(node, "annotations")}


def observe(world: SoakWorld) -> Observation:
    """Read rules, Jobs and restart Events from the API (pods come from the watch)."""
    rules = world.custom.list_namespaced_custom_object(GROUP, VERSION, world.namespace, PLURAL)
    jobs = json.loads(world.batch.list_namespaced_job(world.namespace, _preload_content=False).data)
    events: list[dict[str, Any]] = []
    for reason in ("MigUpgrading", "MigRestoring"):
        listed = world.core.list_namespaced_event(world.namespace, field_selector=f"reason={reason}",
                                                  _preload_content=False)
        events += json.loads(listed.data).get("items") or []
    listed = json.loads(world.core.list_node(_preload_content=False).data)
    nodes = {n["metadata"]["name"]: n for n in listed.get("items") or () if n["metadata"]["name"] in world.nodes}
    parsed = []
    for obj in rules.get("items") or ():
        try:
            parsed.append(rule_view(obj))
        except (KeyError, TypeError, ValueError):
            continue  # a malformed rule is the product's to report; the leak check cannot read it
    return Observation(world.history.now(), time.time(), time.monotonic(), world.ledger.pods(), parsed,
                       jobs.get("items") or [], events, nodes)


def _meta(obj: Mapping[str, Any], part: str) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get(part) or {}


def reservations(rules: Iterable[RuleView], now: float) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for rule in rules:
        held = rule.reservation(now)
        if held is not None:
            node, resource, n = held
            per_node = out.setdefault(node, {})
            per_node[resource] = per_node.get(resource, 0) + n
    return out


def _history(world: SoakWorld, text: str, count: int = 15) -> list[str]:
    return [f"history: {entry}" for entry in world.history.mentioning(text, count)]


class Invariant:
    key = ""
    title = ""

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        return []

    def quiet(self, world: SoakWorld) -> list[Violation]:
        return []

    def final(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        return self.check(obs, world)

    def violation(self, obs_t: float, message: str, context: Iterable[str] = ()) -> Violation:
        return Violation(self.key, obs_t, message, tuple(context))


# ---- 1 ---------------------------------------------------------------------------------------------


class NoOvercommit(Invariant):
    """The fake kubelet admits against allocatable like a kubelet: a pod it rejected for lack of a MIG
    resource was placed where the slices were not free."""

    key, title = "1-no-overcommit", "no over-commit, ever (the fake kubelet's admission record)"

    def __init__(self, since: int) -> None:
        self.cursor = since

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        decisions = world.cluster.fake_kubelet.decisions(self.cursor)
        self.cursor += len(decisions)
        out = []
        ours = set(world.nodes) | world.removed_nodes
        for d in decisions:
            if d.admitted or not d.reason.startswith("OutOf") or d.node not in ours:
                continue
            node = world.nodes.get(d.node)
            holders = [f"{p.name} {dict(p.demand)}" for p in obs.pods if p.node == d.node and p.holds_slices]
            allocatable = node.allocatable if node else "removed"
            context = [f"admission: {d}", f"node allocatable (soak's record): {allocatable}",
                       f"pods on the node: {holders}", *_history(world, d.node), *_history(world, d.name, 8)]
            out.append(self.violation(obs.t, f"{d.namespace}/{d.name} rejected on {d.node}: {d.message}", context))
        return out


# ---- 2 ---------------------------------------------------------------------------------------------


class NoPodLost(Invariant):
    """Bare pods the product deleted come back exactly once; no controller slot holds two live pods; at
    the end every workload has the pods it wants (existing, not necessarily Running: that is 4's job).

    A controller short of pods at the end is the product's doing only if the product restarted one of its
    pods: a controller that did not replace a pod the soak deleted is lagging (seen: kube-controller-
    manager's ReplicaSet controller refusing to sync for minutes after an API server restart, "read
    version ... is not as new as written version"), which is recorded in the history, not blamed on us."""

    key, title = "2-no-pod-lost", "no pod lost, none duplicated"

    def __init__(self) -> None:
        self.reported: set[str] = set()

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = self._bare(obs, world) + self._duplicates(obs, world)
        return out

    def _bare(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = []
        for name, slot in world.ledger.bare_slots().items():
            if name in world.uncertain:
                continue
            if slot.product_created > slot.product_deleted and self._first(f"dup:{name}:{slot.created}"):
                out.append(self.violation(obs.t, f"bare pod {name}: created {slot.product_created} time(s) by the "
                                                 f"product for {slot.product_deleted} deletion(s) by it "
                                                 "(a duplicate, or a pod the user deleted brought back)",
                                          [f"slot: {slot}", *_history(world, name)]))
            overdue = obs.t - slot.last_product_delete > LOST_AFTER_S
            quiet = not world.impaired("reconciler", since=obs.mono - LOST_AFTER_S)
            if (slot.product_deleted > slot.product_created and overdue and quiet
                    and self._first(f"lost:{name}:{slot.deleted}")):
                out.append(self.violation(obs.t, f"bare pod {name}: deleted by the product at "
                                                 f"{slot.last_product_delete:.1f} s and not created again within "
                                                 f"{LOST_AFTER_S:.0f} s", [f"slot: {slot}", *_history(world, name)]))
        return out

    def _duplicates(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        by_slot: dict[str, list[PodRecord]] = {}
        for pod in obs.pods:
            if pod.live and pod.slot:
                by_slot.setdefault(pod.slot, []).append(pod)
        out = []
        for slot, pods in by_slot.items():
            if len(pods) > 1 and self._first(f"slot:{slot}:{','.join(sorted(p.uid for p in pods))}"):
                context = [f"{p.name} uid={p.uid[:8]} node={p.node or '-'} phase={p.phase}" for p in pods]
                out.append(self.violation(obs.t, f"{len(pods)} live pods for one slot {slot}",
                                          context + _history(world, pods[0].name)))
        return out

    def final(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = self.check(obs, world)
        live: dict[str, int] = {}
        for pod in obs.pods:
            if pod.live:
                live[pod.app] = live.get(pod.app, 0) + 1
        jobs = {j["metadata"]["name"]: j for j in obs.jobs}
        for w in world.live_workloads():
            want = w.replicas
            if w.kind == "Job":
                job = jobs.get(w.name)
                if job is None or _job_finished(job):
                    continue
                status = job.get("status") or {}
                want = min(w.replicas, w.completions - int(status.get("succeeded") or 0))
            have = live.get(w.name, 0)
            if have == want:
                continue
            restarted = {(e.get("involvedObject") or {}).get("uid") for e in obs.events}
            ours = [p for p in world.ledger.records() if p.app == w.name and p.ended is not None
                    and p.uid in restarted]
            if w.kind == "Pod" or ours or have > want:
                out.append(self.violation(obs.t, f"{w.key} wants {want} pod(s), {have} live at the end"
                                                 + (f" ({len(ours)} restarted by us)" if ours else ""),
                                          _history(world, w.name, 25)))
            else:
                world.history.record("observe", "controller-short", workload=w.key, want=want, live=have)
        return out

    def _first(self, key: str) -> bool:
        if key in self.reported:
            return False
        self.reported.add(key)
        return True


def _job_finished(job: Mapping[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")
               and c.get("status") == "True" for c in (job.get("status") or {}).get("conditions") or ())


# ---- 3 ---------------------------------------------------------------------------------------------


class NoJobFailed(Invariant):
    """A Job fails only because of what the soak did to it (a pod it deleted), never because of us."""

    key, title = "3-no-job-failed", "no Job failed because of us"

    def __init__(self) -> None:
        self.reported: set[str] = set()

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = []
        for job in obs.jobs:
            name = job["metadata"]["name"]
            status = job.get("status") or {}
            failed = next((c for c in status.get("conditions") or ()
                           if c.get("type") == "Failed" and c.get("status") == "True"), None)
            if failed is None or name in self.reported or name in world.harness_disrupted_jobs:
                continue
            self.reported.add(name)
            w = world.workloads.get(f"Job/{name}")
            spec = job.get("spec") or {}
            context = [f"job spec: backoffLimit={spec.get('backoffLimit')} podFailurePolicy="
                       f"{'yes' if spec.get('podFailurePolicy') else 'no'} shape={w.shape.describe() if w else '?'}",
                       f"job status: failed={status.get('failed')} succeeded={status.get('succeeded')} "
                       f"reason={failed.get('reason')}: {failed.get('message')}",
                       *[f"restart event: {_event_line(e)}" for e in obs.events
                         if (e.get("involvedObject") or {}).get("name", "").startswith(name)],
                       *_history(world, name, 25)]
            out.append(self.violation(obs.t, f"Job {name} failed ({failed.get('reason')})", context))
        return out


def _event_line(event: Mapping[str, Any]) -> str:
    obj = event.get("involvedObject") or {}
    return f"{event.get('reason')} on {obj.get('name')} ({str(obj.get('uid'))[:8]}): {event.get('message') or ''}"


# ---- 4 ---------------------------------------------------------------------------------------------


def _compatible() -> dict[str, tuple[str, ...]]:
    """Profile -> the profiles the catalog lets stand in for it on the soak's GPU (its larger ones)."""
    gpu = model(GPU)
    out = {}
    for r in PROFILES:
        subs = {p.resource for p in substitutes(gpu, resource_profile_name(r))}
        out[r] = tuple(s for s in PROFILES if s in subs)
    return out


COMPATIBLE = _compatible()


def _usable(node: NodeState, pod: PodRecord) -> bool:
    if node.cordoned:
        return False
    return all(node.pool == v for k, v in pod.selector.items() if k == "mig-soak/pool")


@dataclass
class FreeSlices:
    """Free slices per node (allocatable - held by pods - reserved by rules), from the soak's own view."""

    free: dict[str, dict[str, int]]
    pending: dict[str, int]  # resource -> slices waiting pods want exactly

    def spare(self, resource: str) -> int:
        return sum(max(per.get(resource, 0), 0) for per in self.free.values()) - self.pending.get(resource, 0)


def free_slices(obs: Observation, world: SoakWorld) -> FreeSlices:
    """A node with a repartition change record has nothing free: the change holds every MIG slice there
    until the MIG manager reports success (invariant 8 checks that nothing lands meanwhile)."""
    used = world.ledger.used()
    held = reservations(obs.rules, obs.wall)
    changing = obs.changing()
    free = {}
    for name, node in world.nodes.items():
        if node.cordoned or name in changing:
            continue
        free[name] = {r: n - used.get(name, {}).get(r, 0) - held.get(name, {}).get(r, 0)
                      for r, n in node.allocatable.items()}
    pending: dict[str, int] = {}
    for pod in obs.pods:
        if pod.waiting:
            for r, n in pod.demand.items():
                pending[r] = pending.get(r, 0) + n
    return FreeSlices(free, pending)


def where_it_fits(pod: PodRecord, obs: Observation, world: SoakWorld, slices: FreeSlices) -> list[str]:
    """Nodes (with the resource) where ``pod`` could run now: its own type free, or, for a pod that may be
    substituted, a compatible larger type free that no waiting pod wants for itself."""
    own = _own_reservation(pod, obs)
    spots = []
    for name, free in slices.free.items():
        node = world.nodes[name]
        if not _usable(node, pod):
            continue
        mine = {own[1]: own[2]} if own and own[0] == name else {}
        if all(free.get(r, 0) + mine.get(r, 0) >= n for r, n in pod.demand.items()):
            spots.append(f"{name}:{'+'.join(pod.demand)}")
            continue
        if len(pod.demand) != 1 or not pod.may_substitute or pod.rewritten:
            continue
        ((want, n),) = pod.demand.items()
        for sub in COMPATIBLE.get(want, ()):
            if free.get(sub, 0) >= n and slices.spare(sub) >= n:
                spots.append(f"{name}:{sub}")
    return spots


def _own_reservation(pod: PodRecord, obs: Observation) -> tuple[str, str, int] | None:
    rule_name = pod.annotations.get(ANN_RULE)
    rule = next((r for r in obs.rules if r.name == rule_name), None) if rule_name else None
    return rule.reservation(obs.wall) if rule is not None else None


class NoStuckPending(Invariant):
    """An unbound pod does not wait longer than PENDING_LIMIT_S while a slice it may use is free on a node
    it may use (and no reservation holds it), counting only time when scheduling was not impaired."""

    key, title = "4-no-stuck-pending", f"no pod Pending > {PENDING_LIMIT_S:.0f} s while a usable slice is free"

    def __init__(self, limit: float = PENDING_LIMIT_S) -> None:
        self.limit = limit
        self.since: dict[str, float] = {}
        self.reported: set[str] = set()

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        slices = free_slices(obs, world)
        out = []
        waiting = {p.uid: p for p in obs.pods if p.waiting}
        for uid in set(self.since) - set(waiting):
            del self.since[uid]
        for uid, pod in waiting.items():
            spots = where_it_fits(pod, obs, world, slices)
            start = self.since.get(uid)
            if not spots or world.impaired("scheduling"):
                self.since.pop(uid, None)
                continue
            if start is None or world.impaired("scheduling", since=start):
                self.since[uid] = obs.mono
                continue
            if obs.mono - start > self.limit and uid not in self.reported:
                self.reported.add(uid)
                out.append(self.violation(obs.t, f"pod {pod.name} ({dict(pod.demand)}) Pending for "
                                                 f"{obs.mono - start:.0f} s while free: {spots}",
                                          self._context(pod, world, slices, spots)))
        return out

    @staticmethod
    def _context(pod: PodRecord, world: SoakWorld, slices: FreeSlices, spots: list[str]) -> list[str]:
        lines = [f"pod: selector={dict(pod.selector)} annotations={dict(pod.annotations)} owner={pod.owner_kind}",
                 f"free slices per node: {slices.free}", f"waiting demand: {slices.pending}"]
        for node in sorted({spot.split(":")[0] for spot in spots}):
            try:
                (entry,) = world.stack.extender.inventory(node)["nodes"]
                lines.append(f"extender's books for {node}: {entry['resources']}")
            except Exception as exc:
                lines.append(f"(could not read the extender's books for {node}: {exc})")
        try:
            current = world.core.read_namespaced_pod(pod.name, world.namespace)
            for c in current.status.conditions or ():
                if c.type == "PodScheduled":
                    lines.append(f"PodScheduled={c.status} {c.reason}: {(c.message or '')[:400]}")
        except Exception as exc:
            lines.append(f"(could not read the pod: {exc})")
        return lines + _history(world, pod.name)


# ---- 5 ---------------------------------------------------------------------------------------------


class NoRuleLeak(Invariant):
    """Every rule reaches a terminal phase or is deleted, and the extender holds no reservation that the
    rules do not explain."""

    key, title = "5-no-rule-leak", "no rule leaks; reservations released"

    def __init__(self) -> None:
        self.reported: set[str] = set()

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = self._claimed_twice(obs, world)
        for rule in obs.rules:
            late = obs.wall - rule.expires
            if (rule.phase in ACTIVE and not (rule.phase == "Applied" and rule.bound_pod)
                    and late > EXPIRY_GRACE_S and not world.impaired("reconciler", since=obs.mono - EXPIRY_GRACE_S)
                    and self._first(f"expired:{rule.name}")):
                out.append(self.violation(obs.t, f"rule {rule.name} still {rule.phase} {late:.0f} s after it "
                                                 f"expired", [str(rule), *_history(world, rule.pod_name)]))
        return out

    def _claimed_twice(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        """One upgraded pod carries one rule, and one restored pod finishes one restore: a pod two rules
        count as theirs means one of them finished (or holds a reservation) for a pod that is not its own."""
        out = []
        for field_name in ("bound_pod", "restored_pod"):
            owners: dict[str, list[RuleView]] = {}
            for rule in obs.rules:
                if getattr(rule, field_name):
                    owners.setdefault(getattr(rule, field_name), []).append(rule)
            for uid, rules in owners.items():
                if len(rules) > 1 and self._first(f"twice:{field_name}:{uid}"):
                    pod = world.ledger.get(uid)
                    out.append(self.violation(obs.t, f"pod {pod.name if pod else '?'} ({uid[:8]}) is the "
                                                     f"{field_name.replace('_', ' ')} of {len(rules)} rules: "
                                                     + ", ".join(r.name for r in rules),
                                              [str(r) for r in rules] + _history(world, rules[0].pod_name)))
        return out

    def final(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = self.check(obs, world)
        for rule in obs.rules:
            if rule.phase != "Applied" or not rule.bound_pod:
                continue
            pod = world.ledger.get(rule.bound_pod)
            if pod is not None and pod.ended is not None and obs.t - pod.ended > GONE_GRACE_S \
                    and self._first(f"gone:{rule.name}"):
                out.append(self.violation(obs.t, f"rule {rule.name} still Applied {obs.t - pod.ended:.0f} s after "
                                                 f"its pod {pod.name} ({rule.bound_pod[:8]}) was deleted "
                                                 f"(by {pod.deleted_by}): it never finishes",
                                          [str(rule), *_history(world, pod.name, 10)]))
        return out

    def quiet(self, world: SoakWorld) -> list[Violation]:
        """The extender's reserved slices equal the rules' reservations (sampled until both are stable)."""
        last: list[str] = []
        for _ in range(6):
            before = observe(world).rules
            inventory = world.stack.extender.inventory()
            after = observe(world).rules
            now = time.time()
            if before != after:
                time.sleep(1.0)
                continue
            # expiry times are stored to the second: a rule about to expire may be counted either way
            near_expiry = {n for r in after if abs(r.expires - now) < 3 for n in (r.node, r.restore_node)}
            expected = reservations(after, now)
            # a repartition holds all of a node's slices (invariants 8-10 judge those nodes)
            changing = changing_nodes(world)
            last = _reserved_diff(inventory, expected, world, skip=near_expiry | changing)
            if not last:
                return []
            time.sleep(1.0)
        if not last:
            return []
        nodes = {line.split()[0] for line in last}
        held = [f"extender's rule {r['name']} {r['phase']} reserves {r['reserved']}"
                for r in world.stack.extender.rules() if (r.get("reserved") or {}).get("node") in nodes]
        rules = {r["name"] for r in world.stack.extender.rules()}
        gone = [f"(not in the API: {name})" for name in sorted(rules - {r.name for r in observe(world).rules})]
        return [self.violation(world.history.now(), "the extender's reservations differ from the rules' "
                                                    "(node resource: extender != rules)", last + held + gone)]

    def _first(self, key: str) -> bool:
        if key in self.reported:
            return False
        self.reported.add(key)
        return True


def _reserved_diff(inventory: Mapping[str, Any], expected: Mapping[str, Mapping[str, int]], world: SoakWorld,
                   skip: set[str]) -> list[str]:
    diff = []
    for entry in inventory.get("nodes") or ():
        name = entry["node"]
        if name not in world.nodes or name in skip:
            continue
        for r, numbers in (entry.get("resources") or {}).items():
            want = expected.get(name, {}).get(r, 0)
            if numbers.get("reserved", 0) != want:
                diff.append(f"{name} {r}: {numbers.get('reserved', 0)} != {want}")
    return diff


# ---- 6 ---------------------------------------------------------------------------------------------


class NoRestartLoop(Invariant):
    """A pod and its successors (one lineage: the pod a rule was recorded for, its upgraded replacement,
    the restored one after it, and so on) are restarted by us at most LOOP_LIMIT times an hour.

    Restarts are our MigUpgrading / MigRestoring Events, one per restarted pod uid (two leaders announcing
    the same restart count once: a pod can be restarted only once). Lineages are linked through the rules
    (podUID -> boundPod -> restoredPod) and, for pods that keep their name (bare pods, StatefulSet pods),
    from each pod to the next one of that name, unless the soak itself deleted the first (then the next is
    a new workload instance, not a restart by us); links are remembered across checks because finished
    rules are deleted."""

    key, title = "6-no-restart-loop", f"a pod restarted at most {LOOP_LIMIT} times per hour by us"

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.restarted: dict[str, tuple[str, float]] = {}  # uid -> (reason, history time first seen)
        self.reported: set[str] = set()

    def _root(self, uid: str) -> str:
        while self.parent.get(uid, uid) != uid:
            uid = self.parent[uid]
        return uid

    def _link(self, a: str, b: str) -> None:
        if a and b:
            ra, rb = self._root(a), self._root(b)
            if ra != rb:
                self.parent[rb] = ra

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        claims = Counter(p for r in obs.rules for p in (r.bound_pod, r.restored_pod) if p)
        twice = {uid for uid, n in claims.items() if n > 1}  # invariant 5 reports those: never link through one
        for rule in obs.rules:
            if rule.bound_pod not in twice:
                self._link(rule.pod_uid, rule.bound_pod)
            if rule.restored_pod not in twice:
                self._link(rule.bound_pod, rule.restored_pod)
        previous: dict[str, PodRecord] = {}
        for pod in world.ledger.records():
            if not pod.slot.startswith(("Pod/", "StatefulSet/")):
                continue
            before = previous.get(pod.slot)
            if before is not None and before.deleted_by != "harness":
                self._link(before.uid, pod.uid)
            previous[pod.slot] = pod
        for event in obs.events:
            uid = (event.get("involvedObject") or {}).get("uid", "")
            if uid and uid not in self.restarted:
                self.restarted[uid] = (f"{event.get('reason')} {(event.get('involvedObject') or {}).get('name')}",
                                       obs.t)
        lineages: dict[str, list[str]] = {}
        for uid, (_, seen) in self.restarted.items():
            if obs.t - seen < 3600:
                lineages.setdefault(self._root(uid), []).append(uid)
        out = []
        for root, uids in lineages.items():
            if len(uids) > LOOP_LIMIT and root not in self.reported:
                self.reported.add(root)
                steps = sorted((self.restarted[u][1], self.restarted[u][0], u) for u in uids)
                context = [f"{t:.1f} s {what} ({u[:8]})" for t, what, u in steps]
                context += [str(r) for r in obs.rules if self._root(r.pod_uid) == root]
                out.append(self.violation(obs.t, f"{len(uids)} restarts in one pod lineage within the hour: "
                                                 + ", ".join(what for _, what, _ in steps), context))
        return out


# ---- 7 ---------------------------------------------------------------------------------------------


def recount(world: SoakWorld) -> dict[str, dict[str, int]]:
    """node -> MIG resource -> slices held, from a fresh list of every pod on the soak's nodes."""
    listed = json.loads(world.core.list_pod_for_all_namespaces(_preload_content=False).data)
    used: dict[str, dict[str, int]] = {name: {} for name in world.nodes}
    for pod in listed.get("items") or ():
        node = (pod.get("spec") or {}).get("nodeName")
        if node in used and ((pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")):
            for r, n in mig_demand(pod).items():
                used[node][r] = used[node].get(r, 0) + n
    return used


class BooksMatch(Invariant):
    """At a quiet point the extender's books (``/debug/inventory``: used and allocatable per node and
    profile) equal a recount from the API."""

    key, title = "7-books-match", "the extender's books equal a recount at quiet points"

    def quiet(self, world: SoakWorld) -> list[Violation]:
        last: list[str] = []
        for _ in range(6):
            before = recount(world)
            inventory = world.stack.extender.inventory()
            after = recount(world)
            if before != after:
                time.sleep(1.0)
                continue  # not quiet after all: pods still moving
            last = _books_diff(inventory, after, world, changing=changing_nodes(world))
            if not last:
                return []
            time.sleep(1.0)
        if not last:
            return []
        return [self.violation(world.history.now(), "the extender's books differ from a recount "
                                                    "(node resource: extender != recount)", last)]


def _books_diff(inventory: Mapping[str, Any], used: Mapping[str, Mapping[str, int]], world: SoakWorld,
                changing: Collection[str] = ()) -> list[str]:
    diff = []
    seen = set()
    for entry in inventory.get("nodes") or ():
        name = entry["node"]
        seen.add(name)
        if name in world.removed_nodes:
            diff.append(f"{name}: removed, still in the extender's books")
            continue
        node = world.nodes.get(name)
        if node is None:
            continue
        resources = entry.get("resources") or {}
        for r in set(resources) | set(node.allocatable) | set(used.get(name, {})):
            numbers = resources.get(r, {})
            if numbers.get("used", 0) != used.get(name, {}).get(r, 0):
                diff.append(f"{name} {r} used: {numbers.get('used', 0)} != {used.get(name, {}).get(r, 0)}")
            if numbers.get("allocatable", 0) != node.allocatable.get(r, 0) and name not in changing:
                # (a node under a repartition: the MIG manager moves its allocatable while we read)
                diff.append(f"{name} {r} allocatable: {numbers.get('allocatable', 0)} != {node.allocatable.get(r, 0)}")
    diff += [f"{name}: missing from the extender's books" for name in world.nodes if name not in seen]
    return diff


# ---- 8, 9, 10: the repartitioner -------------------------------------------------------------------


def changing_nodes(world: SoakWorld) -> set[str]:
    """The soak's nodes holding a repartition change record now (read from the API)."""
    listed = json.loads(world.core.list_node(_preload_content=False).data)
    return {n["metadata"]["name"] for n in listed.get("items") or ()
            if n["metadata"]["name"] in world.nodes and ANN_CHANGE in _meta(n, "annotations")}


def _change(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The change record on a Node as stored (JSON), read without the product's Change class."""
    text = _meta(node, "annotations").get(ANN_CHANGE)
    if not text:
        return None
    try:
        record = json.loads(text)
        float(record["started"])
        return record
    except (ValueError, TypeError, KeyError):
        return {"started": 0.0, "phase": "unreadable"}


def _bound_at(pod: Mapping[str, Any]) -> float | None:
    """When the scheduler bound the pod: its PodScheduled=True condition's time (whole seconds)."""
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "PodScheduled" and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime")) or None
    return None


class NoBindWhileApplying(Invariant):
    """No MIG pod is bound to a node while our change there is ``applying`` and the MIG manager has not
    reported ``success`` (the node is held: the device plugin is paused or about to be, and the GPU
    instances a pod would use are about to be destroyed), or ``rolling_back`` whatever the state (the MIG
    manager may still apply the value set back), unless it was bound before the reservation.

    Pods are listed from the API, then the Node is read again: only if it still shows the same record,
    still without ``success``, was each pod listed bound while the node was held (the state only moves
    forward within one record). "Bound after the reservation" compares the pod's PodScheduled time
    (whole seconds) with the record's start, rounded down: a pod bound in the second before counts too,
    and it should not be there either (the fresh pod list before the label write refuses such a node)."""

    key, title = "8-no-bind-while-applying", "no MIG pod bound to a node our change holds"

    def __init__(self) -> None:
        self.reported: set[str] = set()

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = []
        for name, node in obs.nodes.items():
            record = _change(node)
            if record is None:
                continue
            rolling_back = record.get("phase") == "rolling_back"
            if not rolling_back and (record.get("phase") != "applying" or _state(node) == "success"):
                continue
            listed = world.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}",
                                                            _preload_content=False)
            pods = json.loads(listed.data).get("items") or []
            fresh = json.loads(world.core.read_node(name, _preload_content=False).data)
            same = _meta(fresh, "annotations").get(ANN_CHANGE) == _meta(node, "annotations").get(ANN_CHANGE)
            if not same or (_state(fresh) == "success" and not rolling_back):
                continue  # the change moved on meanwhile: the next check looks again
            started = float(record["started"])
            for pod in pods:
                meta, status = pod["metadata"], pod.get("status") or {}
                bound = _bound_at(pod)
                if (not mig_demand(pod) or status.get("phase") in ("Succeeded", "Failed") or bound is None
                        or bound < int(started) or meta["uid"] in self.reported):
                    continue
                self.reported.add(meta["uid"])
                out.append(self.violation(
                    obs.t, f"pod {meta['name']} ({dict(mig_demand(pod))}) bound to {name} at {bound:.0f} while our "
                           f"change there is {record.get('phase')} (reserved at {started:.1f}, state "
                           f"{_state(fresh) or 'none'})",
                    [f"change record: {_meta(fresh, 'annotations').get(ANN_CHANGE)}",
                     f"node labels: mig.config={_meta(fresh, 'labels').get(LABEL_MIG_CONFIG)}",
                     *_history(world, name, 12), *_history(world, meta["name"], 8)]))
        return out


def _state(node: Mapping[str, Any]) -> str:
    return _meta(node, "labels").get(LABEL_MIG_CONFIG_STATE, "")


class ChangeBounded(Invariant):
    """No change record lives longer than settle + 2 x timeout + SLACK (the record's own start, the same
    machine's clock; a rollback keeps the node held up to a second timeout), unless the reconciler was
    down or coming back meanwhile: a record the actuator never ends keeps the node out of scheduling for
    good. Also counts the changes it saw and how each
    ended (the node's ``repartition-last`` outcome; none: aborted without a cooldown)."""

    key, title = "9-change-bounded", "every repartition change ends within settle + 2 x timeout"

    def __init__(self, settle: float, timeout: float, slack: float) -> None:
        self.limit = settle + 2 * timeout + slack
        self.slack = slack
        self.live: dict[tuple[str, float], bool] = {}  # (node, started) -> seen applying
        self.started = 0
        self.applied = 0
        self.outcomes: Counter[str] = Counter()
        self.reported: set[tuple[str, float]] = set()

    def check(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = []
        current: dict[tuple[str, float], bool] = {}
        for name, node in obs.nodes.items():
            record = _change(node)
            if record is None:
                continue
            key = (name, float(record["started"]))
            applying = record.get("phase") == "applying" or self.live.get(key, False)
            current[key] = applying
            if key not in self.live:
                self.started += 1
                world.history.record("observe", "change+", node=name, config=record.get("config"),
                                     previous=record.get("previous"), phase=record.get("phase"))
            if applying and not self.live.get(key, False):
                self.applied += 1
            age = obs.wall - key[1]
            if (age > self.limit and key not in self.reported
                    and not world.impaired("reconciler", since=obs.mono - self.slack)):
                self.reported.add(key)
                out.append(self.violation(obs.t, f"change on {name} still recorded {age:.0f} s after it started "
                                                 f"(limit {self.limit:.0f} s): {record.get('phase')}, state "
                                                 f"{_state(node) or 'none'}",
                                          [f"change record: {_meta(node, 'annotations').get(ANN_CHANGE)}",
                                           *_history(world, name, 20)]))
        for (name, started), applying in self.live.items():
            if (name, started) in current:
                continue
            outcome = _last_outcome(obs.nodes.get(name), started) or ("gone" if name not in obs.nodes else "aborted")
            self.outcomes[outcome] += 1
            if not applying and outcome == "success":
                self.applied += 1  # applied and finished between two checks
            world.history.record("observe", "change-", node=name, outcome=outcome, applied=applying)
        self.live = current
        return out


def _last_outcome(node: Mapping[str, Any] | None, started: float) -> str:
    """How the change started at ``started`` ended, from the node's ``repartition-last`` ('' if unknown)."""
    if node is None:
        return ""
    try:
        last = json.loads(_meta(node, "annotations").get(ANN_LAST) or "{}")
        return str(last["outcome"]) if float(last["at"]) >= started else ""
    except (ValueError, TypeError, KeyError):
        return ""


class NodesReleased(Invariant):
    """After the soak settled: no opted-in node still holds a change record or a hold in the extender's
    books, each one's ``nvidia.com/mig.config`` is a config the name map has, the MIG manager reports
    ``success`` for it, and the node advertises that config's layout."""

    key, title = "10-nodes-released", "opted-in nodes released, each in a named config, at the end"

    def __init__(self, configs: Mapping[str, tuple[str, ...]]) -> None:
        self.configs = configs

    def final(self, obs: Observation, world: SoakWorld) -> list[Violation]:
        out = []
        for name, node in obs.nodes.items():
            if _meta(node, "labels").get(LABEL_REPARTITION) != "true":
                continue
            problems = self._problems(name, node, world)
            if problems:
                out.append(self.violation(obs.t, f"opted-in node {name} at the end: " + "; ".join(problems),
                                          _history(world, name, 20)))
        return out

    def _problems(self, name: str, node: Mapping[str, Any], world: SoakWorld) -> list[str]:
        problems = []
        if ANN_CHANGE in _meta(node, "annotations"):
            problems.append(f"still holds a change record {_meta(node, 'annotations')[ANN_CHANGE]}")
        (entry,) = world.stack.extender.inventory(name)["nodes"] or [{}]
        reserved = {r: n["reserved"] for r, n in (entry.get("resources") or {}).items() if n.get("reserved")}
        if reserved:
            problems.append(f"the extender still reserves {reserved}")
        config = _meta(node, "labels").get(LABEL_MIG_CONFIG)
        if config not in self.configs:
            problems.append(f"nvidia.com/mig.config={config!r} is no config of the name map")
        elif _state(node) != "success":
            problems.append(f"nvidia.com/mig.config.state={_state(node) or 'none'} for {config}")
        else:
            gpus = int(_meta(node, "labels").get("nvidia.com/gpu.count", "1"))
            want = {f"nvidia.com/mig-{p}": n * gpus for p, n in Counter(self.configs[config]).items()}
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            have = {r: int(q) for r, q in allocatable.items() if r.startswith("nvidia.com/mig-") and q != "0"}
            if have != want:
                problems.append(f"advertises {have}, not {config}'s {want}")
        return problems


INVARIANTS: tuple[type[Invariant], ...] = (NoOvercommit, NoPodLost, NoJobFailed, NoStuckPending, NoRuleLeak,
                                           NoRestartLoop, BooksMatch)
REPARTITION_INVARIANTS: tuple[type[Invariant], ...] = (NoBindWhileApplying, ChangeBounded, NodesReleased)


def all_invariants(kubelet_mark: int, repartition: bool = False) -> list[Invariant]:
    """Every invariant; with ``repartition`` also those of the repartitioner (soak/repartition.py's knobs)."""
    out = [NoOvercommit(kubelet_mark), NoPodLost(), NoJobFailed(), NoStuckPending(), NoRuleLeak(),
           NoRestartLoop(), BooksMatch()]
    if repartition:
        out += [NoBindWhileApplying(), ChangeBounded(SETTLE, TIMEOUT, SLACK), NodesReleased(CONFIGS)]
    return out


@dataclass
class Verdict:
    """Violations per invariant: the first one in full, and how many there were."""

    first: dict[str, Violation] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, violations: Iterable[Violation]) -> list[Violation]:
        fresh = []
        for v in violations:
            self.counts[v.invariant] = self.counts.get(v.invariant, 0) + 1
            if v.invariant not in self.first:
                self.first[v.invariant] = v
                fresh.append(v)
        return fresh

    @property
    def total(self) -> int:
        return sum(self.counts.values())
