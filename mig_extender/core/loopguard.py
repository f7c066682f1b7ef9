"""The upgrade side of the restart-loop guard (soak defect D5). Pure: rules, pods and ``now`` in, reasons out.

An upgrade restarts a pending pod so the webhook rewrites its replacement onto the substitute. When the
webhook does not run (down, with failurePolicy Ignore), the replacement comes back asking for its own,
still sold-out type; the extender records a new rule for it and, unguarded, the reconciler restarted it
again every few seconds, while each rule left Recorded behind waited to be handed to the next pod of the
lineage, such as a later restore's replacement (which it then turned into one more upgrade).

So: a Recorded rule whose restart is done and whose replacement is there unrewritten is stale
(``unrewritten_handovers``: the reconciler expires it, so no webhook hands it to anyone later, and says
why on the pod); a restart whose replacement came back unrewritten is not repeated before a backoff (the
webhook may be back by then); and no lineage is restarted more than ``restart_limit`` times within
``restart_window`` (PlanSettings; 2 an hour by default), upgrades and restores together, as invariant 6 of
the soak reads it. This index counts the lineages rules cannot link (a replacement that came back
unrewritten has no rule of its own); ``ClusterSnapshot.lineage_restarts`` follows the ones rules do link
(soak D7). ``planner.restart_loop`` takes the larger of the two, so there is one guard and one limit.

A pod's lineage: the pods that replace one another. Bare pods and StatefulSet pods come back under their
name, so their rules are linked by name. Pods of other controllers get new names; their lineage is followed
only through rules whose replacement came back unrewritten (for those, any later pod of the owner), so a
ReplicaSet's replicas do not share one budget.
Must not: import flask, kubernetes or cachetools; read a clock.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .resources import PodInfo
from .rules import Phase, Rule


@dataclass(frozen=True)
class Unrewritten:
    """``rule`` was handed over by a restart, and its replacement ``pod`` came back on the original type."""

    rule: Rule
    pod: PodInfo


@dataclass(frozen=True)
class Backoff:
    """The lineage's last upgrade came back unrewritten at ``since``: no new restart before ``until``."""

    since: float
    until: float

    def __str__(self) -> str:
        return f"its last upgrade restart came back unrewritten; next try after {self.until - self.since:.0f}s"


@dataclass(frozen=True)
class RestartLoop:
    """The pod's lineage (the pod, the one it replaced for an upgrade or restore of ours, and so on) was
    restarted by us ``restarts`` times within ``window`` seconds, ``limit`` at most: no further restart."""

    restarts: int
    limit: int
    window: float

    def __str__(self) -> str:
        return (f"restarted {self.restarts} times by mig-extender in the last {int(self.window)}s "
                f"(at most {self.limit}): not substituted or restored again, to avoid a restart loop")


def unrewritten_handovers(rules: Iterable[Rule], pods: Iterable[PodInfo], now: float) -> list[Unrewritten]:
    """Recorded rules whose restart is done and whose replacement is there, unrewritten (``awaits_upgrade``
    still matches it: the original demand and no rule annotation of this rule's). A rule a webhook replica
    claimed is left alone until its claim lapses (the rewritten pod may still be on its way)."""
    marked = [r for r in rules if r.phase is Phase.RECORDED and r.restart_at and not r.is_hold
              and not r.is_claimed(now)]
    if not marked:
        return []
    by_ns: dict[str, list[PodInfo]] = {}
    for pod in pods:
        # an informed pod has its creationTimestamp: without one, awaits_upgrade cannot tell the
        # replacement from a sibling that ran long before the restart
        if pod.created and not pod.terminating and not pod.rule_name:
            by_ns.setdefault(pod.namespace, []).append(pod)
    out = []
    for rule in marked:
        back = next((p for p in by_ns.get(rule.namespace, ()) if _came_back(rule, p)), None)
        if back is not None:
            out.append(Unrewritten(rule, back))
    return out


