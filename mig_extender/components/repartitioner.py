"""The repartition actuator: turn the planner's decisions into MIG manager labels, leader only.

Each reconciler pass (``run_once``, called by the Lease holder only) does two things:

1. **Follow** every change recorded on a Node (annotation ``ANN_CHANGE``, core/repartition_change.py):
   the pure ``next_step`` decides from the annotation, the MIG manager's labels, the allocatable and
   the clock; this module writes what it says (apply, finish, roll back, release, abort) and the node Events
   ``MigRepartitioning``, ``MigRepartitioned``, ``MigRepartitionFailed``. Changes are followed in every
   mode, ``off`` included: a reservation left behind would keep the node out of scheduling for good.
2. **Plan** (``advise`` and ``on``): track the demand substitution leaves waiting, run the planner over
   the same snapshot (opted-in nodes only, label ``mig-extender.io/repartition=true``), and in ``on``
   reserve each planned node: read it fresh, then write the change record with the Node's
   resourceVersion as a precondition (a second leader, or a node changed meanwhile, gets 409 and the
   node is planned again next pass). ``advise`` writes only the Event ``MigRepartitionAdvised``.

Every write is made on a fresh read of the Node, with its resourceVersion as precondition, and only if
that read still shows what the decision was made on (the pass's snapshot can lag): the label is written
only if the node is still opted in, its label and the MIG manager's state are still as when it was
reserved and the API lists no MIG pod on it; an end only if the record and the MIG manager's labels
are still those it was decided on. A node's API error is that node's alone (``_one_node``).

Everything a change needs is on the Node, so a new leader resumes it (it never starts a second one on
a node that holds a record: the planner skips such nodes, and the reservation's precondition refuses a
record written meanwhile), and a wedged change still times out (the deadline is in the record). What
lives in memory only: the demand's first-seen times (a new leader waits one more ``window``), when this
process first saw each record (it bounds the settle and timeout whatever clock wrote the record) and which
Events were written (a new leader may try once more: their names are derived from their content, so
the API answers 409). Nothing here deletes or evicts a pod.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from cachetools import TTLCache

from ..cluster.actions import NodeWrite
from ..cluster.apierrors import api_failure
from ..core.catalog import MODELS
from ..core.repartition import (
    LABEL_MIG_CONFIG,
    LABEL_MIG_CONFIG_STATE,
    LABEL_REPARTITION,
    Demand,
    NamedConfig,
    NodePlan,
    RepartitionPlan,
    RepartitionSettings,
    plan_repartition,
    track_demand,
)
from ..core.repartition_change import (
    ANN_CHANGE,
    ANN_LAST,
    EVENT_ADVISED,
    EVENT_DONE,
    EVENT_FAILED,
    EVENT_STARTED,
    Abort,
    Apply,
    Change,
    ChangePhase,
    Finish,
    Observed,
    Release,
    RollBack,
    Wait,
    any_mig_pod,
    changes_on,
    config_problems,
    describe,
    last_json,
    live_demand,
    new_change,
    next_step,
    observe,
    observe_labels,
    parse_mig_configs,
    planner_nodes,
)
from ..core.snapshot import ClusterSnapshot
from .metrics import Metrics

log = logging.getLogger(__name__)

MODES = ("off", "advise", "on")


class NodeWriter(Protocol):
    def read(self, node: str) -> dict[str, Any] | None: ...
    def pods_on(self, node: str) -> list[dict[str, Any]]: ...
    def patch(self, node: str, labels: Mapping[str, str | None] | None = None,
              annotations: Mapping[str, str | None] | None = None, resource_version: str = "") -> NodeWrite: ...


class NodeEventWriter(Protocol):
    def write(self, node: str, reason: str, message: str, warning: bool = False, action: str = "Inventory") -> str: ...


class ConfigError(ValueError):
    """A --mig-configs file that cannot be used; the message lists every problem."""


def load_mig_configs(path: str) -> tuple[NamedConfig, ...]:
    """The name map from a file: the MIG manager's ``config.yaml`` or the whole ConfigMap holding it.
    YAML comes with the kubernetes client (PyYAML is its dependency), so this adds none."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--mig-configs {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--mig-configs {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(doc, Mapping) and doc.get("kind") == "ConfigMap":
        texts = [v for v in (doc.get("data") or {}).values() if isinstance(v, str)]
        doc = yaml.safe_load(texts[0]) if len(texts) == 1 else None
    configs, problems = parse_mig_configs(doc)
    problems += config_problems(configs, MODELS)
    if problems:
        raise ConfigError(f"--mig-configs {path}: " + "; ".join(problems))
    return configs


