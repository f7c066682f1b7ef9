"""One soak run: a seeded random schedule of churn and faults against the full stack, invariants checked on
a period, at quiet points and at the end, and a history of all of it.

    drive   (plan.seconds)  churn at ~actions_per_second; a fault every ~fault_every s (one at a time);
                            invariants every check_every s; a quiet point every quiet_every s
    wind down               undo faults, uncordon, release gates, shrink demand to fit with room to spare
    settle  (<= plan.settle) wait until no pod waits and every workload has its pods, still checking
    final                   a last quiet point, then every invariant's final check

The seed fixes the schedule's random choices; timing (what the cluster did meanwhile) is not
reproducible, so the history is what explains a violation.

Must not: fail on a harness-side error (a refused action, a fault step that could not be made): those are
recorded and counted, and the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from ..testenv.cluster import E2ECluster
from ..testenv.stack import NS_LABEL, Stack
from .churn import CHURN, Action, CreateBarePod, CreateDeployment, CreateStatefulSet, add_node, compute, set_cordon
from .faults import FAULTS, ActiveFault, Fault
from .history import History
from .invariants import (
    ChangeBounded,
    Invariant,
    NoRestartLoop,
    Observation,
    Verdict,
    Violation,
    all_invariants,
    changing_nodes,
    observe,
)
from .ledger import PodLedger, PodRecord
from .repartition import (
    SETTLE,
    SLACK,
    TIMEOUT,
    CreateBigPod,
    EndBigPod,
    WedgeMigManager,
    reconciler_env,
    start_big_pool,
)
from .world import MERGE, POOLS, ActionFailed, Skip, SoakWorld, Workload

log = logging.getLogger("soak")
FIT_SLACK = 0.7  # wind-down: demand per profile at most this share of the schedulable capacity


# kube-controller-manager's Job controller: DefaultJobPodFailureBackOff, MaxJobPodFailureBackOff
JOB_BACKOFF_S, JOB_BACKOFF_MAX_S = 10.0, 360.0
JOB_SYNC_SLACK_S = 5.0  # from the backoff's end to the replacement pods in the soak's watch


def job_backoff_ends(records: Sequence[PodRecord]) -> float | None:
    """The history time until which some Job's controller holds its replacement pods back, or None.

    The Job controller creates no pod for 10 s x 2^(n - 1), at most 6 min, after the last of the n pods
    that failed since the Job's last success, and it counts pods whose failure its podFailurePolicy
    ignores too (an upgrade's eviction, DisruptionTarget): kubernetes v1.36.3 pkg/controller/job
    job_controller.go manageJob (getRemainingTime before creating pods) and backoff_utils.go
    newBackoffRecord (every new failed pod). The failure time is when the soak first saw the pod
    terminal, at or after the controller's own reading of it."""
    by_job: dict[str, list[PodRecord]] = {}
    for p in records:
        if p.owner_kind == "Job" and p.finished is not None:
            by_job.setdefault(p.owner_name, []).append(p)
    ends = []
    for pods in by_job.values():
        success = max((p.finished for p in pods if p.phase == "Succeeded" and p.finished is not None),
                      default=float("-inf"))
        failures = sorted(p.finished for p in pods
                          if p.phase == "Failed" and p.finished is not None and p.finished > success)
        if failures:
            ends.append(failures[-1] + min(JOB_BACKOFF_S * 2 ** (len(failures) - 1), JOB_BACKOFF_MAX_S))
    return max(ends, default=None)


@dataclass(frozen=True)
class SoakPlan:
    seed: int = 1
    seconds: float = 120.0          # drive phase
    nodes: int = 5                  # nodes at the start (churn adds and removes, 3..8)
    actions_per_second: float = 2.0
    fault_every: float = 20.0       # mean seconds from one fault's end to the next fault
    faults: tuple[str, ...] = ()    # fault names to use (empty: all)
    cycle_faults: bool = False      # take them in turn (a short run still sees each) instead of at random
    check_every: float = 3.0
    quiet_every: float = 60.0
    settle: float = 90.0
    warmup: float = 15.0            # no fault before this
    oversubscribe: float = 1.3      # churn keeps demand (compute slices) under this share of the capacity
    prefill: float = 0.9            # demand created before the drive starts, as a share of the capacity
    repartition: bool = False       # opted-in nodes, a fake MIG manager, the repartitioner on (repartition.py)


@dataclass
class SoakResult:
    plan: SoakPlan
    history_path: Path | None
    verdict: Verdict = field(default_factory=Verdict)
    lifecycles: int = 0
    pods_created: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    failed: int = 0
    harness_errors: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)    # components that exited on their own (restarted)
    faults: Counter[str] = field(default_factory=Counter)
    quiet_points: int = 0
    rules_seen: set[str] = field(default_factory=set)  # MigSubstitutions the checks saw
    restarts: int = 0                                  # pods our reconciler restarted (its Events)
    converged: bool = False
    repartitions: dict[str, Any] = field(default_factory=dict)  # changes seen and how they ended; Events
    drive_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())

    def report(self) -> list[str]:
        lines = [f"seed {self.plan.seed}: {self.drive_seconds:.0f} s of churn, {self.total_seconds:.0f} s in all; "
                 f"{self.lifecycles} pod lifecycles ({self.pods_created} pods created); "
                 f"{sum(self.actions.values())} actions ({self.skipped} skipped, {self.failed} refused); "
                 f"{self.fault_count} faults {dict(self.faults)}; {len(self.rules_seen)} rules, "
                 f"{self.restarts} restarts by the reconciler; {self.quiet_points} quiet points; "
                 f"settled: {'yes' if self.converged else 'NO'}"]
        if self.repartitions:
            lines.append(f"repartitions: {self.repartitions}")
        if self.crashes:
            lines.append(f"components that exited on their own and were restarted: {self.crashes}")
        if self.harness_errors:
            lines.append(f"harness errors ({len(self.harness_errors)}), first: {self.harness_errors[0]}")
        if not self.verdict.total:
            lines.append("violations: none")
        for key, violation in sorted(self.verdict.first.items()):
            lines.append(f"violations of {key}: {self.verdict.counts[key]}; the first:")
            lines.append(violation.render(self.plan.seed))
        if self.history_path:
            lines.append(f"history: {self.history_path}")
        return lines


