"""Substitution rules: the pure Rule value, its life cycle and which pods it applies to.

One rule carries one substitution through its whole life::

    Recorded --webhook rewrites the replacement pod--> Applied --pod bound--> Applied(bound)
        |                                                 |                       |   ^
        +--------- expiry (reservation released) -------> Expired                 |   | restart refused (PDB 429,
                                                             ^                    |   | bad replacement): original
                                                             | expiry             v   | released, retried after backoff
                           Restored <--replacement bound-- Restoring (original reserved on restore_node)

While Recorded the rule belongs to the pending pod it was recorded for. The reconciler marks it
(``restarting``: status.restartAt) just before it restarts that pod; only then may the webhook hand it to a
new pod of the workload (the replacement), claiming it (``claimed``: status.claimedUntil) with a
compare-and-swap so that of two webhook replicas admitting two pods at once only one hands it out.

Expired and Restored are final. ``TRANSITIONS`` lists every allowed (from, to) pair; the rule store's
``update_with_retry`` checks each write against it, on every retry, so a change decided on a stale copy
can never move a rule backwards (an Expired restore becoming Applied again).

While Recorded or Applied-but-unbound the rule reserves its substitute slice on ``node`` so no other
pending pod is promised it; while Restoring it reserves the original slice on ``restore_node`` so the
restarted pod never comes back to a full node. This module holds no storage (see cluster/rulestore.py) and
imports neither flask, kubernetes nor cachetools.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from .resources import Owner, PodInfo, ResourceCount, parse_time


class Phase(str, Enum):
    RECORDED = "Recorded"
    APPLIED = "Applied"
    EXPIRED = "Expired"
    RESTORING = "Restoring"
    RESTORED = "Restored"

    def __str__(self) -> str:
        return self.value


# Seconds of clock difference tolerated between the API server (creationTimestamp) and this process.
CLOCK_SKEW = 5.0

ACTIVE_PHASES = frozenset({Phase.RECORDED, Phase.APPLIED, Phase.RESTORING})

# Every allowed (from, to) phase pair: the diagram above as data. Same-phase writes of the active phases
# record progress within a phase (bound, restore attempts); the final phases are never written again.
TRANSITIONS = frozenset({
    (Phase.RECORDED, Phase.RECORDED), (Phase.RECORDED, Phase.APPLIED), (Phase.RECORDED, Phase.EXPIRED),
    (Phase.APPLIED, Phase.APPLIED), (Phase.APPLIED, Phase.RESTORING), (Phase.APPLIED, Phase.EXPIRED),
    (Phase.RESTORING, Phase.RESTORING), (Phase.RESTORING, Phase.RESTORED), (Phase.RESTORING, Phase.EXPIRED),
    (Phase.RESTORING, Phase.APPLIED),
})


class IllegalTransition(ValueError):
    """A write that would move a rule along an edge the phase machine does not have."""


def check_transition(before: Rule, after: Rule) -> None:
    """Raise IllegalTransition unless ``before`` -> ``after`` is an edge of the phase machine."""
    if (before.phase, after.phase) not in TRANSITIONS:
        raise IllegalTransition(f"rule {before.namespace}/{before.name}: {before.phase} -> {after.phase} "
                                "is not an allowed transition")


@dataclass(frozen=True)
class Rule:
    """A recorded substitution of ``original`` by ``substitute`` for one pod (or its replacement)."""

    name: str
    namespace: str
    pod_name: str
    pod_uid: str
    owner: Owner | None
    original: ResourceCount
    substitute: ResourceCount
    node: str
    created: float
    expires: float
    phase: Phase = Phase.RECORDED
    applied_pod: str = ""    # name of the replacement pod the webhook rewrote
    bound_pod: str = ""      # uid of the upgraded pod once bound (its reservation is then used up)
    restore_node: str = ""   # where the original type is reserved while Restoring
    restored_pod: str = ""   # uid of the pod whose restart began the restore
    updated: float = 0.0
    message: str = ""
    resource_version: str = ""
    stash: str = ""          # a bare pod's manifest waiting to be created again (JSON), see kube.KubeActions
    stash_of: str = ""       # uid of the pod the stash replaces (written with the stash)
    stash_deleted: bool = False  # our eviction of stash_of succeeded: only then is the pod ours to recreate
    restart_at: float = 0.0  # when the reconciler began restarting pod_uid: from then on its replacement may take it
    claimed_until: float = 0.0  # a webhook replica handed the rule to a new pod; others leave it alone until then
    restore_attempts: int = 0   # restarts for a restore that were refused (PDB, invalid replacement)
    retry_restore_at: float = 0.0  # no new restore attempt before this time (backoff after a refusal)
    unrewritten_at: float = 0.0  # its restart's replacement came back unrewritten (webhook down): expired then
    # creationTimestamp of the upgraded pod a restore moves back (the API server's clock, like every pod's):
    # its replacement is younger, so a sibling replica created no later than it is never the one (soak D8)
    restore_after: float = 0.0
    # uids of the lower-priority pods preempted so that this rule's slices free up (docs/preemption.md);
    # empty for a plain substitution. With substitute == original the rule is a *hold*: the pending pod
    # keeps its own profile and the rule only reserves the slices being freed for it (a nominated pod).
    victims: tuple[str, ...] = ()

    @property
    def is_preemption(self) -> bool:
        return bool(self.victims)

    @property
    def is_hold(self) -> bool:
        """A preemption for the pod's own profile: nothing to rewrite, nobody to restart, only a reservation."""
        return self.is_preemption and self.original == self.substitute

    # -- reservations -------------------------------------------------------------------------------

    def reservation(self, now: float) -> tuple[str, ResourceCount] | None:
        """(node, slices) this rule keeps from other pods at ``now``, or None."""
        if now >= self.expires:
            return None
        if self.phase in (Phase.RECORDED, Phase.APPLIED) and not self.bound_pod:
            return self.node, self.substitute
        if self.phase is Phase.RESTORING and self.restore_node:
            return self.restore_node, self.original
        return None

    def is_expired(self, now: float) -> bool:
        return self.phase in ACTIVE_PHASES and now >= self.expires and not (
            self.phase is Phase.APPLIED and self.bound_pod)

    # -- matching -----------------------------------------------------------------------------------

    def _same_workload(self, pod: PodInfo, name: str) -> bool:
        """Is ``pod`` the one its controller (or our reconciler) made to replace pod ``name``?

        Bare pods and StatefulSet pods come back under their name (a StatefulSet's siblings share its uid);
        every other controller may rename (ReplicaSet, Job, and operators listed in --restartable-owners
        such as RayCluster, whose workers get generated names), so the owner's uid decides."""
        if self.owner and self.owner.kind != "StatefulSet":
            return pod.owner is not None and pod.owner.uid == self.owner.uid
        return pod.name == name

    def _waits_for_workload_of(self, pod: PodInfo) -> bool:
        """Recorded for a pod of ``pod``'s workload with ``pod``'s demand, and not recorded for ``pod`` itself.
        Never a preemption hold: it belongs to its preemptor, which is not restarted or replaced."""
        return (self.phase is Phase.RECORDED and not self.is_hold and pod.namespace == self.namespace
                and pod.uid != self.pod_uid and self._same_workload(pod, self.pod_name)
                and pod.demand.get(self.original.resource) == self.original.count)

    def awaits_upgrade(self, pod: PodInfo) -> bool:
        """A Recorded rule waits for the replacement of the pending pod to rewrite it (webhook).

        Only once the reconciler has marked the pending pod's restart (``restarting``), and only for a pod
        created after that: a ReplicaSet's pods all carry the same owner uid, so without the mark a new
        pod of a scale-up took the pending pod's rule and the pending pod was never restarted. At admission
        a pod has no creationTimestamp yet (the API server sets it after the webhooks): it is being created
        now, after the mark the webhook sees. CLOCK_SKEW allows for the API server's clock against ours.
        """
        return (self.restart_at > 0 and self._waits_for_workload_of(pod)
                and (not pod.created or pod.created >= self.restart_at - CLOCK_SKEW))

    def is_claimed(self, now: float) -> bool:
        """Handed to a new pod by a webhook replica, and that pod may still be on its way (see ``claimed``)."""
        return now < self.claimed_until

    def awaits_restore(self, pod: PodInfo) -> bool:
        """A Restoring rule waits for the upgraded pod's replacement, which asks for the original type.

        Only a pod created after the restore began qualifies (a sibling replica that was already running
        is not the replacement); CLOCK_SKEW allows for the API server's clock against ours. A sibling
        created within CLOCK_SKEW of the reservation took the restore of a pod never restarted (soak D8), so
        two causal checks come on top: the replacement is younger than the upgraded pod (``restore_after``,
        both stamped by the API server: creationTimestamps have whole seconds, and a restore restarts a pod
        that has run for at least ``restore_confirm``), and the callers match nobody to a restore whose
        upgraded pod has not been restarted yet (``ClusterSnapshot.unrestarted``).
        """
        return (self.phase is Phase.RESTORING and pod.namespace == self.namespace
                and pod.uid != self.bound_pod and self._same_workload(pod, self.applied_pod or self.pod_name)
                and pod.demand.get(self.original.resource) == self.original.count
                and (not pod.created or (pod.created >= self.updated - CLOCK_SKEW
                                         and pod.created > self.restore_after)))

    def reserved_for(self, pod: PodInfo) -> bool:
        """May ``pod`` use this rule's reservation? The rewritten replacement carries the rule's name
        (the webhook stamps it; the rule may still read Recorded until someone marks it Applied)."""
        if self.is_hold:  # the preemptor itself, as kube-scheduler counts a nominated pod for itself only
            return self.phase is Phase.RECORDED and pod.uid == self.pod_uid
        if self.phase in (Phase.RECORDED, Phase.APPLIED) and not self.bound_pod:
            return pod.rule_name == self.name and pod.namespace == self.namespace
        return self.awaits_restore(pod)

    # -- transitions (pure: each returns a new Rule) --------------------------------------------------

    def applied(self, pod_name: str, now: float, ttl: float) -> Rule:
        return replace(self, phase=Phase.APPLIED, applied_pod=pod_name, updated=now, expires=now + ttl,
                       message=f"replacement pod {pod_name} rewritten to {self.substitute}")

    def bound(self, pod_uid: str, pod_name: str, node: str, now: float) -> Rule:
        if self.is_hold:  # the preemptor is bound: its reservation became usage, and there is nothing to restore
            return replace(self, phase=Phase.EXPIRED, bound_pod=pod_uid, updated=now,
                           message=f"preemptor {pod_name} bound to {node}; reservation released")
        if self.phase is Phase.RESTORING:
            return replace(self, phase=Phase.RESTORED, updated=now, restored_pod=pod_uid,
                           message=f"pod {pod_name} back on {self.original} on {node}")
        return replace(self, phase=Phase.APPLIED, bound_pod=pod_uid, applied_pod=pod_name or self.applied_pod,
                       updated=now, message=f"pod {pod_name} running on {self.substitute} on {node}")

    def restoring(self, node: str, now: float, ttl: float, after: float = 0.0) -> Rule:
        """Reserve the original slice on ``node``; ``after``: the upgraded pod's creationTimestamp."""
        return replace(self, phase=Phase.RESTORING, restore_node=node, updated=now, expires=now + ttl,
                       restore_after=after,
                       message=f"restoring to {self.original}: reserved on {node}")

    def restarting(self, now: float) -> Rule:
        """The reconciler is about to restart the pending pod: hand the rule over to its replacement.

        Written before the eviction or delete, so no webhook replica can see the replacement before the
        mark; until then the rule belongs to the pending pod alone (a sibling created by a scale-up must not
        take it, or the pending pod is never restarted). A rule marked already keeps its first mark."""
        if self.restart_at:
            return self
        return replace(self, restart_at=now,
                       message=f"restarting pod {self.pod_name}: its replacement gets {self.substitute} on {self.node}")

    def claimed(self, now: float, ttl: float) -> Rule:
        """A webhook replica hands the rule to the pod it is admitting, for ``ttl`` seconds.

        Stored with a compare-and-swap, so of two replicas admitting two pods at once one wins. The claim
        names no pod (a generateName pod has no name during admission) and expires: a pod refused by a
        later admission plugin never appears, and the rule must not stay held for it. Once the pod is seen
        the rule turns Applied and the claim no longer matters."""
        return replace(self, claimed_until=now + ttl,
                       message=f"handed to a new pod of the workload; {self.substitute} stays reserved on {self.node}")
    def restore_deferred(self, now: float, backoff: float, why: str) -> Rule:
        """The restore's restart was refused: back to Applied (bound), the original slice released, the
        next attempt not before ``now + backoff``."""
        return replace(self, phase=Phase.APPLIED, restore_node="", updated=now,
                       restore_attempts=self.restore_attempts + 1, retry_restore_at=now + backoff,
                       message=f"restore deferred: {why}")

    @property
    def was_restore(self) -> bool:
        """Did this rule start a restore (Restoring, Restored, or a restore that expired)?"""
        return self.phase in (Phase.RESTORING, Phase.RESTORED) or (
            self.phase is Phase.EXPIRED and bool(self.restore_node))

    def unrewritten(self, now: float) -> Rule:
        """Its restart is done and the replacement came back on the original type (the webhook did not
        rewrite it): expired, so no webhook hands it to a later pod of the lineage (soak D5)."""
        return replace(self, phase=Phase.EXPIRED, updated=now, unrewritten_at=now,
                       message=f"replacement of {self.pod_name} came back unrewritten (the webhook did not run); "
                               "reservation released")

    def expired(self, now: float) -> Rule:
        return replace(self, phase=Phase.EXPIRED, updated=now,
                       message=f"expired in phase {self.phase} without being used")

    def pod_gone(self, pod_name: str, now: float) -> Rule:
        """The pod this Applied rule was bound to (or rewritten for) no longer exists and nobody restarts it:
        the rule is done (Expired: its reservation, if any, goes back; kept until retention like any
        finished rule, so the loop guard and /debug/rules still see it)."""
        return replace(self, phase=Phase.EXPIRED, updated=now,
                       message=f"its pod {pod_name or self.applied_pod} is gone; nothing left to restore")

    # -- presentation -------------------------------------------------------------------------------

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """JSON for /debug/rules and the simulator; stable keys."""
        out = asdict(self)
        out["phase"] = str(self.phase)
        for key in ("created", "expires", "updated", "restart_at", "claimed_until", "unrewritten_at"):
            out[key] = _rfc3339(out[key])
        out["pod"] = {"namespace": self.namespace, "name": self.pod_name, "uid": self.pod_uid}
        out["original"] = {"resource": self.original.resource, "count": self.original.count}
        out["substitute"] = {"resource": self.substitute.resource, "count": self.substitute.count}
        if now is not None:
            held = self.reservation(now)
            out["reserved"] = {"node": held[0], "resource": held[1].resource, "count": held[1].count} if held else None
        return out


