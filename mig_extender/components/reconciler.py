"""The reconciler: drive recorded substitutions to completion and undo them when capacity frees.

Each pass: take one snapshot (inventory + rules), ask the planner, act through ``Actions``, count. Only
the Lease holder acts. A pass runs when the inventory changes (a pod ends, a node is added...) and at
least every ``period`` seconds; a failing step is logged and retried next pass, never kills the loop.

    observe:  rewritten pod seen -> rule Applied; it is bound -> bound (Event MigSubstituted);
              restore's replacement bound -> Restored (Event MigRestored); stashed bare pod -> create it.
              Each rule on its own: an error in one is counted (rule_errors) and the others go on.
    expire:   rules past their expiry -> Expired; finished rules past retention -> deleted (never one
              still holding a bare pod's stashed manifest); Applied rules whose pod the API no longer
              has -> Expired (soak D3)
    upgrade:  Recorded rule, its pod still Pending -> mark the rule (its replacement may take it), then
              restart the pod (Event MigUpgrading); a Job pod only when the restart cannot fail the Job
              (else the rule is cancelled, Event MigUpgradeSkipped)
    restore:  original type free again -> biggest waster first: reserve the original (rule Restoring);
              on a pass restore_confirm seconds later, the slice still free in our view, restart the pod
              (Event MigRestoring). Opted-out, looping (restart_limit per pod lineage, upgrades and
              restores together), unknown-owner pods and Jobs a restart would harm: Event
              MigRestoreSkipped. A refused restart (PDB 429, a bare pod's replacement the API would
              refuse) or a slice a racing bind took returns the rule to Applied, releases the original
              slice and retries after a backoff (Event MigRestoreDeferred).
    preempt:  a pending MIG pod the scheduler found unschedulable that outranks slice holders (docs/
              preemption.md): plan (core/preemption.py), persist a hold (a MigSubstitution with victims)
              BEFORE any delete, then per victim DisruptionTarget + DELETE, nominatedNodeName, Events
              Preempted. A live hold whose victims are not terminating yet gets its deletes re-issued (a
              leader that died in between, a 429), so the next leader finishes what the last one began.
    explain:  a pending pod whose type is sold out and that would be substituted, were it not for an
              owner nothing known recreates it: Event MigSubstitutionSkipped says so

Only pods something recreates are restarted (core/podspec.py restart_blocker): ReplicaSet, StatefulSet,
Job, ReplicationController, the kinds in --restartable-owners, and bare pods (we recreate those). Every
restart goes through the Eviction API (PDBs enforced, DisruptionTarget set). Restarts are idempotent (uid
preconditions, rule phases), so a new leader after a crash resumes, it does not repeat. Nothing here
imports the kubernetes client: side effects go through ``Actions``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Protocol

from cachetools import TTLCache

from ..cluster.apierrors import log_retried
from ..cluster.inventory import ClusterInventory
from ..cluster.rulestore import RuleStore, update_with_retry
from ..core.loopguard import Backoff, RestartIndex, RestartLoop, unrewritten_handovers, upgrade_hold
from ..core.planner import (
    PlanSettings,
    PodGone,
    RestoreSliceTaken,
    RestoreWait,
    choose_substitute,
    confirm_restore,
    expired_rules,
    finished_rules,
    plan_restores,
    plan_upgrades,
    restart_loop,
    rules_whose_pod_is_gone,
)
from ..core.podspec import (
    Restart,
    RestartOutcome,
    is_job_owner,
    job_restart_problem,
    owner_label,
    replacement_pod,
    restart_blocker,
)
from ..core.preemption import (
    DISRUPTION_REASON,
    Deletion,
    NoPlan,
    PreemptionPlan,
    PreemptionSettings,
    budgets_from_objects,
    plan_preemption,
    pods_by_node,
    preemptors,
)
from ..core.requeue import Parked, RequeueSettings, plan_requeues
from ..core.resources import ANN_RULE, PodInfo
from ..core.rules import Phase, Rule, match_restores, new_rule, preemption_hold
from .dratemplates import DraTemplateSync
from .extender import readiness_problems
from .metrics import Metrics

log = logging.getLogger(__name__)


class Actions(Protocol):
    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def evict(self, pod: Mapping[str, Any]) -> RestartOutcome: ...
    def stash_and_evict_bare_pod(self, rule_ns: str, rule_name: str, pod: Mapping[str, Any],
                                 replacement: Mapping[str, Any]) -> RestartOutcome: ...
    def finish_recreate(self, rule: Rule) -> str: ...
    def event(self, namespace: str, pod_name: str, pod_uid: str, reason: str, message: str,
              warning: bool = False, action: str = "Reconcile") -> None: ...
    def preempt(self, namespace: str, name: str, uid: str) -> Deletion: ...
    def nominate(self, namespace: str, name: str, uid: str, node: str) -> bool: ...
    def requeue(self, namespace: str, name: str, uid: str, message: str) -> bool: ...
    def list_pdbs(self) -> list[dict[str, Any]]: ...
    def list_pods(self, namespace: str) -> list[dict[str, Any]]: ...


class Reconciler:
    ANNOUNCE_WINDOW = 60.0  # seconds after a transition during which its Event may still be emitted
    def __init__(self, inventory: ClusterInventory, store: RuleStore, actions: Actions,
                 plan: PlanSettings | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time, is_leader: Callable[[], bool] = lambda: True,
                 retention: float = 3600.0, preemption: PreemptionSettings | None = None,
                 dra: DraTemplateSync | None = None, requeue: RequeueSettings | None = None) -> None:
        self.inventory, self.store, self.actions, self.plan = inventory, store, actions, plan or PlanSettings()
        self.preemption = preemption or PreemptionSettings()
        self.dra = dra  # DRA mode's ResourceClaimTemplates (components/dratemplates.py); None: not run
        self.metrics = metrics or Metrics()
        self.clock, self.is_leader, self.retention = clock, is_leader, retention
        # (rule, what) already announced or started recently: no event spam, no second restart while the
        # watch has not yet shown the first one's effect
        self._done: TTLCache[tuple[str, str], bool] = TTLCache(maxsize=50_000, ttl=60.0, timer=clock)
        # Job uid -> our restarts of its pods the Job's status may not count yet (each may count as a failure)
        self._job_restarts: TTLCache[str, int] = TTLCache(maxsize=10_000, ttl=120.0, timer=clock)
        # Job uid -> why its pods are not restored ('' when they may be): one read of the Job per 30 s
        self._job_verdicts: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=30.0, timer=clock)
        # pod uids told why they were not substituted (once an hour, not every pass)
        self._explained: TTLCache[str, bool] = TTLCache(maxsize=50_000, ttl=3600.0, timer=clock)
        # pod uid -> why no preemption was planned for it: counted once a minute, not every pass
        self._no_plan: TTLCache[str, str] = TTLCache(maxsize=50_000, ttl=60.0, timer=clock)
        # pod uid -> a parked pod that fits in our view, and its requeues (core/requeue.py); rebuilt each pass
        self._parked: dict[str, Parked] = {}
        self.requeue = requeue or RequeueSettings()
        self.passes = 0
        self.last_pass = 0.0
        self.last_error = ""
        self.checks: list[Callable[[], str]] = []  # extra readiness checks (watch staleness)
        self.repartitioner: Any = None  # components/repartitioner.py when --repartition is wired in
        self._wake = threading.Event()  # set by wake(): a pass is due now
        # names of the watches cut off or just back (process.new_reconciler wires the informers in)
        self.watch_gaps: Callable[[], list[str]] = list

    # -- one pass ---------------------------------------------------------------------------------

    def run_once(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        if not self.is_leader():
            # what this process knew as leader is stale by the time it leads again: it starts as a new
            # leader would (the requeue's "fits since" most of all: its first write waits ``after`` again)
            self._parked = {}
            return counts
        if not self._synced():
            counts["not_synced"] += 1
            return counts
        if self.watch_gaps():  # soak D12: a watch cut off or just back; restarts and preemptions wait for it
            counts["watch_gap"] += 1
            return counts
        for step in (self._observe, self._expire, self._upgrade, self._restore, self._preempt, self._requeue,
                     self._explain, self._repartition, self._sync_dra):
            try:
                step(counts)
            except Exception as exc:
                counts["errors"] += 1
                self.last_error = f"{step.__name__}: {exc}"
                log_retried(log, exc, f"reconcile step {step.__name__}")
        self.passes += 1
        self.last_pass = self.clock()
        if any(v for k, v in counts.items()):
            log.info("reconcile pass: %s", ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v))
        for action, n in counts.items():
            self.metrics.actions.labels(action, "error" if action in ("errors", "rule_errors") else "ok").inc(n)
        return counts

    def _synced(self) -> bool:
        """Act only on complete caches, as controllers wait for WaitForCacheSync: a leader that starts its
        passes as soon as it holds the Lease otherwise sees the rules before the pods (a busy cluster's
        first pod list is the slow one), takes a preemptor for gone and cancels its hold, leaving the
        victim running (the flaky new-leader e2e case), or cancels upgrades and restores alike."""
        return bool(self.inventory.synced) and bool(self.store.synced)

    def _sync_dra(self, counts: Counter[str]) -> None:
        if self.dra is not None:
            self.dra.sync(counts, self.inventory.pods())

    def _snapshot(self) -> tuple[Any, dict[str, PodInfo]]:
        now = self.clock()  # the store's book: indexed once per rule-store state, not per pass
        snap = self.inventory.snapshot(self.store.book(now), now, usage=True)  # cpu/memory for placement
        return snap, {p.uid: p for p in self.inventory.pods()}

    def _once(self, rule: Rule, what: str) -> bool:
        """True the first time (per TTL) ``what`` happens to ``rule``."""
        key = (f"{rule.namespace}/{rule.name}", what)
        if key in self._done:
            return False
        self._done[key] = True
        return True

    def _transition(self, rule: Rule, change: Callable[[Rule], Rule], counts: Counter[str], event: str) -> Rule | None:
        def refused(why: str) -> None:
            counts["transition_refused"] += 1
            self.metrics.rules.labels("refused").inc()

        stored = update_with_retry(self.store, rule, change, refused=refused)
        if stored is not None:
            counts[event] += 1
            self.metrics.rules.labels(event).inc()
        return stored

    def _event(self, pod: PodInfo, reason: str, message: str, warning: bool = False) -> None:
        self.actions.event(pod.namespace, pod.name, pod.uid, reason, message, warning)

    # -- steps ------------------------------------------------------------------------------------

    def _observe(self, counts: Counter[str]) -> None:
        snap, pods = self._snapshot()
        by_rule: dict[str, list[PodInfo]] = {}
        for pod in pods.values():
            if pod.rule_name:
                by_rule.setdefault(f"{pod.namespace}/{pod.rule_name}", []).append(pod)
        now = self.clock()
        # one new pod finishes at most one restore (soak D4): matched once for the whole pass
        arrivals = match_restores(snap.rules, (p for p in pods.values() if p.node), snap.unrestarted)
        for rule in snap.rules:
            try:
                self._observe_rule(rule, by_rule.get(f"{rule.namespace}/{rule.name}", []), pods, counts, now,
                                   arrivals.get((rule.namespace, rule.name)))
            except Exception as exc:  # one bad rule (a stash the API refuses...) must not stall the others
                counts["rule_errors"] += 1
                self.last_error = f"rule {rule.namespace}/{rule.name}: {exc}"
                log_retried(log, exc, f"observing rule {rule.namespace}/{rule.name}")

    def _observe_rule(self, rule: Rule, carriers: list[PodInfo], pods: Mapping[str, PodInfo],
                      counts: Counter[str], now: float, arrived: PodInfo | None = None) -> None:
        if rule.stash:
            outcome = self.actions.finish_recreate(rule)
            counts[f"recreate_{outcome}"] += 1
        if rule.phase is Phase.RECORDED and carriers:
            rule = self._transition(rule, lambda r, p=carriers[0]: r.applied(p.name, now, self.plan.rule_ttl),
                                    counts, "applied") or rule
        if rule.phase is Phase.APPLIED:
            bound = next((p for p in carriers if p.node and p.uid != rule.bound_pod), None)
            if bound is not None and not rule.bound_pod:
                rule = self._transition(rule, lambda r, p=bound: r.bound(p.uid, p.name, p.node, now),
                                        counts, "bound") or rule
            if (rule.bound_pod and now - rule.updated < self.ANNOUNCE_WINDOW
                    and (pod := pods.get(rule.bound_pod)) is not None and self._once(rule, "substituted")):
                self._event(pod, "MigSubstituted",
                            f"running on {rule.substitute.resource} instead of {rule.original.resource} "
                            f"(sold out when it was scheduled; rule {rule.name}); it will be restored when "
                            f"{rule.original.resource} frees up")
        if rule.phase is Phase.RESTORING:
            rule = self._observe_restore(rule, pods, counts, now, arrived)
        # announced however it got there (the extender's bind usually makes the transition), once, and
        # only while fresh, so a new leader does not repeat old news
        if (rule.phase is Phase.RESTORED and now - rule.updated < self.ANNOUNCE_WINDOW
                and (pod := pods.get(rule.restored_pod)) is not None and self._once(rule, "restored")):
            self._event(pod, "MigRestored", f"back on its requested {rule.original.resource} on {pod.node} "
                                            f"(was {rule.substitute.resource}; rule {rule.name})")

    def _observe_restore(self, rule: Rule, pods: Mapping[str, PodInfo], counts: Counter[str], now: float,
                         arrived: PodInfo | None) -> Rule:
        """``arrived``: the bound new pod this restore was matched with (rules.match_restores), if any."""
        if arrived is not None:
            done = self._transition(rule, lambda r: r.bound(arrived.uid, arrived.name, arrived.node, now),
                                    counts, "restored")
            return done or rule
        return rule

    def _expire(self, counts: Counter[str]) -> None:
        snap, pods = self._snapshot()
        for rule in expired_rules(snap):
            if self._transition(rule, lambda r: r.expired(snap.now), counts, "expired") is not None:
                pod = pods.get(rule.pod_uid)
                if pod is not None:
                    what = "held for this preemptor" if rule.is_hold else "reserved"
                    self._event(pod, "MigSubstitutionExpired", f"{rule.substitute} was {what} on {rule.node} but "
                                                               f"not used in time; reservation released", warning=True)
        for rule in finished_rules(snap, self.retention):
            self.store.delete(rule)
            counts["deleted"] += 1
        self._finish_rules_whose_pod_is_gone(snap, pods, counts)

    def _finish_rules_whose_pod_is_gone(self, snap: Any, pods: Mapping[str, PodInfo], counts: Counter[str]) -> None:
        """Soak D3: an Applied rule whose pod was deleted (by its user, a scale-down, a node drain) finishes.

        Our watch may lag (a pod the extender just bound, a bare pod we just created), so each candidate is
        looked up in the API first. A write that conflicts is retried only while the rule is still Applied
        (update_with_retry), so a restore that began meanwhile is left alone; a leader that dies before the
        write leaves the rule to the next one, which decides the same."""
        for gone in rules_whose_pod_is_gone(snap, pods, self.plan.gone_grace):
            if self._pod_still_there(gone):
                continue
            self._transition(gone.rule, lambda r, g=gone: r.pod_gone(g.pod_name, self.clock()), counts, "pod_gone")

    def _pod_still_there(self, gone: PodGone) -> bool:
        """Does the API still have the pod (same uid; or, not yet bound, carrying the rule)? A pod of the same
        name and another uid is a new pod (StatefulSet, bare pod recreated by its user), not this one."""
        if not gone.pod_name:
            return False
        obj = self.actions.get_pod(gone.rule.namespace, gone.pod_name)
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if gone.pod_uid:
            return meta.get("uid") == gone.pod_uid
        return (meta.get("annotations") or {}).get(ANN_RULE) == gone.rule.name

    def _upgrade(self, counts: Counter[str]) -> None:
        snap, pods = self._snapshot()
        index = RestartIndex.build(self._expire_unrewritten(snap, pods, counts), snap.now, self.plan.restart_window)
        upgrades, cancel = plan_upgrades(snap, pods, self.plan)
        for rule in cancel:
            self._cancel_upgrade(rule, pods.get(rule.pod_uid), snap, counts)
        for up in upgrades:
            if self._upgrade_held(up.rule, up.pod, index, counts, snap.now):
                continue
            # a Job whose restart would count as a failure is refused before the rule is handed over
            if self._upgrade_refused(up.rule, up.pod, self._job_problem(up.pod, restore=False), counts, snap.now):
                continue
            rule = self._mark_restart(up.rule, counts)
            if rule is None or not self._once(rule, "upgrade-restart"):
                continue
            self._event(up.pod, "MigUpgrading", f"{up.rule.original.resource} is sold out on every node that fits; "
                                                f"restarting so it runs on {up.rule.substitute.resource}, reserved on "
                                                f"{up.rule.node} (rule {up.rule.name})")
            outcome = self._restart(up.rule, up.pod, counts, restore=False)
            if outcome.kind is Restart.PLACED:  # it runs on its own type: the rule is moot, release it now
                self._upgrade_refused(rule, up.pod, f"it was bound to {outcome.detail} meanwhile, on its own "
                                      f"{rule.original.resource}", counts, snap.now)
            elif outcome.kind is Restart.INVALID:
                self._upgrade_refused(up.rule, up.pod, f"its replacement would be refused: {outcome.detail}",
                                      counts, snap.now)

    def _cancel_upgrade(self, rule: Rule, pod: PodInfo | None, snap: Any, counts: Counter[str]) -> None:
        """A rule plan_upgrades dropped; a pod left alone by the loop guard (soak D7) is told why."""
        loop = restart_loop(pod, snap, self.plan) if pod is not None and not pod.node else None
        if loop is not None:
            self._upgrade_refused(rule, pod, str(loop), counts, snap.now)
        else:
            self._transition(rule, lambda r: r.expired(snap.now), counts, "cancelled")

    def _expire_unrewritten(self, snap: Any, pods: Mapping[str, PodInfo], counts: Counter[str]) -> list[Rule]:
        """Expire the rules whose restart's replacement came back unrewritten (core/loopguard.py), and say so
        on the pod: the webhook did not run, so retrying at once would only restart it again (soak D5), and
        a rule left Recorded would be handed to a later pod of the lineage (a restore's replacement).
        Returns the pass's rules with those expirations in them."""
        rules = {(r.namespace, r.name): r for r in snap.rules}
        for stale in unrewritten_handovers(snap.rules, pods.values(), snap.now):
            stored = self._transition(stale.rule, lambda r: r.unrewritten(snap.now) if r.phase is Phase.RECORDED
                                      else r, counts, "unrewritten")
            if stored is None or not stored.unrewritten_at:
                continue
            rules[(stored.namespace, stored.name)] = stored
            self._event(stale.pod, "MigUpgradeNotRewritten",
                        f"restarted to run on {stale.rule.substitute.resource} (rule {stale.rule.name}) but came "
                        f"back asking for {stale.rule.original.resource}: the mutating webhook did not rewrite it "
                        f"(down, and failurePolicy Ignore). Reservation released; no new upgrade restart for "
                        f"{int(self.plan.upgrade_backoff)}s, at most {self.plan.restart_limit} restarts in "
                        f"{int(self.plan.restart_window)}s",
                        warning=True)
            # its first scheduling attempt saw this rule reserve the substitute for its predecessor; with the
            # rule expired nothing else tells kube-scheduler to retry it (actions.requeue)
            self._write_requeue(stale.pod, f"rule {stale.rule.name} expired: its reserved "
                                           f"{stale.rule.substitute.resource} is free again", counts)
        return list(rules.values())

    def _upgrade_held(self, rule: Rule, pod: PodInfo, index: RestartIndex, counts: Counter[str], now: float) -> bool:
        """The loop guard on the upgrade side: wait out the backoff after an unrewritten replacement (the
        rule stays Recorded and reserved), or, past the lineage's restarts for the hour, cancel the upgrade."""
        hold = upgrade_hold(pod, index, now, self.plan.upgrade_backoff, self.plan.restart_limit,
                            self.plan.restart_window)
        if isinstance(hold, Backoff):
            counts["upgrade_backoff"] += 1
            return True
        if isinstance(hold, RestartLoop):
            counts["upgrade_loop_guard"] += 1
            return self._upgrade_refused(rule, pod, str(hold), counts, now)
        return False

    def _upgrade_refused(self, rule: Rule, pod: PodInfo, why: str, counts: Counter[str], now: float) -> bool:
        """Cancel an upgrade that must not happen (its reservation goes back at once), and say why."""
        if not why:
            return False
        self._transition(rule, lambda r: r.expired(now), counts, "cancelled")
        self._event(pod, "MigUpgradeSkipped", f"not restarted onto {rule.substitute.resource}: {why}", warning=True)
        return True

    def _mark_restart(self, rule: Rule, counts: Counter[str]) -> Rule | None:
        """Durably hand ``rule`` to its pod's replacement before the pod is restarted (``Rule.restarting``).

        A rule marked already (a leader died between the mark and the restart) is restarted again as it
        is. On a conflict the fresh rule decides: None when it is gone or no longer Recorded (nothing to
        restart for)."""
        if rule.restart_at:
            return rule
        now = self.clock()
        marked = self._transition(rule, lambda r: r.restarting(now) if r.phase is Phase.RECORDED else r, counts,
                                  "restart_marked")
        return marked if marked is not None and marked.phase is Phase.RECORDED else None

    def _restore(self, counts: Counter[str]) -> None:
        """Restart the restores reserved on an earlier pass whose slice is still free, then reserve new ones.

        Reserve first, confirm later (soak D7): a pass only writes the reservation (rule Restoring); the
        restart waits for a pass ``restore_confirm`` seconds on, which re-checks the reserved slice in our
        own view. A leader that dies after the reservation leaves the restart to the next one, which
        confirms the same way."""
        snap, pods = self._snapshot()
        self._restart_confirmed_restores(snap, pods, counts)
        plans, skips = plan_restores(snap, pods, self.plan, self._job_blocks(snap, pods))
        for skip in skips:
            if self._once(skip.rule, "skip:" + skip.reason):
                self._event(skip.pod, "MigRestoreSkipped", skip.reason, warning=True)
                counts["restore_skipped"] += 1
        for plan in plans:
            info, want = snap.nodes.get(plan.node), plan.rule.original.resource
            log.info("restore of %s/%s (rule %s): %s reserved on %s, free %d of %d in this pass's view",
                     plan.pod.namespace, plan.pod.name, plan.rule.name, want, plan.node, snap.free(plan.node, want),
                     info.allocatable.get(want, 0) if info is not None else 0)
            self._transition(plan.rule, lambda r, n=plan.node, c=plan.pod.created: self._reserve_original(r, n, c),
                             counts, "restoring")

    def _reserve_original(self, rule: Rule, node: str, after: float) -> Rule:
        return rule.restoring(node, self.clock(), self.plan.restore_ttl, after)

    def _restart_confirmed_restores(self, snap: Any, pods: Mapping[str, PodInfo], counts: Counter[str]) -> None:
        """Restoring rules whose upgraded pod still runs: restart it once the reservation is confirmed, or
        defer the restore when a bind that raced the reservation took the slice (Event MigRestoreDeferred)."""
        for rule in snap.rules:
            old = pods.get(rule.bound_pod) if rule.phase is Phase.RESTORING else None
            # once per attempt: a deferred restore (attempts + 1) may restart when it is reserved again
            attempt = f"restore-restart:{rule.restore_attempts}"
            if old is None or old.terminating or (f"{rule.namespace}/{rule.name}", attempt) in self._done:
                continue
            check = confirm_restore(rule, old, snap, self.plan)
            if isinstance(check, RestoreWait):
                continue
            if isinstance(check, RestoreSliceTaken):
                self._defer_restore(rule, old, str(check), counts)
                continue
            self._once(rule, attempt)
            self._event(old, "MigRestoring", f"{rule.original.resource} is free again on {rule.restore_node} and "
                                             f"reserved for this workload; restarting to move it back from "
                                             f"{rule.substitute.resource} (rule {rule.name})")
            self._restart_for_restore(rule, old, counts)

    def _restart_for_restore(self, rule: Rule, pod: PodInfo, counts: Counter[str]) -> None:
        """Restart for a restore; a refusal sends the rule back to Applied (original released) with a backoff,
        or it would sit Restoring until it expired and the pod would never be restored (issue 13 item 4)."""
        outcome = self._restart(rule, pod, counts, restore=True)
        if outcome.kind in (Restart.REFUSED, Restart.INVALID, Restart.BLOCKED):
            self._defer_restore(rule, pod, f"restart refused ({outcome.detail or outcome.kind})", counts)

    def _defer_restore(self, rule: Rule, pod: PodInfo, why: str, counts: Counter[str]) -> None:
        """Back to Applied, the reserved original released, the next try after a backoff (rule.restore_deferred)."""
        backoff = self.plan.restore_backoff_after(rule.restore_attempts + 1)
        if self._transition(rule, lambda r: r.restore_deferred(self.clock(), backoff, why), counts,
                            "restore_deferred") is not None:
            self._event(pod, "MigRestoreDeferred", f"{why}; {rule.original.resource} on {rule.restore_node} "
                                                   f"released, next try in {int(backoff)}s", warning=True)

    def _restart(self, rule: Rule, pod: PodInfo, counts: Counter[str], restore: bool) -> RestartOutcome:
        """Controller-owned pods are evicted and their controller recreates them; bare pods are recreated by
        us from a manifest stashed on the rule; pods nothing known recreates are left alone."""
        kind = "restore" if restore else "upgrade"
        outcome = self._restart_outcome(rule, pod, restore)
        if outcome.kind is Restart.EVICTED and pod.owner is not None and is_job_owner(pod.owner):
            self._job_restarts[pod.owner.uid] = self._job_restarts.get(pod.owner.uid, 0) + 1
        if outcome.kind is Restart.GONE and outcome.detail:  # a bare pod someone else deleted: not ours to recreate
            self._event(pod, "MigRestartAbandoned", f"{kind} abandoned: {outcome.detail} (rule {rule.name})",
                        warning=True)
        counts[f"{kind}_{outcome.kind}"] += 1
        return outcome

    def _restart_outcome(self, rule: Rule, pod: PodInfo, restore: bool) -> RestartOutcome:
        blocker = restart_blocker(pod.owner, self.plan.restartable_owners)
        if blocker is not None:
            return RestartOutcome(Restart.BLOCKED, str(blocker))
        obj = self.actions.get_pod(pod.namespace, pod.name)
        if obj is None or obj["metadata"].get("uid") != pod.uid:
            return RestartOutcome(Restart.GONE)
        if not restore and (obj.get("spec") or {}).get("nodeName"):
            # bound since our watch showed it pending: /filter found its own type free and its cancel of the
            # rule did not reach the API (ExtenderService._transition passes over that), or a bind of another
            # path. Evicting it would throw away a pod placed as it asked, for a substitute.
            return RestartOutcome(Restart.PLACED, str(obj["spec"]["nodeName"]))
        if pod.owner is not None:
            return self.actions.evict(obj)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = replacement_pod(obj, rule if restore else None, stamp if restore else "")
        return self.actions.stash_and_evict_bare_pod(rule.namespace, rule.name, obj, manifest)

    # -- Jobs -------------------------------------------------------------------------------------

    def _job_problem(self, pod: PodInfo, restore: bool) -> str:
        """Why restarting this Job pod could harm its Job ('' if it cannot, or the pod is no Job's)."""
        if pod.owner is None or not is_job_owner(pod.owner):
            return ""
        job = self.actions.get_job(pod.namespace, pod.owner.name)
        if job is None or (job.get("metadata") or {}).get("uid") != pod.owner.uid:
            return f"its Job {pod.owner.name} is gone"
        problem = job_restart_problem(job, restore, self._job_restarts.get(pod.owner.uid, 0))
        return str(problem) if problem is not None else ""

    def _job_blocks(self, snap: Any, pods: Mapping[str, PodInfo]) -> dict[str, str]:
        """Rule name -> why its Job pod must not be restarted for a restore, for upgraded Job pods."""
        out: dict[str, str] = {}
        for rule in snap.rules:
            pod = pods.get(rule.bound_pod) if rule.phase is Phase.APPLIED and rule.bound_pod else None
            if pod is None or pod.owner is None or not is_job_owner(pod.owner):
                continue
            verdict = self._job_verdicts.get(pod.owner.uid)
            if verdict is None:
                verdict = self._job_verdicts[pod.owner.uid] = self._job_problem(pod, restore=True)
            if verdict:
                out[rule.name] = verdict
        return out

    # -- preempt ----------------------------------------------------------------------------------

    def _preempt(self, counts: Counter[str]) -> None:
        """Resume the holds under way, then plan new preemptions for the pods that wait (docs/preemption.md)."""
        if not self.preemption.enabled:
            return
        snap, pods = self._snapshot()
        for rule in snap.rules:
            if rule.is_preemption and rule.reservation(snap.now) is not None:
                self._delete_victims(rule, pods, counts)
        waiting = preemptors(snap, pods.values())
        if not waiting:
            return
        by_node, budgets = pods_by_node(pods.values()), self._budgets()
        preempted = {uid for r in snap.rules if r.is_preemption for uid in r.victims}
        started = 0
        for pod in waiting:
            if started >= self.preemption.per_pass:
                break
            plan = plan_preemption(pod, snap, by_node, budgets, _placement_ok(snap), self.plan,
                                   preempted=preempted)
            if isinstance(plan, NoPlan):
                self._count_no_plan(pod, plan)
                continue
            rule = self._record_preemption(plan, snap, counts)
            if rule is None:
                continue
            snap = snap.with_rule(rule)  # the next preemptor of this pass is not promised these slices
            started += 1
            self._announce_preemption(rule, plan, pods, counts)

    def _budgets(self) -> Any:
        """PDBs and the labels of the pods in their namespaces (kube-scheduler reads them from its
        informers; we list them here, once per pass that has a preemptor: never on /filter)."""
        pdbs = self.actions.list_pdbs()
        namespaces = sorted({(p.get("metadata") or {}).get("namespace") or "default" for p in pdbs})
        objs = [o for ns in namespaces for o in self.actions.list_pods(ns)]
        return budgets_from_objects(pdbs, objs)

    def _count_no_plan(self, pod: PodInfo, plan: NoPlan) -> None:
        reason = plan.reason.name.lower()
        if self._no_plan.get(pod.uid) != reason:
            self._no_plan[pod.uid] = reason
            self.metrics.preemptions.labels(reason).inc()

    def _record_preemption(self, plan: PreemptionPlan, snap: Any, counts: Counter[str]) -> Rule | None:
        """Persist the reservation before any victim is touched; the stored rule decides (another leader
        may have recorded it first, with its own victims)."""
        pod, now = plan.pod, snap.now
        ttl = max((v.grace for v in plan.victims), default=0.0) + self.preemption.reservation_margin
        earlier = snap.rule_for(pod)
        after = earlier.name if earlier is not None and earlier.pod_uid == pod.uid else ""
        victims = [v.uid for v in plan.victims]
        if plan.substitute is None:
            rule = preemption_hold(pod, plan.node, victims, now, ttl, after)
        else:  # runs on a larger slice: the ordinary substitution (restart, webhook) plus the victims
            want = pod.single_demand
            assert want is not None  # a substitute plan exists only for a single-type pod
            rule = replace(new_rule(pod, want, plan.substitute, plan.node, now, max(ttl, self.plan.rule_ttl), after),
                           victims=tuple(victims))
        try:
            stored = self.store.record(rule)
        except Exception as exc:  # nothing deleted yet: the next pass plans again
            self.metrics.preemptions.labels("record_failed").inc()
            log.warning("preemption for %s not recorded (%s); retrying next pass", pod.key, exc)
            return None
        if not stored.is_preemption or stored.phase is not Phase.RECORDED:
            return None
        counts["preemption_recorded"] += 1
        self.metrics.preemptions.labels("planned").inc()
        return stored

    def _announce_preemption(self, rule: Rule, plan: PreemptionPlan, pods: Mapping[str, PodInfo],
                             counts: Counter[str]) -> None:
        """After the hold: delete the victims, nominate the node, tell the preemptor (docs order 2-4)."""
        self._delete_victims(rule, pods, counts)
        pod = plan.pod
        try:
            if rule.is_hold and self.actions.nominate(pod.namespace, pod.name, pod.uid, rule.node):
                counts["nominated"] += 1
        except Exception as exc:  # only a hint for kube-scheduler: the hold already gives the pod its node
            counts["nominate_failed"] += 1
            log.warning("nominatedNodeName of %s not set: %s", pod.key, exc)
        names = ", ".join(f"{v.namespace}/{v.name}" for v in plan.victims)
        self._event(pod, "Preempting", f"preempting {len(plan.victims)} lower-priority pod(s) on {rule.node} for "
                                       f"{rule.substitute}: {names} (rule {rule.name})")

    def _delete_victims(self, rule: Rule, pods: Mapping[str, PodInfo], counts: Counter[str]) -> None:
        """DisruptionTarget + DELETE for each victim not terminating yet (prepareCandidate skips those).
        Idempotent: uid preconditions, and a pod already gone or replaced is skipped."""
        for uid in rule.victims:
            victim = pods.get(uid)
            if victim is None or victim.terminating:
                continue
            outcome = self.actions.preempt(victim.namespace, victim.name, victim.uid)
            counts[f"preempt_{outcome}"] += 1
            if outcome is Deletion.THROTTLED:
                self.metrics.preemptions.labels("throttled").inc()
            if outcome is Deletion.DELETED:
                self._event(victim, "Preempted", f"Preempted by pod {rule.pod_uid} on node {rule.node} "
                                                 f"({DISRUPTION_REASON}; {rule.namespace}/{rule.pod_name})")

    # -- requeue ----------------------------------------------------------------------------------

    def _requeue(self, counts: Counter[str]) -> None:
        """Hand back to kube-scheduler the parked pods that fit in our view (core/requeue.py): nothing it
        watches would wake them when what freed their slices was one of our reservations, or an event it
        saw before our watch did (a preemption victim's delete)."""
        snap, pods = self._snapshot()
        left = max(0, self.requeue.per_pass - counts["requeued"])  # what this pass's D5 requeues left over
        due, self._parked = plan_requeues(snap, pods.values(), self._parked, _placement_ok(snap),
                                          replace(self.requeue, per_pass=left))
        for item in due:
            demand = ", ".join(f"{r}={n}" for r, n in sorted(item.pod.demand.items()))
            self._write_requeue(item.pod, f"{demand} free on {item.node} for this pod (retry {item.attempt})", counts)

    def _write_requeue(self, pod: PodInfo, message: str, counts: Counter[str]) -> None:
        """Our pod condition on ``pod`` (actions.requeue). A 429 or 5xx is counted, never raised: the pass's
        other steps must run, and the pod is tried again (the scheduler's own retry, or our next delay).
        Every write of a pass counts against ``requeue.per_pass`` (0: requeues off), and none goes to a pod
        of a scheduler that does not call us (``requeue.schedulers``; the D5 replacement missed the
        webhook, which sets schedulerName in opted-in namespaces)."""
        if pod.scheduler not in self.requeue.schedulers:
            counts["requeue_other_scheduler"] += 1
            return
        if counts["requeued"] >= self.requeue.per_pass:
            counts["requeue_over_budget"] += 1
            return
        try:
            if self.actions.requeue(pod.namespace, pod.name, pod.uid, message):
                counts["requeued"] += 1
        except Exception:
            log.warning("requeueing %s failed", pod.key, exc_info=True)
            counts["requeue_errors"] += 1

    # -- explain ----------------------------------------------------------------------------------

    def _explain(self, counts: Counter[str]) -> None:
        """Tell a pending pod why it waits although a larger slice is free: nothing known recreates it."""
        snap, pods = self._snapshot()
        for pod in pods.values():
            if (pod.node or pod.terminating or pod.owner is None or pod.uid in self._explained
                    or pod.single_demand is None):
                continue
            why = restart_blocker(pod.owner, self.plan.restartable_owners)
            want = pod.single_demand
            if why is None or any(snap.free(n, want.resource) >= want.count
                                  for n in snap.nodes_with_free(want.resource)):
                continue
            allowed = replace(self.plan, restartable_owners=frozenset({owner_label(pod.owner)}))
            rule = choose_substitute(pod, snap.nodes.keys(), snap, allowed)
            if rule is None:
                continue
            self._explained[pod.uid] = True
            counts["substitution_skipped"] += 1
            self._event(pod, "MigSubstitutionSkipped", f"{want.resource} is sold out and {rule.substitute.resource} "
                                                       f"is free on {rule.node}, but the pod is not restarted onto "
                                                       f"it: {why}", warning=True)

    def _repartition(self, counts: Counter[str]) -> None:
        """Follow and start MIG layout changes (components/repartitioner.py), over this pass's snapshot."""
        if self.repartitioner is not None:
            now = self.clock()
            self.repartitioner.run_once(self.inventory.snapshot(self.store.book(now), now), counts)

    # -- loop -------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a pass now: a rule was created or changed (the rule store's watch calls this).

        Without it a new rule waited for the next periodic pass (5.4 s from a pending pod to its upgraded
        replacement Running). Wakes coalesce: any number before a pass starts make that one pass, and
        those during a pass make exactly one more. A follower's pass returns at once (run_once)."""
        self._wake.set()

    def run(self, stop: threading.Event, period: float = 5.0, poll: float = 0.5) -> None:
        """Pass at once, then on every wake, on every inventory change (checked every ``poll`` s), when a
        recorded rule turns ``settle`` old, and at least every ``period`` s."""
        seen = -1
        last = float("-inf")
        due: float | None = None
        while not stop.is_set():
            now = self.clock()
            if (self._wake.is_set() or self.inventory.generation != seen or now - last >= period
                    or (due is not None and now >= due)):
                self._wake.clear()  # a wake from here on asks for the next pass
                seen = self.inventory.generation
                last = now
                self.run_once()
                due = self._next_settled()
            self._wake.wait(poll if due is None else max(0.0, min(poll, due - self.clock())))

    def _next_settled(self) -> float | None:
        """When the youngest recorded rule turns ``settle`` old (None: none is younger). A rule the wake
        brought in is too young to act on (plan_upgrades: every webhook replica's watch must have it); its
        pass is due then, not at the next period."""
        now = self.clock()
        times = [r.created + self.plan.settle for r in self.store.book(now).recorded
                 if r.created + self.plan.settle > now]
        return min(times, default=None)

    def readiness_problems(self) -> list[str]:
        return readiness_problems(self.inventory, self.store, self.checks)


def _placement_ok(snap: Any) -> Callable[[PodInfo, str], bool]:
    """kube-scheduler's view of a node's other constraints (nodeSelector, required affinity, taints,
    cpu/memory), for preemption candidates: a node the pod cannot run on anyway frees nothing for it."""
    def ok(pod: PodInfo, node: str) -> bool:
        info = snap.nodes.get(node)
        return info is not None and not info.placement_problem(pod.placement)
    return ok
