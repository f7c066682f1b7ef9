"""The reconciler's DRA restore: restart pods running on a substitute once their own profile frees.

Reads every ResourceClaim (a device is free only if no claim of anyone holds it), asks core/drarestore.py
which pods to restart, and restarts each through the Eviction API with a uid precondition, as the device
plugin route's restore does (PDBs honoured, a repeated call a no-op). Only pods a controller recreates
are restarted, and not Job pods (an eviction may count as a Job failure; the device plugin route weighs
that, this first DRA slice does not yet). A restore stays "in flight" for ``cooldown`` seconds, counted
against the free device of its profile, so the next pass does not restart a second pod for the device
the first one's replacement is about to take. A refused eviction (a PDB) is retried after the device
plugin route's backoff (30 s doubling to 15 min), with Event MigRestoreDeferred; meanwhile the free
device goes to the next candidate, as it does past a pod we may not restart. A lineage restored
``restart_limit`` times within ``restart_window`` (its replacements ran on a substitute again) is not
restored again in that window (Event MigRestoreSkipped): the device plugin route's loop guard. Its memory
is this process's (a new leader starts without it; at most one more round per lineage). A rewritten DRA
pod asks for no MIG slice, so the inventory does not keep it: a pod that may be a replacement is read
from the API once (owner, creation time), and waits a pass when it cannot be. The same restart, for a
pod still Pending, recreates the pods of a DRA namespace that were created before its templates existed,
at most once per owner every ``recreate_every`` seconds (were the webhook down, the replacement would
miss the rewrite too: no loop).
Must not: talk to the API but through its objects and actions, or restart a pod that opted out
(``mig-extender.io/restore: "false"``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

from cachetools import TTLCache

from ..core.catalog import ProfileShape
from ..core.dra import MigDevice
from ..core.drapod import missed_rewrite
from ..core.drarestore import (
    DraRestart,
    DraRestore,
    claim_facts,
    followed,
    match_replacements,
    on_substitute,
    restores,
    upgraded,
)
from ..core.planner import PlanSettings
from ..core.podspec import Restart, RestartOutcome, is_job_owner, restart_blocker
from ..core.resources import DemandError, PodInfo, pod_info

log = logging.getLogger(__name__)


class ClaimSource(Protocol):
    def claims(self) -> list[dict[str, Any]]: ...


class RestartActions(Protocol):
    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def evict(self, pod: Mapping[str, Any]) -> RestartOutcome: ...
    def event(self, namespace: str, pod_name: str, pod_uid: str, reason: str, message: str,
              warning: bool = False, action: str = "Reconcile") -> None: ...


class DraRestorer:
    """``run(counts, devices, shapes)`` once per DRA step."""

    def __init__(self, claims: ClaimSource, actions: RestartActions, restartable_owners: Collection[str] = (),
                 cooldown: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 recreate_every: float = 600.0,
                 backoff: Callable[[int], float] | None = None, restart_limit: int | None = None,
                 restart_window: float | None = None, wall: Callable[[], float] = time.time) -> None:
        self.claims = claims
        self.actions = actions
        self.restartable_owners = restartable_owners
        plan = PlanSettings()  # the device plugin route's defaults
        # seconds before the next restore after n refusals
        self.clock, self.backoff = clock, backoff or plan.restore_backoff_after
        self.restart_limit = plan.restart_limit if restart_limit is None else restart_limit
        self.restart_window = plan.restart_window if restart_window is None else restart_window
        self.wall = wall  # epoch seconds: a replacement is told by its creationTimestamp
        # the last restore of each lineage within the window (a lineage's next restore replaces its entry)
        self._restarts: list[DraRestart] = []
        # pod uid -> the pod as read from the API (owner and creation time: its lineage), for pods the
        # inventory does not keep
        self._pods_read: TTLCache[str, PodInfo] = TTLCache(maxsize=10_000, ttl=self.restart_window, timer=clock)
        # pod uid -> told it is held back by the loop guard (once per window)
        self._held_told: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=self.restart_window, timer=clock)
        # pod uid -> why we may not restart it (its owner, its opt-out): asked again after 10 minutes (the
        # annotation can be removed)
        self._not_restartable: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=600.0, timer=clock)
        # pod uid -> (refusals so far, no new attempt before): a PDB that refuses is asked again after a
        # backoff, as the device plugin route's restore (issue 13 item 4), not on every pass
        self._refused: TTLCache[str, tuple[int, float]] = TTLCache(maxsize=10_000, ttl=4 * 3600.0, timer=clock)
        # pod uid -> the profile its restore frees for it: seconds until its replacement surely has a claim
        self._in_flight: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=cooldown, timer=clock)
        # owner uid -> recreated one of its pods lately: a pod missing the rewrite again is not retried at once
        self._recreated_owners: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=recreate_every, timer=clock)

    def run(self, counts: Counter[str], devices: Iterable[MigDevice], shapes: Mapping[str, ProfileShape],
            pods: Iterable[PodInfo] = ()) -> None:
        """``pods``: the pods the reconciler sees (their owners and creation times follow lineages)."""
        facts = [claim_facts(c) for c in self.claims.claims()]
        in_flight = Counter(self._in_flight.values())
        now = self.clock()
        lineage, unknown = self._lineages(facts, pods)
        held_back = {uid for uid, r in lineage.items() if r.lineage >= self.restart_limit}
        self._tell_held_back(held_back, facts, counts)
        if unknown:
            counts["dra_restore_lineage_unknown"] += len(unknown)
        backing_off = {uid for uid, (_, until) in list(self._refused.items()) if now < until}
        if backing_off:
            counts["dra_restore_backoff"] += len(backing_off)
        # left out before the free devices are handed out, so each goes to the next candidate: chosen and
        # then skipped, a pod that will not be restarted kept its device from everyone, every pass
        not_now = held_back | unknown | backing_off | set(self._in_flight) | set(self._not_restartable)
        for restore in restores(devices, facts, shapes, in_flight, not_now):
            counts[f"dra_restore_{self._restore(restore, lineage.get(restore.pod_uid))}"] += 1

    def _lineages(self, facts: list[Any], pods: Iterable[PodInfo]) -> tuple[dict[str, DraRestart], set[str]]:
        """Upgraded pod uid -> the restore of ours it replaced (within the window); and the upgraded pods
        whose lineage cannot be told this pass (not readable), held back until it can.

        A DRA pod is rarely among ``pods`` (the inventory's): the webhook's rewrite removed its MIG
        requests, and the inventory keeps only pods asking for MIG slices. So a pod that could be the
        replacement of a restore (``core.drarestore.followed``) is read from the API once; its owner and
        creation time never change."""
        start = self.wall() - self.restart_window
        self._restarts = [r for r in self._restarts if r.at > start]
        by_uid = {p.uid: p for p in pods}
        ours, unknown, ended = [], set(), set()
        for c in followed(facts, self._restarts):
            pod = by_uid.get(c.pod_uid) or self._read_pod(c)
            if pod is None:
                if on_substitute(c):
                    unknown.add(c.pod_uid)
                continue
            if not on_substitute(c):
                ended.add(c.pod_uid)
            ours.append((pod, c.profile))
        matched = match_replacements(self._restarts, ours)
        # a replacement on its own profile: that restore worked and its lineage ends (else a later pod of
        # the owner on a substitute, one nobody restarted, would inherit its count)
        done = [matched.pop(uid) for uid in ended if uid in matched]
        self._restarts = [r for r in self._restarts if r not in done]
        return matched, unknown

    def _read_pod(self, claim: Any) -> PodInfo | None:
        """The pod ``claim`` is reserved for, read once (cached by uid); None when it cannot be read now:
        gone, replaced by a namesake, or the API failing."""
        known = self._pods_read.get(claim.pod_uid)
        if known is not None:
            return known
        try:
            obj = self.actions.get_pod(claim.namespace, claim.pod)
        except Exception:  # an API error or a lost connection: this pass only
            log.warning("reading DRA pod %s/%s failed", claim.namespace, claim.pod, exc_info=True)
            return None
        if obj is None or (obj.get("metadata") or {}).get("uid") != claim.pod_uid:
            return None
        info = self._pods_read[claim.pod_uid] = pod_info(obj)
        return info

    def _tell_held_back(self, held_back: set[str], facts: list[Any], counts: Counter[str]) -> None:
        for c in upgraded(facts):
            if c.pod_uid in held_back and c.pod_uid not in self._held_told:
                self._held_told[c.pod_uid] = True
                counts["dra_restore_loop_guard"] += 1
                self.actions.event(c.namespace, c.pod, c.pod_uid, "MigRestoreSkipped",
                                   f"not restored to {c.profile}: its lineage was restarted {self.restart_limit} "
                                   f"times by mig-extender within {int(self.restart_window)}s and came back on a "
                                   f"substitute each time (another pod took the free device first)",
                                   warning=True, action="Restore")

    def recreate_missed(self, counts: Counter[str], pods: Iterable[PodInfo], namespaces: Collection[str],
                        templates: Collection[tuple[str, str]]) -> None:
        """Restart the unschedulable pods of DRA namespaces created before their templates existed, so
        that their controller's replacement is rewritten into claims (core/drapod.missed_rewrite)."""
        for missed in missed_rewrite(pods, namespaces, templates):
            if missed.uid in self._in_flight or (missed.owner and missed.owner.uid in self._recreated_owners):
                continue
            obj = self.actions.get_pod(missed.namespace, missed.name)
            outcome = self._restart(obj, missed.uid, running=False)
            counts[f"dra_recreate_{outcome}"] += 1
            if outcome == str(Restart.EVICTED):
                self._in_flight[missed.uid] = ""
                if missed.owner is not None:
                    self._recreated_owners[missed.owner.uid] = True
                message = ("restarted so that its replacement asks for MIG through DRA claims: it was created "
                           "before mig-extender's ResourceClaimTemplates existed in this namespace")
                log.info("DRA %s/%s: %s", missed.namespace, missed.name, message)
                self.actions.event(missed.namespace, missed.name, missed.uid, "MigDraRecreated", message,
                                   action="Recreate")

    def _restart(self, obj: Mapping[str, Any] | None, uid: str, running: bool) -> str:
        """Evict ``obj`` if it is still pod ``uid``, in the phase expected, and a controller (not a Job's)
        recreates it; returns the outcome's name."""
        if obj is None or obj["metadata"].get("uid") != uid:
            return str(Restart.GONE)
        try:
            pod = pod_info(obj)
        except DemandError:
            return "skipped"
        if pod.terminating or (pod.phase != "Running" if running else bool(pod.node)):
            return "skipped"
        if running and not pod.may_restore:
            return "opted_out"
        if pod.owner is None or is_job_owner(pod.owner) or restart_blocker(pod.owner, self.restartable_owners):
            return str(Restart.BLOCKED)
        outcome = self.actions.evict(obj)
        if outcome.kind == Restart.REFUSED:
            log.info("DRA restart of %s/%s refused: %s", pod.namespace, pod.name, outcome.detail)
        return str(outcome.kind)

    def _restore(self, restore: DraRestore, replaced: DraRestart | None) -> str:
        """``replaced``: the restore of ours this pod is the replacement of, if any (its lineage)."""
        obj = self.actions.get_pod(restore.namespace, restore.pod)
        outcome = self._restart(obj, restore.pod_uid, running=True)
        if outcome == str(Restart.EVICTED) and obj is not None:
            self._in_flight[restore.pod_uid] = restore.profile
            owner = pod_info(obj).owner
            if replaced is not None and replaced in self._restarts:
                self._restarts.remove(replaced)  # the lineage's latest restore stands for it
            if owner is not None:
                self._restarts.append(DraRestart(owner.uid, restore.profile, restore.pod_uid, self.wall(),
                                                 (replaced.lineage if replaced else 0) + 1))
            message = (f"restarted so that its replacement gets {restore.profile} (it asked for it and ran on "
                       f"{restore.held}); a {restore.profile} device is free")
            log.info("DRA restore %s/%s: %s", restore.namespace, restore.pod, message)
            self.actions.event(restore.namespace, restore.pod, restore.pod_uid, "MigRestoring", message,
                               action="Restore")
        elif outcome in (str(Restart.BLOCKED), "opted_out"):
            self._not_restartable[restore.pod_uid] = outcome
        elif outcome == str(Restart.REFUSED):
            attempts = self._refused.get(restore.pod_uid, (0, 0.0))[0] + 1
            wait = self.backoff(attempts)
            self._refused[restore.pod_uid] = (attempts, self.clock() + wait)
            self.actions.event(restore.namespace, restore.pod, restore.pod_uid, "MigRestoreDeferred",
                               f"eviction refused (a PodDisruptionBudget?); a {restore.profile} device is free, "
                               f"next try in {int(wait)}s", warning=True, action="Restore")
        return outcome