def preemption_hold(pod: PodInfo, node: str, victims: Iterable[str], now: float, ttl: float,
                    after: str = "") -> Rule:
    """The record of a preemption for ``pod``'s own profile on ``node``: persisted before any victim is
    deleted, so a new leader re-issues the deletes and no other pod is promised the slices being freed."""
    want = pod.single_demand
    if want is None:
        raise ValueError(f"pod {pod.key} asks for no single MIG type: no preemption hold")
    names = tuple(victims)
    return Rule(
        name=rule_name(pod, after), namespace=pod.namespace, pod_name=pod.name, pod_uid=pod.uid, owner=pod.owner,
        original=want, substitute=want, node=node, created=now, expires=now + ttl, updated=now, victims=names,
        message=f"preempting {len(names)} lower-priority pod(s) on {node}; {want} reserved for this pod",
    )


def rule_for_new_pod(pod: PodInfo, rules: Iterable[Rule], now: float, skip: Collection[str] = ()) -> Rule | None:
    """The Recorded rule a newly created pod takes: the oldest unexpired, unclaimed one waiting for a
    replacement of its workload (``awaits_upgrade``), leaving out the names in ``skip`` (claims this
    replica just lost). The webhook rewrites the pod per this rule; the simulator's webhook step calls
    the same choice."""
    waiting = [r for r in rules if r.name not in skip and r.awaits_upgrade(pod) and now < r.expires
               and not r.is_claimed(now)]
    return min(waiting, key=lambda r: (r.created, r.name), default=None)