@dataclass(frozen=True)
class Status:
    """The last pass, for /debug/repartition."""

    mode: str
    at: float
    plan: RepartitionPlan | None
    in_flight: Mapping[str, dict[str, Any]]
    demand: Mapping[str, Any]


class Repartitioner:
    EVENT_MEMO = 3600.0  # seconds an Event written is not written again by this process

    def __init__(self, mode: str, settings: RepartitionSettings, configs: Sequence[NamedConfig],
                 nodes: NodeWriter, events: NodeEventWriter, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.mode, self.settings, self.configs = mode, settings, tuple(configs)
        self.nodes, self.events, self.clock, self.monotonic = nodes, events, clock, monotonic
        # (node, change record) -> when this process first saw it, on ``monotonic``: bounds the settle
        # and the timeout whatever the wall clock that wrote the record said (next_step's ``seen_for``)
        self._first_seen: dict[tuple[str, str], float] = {}
        self.metrics = metrics or Metrics()
        self._demand: dict[str, Demand] = {}  # track_demand's first-seen times, between passes
        self._said: TTLCache[tuple[str, str, str], bool] = TTLCache(maxsize=10_000, ttl=self.EVENT_MEMO, timer=clock)
        self.status = Status(mode, 0.0, None, {}, {})

    # -- one pass ---------------------------------------------------------------------------------

    def run_once(self, snap: ClusterSnapshot, counts: Counter[str]) -> None:
        """Follow the changes under way, then (advise, on) plan new ones. Called by the leader only."""
        changes = changes_on(snap)
        seen_for = self._seen_for(snap, changes)
        in_flight: dict[str, dict[str, Any]] = {}
        for node, change in changes.items():
            in_flight[node] = self._one_node(node, counts, self._follow, snap, node, change, seen_for[node],
                                             counts) or {}
        plan = None
        if self.mode != "off" and snap.synced:
            self._demand = track_demand(self._demand, live_demand(snap), snap.now)
            plan = plan_repartition(planner_nodes(snap, changes), self._demand, snap.now, self.settings,
                                    self.configs)
            for node_plan in plan.plans:
                self._one_node(node_plan.node, counts, self._start, node_plan, snap.now, counts)
        self.status = Status(self.mode, snap.now, plan, in_flight,
                             {r: {"slices": d.slices, "since": d.since} for r, d in self._demand.items()})

    def _one_node(self, node: str, counts: Counter[str], step: Callable[..., Any], *args: Any) -> Any:
        """``step(*args)`` for one node, its failure that node's alone: an API error other than 409, 429
        or 404 (a 500, or a 403/422 an admission policy answers on every try) must not stop the pass at
        this node, or the changes on the nodes after it are never followed (a wedged one never times
        out) and nothing new is planned. The node is tried again next pass. A failure that is no API
        error is a defect of ours: logged with its trace."""
        try:
            return step(*args)
        except Exception as exc:
            self._count(counts, "errors")
            log.warning("repartition %s: %s failed, retried next pass: %s", node, step.__name__, exc,
                        exc_info=not api_failure(exc))
            return None

    # -- following a change -----------------------------------------------------------------------

    def _seen_for(self, snap: ClusterSnapshot, changes: Mapping[str, Change | None]) -> dict[str, float]:
        """Per node, seconds this process has seen its change record unchanged (monotonic clock)."""
        now = self.monotonic()
        keys = {node: (node, snap.nodes[node].repartition.get(ANN_CHANGE, "")) for node in changes}
        self._first_seen = {key: self._first_seen.get(key, now) for key in keys.values()}
        return {node: now - self._first_seen[key] for node, key in keys.items()}

    def _follow(self, snap: ClusterSnapshot, node: str, change: Change | None, seen_for: float,
                counts: Counter[str]) -> dict[str, Any]:
        seen = observe(snap.nodes[node], snap)
        step = next_step(change, seen, snap.now, self.settings, seen_for)
        shown = {**(describe(change) if change is not None else {}), "step": type(step).__name__}
        if isinstance(step, Wait):
            shown["waiting"] = step.why
            if step.until is not None:
                shown["until"] = step.until
            if change is not None and change.phase is ChangePhase.APPLYING:
                self._say(node, EVENT_STARTED, _started_text(change), warning=False)  # a new leader's first pass
            elif change is not None and change.phase is ChangePhase.ROLLING_BACK:
                # the rollback's Event, lost if the leader died (or the Event write failed) after the patch
                self._say(node, EVENT_FAILED, _rollback_text(change), warning=True)
            return shown
        assert change is not None or isinstance(step, Abort)
        if isinstance(step, Apply):
            self._apply(node, change, snap.now, seen_for, counts)
        else:
            self._close(node, change, step, snap.nodes[node].repartition.get(ANN_CHANGE, ""), seen, snap.now,
                        counts)
        return shown

    def _close(self, node: str, change: Change | None, step: Finish | RollBack | Release | Abort, record: str,
               seen: Observed, now: float, counts: Counter[str]) -> None:
        """End the change (or, for a RollBack that holds, move it to rolling_back) as ``step`` says,
        decided on ``seen``, and say so once it is written: the Event, or a log line for a Release the
        RollBack's Event announced already."""
        labels, annotations, outcome, said = _ending(step, change, now)
        if not self._end(node, record, seen, labels, annotations, counts, outcome):
            return
        if said is None:
            log.info("repartition %s released: %s", node, getattr(step, "detail", outcome))
        else:
            self._say(node, said[0], said[1], warning=said[0] == EVENT_FAILED)

    def _apply(self, node: str, change: Change, now: float, seen_for: float, counts: Counter[str]) -> None:
        """Label and phase in one patch, on the Node as it is now: our record still there, unchanged, its
        labels still allowing it and no MIG pod bound there, read from the API (a watch can lag behind
        an opt-out, someone else's label or a pod bound just before the reservation reached the
        extenders: the MIG manager would pause the device plugin under it, or destroy its instance)."""
        fresh = self.nodes.read(node)
        if fresh is None or _annotations(fresh).get(ANN_CHANGE) != change.to_json():
            self._count(counts, "conflict")
            return  # released or rewritten meanwhile: the next pass reads it again
        seen = observe_labels(_labels(fresh), busy=any_mig_pod(self.nodes.pods_on(node)))
        step = next_step(change, seen, now, self.settings, seen_for)
        if isinstance(step, Abort):
            # released on what the API shows, not left to the watch: a pod it never shows (a namespace
            # or kind the inventory skips) would keep the node reserved, and never applied, for good
            self._close(node, change, step, change.to_json(), seen, now, counts)
            return
        if not isinstance(step, Apply):
            self._count(counts, "conflict")
            return
        applying = change.applying(now)
        outcome = self.nodes.patch(node, labels={LABEL_MIG_CONFIG: change.config, LABEL_MIG_CONFIG_STATE: None},
                                   annotations={ANN_CHANGE: applying.to_json()},
                                   resource_version=_resource_version(fresh))
        self._count(counts, "applied" if outcome is NodeWrite.DONE else outcome.value)
        if outcome is NodeWrite.DONE:
            log.info("repartition %s: %s=%s", node, LABEL_MIG_CONFIG, change.config)
            self._say(node, EVENT_STARTED, _started_text(applying))

    def _end(self, node: str, record: str, seen: Observed, labels: Mapping[str, str | None],
             annotations: Mapping[str, str | None], counts: Counter[str], outcome: str) -> bool:
        """Write ``labels`` and ``annotations`` (the release, or the rollback's record) if the node still
        shows the record and the MIG manager's labels the step was decided on (the pass's snapshot can
        lag: a rollback decided on ``pending`` must not be written over a fresh ``success``); whether it
        was written. Otherwise, or on a refused write (409, 429), the next pass decides again from what
        it shows then, and the Event waits for that: one saying "released" for a node still reserved,
        then a second or a contrary one, misleads."""
        fresh = self.nodes.read(node)
        if fresh is None:
            return False  # gone: nothing left to release
        shows = observe_labels(_labels(fresh))
        if _annotations(fresh).get(ANN_CHANGE) != record or (shows.config, shows.state) != (seen.config, seen.state):
            self._count(counts, "conflict")
            return False
        written = self.nodes.patch(node, labels=labels, annotations=annotations,
                                   resource_version=_resource_version(fresh))
        self._count(counts, outcome if written is NodeWrite.DONE else written.value)
        log.info("repartition %s ended: %s (%s)", node, outcome, written.value)
        return written is NodeWrite.DONE

    # -- starting one -----------------------------------------------------------------------------

    def _start(self, plan: NodePlan, now: float, counts: Counter[str]) -> None:
        if self.mode == "advise" or plan.config is None:
            config = plan.config or "(no named config covers it)"
            self._say(plan.node, EVENT_ADVISED, f"would set {LABEL_MIG_CONFIG}={config}: GPU(s) "
                                                f"{', '.join(str(c.index) for c in plan.changes)} to "
                                                f"{_layouts(c.after for c in plan.changes)} for {_serves(plan)}")
            self._count(counts, "advised")
            return
        fresh = self.nodes.read(plan.node)
        if fresh is None:
            return
        if _annotations(fresh).get(ANN_CHANGE) or _labels(fresh).get(LABEL_REPARTITION) != "true":
            self._count(counts, "conflict")  # our view lags: a change or the opt-out is there already
            return
        change = new_change(plan, _labels(fresh).get(LABEL_MIG_CONFIG), now)
        outcome = self.nodes.patch(plan.node, annotations={ANN_CHANGE: change.to_json()},
                                   resource_version=_resource_version(fresh))
        self._count(counts, "reserved" if outcome is NodeWrite.DONE else outcome.value)
        if outcome is NodeWrite.DONE:
            log.info("repartition %s reserved for %s (%s)", plan.node, plan.config, _serves(plan))

    # -- helpers ----------------------------------------------------------------------------------

    def _say(self, node: str, reason: str, message: str, warning: bool = False) -> None:
        """An Event once: this process remembers it, and the API refuses a second with the same content."""
        key = (node, reason, message)
        if key in self._said:
            return
        try:
            self.events.write(node, reason, message, warning=warning, action="Repartition")
            self._said[key] = True
        except Exception as exc:  # an Event is a report, never a reason to stop a change
            log.warning("event %s on node %s not written: %s", reason, node, exc)

    def _count(self, counts: Counter[str], outcome: str) -> None:
        counts["repartition_" + outcome] += 1
        self.metrics.repartitions.labels(outcome).inc()

    def status_json(self) -> dict[str, Any]:
        """What /debug/repartition shows: mode, demand, changes under way, the last plan and why not."""
        s = self.status
        out: dict[str, Any] = {"mode": s.mode, "at": s.at, "demand": dict(s.demand), "inFlight": dict(s.in_flight),
                               "configs": sorted({c.name for c in self.configs})}
        if s.plan is not None:
            out["plans"] = [{"node": p.node, "config": p.config, "gpus": [c.index for c in p.changes],
                             "after": ["+".join(c.after) for c in p.changes],
                             "serves": {x.resource: x.slices for x in p.serves}} for p in s.plan.plans]
            out["whyNot"] = [_reason(r) for r in (*s.plan.waiting, *s.plan.unserved, *s.plan.skipped,
                                                  *([s.plan.budget] if s.plan.budget else []))]
        return out


def _ending(step: Finish | RollBack | Release | Abort, change: Change | None, now: float,
            ) -> tuple[dict[str, str | None], dict[str, str | None], str, tuple[str, str] | None]:
    """What a step writes: the labels, the annotations (the record removed and ANN_LAST written, or
    the rollback's record), the counter's outcome and the Event (reason, text; None: a log line only).
    The text names the change (its start, as MigRepartitioning's does): an Event is written once per
    text and named from it, so the end of a later change alike an earlier one on the node would
    otherwise never be reported (soak seed 44: 12 changes finished, 8 Events).

    A RollBack that holds writes the label back, clears the MIG manager's state (it is ours: any state
    seen in phase rolling_back is then for the value set back, or for ours finished late) and keeps the
    record, in phase rolling_back. It records the outcome in ANN_LAST already (the Release rewrites it, so
    the cooldown counts from the release): the previous version cannot read phase rolling_back and aborts
    such a record as Unreadable, writing no ANN_LAST; without this its planner reserved the node again at
    once and set the label that had just failed over a MIG manager still restoring the previous value."""
    which = f" (change of {int(change.started)})" if change is not None else ""
    release: dict[str, str | None] = {ANN_CHANGE: None}
    if isinstance(step, Finish):
        assert change is not None
        return ({}, {**release, ANN_LAST: last_json(now, "success")}, "repartitioned",
                (EVENT_DONE, f"{change.config} applied to GPU(s) {_gpus(change)} in {step.seconds:.0f}s; now "
                             f"{_layouts(change.after)}{which}"))
    if isinstance(step, RollBack):
        assert change is not None
        said = (EVENT_FAILED, f"{step.reason}: {step.detail}; {_set_back(step.to)}, reservation released{which}")
        if not step.hold:
            return {LABEL_MIG_CONFIG: step.to}, {**release, ANN_LAST: last_json(now, step.reason)}, \
                "failed_" + step.reason, said
        rolling = change.rolling_back(now, step.reason, step.detail)
        return ({LABEL_MIG_CONFIG: step.to, LABEL_MIG_CONFIG_STATE: None},
                {ANN_CHANGE: rolling.to_json(), ANN_LAST: last_json(now, step.reason)},
                "failed_" + step.reason, (EVENT_FAILED, _rollback_text(rolling)))
    if isinstance(step, Release):
        assert change is not None
        last = {**release, ANN_LAST: last_json(now, change.rolled_back_for or step.reason)}
        if step.restored:
            return {}, last, "rolled_back", None
        return {}, last, "released_" + step.reason, (EVENT_FAILED, f"{step.reason}: {step.detail}; reservation "
                                                                   f"released{which}")
    annotations = {**release, ANN_LAST: last_json(now, step.reason)} if step.cooldown else release
    return {}, annotations, "aborted_" + step.reason, (EVENT_FAILED, f"{step.reason}: {step.detail}; reservation "
                                                                     f"released{which}")


def _rollback_text(change: Change) -> str:
    """The Event of a rollback that holds the node, from its record alone: the leader that wrote the
    rollback and any later one (after a lost Event) write the same text, so the same Event."""
    detail = f": {change.rollback_detail}" if change.rollback_detail else ""
    return (f"{change.rolled_back_for or 'RolledBack'}{detail}; {_set_back(change.previous)}; the node stays held "
            f"until the MIG manager has restored the previous layout (change of {int(change.started)})")


def _set_back(to: str | None) -> str:
    """What a rollback did to the label: set back to ``to``, or removed (there was none before)."""
    return f"label set back to {to}" if to else f"label {LABEL_MIG_CONFIG} removed"


def _reason(reason: Any) -> dict[str, Any]:
    return {"kind": type(reason).__name__, **vars(reason)}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _gpus(change: Change) -> str:
    return ", ".join(str(i) for i in change.gpus)


def _layouts(layouts: Any) -> str:
    return ", ".join("+".join(x) or "empty" for x in layouts)


def _serves(plan: NodePlan) -> str:
    return ", ".join(f"{s.slices} x {s.resource}" for s in plan.serves) or "nothing"


def _started_text(change: Change) -> str:
    serves = ", ".join(f"{k} x {r}" for r, k in sorted(change.serves.items())) or "nothing"
    before = _layouts(change.before[i] for i in change.gpus)
    after = _layouts(change.after[i] for i in change.gpus)
    return (f"{LABEL_MIG_CONFIG}={change.config} (was {change.previous or 'unset'}): GPU(s) {_gpus(change)} "
            f"from {before} to {after} for {serves} waiting; no MIG pod is placed on the node meanwhile "
            f"(change of {int(change.started)})")