class SoakRun:
    def __init__(self, cluster: E2ECluster, stack: Stack, plan: SoakPlan, history_path: Path | None,
                 churn: Sequence[Action] = CHURN, faults: Sequence[Fault] = FAULTS) -> None:
        self.cluster, self.stack, self.plan = cluster, stack, plan
        self.churn = list(churn) + ([CreateBigPod(), EndBigPod()] if plan.repartition else [])
        faults = list(faults) + ([WedgeMigManager()] if plan.repartition else [])
        named = {f.name: f for f in faults}
        self.faults = [named[n] for n in plan.faults if n in named] if plan.faults else list(faults)
        for action in self.churn:
            action.oversubscribe = plan.oversubscribe
        self.rng = random.Random(plan.seed)
        self.fault_rng = random.Random(plan.seed * 7919 + 1)  # its own stream: churn skips do not shift it
        self.timing = random.Random(plan.seed * 104729 + 2)
        self.history = History(history_path, plan.seed)
        self.result = SoakResult(plan, history_path)
        self.active: ActiveFault | None = None
        self.invariants: list[Invariant] = []
        self.world: SoakWorld | None = None
        self._rules: dict[str, tuple[Any, ...]] = {}

    # ---- the whole run ---------------------------------------------------------------------------------
    def run(self) -> SoakResult:
        started = time.monotonic()
        namespace = self.cluster.create_namespace(prefix=f"soak-{self.plan.seed}", labels={NS_LABEL: "true"})
        world = self.world = SoakWorld(self.cluster, self.stack, namespace, self.history,
                                       run_id=f"s{self.plan.seed}-{namespace[-4:]}")
        world.ledger = PodLedger(world, self.history).start()
        self.invariants = all_invariants(self.cluster.fake_kubelet.checkpoint(), self.plan.repartition)
        try:
            self._setup(world)
            drive_start = time.monotonic()
            self._drive(world)
            self.result.drive_seconds = time.monotonic() - drive_start
            self._wind_down(world)
            self.result.converged = self._settle(world)
            self._quiet_point(world, final=True)
            self._final(world)
        finally:
            self._recover()
            self._collect(world)
            world.ledger.stop()
            self._cleanup(world)
            self.result.total_seconds = time.monotonic() - started
            self.history.close()
        return self.result

    def _setup(self, world: SoakWorld) -> None:
        for _ in range(self.plan.nodes):
            node = add_node(world, self.rng)
            self.history.record("action", "node+", node=node.name, layout=dict(node.allocatable), pool=node.pool)
        if self.plan.repartition:
            start_big_pool(world, self.rng)
            # every reconciler of this run repartitions, those faults restart included
            self.stack.reconciler_env = reconciler_env(self.stack.workdir)
            for identity in self.stack.reconcilers():
                self.stack.stop_reconciler(identity)
        self._prefill(world)
        while len(self.stack.reconcilers()) < 2:  # a leader and a standby, as deployed
            self.stack.start_reconciler(world.new_reconciler_identity())
        self.history.record("phase", "drive", seed=self.plan.seed, seconds=self.plan.seconds,
                            reconcilers=self.stack.reconcilers(), extender=self.stack.extender.url)

    def _prefill(self, world: SoakWorld) -> None:
        """Start near full (``plan.prefill`` of the capacity wanted), so even a short run spends its time
        where types sell out and substitutions and restores happen, not filling an empty cluster."""
        makers = [a for a in self.churn if isinstance(a, (CreateDeployment, CreateStatefulSet, CreateBarePod))]
        for _ in range(60):
            if compute(world.demand()) >= self.plan.prefill * compute(world.capacity()) or not makers:
                break
            self._act(world, self.rng.choice(makers))

    def _drive(self, world: SoakWorld) -> None:
        now = time.monotonic()
        deadline = now + self.plan.seconds
        next_check, next_quiet = now + self.plan.check_every, now + self.plan.quiet_every
        next_fault = now + self.plan.warmup  # the first at once: even a short run sees a fault
        while (now := time.monotonic()) < deadline:
            self._recover_due()
            quiet_due = now >= next_quiet and deadline - now > 10
            if quiet_due and self.active is None and not self._recovering(world):
                self._quiet_point(world)
                next_quiet = time.monotonic() + self.plan.quiet_every
            elif (self.active is None and not quiet_due and now >= next_fault and self.faults
                  and deadline - now > 10):
                next_fault = self._inject(world)
            self._act(world)
            if now >= next_check:
                self._revive_crashed(world)
                self._check(world)
                next_check = now + self.plan.check_every
                world.ledger.forget_ended(older_than=600)
            time.sleep(min(self.timing.expovariate(self.plan.actions_per_second), 3.0))

    # ---- churn and faults --------------------------------------------------------------------------------
    def _act(self, world: SoakWorld, action: Action | None = None) -> None:
        action = action or self.rng.choices(self.churn, weights=[a.weight for a in self.churn])[0]
        self.result.actions[action.name] += 1
        try:
            detail = action.apply(world, self.rng)
        except Skip as exc:
            self.result.skipped += 1
            self.history.record("skip", action.name, why=str(exc))
        except ActionFailed as exc:
            self.result.failed += 1
            self.history.record("error", action.name, error=str(exc))
        except Exception as exc:  # a harness bug: recorded and reported, the run goes on
            self._harness_error(f"action {action.name}", exc)
        else:
            self.history.record("action", action.name, **detail)

    def _inject(self, world: SoakWorld) -> float:
        if self.plan.cycle_faults:
            fault = self.faults[sum(self.result.faults.values()) % len(self.faults)]
        else:
            fault = self.fault_rng.choices(self.faults, weights=[f.weight for f in self.faults])[0]
        started = time.monotonic()
        try:
            self.active = fault.apply(world, self.fault_rng)
        except Skip as exc:
            self.history.record("skip", fault.name, why=str(exc))
            return time.monotonic() + 5.0
        except Exception as exc:
            self._harness_error(f"fault {fault.name}", exc)
            return time.monotonic() + 5.0
        self.result.faults[fault.name] += 1
        # stopping a component can take seconds (a graceful API server shutdown): say when it began
        self.history.record("fault", fault.name, began_s_ago=round(time.monotonic() - started, 1),
                            **self.active.detail)
        return self.active.until + self.fault_rng.expovariate(1 / self.plan.fault_every)

    def _recover_due(self) -> None:
        if self.active is not None and time.monotonic() >= self.active.until:
            self._recover()

    def _recover(self) -> None:
        fault, started = self.active, time.monotonic()
        if fault is None:
            return
        for attempt in range(5):
            try:
                fault.recover()
                break
            except Exception as exc:
                self._harness_error(f"recovering {fault.name} (attempt {attempt + 1})", exc)
                time.sleep(2.0)
        self.active = None
        self.history.record("recover", fault.name, took_s=round(time.monotonic() - started, 1))

    def _harness_error(self, what: str, exc: Exception) -> None:
        text = f"{what}: {type(exc).__name__}: {exc}"
        self.result.harness_errors.append(text)
        self.history.record("error", "harness", what=what, error=f"{type(exc).__name__}: {str(exc)[:200]}")
        log.warning("%s\n%s", text, traceback.format_exc())

    # ---- checks ----------------------------------------------------------------------------------------
    def _check(self, world: SoakWorld, final: bool = False) -> None:
        try:
            obs = observe(world)
        except Exception as exc:  # the API server is away: the next check catches up
            self.history.record("check", "skipped", why=f"{type(exc).__name__}")
            return
        self.result.rules_seen.update(r.name for r in obs.rules)
        self._observe_rules(obs)
        for invariant in self.invariants:
            try:
                found = invariant.final(obs, world) if final else invariant.check(obs, world)
            except Exception as exc:
                self._harness_error(f"invariant {invariant.key}", exc)
                continue
            self._record(found)

    def _observe_rules(self, obs: Observation) -> None:
        """Rule transitions into the history (as the checks see them, every check_every s): the context
        a reservation-related violation needs."""
        current = {}
        for rule in obs.rules:
            held = rule.reservation(obs.wall)
            state = (rule.phase, rule.bound_pod, rule.restored_pod, held)
            current[rule.name] = state
            if self._rules.get(rule.name) != state:
                reserve = f"{held[0]}:{held[1].removeprefix('nvidia.com/mig-')}x{held[2]}" if held else "-"
                self.history.record("observe", "rule", rule=rule.name, phase=rule.phase, pod=rule.pod_name,
                                    uid=rule.pod_uid[:8], bound=rule.bound_pod[:8] or "-",
                                    restored=rule.restored_pod[:8] or "-", reserves=reserve)
        for gone in set(self._rules) - set(current):
            self.history.record("observe", "rule-", rule=gone)
        self._rules = current

    def _record(self, violations: list[Violation]) -> None:
        for v in violations:
            self.history.record("violation", v.invariant, message=v.message)
        for v in self.result.verdict.add(violations):
            log.error("%s", v.render(self.plan.seed))

    def _revive_crashed(self, world: SoakWorld) -> None:
        """Restart a component that exited on its own, as the kubelet restarts a crashed container, and
        record it: a product component that dies without a fault is a finding; kube-scheduler exits on
        purpose when its cache contradicts the API (backend/cache/cache.go UpdatePod, FlushAndExit)."""
        down: list[tuple[str, Any, Any]] = []
        killed = self.active.name if self.active is not None else ""
        if killed != "kill-extender" and not self.stack.extender.alive():
            down.append(("extender", self.stack.extender.process, self.stack.revive_extender))
        scheduler = self.cluster.control_plane.processes.get("lifecycle-scheduler")
        if scheduler is None or not scheduler.alive():
            down.append(("lifecycle-scheduler", scheduler, self.stack.start_scheduler))
        for name, proc in list(self.stack.procs.items()):
            if not proc.alive():
                identity = name.removeprefix("lifecycle-")
                restart = self.stack.start_webhook if identity == "webhook" else (
                    lambda i=identity: self.stack.start_reconciler(i))
                down.append((name, proc, restart))
        for name, proc, restart in down:
            last = proc.log_tail(3).splitlines()[-1][:300] if proc is not None else ""
            self.result.crashes.append(name)
            self.history.record("observe", "crashed", component=name, exit=proc.exit_code() if proc else None,
                                last_log=last)
            world.impair(30, "scheduling", "reconciler")
            try:
                restart()
            except Exception as exc:
                self._harness_error(f"restarting {name}", exc)

    @staticmethod
    def _recovering(world: SoakWorld) -> bool:
        """Still inside a fault's recovery window: watches resuming, a Binding whose outcome was unknown
        still booked (the extender keeps those ASSUME_TTL, 30 s). Not quiet yet."""
        return world.impaired("scheduling") or world.impaired("reconciler")

    def _quiet_point(self, world: SoakWorld, final: bool = False) -> None:
        """Stop churn and faults, let the cluster settle (no fault recovering), and compare the books."""
        self._recover()
        self.history.record("phase", "quiet", final=final)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not self.stack.extender.ready() or self._recovering(world)):
            time.sleep(0.5)
        self.cluster.fake_kubelet.flush()
        time.sleep(3.0)
        for invariant in self.invariants:
            try:
                self._record(invariant.quiet(world))
            except Exception as exc:
                self._harness_error(f"quiet check {invariant.key}", exc)
        self.result.quiet_points += 1
        self.history.record("phase", "quiet-end")

    # ---- the end ---------------------------------------------------------------------------------------
    def _wind_down(self, world: SoakWorld) -> None:
        """Undo every fault and disruption, and shrink demand so that everything fits with room to spare."""
        self._recover()
        self.history.record("phase", "wind-down")
        self._changes_end(world)
        with contextlib.suppress(Exception):
            for node in world.nodes.values():
                if node.cordoned:
                    set_cordon(world, node, False)
        for pod in world.ledger.pods():
            if pod.gated and not pod.terminating:
                with contextlib.suppress(Exception):
                    world.core.patch_namespaced_pod(pod.name, world.namespace, {"spec": {"schedulingGates": None}},
                                                    _content_type=MERGE)
                if (w := world.workloads.get(f"Pod/{pod.name}")) is not None:
                    w.gated = False
        for _ in range(500):
            over = self._overloaded(world)
            if over is None:
                break
            self._shrink(world, *over)

    def _changes_end(self, world: SoakWorld) -> None:
        """Let the repartitions under way end before demand is shrunk to the capacity: a change moves
        capacity from one big size to the other (invariant 9 judges one that does not end)."""
        if not self.plan.repartition:
            return
        deadline = time.monotonic() + SETTLE + TIMEOUT + SLACK
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if not changing_nodes(world):
                    return
            time.sleep(1.0)

    def _overloaded(self, world: SoakWorld) -> tuple[str | None, str] | None:
        for pool in (*POOLS, None):
            capacity = world.capacity(pool or "")
            demand = world.demand(pool) if pool else world.demand()
            for resource, n in demand.items():
                if n > FIT_SLACK * capacity.get(resource, 0):
                    return pool, resource
        return None

    def _shrink(self, world: SoakWorld, pool: str | None, resource: str) -> None:
        candidates = [w for w in world.live_workloads() if w.replicas > 0 and resource in w.shape.demand()
                      and (pool is None or w.shape.pool == pool)]
        if not candidates:
            return
        w: Workload = self.rng.choice(candidates)
        try:
            if w.kind == "Deployment":
                world.apps.patch_namespaced_deployment_scale(w.name, world.namespace,
                                                             {"spec": {"replicas": w.replicas - 1}})
                w.replicas -= 1
            elif w.kind == "StatefulSet":
                world.apps.patch_namespaced_stateful_set_scale(w.name, world.namespace,
                                                               {"spec": {"replicas": w.replicas - 1}})
                w.replicas -= 1
            elif w.kind == "Job":
                world.batch.delete_namespaced_job(w.name, world.namespace, propagation_policy="Background")
                w.deleted = True
            else:
                for pod in world.ledger.pods():
                    if pod.name == w.name and not pod.owner_kind:
                        world.delete_pod(pod.name, pod.uid)
                w.deleted = True
        except Exception as exc:
            self._harness_error(f"shrinking {w.key}", exc)
            w.deleted = True  # do not pick it again
            return
        self.history.record("action", "shrink", workload=w.key, replicas=w.replicas, resource=resource,
                            pool=pool or "any")

    def _settle(self, world: SoakWorld) -> bool:
        self.history.record("phase", "settle")
        deadline = time.monotonic() + self.plan.settle
        while time.monotonic() < deadline:
            self._revive_crashed(world)
            self._check(world)
            if self._converged(world):
                self.history.record("phase", "settled")
                return True
            time.sleep(self.plan.check_every)
        self.history.record("phase", "not-settled", **self._unsettled(world))
        return False

    def _converged(self, world: SoakWorld) -> bool:
        pods = world.ledger.pods()
        if any(p.waiting or (p.node and p.phase == "Pending") or p.terminating for p in pods):
            return False
        backoff = job_backoff_ends(world.ledger.records())
        if backoff is not None and world.history.now() < backoff + JOB_SYNC_SLACK_S:
            return False  # a Job's replacements are not due yet: its final count would call them lost
        if self.plan.repartition:
            try:
                if changing_nodes(world):
                    return False
            except Exception:
                return False
        live: Counter[str] = Counter(p.app for p in pods if p.live)
        # a Job's wanted pods depend on its progress: invariant 2's final check counts those
        return all(live.get(w.name, 0) == w.replicas for w in world.live_workloads() if w.kind != "Job")

    def _unsettled(self, world: SoakWorld) -> dict[str, Any]:
        """What kept the cluster from settling, for the history."""
        pods = world.ledger.pods()
        live: Counter[str] = Counter(p.app for p in pods if p.live)
        short = {w.key: f"{live.get(w.name, 0)}/{w.replicas}" for w in world.live_workloads()
                 if w.kind != "Job" and live.get(w.name, 0) != w.replicas}
        return {"waiting": sorted(f"{p.name}:{','.join(p.demand)}" for p in pods if p.waiting)[:30],
                "starting": sorted(p.name for p in pods if p.node and p.phase == "Pending")[:30],
                "terminating": sorted(p.name for p in pods if p.terminating)[:30], "short": short,
                "capacity": world.capacity(), "demand": world.demand()}

    def _final(self, world: SoakWorld) -> None:
        self.history.record("phase", "final")
        self._check(world, final=True)

    def _collect(self, world: SoakWorld) -> None:
        self.result.lifecycles = world.ledger.lifecycles
        self.result.pods_created = world.ledger.created
        self.result.restarts = sum(len(i.restarted) for i in self.invariants if isinstance(i, NoRestartLoop))
        for inv in self.invariants:
            if isinstance(inv, ChangeBounded):
                self.result.repartitions = {"started": inv.started, "applied": inv.applied,
                                            "ended": dict(inv.outcomes), "events": self._repartition_events(world)}
        self.history.record("phase", "done", lifecycles=self.result.lifecycles, created=self.result.pods_created,
                            violations=self.result.verdict.total)

    def _repartition_events(self, world: SoakWorld) -> dict[str, int]:
        """The repartitioner's node Events on the soak's nodes, by reason (MigRepartitionFailed by the
        reason its note starts with)."""
        try:
            listed = client.EventsV1Api(world.api).list_namespaced_event("default", _preload_content=False)
        except Exception as exc:
            self._harness_error("listing node Events", exc)
            return {}
        out: Counter[str] = Counter()
        for e in json.loads(listed.data).get("items") or ():
            reason = e.get("reason", "")
            if (e.get("regarding") or {}).get("name") in world.nodes and reason.startswith("MigRepartition"):
                why = (e.get("note") or "").split(":")[0] if reason == "MigRepartitionFailed" else ""
                out[f"{reason}:{why}" if why else reason] += 1
        return dict(out)

    def _cleanup(self, world: SoakWorld) -> None:
        if world.mig_manager is not None:
            with contextlib.suppress(Exception):
                world.mig_manager.stop()
        for name in list(world.nodes):
            with contextlib.suppress(Exception):
                self.cluster.fake_kubelet.remove_node(name)
        with contextlib.suppress(Exception):
            self.cluster.delete_namespace(world.namespace)
        world.close()


def component_pids(stack: Stack) -> dict[str, list[int]]:
    """The product's processes now (name -> pids: a gunicorn arbiter and its worker), for RSS samples."""
    from ..testenv.procs import ManagedProcess

    out: dict[str, list[int]] = {}
    if stack.extender is not None and stack.extender.process is not None and stack.extender.alive():
        out["extender"] = [stack.extender.process.pid]
    for name, proc in stack.procs.items():
        if isinstance(proc, ManagedProcess) and proc.alive():
            out[name.removeprefix("lifecycle-")] = [proc.pid]
    return out


def describe_plan(plan: SoakPlan) -> dict[str, Any]:
    return asdict(plan)