def restore_claims(rules: Iterable[Rule]) -> frozenset[str]:
    """Uids of pods some rule counts as its own (bound as an upgrade, or the pod that finished a restore):
    never the replacement another restore waits for (soak D4)."""
    return frozenset(claimed_uids(rules))


def claimed_uids(rules: Iterable[Rule]) -> Iterator[str]:
    """Each uid a rule counts as its own (bound as an upgrade, or the pod that finished a restore), once per
    rule that does: restore_claims as a multiset (the rule book counts them, so a patch can take one away)."""
    return (uid for r in rules for uid in (r.bound_pod, r.restored_pod) if uid)


def parent_links(rule: Rule) -> list[tuple[str, tuple[str, float]]]:
    """(pod uid, (the uid of the pod one of our restarts replaced with it, when)) for each restart ``rule``
    made: the upgrade's pod -> its bound replacement, the upgraded pod -> the replacement that finished its
    restore. A preemption hold's pod is bound as it is (no restart)."""
    out = []
    if rule.bound_pod and rule.pod_uid and rule.bound_pod != rule.pod_uid and not rule.is_hold:
        out.append((rule.bound_pod, (rule.pod_uid, rule.restart_at or rule.created)))
    if rule.restored_pod and rule.bound_pod:
        out.append((rule.restored_pod, (rule.bound_pod, rule.updated)))
    return out