def _came_back(rule: Rule, pod: PodInfo) -> bool:
    """``pod`` is ``rule``'s restart come back unrewritten: what ``awaits_upgrade`` takes, narrowed to what
    only the replacement can be. It is never bound (it asks for the sold-out type), and it was created
    no earlier than the second of the restart mark (creationTimestamp has whole seconds), where
    awaits_upgrade allows CLOCK_SKEW before it: a sibling of the same ReplicaSet created a few seconds
    before the mark, running or pending, matched that, and its rule was expired 50 ms after the restart,
    before the real replacement existed (the walkthrough in CI). An API server clock more than a second
    behind ours only makes this miss a real case: the loop guard's limit still holds."""
    return not pod.node and pod.created >= math.floor(rule.restart_at) and rule.awaits_upgrade(pod)


@dataclass(frozen=True)
class RestartIndex:
    """Restarts within a window per lineage key, built once per pass (a per-candidate scan of every rule
    would be O(rules^2) with thousands of upgraded pods)."""

    by_name: Mapping[tuple[str, str], int]
    by_owner: Mapping[tuple[str, str], int]
    unrewritten: Mapping[tuple[str, str], float]  # lineage key -> its latest unrewritten replacement

    @classmethod
    def build(cls, rules: Iterable[Rule], now: float, window: float) -> RestartIndex:
        by_name: Counter[tuple[str, str]] = Counter()
        by_owner: Counter[tuple[str, str]] = Counter()
        unrewritten: dict[tuple[str, str], float] = {}
        for rule in rules:
            keys = _keys(rule)
            recent = sum(1 for t in restart_times(rule) if now - t < window)
            for key in keys["name"]:
                by_name[key] += recent
            for key in keys["owner"]:
                by_owner[key] += recent
            for key in (*keys["name"], *keys["owner"]):
                if rule.unrewritten_at > unrewritten.get(key, 0.0):
                    unrewritten[key] = rule.unrewritten_at
        return cls(by_name, by_owner, unrewritten)

    def _key(self, pod: PodInfo) -> tuple[str, tuple[str, str]]:
        if pod.owner is None or pod.owner.kind == "StatefulSet":
            return "name", (pod.namespace, pod.name)
        return "owner", (pod.namespace, pod.owner.uid)

    def restarts(self, pod: PodInfo) -> int:
        """Restarts of ``pod``'s lineage within the window it was built with: upgrades and restores."""
        kind, key = self._key(pod)
        return (self.by_name if kind == "name" else self.by_owner).get(key, 0)

    def last_unrewritten(self, pod: PodInfo) -> float:
        return self.unrewritten.get(self._key(pod)[1], 0.0)


def _keys(rule: Rule) -> dict[str, tuple[tuple[str, str], ...]]:
    """A rule's lineage keys: the names its pods had (bare and StatefulSet pods keep theirs), and its
    owner's uid only when its replacement came back unrewritten (see the module docstring)."""
    names = tuple((rule.namespace, n) for n in dict.fromkeys((rule.pod_name, rule.applied_pod)) if n)
    owner = ((rule.namespace, rule.owner.uid),) if rule.unrewritten_at and rule.owner is not None else ()
    return {"name": names, "owner": owner}


def upgrade_hold(pod: PodInfo, index: RestartIndex, now: float, backoff: float, limit: int,
                 window: float) -> Backoff | RestartLoop | None:
    """Why ``pod`` must not be restarted for an upgrade now (None: it may)."""
    restarts = index.restarts(pod)
    if restarts >= limit:
        return RestartLoop(restarts, limit, window)
    missed = index.last_unrewritten(pod)
    if missed and now < missed + backoff:
        return Backoff(missed, missed + backoff)
    return None


def restart_times(rule: Rule) -> tuple[float, ...]:
    """When ``rule`` restarted a pod: its upgrade's restart mark, and a restore's start (the rule's last
    update once restoring; a Restored rule was updated when its pod landed, seconds after the restart)."""
    return tuple(t for t in (rule.restart_at, rule.updated if rule.was_restore else 0.0) if t)