def restart_parents(rules: Iterable[Rule]) -> dict[str, tuple[str, float]]:
    """pod uid -> (uid of the pod one of our restarts replaced with it, when), over ``rules`` (parent_links;
    a uid two rules name keeps the later rule's link)."""
    return {uid: parent for rule in rules for uid, parent in parent_links(rule)}


def restore_order(rules: Iterable[Rule]) -> list[Rule]:
    """Restoring rules in the order they take new pods: the oldest restore first (name breaks ties), so the
    extender's bind and every reconciler leader pick the same rule for the same pod."""
    return sorted((r for r in rules if r.phase is Phase.RESTORING), key=lambda r: (r.updated, r.name))


def match_restores(rules: Iterable[Rule], pods: Iterable[PodInfo],
                   unrestarted: frozenset[str] = frozenset()) -> dict[tuple[str, str], PodInfo]:
    """(namespace, rule name) -> the new pod that finishes that restore: a one-to-one matching.

    A restore whose upgraded pod is in ``unrestarted`` (still there and not terminating: see
    ``ClusterSnapshot.unrestarted``) waits for nobody yet (soak D8).

    ``awaits_restore`` matches a ReplicaSet's (or Job's) replacement only by owner and creation time, so two
    restores of one workload both waited for the same new replica, and both recorded it (soak D4). Here the
    pods, oldest first, each take the oldest Restoring rule that waits for them and that no earlier pod
    took, and a pod some rule already counts as its own takes none: the other rule waits for the next
    replica. Deterministic, so two deciders with the same view agree; with different views a rule is
    still written by one of them only (compare-and-swap on the rule, Restored is final)."""
    rules = list(rules)
    claimed = restore_claims(rules)
    waiting = [r for r in restore_order(rules) if r.bound_pod not in unrestarted]
    out: dict[tuple[str, str], PodInfo] = {}
    for pod in sorted((p for p in pods if p.uid not in claimed), key=lambda p: (p.created, p.name, p.uid)):
        rule = next((r for r in waiting if (r.namespace, r.name) not in out and r.awaits_restore(pod)), None)
        if rule is not None:
            out[(rule.namespace, rule.name)] = pod
    return out


def unmarked_rules_for(pod: PodInfo, rules: Iterable[Rule], now: float) -> list[Rule]:
    """Rules ``pod`` would take but for the restart mark, oldest first: the reconciler writes the mark and
    at once restarts the pending pod, so the replacement can reach a webhook whose watch has not shown the
    mark yet. The webhook reads these again from the source of truth before turning the pod away."""
    stale = [r for r in rules if not r.restart_at and r._waits_for_workload_of(pod) and now < r.expires
             and not r.is_claimed(now)]
    return sorted(stale, key=lambda r: (r.created, r.name))


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if epoch else ""


_DNS_UNSAFE = re.compile(r"[^a-z0-9-]+")


def rule_name(pod: PodInfo, after: str = "") -> str:
    """A stable, DNS-1123 name for a rule of ``pod``: retrying the same pod records the same rule.

    ``after``: the name of the pod's newest rule, when it has one already (expired, or handed to another
    pod). Its successor gets a name of its own, or recording it would return the old rule under the same
    name; deriving it from the predecessor (not from a clock) keeps it stable, so two replicas that know
    the same rules still record one rule, and a replica that missed the newest rule collides with it."""
    key = f"{pod.namespace}/{pod.name}/{pod.uid}" + (f"/after/{after}" if after else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    base = _DNS_UNSAFE.sub("-", pod.name.lower()).strip("-")[:40] or "pod"
    return f"{base}-{digest}"


def newest_rule_per_pod(rules: Iterable[Rule]) -> dict[str, Rule]:
    """pod uid -> that pod's most recently recorded rule (a pod may have had several, see rule_name)."""
    newest: dict[str, Rule] = {}
    for rule in rules:
        if rule.pod_uid:
            held = newest.get(rule.pod_uid)
            if held is None or (rule.created, rule.name) > (held.created, held.name):
                newest[rule.pod_uid] = rule
    return newest


def new_rule(pod: PodInfo, original: ResourceCount, substitute: ResourceCount, node: str,
             now: float, ttl: float, after: str = "") -> Rule:
    return Rule(
        name=rule_name(pod, after), namespace=pod.namespace, pod_name=pod.name, pod_uid=pod.uid, owner=pod.owner,
        original=original, substitute=substitute, node=node, created=now, expires=now + ttl, updated=now,
        message=f"{original.resource} sold out on every candidate; {substitute} reserved on {node}",
    )


# --------------------------------------------------------------------------------------------------
# The MigSubstitution object (group mig-extender.io): spec is written once at creation, every later
# transition is one write of the status subresource.

API_GROUP = "mig-extender.io"
API_VERSION = "v1alpha1"
KIND = "MigSubstitution"
PLURAL = "migsubstitutions"
LABEL_POD_UID = f"{API_GROUP}/pod-uid"
ANN_RECREATE = f"{API_GROUP}/recreate"  # on a MigSubstitution: the bare pod to create again, as JSON
ANN_RECREATE_OF = f"{API_GROUP}/recreate-of"  # the uid of the pod that manifest replaces
ANN_RECREATE_DELETED = f"{API_GROUP}/recreate-deleted"  # that uid, once our eviction of it succeeded


def _time_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if epoch else ""


def rule_to_object(rule: Rule) -> dict[str, Any]:
    """The MigSubstitution for ``rule``. Its controller owner (a ReplicaSet, Job, StatefulSet...) owns the
    rule too, so deleting the workload deletes its rules; a bare pod's rule is not owned (the pod is
    deleted and recreated during the upgrade) and expires instead."""
    meta: dict[str, Any] = {"name": rule.name, "namespace": rule.namespace,
                            "labels": {LABEL_POD_UID: rule.pod_uid} if rule.pod_uid else {}}
    if rule.resource_version:
        meta["resourceVersion"] = rule.resource_version
    spec: dict[str, Any] = {
        "podName": rule.pod_name, "podUID": rule.pod_uid,
        "original": {"resource": rule.original.resource, "count": rule.original.count},
        "substitute": {"resource": rule.substitute.resource, "count": rule.substitute.count},
        "nodeName": rule.node,
    }
    if rule.victims:
        spec["preemption"] = {"victims": list(rule.victims)}
    if rule.expires:
        spec["expiresAt"] = _time_text(rule.expires)  # an empty string is not a valid date-time: omit
    if rule.owner is not None:
        spec["owner"] = {"kind": rule.owner.kind, "name": rule.owner.name, "uid": rule.owner.uid,
                         "apiVersion": rule.owner.api_version}
        if rule.owner.api_version and rule.owner.uid:
            meta["ownerReferences"] = [{"apiVersion": rule.owner.api_version, "kind": rule.owner.kind,
                                        "name": rule.owner.name, "uid": rule.owner.uid,
                                        "blockOwnerDeletion": False}]
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": meta, "spec": spec,
            "status": rule_status(rule)}


def rule_status(rule: Rule) -> dict[str, Any]:
    status = {"phase": str(rule.phase), "appliedPod": rule.applied_pod, "boundPod": rule.bound_pod,
              "restoreNode": rule.restore_node, "restoredPod": rule.restored_pod, "message": rule.message,
              "createdAt": _time_text(rule.created), "updatedAt": _time_text(rule.updated or rule.created),
              "expiresAt": _time_text(rule.expires), "restartAt": _time_text(rule.restart_at),
              "claimedUntil": _time_text(rule.claimed_until),
              "restoreAttempts": rule.restore_attempts or "",
              "retryRestoreAt": _time_text(rule.retry_restore_at),
              "unrewrittenAt": _time_text(rule.unrewritten_at),
              "restoreAfter": _time_text(rule.restore_after)}
    return {k: v for k, v in status.items() if v != ""}


def rule_from_object(obj: Mapping[str, Any]) -> Rule:
    """Read a MigSubstitution; ValueError when it is not one we can use (reported, never a crash)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(meta, Mapping):
        raise ValueError("MigSubstitution is malformed: metadata is not an object")
    try:
        # a saved file (serve --snapshot) is not checked by the CRD's schema: any part may have the wrong type
        if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
            raise TypeError("spec and status must be objects")
        annotations = meta.get("annotations") or {}
        owner_spec = spec.get("owner")
        owner = (Owner(str(owner_spec.get("kind", "")), str(owner_spec.get("name", "")),
                       str(owner_spec.get("uid", "")), str(owner_spec.get("apiVersion", "")))
                 if isinstance(owner_spec, Mapping) and owner_spec.get("uid") else None)
        original = ResourceCount(str(spec["original"]["resource"]), int(spec["original"]["count"]))
        substitute = ResourceCount(str(spec["substitute"]["resource"]), int(spec["substitute"]["count"]))
        if original.count < 1 or substitute.count < 1:  # as the CRD's schema (minimum: 1)
            raise ValueError(f"counts must be at least 1, got {original} and {substitute}")
        created = parse_time(status.get("createdAt")) or parse_time(meta.get("creationTimestamp"))
        return Rule(
            name=str(meta["name"]), namespace=str(meta["namespace"]), pod_name=str(spec.get("podName", "")),
            pod_uid=str(spec.get("podUID", "")), owner=owner, original=original, substitute=substitute,
            node=str(spec.get("nodeName", "")), created=created,
            expires=parse_time(status.get("expiresAt")) or parse_time(spec.get("expiresAt")),
            phase=Phase(status.get("phase") or Phase.RECORDED.value),
            applied_pod=str(status.get("appliedPod", "")), bound_pod=str(status.get("boundPod", "")),
            restore_node=str(status.get("restoreNode", "")), restored_pod=str(status.get("restoredPod", "")),
            updated=parse_time(status.get("updatedAt")) or created, message=str(status.get("message", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            stash=str(annotations.get(ANN_RECREATE, "")),
            stash_of=str(annotations.get(ANN_RECREATE_OF, "")),
            stash_deleted=bool(annotations.get(ANN_RECREATE_OF))
            and annotations.get(ANN_RECREATE_DELETED) == annotations.get(ANN_RECREATE_OF),
            restart_at=parse_time(status.get("restartAt")),
            claimed_until=parse_time(status.get("claimedUntil")),
            restore_attempts=int(status.get("restoreAttempts") or 0),
            retry_restore_at=parse_time(status.get("retryRestoreAt")),
            unrewritten_at=parse_time(status.get("unrewrittenAt")),
            restore_after=parse_time(status.get("restoreAfter")),
            victims=tuple(str(v) for v in (spec.get("preemption") or {}).get("victims") or ()),
        )
    except (AttributeError, KeyError, OverflowError, TypeError, ValueError) as exc:
        raise ValueError(f"MigSubstitution {meta.get('namespace')}/{meta.get('name')} is malformed: {exc}") from exc
