"""One repartition of one node, as a state machine over what the API shows: pure.

The actuator (components/repartitioner.py) keeps everything about a change on the Node itself, in
annotation ``ANN_CHANGE``, so a new leader (or the same one after a restart) resumes from the API, not
from memory, and the extender's inventory reads the same annotation as a reservation of every MIG
slice of the node (core/snapshot.py ``held_nodes``)::

      (none) --reserve: annotation, phase reserving (resourceVersion precondition)--> reserving
      reserving --a MIG pod or a rule reservation on the node--> Abort(GpuBusy)      (label never written)
      reserving --opted out, label set by someone else, MIG manager pending/rebooting-->
                  Abort(OptedOut | LabelChanged | MigManagerBusy)                    (label never written)
      reserving --settle + timeout seconds and the label still not written--> Abort(Timeout)
      reserving --settle seconds passed, node idle--> Apply: ONE patch writes the label
                  nvidia.com/mig.config=<target>, clears the stale mig.config.state and sets phase applying
      applying  --state success and allocatable split = the target layouts--> Finish
      applying  --state failed--> RollBack(MigManagerFailed)
      applying  --timeout seconds since Apply, any other state (pending, rebooting, none)--> RollBack(Timeout)
                  RollBack: ONE patch writes the label back to the previous value (or removes it), clears
                  mig.config.state and sets phase rolling_back --> rolling_back (node still held)
                  (no previous label and MigManagerFailed: the MIG manager ignores a removed label, nothing
                  is left for it to do: label removed and node released at once, as an outcome)
      applying  --the label now names another config (someone else changed it)--> Abort(LabelChanged)
      rolling_back --state success and allocatable split = the previous layouts (no previous label: any
                  success)--> Release(Restored)                                      (no Event)
      rolling_back --state failed--> Release(RollbackFailed)
      rolling_back --timeout seconds since the rollback, any other state--> Release(RollbackTimeout)
      rolling_back --label changed by someone else, or opted out--> Release(LabelChanged | OptedOut)
      unreadable annotation --> Abort(Unreadable)

Apply is one merge patch on purpose: any view of the node (a lagging watch included) that shows phase
``applying`` also shows our label, and a state label in it was written by the MIG manager after our
write (we removed the old one in the same patch), so a ``failed`` or ``success`` left by an earlier
change is never taken for this one's. RollBack is one patch for the same reason: a state seen in phase
``rolling_back`` was written after the label went back. The node stays held while rolling back: the MIG
manager finishes the value it is applying (ours, when a Timeout caught it slow rather than wedged)
before it reads the previous one, and a pod placed on our layout in between would make that second
apply fail (or be destroyed under it). Every end (Finish, Abort, Release) removes the annotation,
which releases the reservation; Finish, Release and a cooldown Abort also record ``ANN_LAST`` (when,
how), which the planner's cooldown reads. Nothing here deletes or evicts a pod.

Pure: no flask, kubernetes or cachetools; time is the ``now`` parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

from .catalog import GpuModel, ProfileError, resource_profile_name
from .repartition import (
    LABEL_MIG_CONFIG,
    LABEL_MIG_CONFIG_STATE,
    LABEL_REPARTITION,
    STATE_FAILED,
    STATE_PENDING,
    STATE_REBOOTING,
    STATE_SUCCESS,
    GpuState,
    Layout,
    NamedConfig,
    NodeGpus,
    NodePlan,
    RepartitionSettings,
    node_from_counts,
    normal,
    split_layouts,
)
from .resources import pod_info
from .rules import Phase
from .snapshot import ClusterSnapshot, NodeInfo

# On the Node: the change under way (JSON, see Change) and the last change's end (JSON: at, outcome)
ANN_CHANGE = "mig-extender.io/repartition-change"
ANN_LAST = "mig-extender.io/repartition-last"
ANNOTATIONS = (ANN_CHANGE, ANN_LAST)

EVENT_ADVISED = "MigRepartitionAdvised"
EVENT_STARTED = "MigRepartitioning"
EVENT_DONE = "MigRepartitioned"
EVENT_FAILED = "MigRepartitionFailed"

# why a change ended without its layout (the Event's text starts with it)
GPU_BUSY = "GpuBusy"
MIG_MANAGER_FAILED = "MigManagerFailed"
TIMEOUT = "Timeout"
LABEL_CHANGED = "LabelChanged"
OPTED_OUT = "OptedOut"
MIG_MANAGER_BUSY = "MigManagerBusy"
UNREADABLE = "Unreadable"
# how a rollback ended (Release): the previous value back, the MIG manager gave up on it too, or never said
RESTORED = "Restored"
ROLLBACK_FAILED = "RollbackFailed"
ROLLBACK_TIMEOUT = "RollbackTimeout"


class ChangePhase(str, Enum):
    RESERVING = "reserving"  # the node is reserved; the label is not written yet
    APPLYING = "applying"    # the label is written; the MIG manager works
    ROLLING_BACK = "rolling_back"  # the previous label is written back; held until the MIG manager is done


@dataclass(frozen=True)
class Change:
    """A repartition under way, as recorded in ``ANN_CHANGE``. ``previous`` is the label value before
    (None: the node had no label), what a rollback writes back; ``rolled_back_at`` and ``rolled_back_for``
    (the RollBack's reason, the outcome recorded when the node is released) and ``rollback_detail``
    (what the reason was seen as: the rollback's Event is rebuilt from the record, word for word, by
    whichever leader passes next) are set in phase rolling_back only. Records written before that phase
    existed lack them and still read."""

    config: str
    previous: str | None
    before: tuple[Layout, ...]
    after: tuple[Layout, ...]
    serves: Mapping[str, int]
    started: float
    phase: ChangePhase = ChangePhase.RESERVING
    applied_at: float | None = None
    rolled_back_at: float | None = None
    rolled_back_for: str | None = None
    rollback_detail: str = ""

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(i for i, (a, b) in enumerate(zip(self.before, self.after, strict=True)) if a != b)

    def to_json(self) -> str:
        return json.dumps({
            "config": self.config, "previous": self.previous, "before": [list(x) for x in self.before],
            "after": [list(x) for x in self.after], "gpus": list(self.gpus), "serves": dict(self.serves),
            "started": self.started, "phase": self.phase.value, "appliedAt": self.applied_at,
            **({"rolledBackAt": self.rolled_back_at, "rollbackReason": self.rolled_back_for,
                "rollbackDetail": self.rollback_detail} if self.phase is ChangePhase.ROLLING_BACK else {}),
        }, sort_keys=True, separators=(",", ":"))

    def applying(self, now: float) -> Change:
        """This change as recorded once its label is written at ``now``."""
        return replace(self, phase=ChangePhase.APPLYING, applied_at=now)

    def rolling_back(self, now: float, reason: str, detail: str = "") -> Change:
        """This change as recorded once its RollBack for ``reason`` (seen as ``detail``) is written at ``now``."""
        return replace(self, phase=ChangePhase.ROLLING_BACK, rolled_back_at=now, rolled_back_for=reason,
                       rollback_detail=detail)

    @classmethod
    def from_json(cls, text: str) -> Change | None:
        """The recorded change, or None when the text is not one (edited by hand, another version)."""
        try:
            d = json.loads(text)
            before = tuple(normal(x) for x in d["before"])
            after = tuple(normal(x) for x in d["after"])
            if len(before) != len(after) or not isinstance(d["config"], str):
                return None
            applied, rolled = d.get("appliedAt"), d.get("rolledBackAt")
            why, detail = d.get("rollbackReason"), d.get("rollbackDetail")
            return cls(d["config"], d.get("previous"), before, after,
                       MappingProxyType({str(k): int(v) for k, v in (d.get("serves") or {}).items()}),
                       float(d["started"]), ChangePhase(d.get("phase", "reserving")),
                       float(applied) if applied is not None else None,
                       float(rolled) if rolled is not None else None, str(why) if why is not None else None,
                       str(detail) if detail is not None else "")
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def new_change(plan: NodePlan, previous: str | None, now: float) -> Change:
    """The record a reservation writes for ``plan`` (which names its config)."""
    changed = {c.index: c.before for c in plan.changes}
    current = tuple(changed.get(i, lay) for i, lay in enumerate(plan.layouts))
    return Change(plan.config or "", previous, current, plan.layouts,
                  MappingProxyType({s.resource: s.slices for s in plan.serves}), now)


def holds(record: str, info: NodeInfo) -> bool:
    """Whether a node with change record ``record`` is held (no MIG pod placed there).

    Until the MIG manager reports ``success`` for this change: it writes that before the device plugin
    is back (mig-parted deployments/gpu-operator/reconfigure-mig.sh re-enables the plugin, then sets the
    state), so the allocatable update that follows requeues the waiting pods onto a node already free
    (kube-scheduler requeues a pod NodeResourcesFit rejected on that update, not on our record's
    removal). Only a ``success`` seen in phase ``applying`` counts: Apply removed any older one. And
    only while the node advertises no MIG slice (the device plugin is still paused: nothing to place)
    or the target layouts: a ``success`` with another layout advertised is the MIG manager's for a
    value it had started before ours (it applies values in turn), or a device plugin that disagrees
    with the target; lifting the hold then lets pods onto GPUs the MIG manager is about to change, or
    that the Timeout's rollback will. An unreadable record holds, and so does one rolling back whatever
    the state: a ``success`` then may be for our value, which the MIG manager finishes before it applies
    the previous one; the actuator releases the node once the previous layout is back."""
    change = Change.from_json(record)
    labels = info.facts.labels if info.facts is not None else {}
    if (change is None or change.phase is not ChangePhase.APPLYING
            or labels.get(LABEL_MIG_CONFIG_STATE) != STATE_SUCCESS):
        return True
    if not any(n > 0 for n in info.allocatable.values()):
        return False
    layouts = _layouts_of(info)
    return layouts is None or not same_layouts(layouts, change.after)


def last_change_at(text: str) -> float | None:
    """When the last change ended, from ``ANN_LAST`` (None when unknown)."""
    try:
        return float(json.loads(text)["at"])
    except (ValueError, TypeError, KeyError):
        return None


def last_json(now: float, outcome: str) -> str:
    return json.dumps({"at": now, "outcome": outcome}, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------------------
# What the node shows, and the next step


@dataclass(frozen=True)
class Observed:
    """The node as the inventory shows it: the MIG manager's two labels, its MIG allocatable split into
    per-GPU layouts (None when it does not split: the device plugin is paused), and whether a MIG pod
    holds a slice or a rule reserves one there."""

    config: str | None
    state: str | None
    layouts: tuple[Layout, ...] | None
    busy: bool
    opted_in: bool = True


@dataclass(frozen=True)
class Wait:
    why: str
    until: float | None = None


@dataclass(frozen=True)
class Apply:
    """Write the label (and phase applying) now."""


@dataclass(frozen=True)
class Finish:
    seconds: float  # since the label was written


@dataclass(frozen=True)
class Abort:
    """Release the reservation and leave the label as it is; ``cooldown``: record the end in ANN_LAST,
    so the planner's cooldown keeps the node from being reserved again at once (an Abort caused by
    the node itself, not by a pod or someone else's label)."""

    reason: str
    detail: str
    cooldown: bool = False


@dataclass(frozen=True)
class RollBack:
    """Put the label back to ``to`` (None: remove it). ``hold``: keep the node reserved, in phase
    rolling_back, until the MIG manager is done with it; otherwise (nothing left for the MIG manager to
    do) release it now, as an outcome."""

    reason: str
    detail: str
    to: str | None
    hold: bool = True


@dataclass(frozen=True)
class Release:
    """End a rollback: release the reservation, write no label (``reason`` says why now). ``restored``:
    the MIG manager is done with the value set back, as expected, which the RollBack's Event announced:
    no second Event."""

    reason: str
    detail: str
    restored: bool = False


Step = Wait | Apply | Finish | Abort | RollBack | Release


def same_layouts(a: Sequence[Layout], b: Sequence[Layout]) -> bool:
    """Equal as multisets of per-GPU layouts: the allocatable says which layouts, not which GPU has which."""
    return sorted(normal(x) for x in a) == sorted(normal(x) for x in b)


def next_step(change: Change | None, seen: Observed, now: float, settings: RepartitionSettings,
              seen_for: float = 0.0) -> Step:
    """What to do about the change recorded on a node, given what the node shows now (see the module
    docstring's diagram).

    ``seen_for``: seconds this process has seen the record unchanged, on its monotonic clock. The times
    in the record were written by whichever leader's wall clock; a new leader's clock behind that one's
    (or a clock stepped back) would otherwise add the difference to the settle and the timeout, a node
    reserved for as long. Each wait ends at the earlier of the record's deadline and ``seen_for``
    reaching it: never later than the timeout after this process first saw the record."""
    if change is None:
        return Abort(UNREADABLE, f"annotation {ANN_CHANGE} is not a change this version can read")
    if change.phase is ChangePhase.RESERVING:
        return _reserving(change, seen, now, settings, seen_for)
    if change.phase is ChangePhase.ROLLING_BACK:
        return _rolling_back(change, seen, now, settings, seen_for)
    return _applying(change, seen, now, settings, seen_for)


def _ends(since: float, wait: float, now: float, seen_for: float) -> float:
    """When a wait of ``wait`` seconds from the recorded ``since`` ends, by this process's clock: the
    recorded end, or ``wait`` after this process first saw the record if that is sooner."""
    return min(since + wait, now + max(wait - seen_for, 0.0))


def _reserving(change: Change, seen: Observed, now: float, settings: RepartitionSettings,
               seen_for: float) -> Step:
    if seen.busy:
        # a Binding in flight when the reservation was written, or a rule recorded from a stale view
        return Abort(GPU_BUSY, "a MIG pod was placed on the node before the reservation reached every "
                               "extender; nothing was changed")
    why = _not_ours_to_change(change, seen)
    if why is not None:
        return why
    ready = _ends(change.started, settings.settle, now, seen_for)
    if now < ready:
        return Wait("settling: every extender must see the reservation before the label is written", ready)
    if now >= _ends(change.started, settings.settle + settings.timeout, now, seen_for):
        # every Apply refused (a policy on the label, a name that is no label value): without a deadline
        # here the node would stay reserved for good
        return Abort(TIMEOUT, f"the label could not be written in {int(max(now - change.started, seen_for))}s "
                              f"(settle {settings.settle:g}s + timeout {settings.timeout:g}s); nothing was "
                              "changed", cooldown=True)
    return Apply()


def _not_ours_to_change(change: Change, seen: Observed) -> Abort | None:
    """Why the label must not be written now, though the node was idle and ours when it was reserved.

    The operator may opt out while the reservation settles. Someone else (an admin, the GPU operator's
    default config) may set the label meanwhile: ours would replace theirs, and the MIG manager, which
    finishes the value it is applying before it reads the next one (mig-parted main.go,
    SyncableMigConfig), would write ``success`` for theirs after our Apply removed the state label, which
    reads as ours. The same when it still applies the previous value (``pending``, ``rebooting``).
    Once the label is written (phase applying) none of these stops the MIG manager, so they are checked
    before only."""
    if not seen.opted_in:
        return Abort(OPTED_OUT, f"{LABEL_REPARTITION} was removed while the node was reserved; nothing was "
                                "changed")
    if seen.config != change.previous:
        return Abort(LABEL_CHANGED, f"{LABEL_MIG_CONFIG} is now {seen.config!r}, not {change.previous!r} as when "
                                    "the node was reserved: someone else set it; nothing was changed")
    if seen.state in (STATE_PENDING, STATE_REBOOTING):
        return Abort(MIG_MANAGER_BUSY, f"the MIG manager is applying {seen.config!r} ({LABEL_MIG_CONFIG_STATE} "
                                       f"{seen.state}): its success would be read as ours; nothing was changed")
    return None


def _applying(change: Change, seen: Observed, now: float, settings: RepartitionSettings,
              seen_for: float) -> Step:
    applied = change.applied_at if change.applied_at is not None else change.started
    elapsed = max(now - applied, seen_for)
    if seen.config != change.config:
        return Abort(LABEL_CHANGED, f"{LABEL_MIG_CONFIG} is now {seen.config!r}, not {change.config!r}: "
                                    "someone else changed it; left as it is")
    if seen.state == STATE_FAILED:
        # no previous label: the MIG manager ignores the removal, so nothing is left to wait for
        return RollBack(MIG_MANAGER_FAILED, f"the MIG manager reported {LABEL_MIG_CONFIG_STATE}=failed for "
                                            f"{change.config}", change.previous, hold=change.previous is not None)
    if seen.state == STATE_SUCCESS and seen.layouts is not None and same_layouts(seen.layouts, change.after):
        return Finish(elapsed)
    deadline = _ends(applied, settings.timeout, now, seen_for)
    if now >= deadline:
        state = seen.state or "not reported"
        return RollBack(TIMEOUT, f"{LABEL_MIG_CONFIG_STATE} {state} {int(elapsed)}s after "
                                 f"{change.config} was set (timeout {settings.timeout:g}s)", change.previous)
    if seen.state == STATE_SUCCESS:
        return Wait("success reported; waiting for the device plugin to advertise the new layout", deadline)
    return Wait(f"MIG manager state {seen.state or 'not reported yet'}", deadline)


def _rolling_back(change: Change, seen: Observed, now: float, settings: RepartitionSettings,
                  seen_for: float) -> Step:
    """The previous label is written back; the node stays held until the MIG manager is done with it.

    A ``success`` counts only beside the previous layouts: a slow MIG manager first finishes our value
    (``success`` with our layouts), then applies the previous one. With no previous label it ignores the
    removal, so any ``success`` (ours, the last value it applies) or ``failed`` ends it. ``failed`` means
    it gave up: released, and said. A wedged MIG manager must not hold the node for good: a second
    timeout from the rollback releases it. Someone else's label or an opt-out releases it too, without
    writing anything: the node is theirs again."""
    since = change.rolled_back_at if change.rolled_back_at is not None else (change.applied_at or change.started)
    elapsed = max(now - since, seen_for)
    why = change.rolled_back_for or TIMEOUT
    back = change.previous or "unset"
    if seen.config != change.previous:
        return Release(LABEL_CHANGED, f"{LABEL_MIG_CONFIG} is now {seen.config!r}, not {change.previous!r} as set "
                                      "back: someone else changed it; left as it is")
    if not seen.opted_in:
        return Release(OPTED_OUT, f"{LABEL_REPARTITION} was removed while {back} was being restored; left as it is")
    if seen.state == STATE_FAILED:
        return Release(ROLLBACK_FAILED, f"the MIG manager reported {LABEL_MIG_CONFIG_STATE}=failed for {back}, "
                                        f"set back after {why}; the node's layout is unknown")
    if seen.state == STATE_SUCCESS:
        if change.previous is None:
            return Release(RESTORED, f"the MIG manager finished {change.config}; label removed after {why}",
                           restored=True)
        if seen.layouts is not None and same_layouts(seen.layouts, change.before):
            return Release(RESTORED, f"the MIG manager restored {back} in {int(elapsed)}s after {why}",
                           restored=True)
    deadline = _ends(since, settings.timeout, now, seen_for)
    if now >= deadline:
        return Release(ROLLBACK_TIMEOUT, f"{LABEL_MIG_CONFIG_STATE} {seen.state or 'not reported'} {int(elapsed)}s "
                                         f"after {back} was set back (timeout {settings.timeout:g}s)")
    return Wait(f"MIG manager restoring {back}: state {seen.state or 'not reported yet'}", deadline)


# --------------------------------------------------------------------------------------------------
# From a snapshot: what the planner and the state machine read


def observe(info: NodeInfo, snap: ClusterSnapshot) -> Observed:
    labels = info.facts.labels if info.facts is not None else {}
    busy = any(n > 0 for n in info.used.values()) or bool(snap.rule_reserved(info.name))
    return observe_labels(labels, _layouts_of(info), busy)


def any_mig_pod(pods: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any of these Pod objects (a node's, read from the API) holds or is about to hold a MIG
    slice: bound, not finished, asking for one."""
    return any(p.holds_slices and p.wants_mig for p in map(pod_info, pods))


def _layouts_of(info: NodeInfo) -> tuple[Layout, ...] | None:
    """The node's MIG allocatable split into per-GPU layouts; None when it does not split."""
    if info.gpu is None or info.gpu_count <= 0:
        return None
    return split_layouts(info.gpu, _profile_counts(info), info.gpu_count)


def observe_labels(labels: Mapping[str, str], layouts: tuple[Layout, ...] | None = None,
                   busy: bool = False) -> Observed:
    """What the labels say (the actuator's fresh read of a Node has labels, not the pods on it)."""
    return Observed(labels.get(LABEL_MIG_CONFIG), labels.get(LABEL_MIG_CONFIG_STATE), layouts, busy,
                    labels.get(LABEL_REPARTITION) == "true")


def _profile_counts(info: NodeInfo) -> dict[str, int]:
    """Profile name -> instances advertised (resources not of the node's model are left out)."""
    out: dict[str, int] = {}
    assert info.gpu is not None
    for resource, n in info.allocatable.items():
        try:
            found = info.gpu.find(resource_profile_name(resource))
        except ProfileError:
            continue
        if found is not None:
            out[found.name] = out.get(found.name, 0) + n
    return out


def live_demand(snap: ClusterSnapshot) -> dict[str, int]:
    """Per resource, the slices pods wait for (unbound, ungated) plus those of pods running on a
    substitute (their restore needs a slice of the original type)."""
    out = {r: n for r, n in snap.pending.items() if n > 0}
    for rule in snap.rules:
        if rule.phase is Phase.APPLIED and rule.bound_pod and not rule.is_hold:
            r = rule.original.resource
            out[r] = out.get(r, 0) + rule.original.count
    return out


def planner_nodes(snap: ClusterSnapshot, changes: Mapping[str, Change | None]) -> list[NodeGpus]:
    """Every node with a known GPU model and count, as the planner sees it. A node with a change under
    way is what its record says (its GPUs carry their targets: they count against the budget and their
    new slices against the demand), whatever its allocatable shows mid-change."""
    out = []
    for name in sorted(snap.nodes):
        info = snap.nodes[name]
        if info.gpu is None or info.gpu_count <= 0:
            continue
        labels = info.facts.labels if info.facts is not None else {}
        opted_in = labels.get(LABEL_REPARTITION) == "true"
        last = last_change_at(info.repartition.get(ANN_LAST, "")) if info.repartition else None
        if name in changes:
            change = changes[name]
            if change is None:  # unreadable: it still holds the node; the planner must leave it alone
                out.append(NodeGpus(name, info.gpu, (GpuState(0, (), None, target=()),), opted_in))
                continue
            # rolling back: the MIG manager heads for ``before`` again, whose slices it creates
            start, end = ((change.after, change.before) if change.phase is ChangePhase.ROLLING_BACK
                          else (change.before, change.after))
            gpus = tuple(GpuState(i, b, None, target=a if a != b else None, changed_at=last)
                         for i, (b, a) in enumerate(zip(start, end, strict=True)))
            out.append(NodeGpus(name, info.gpu, gpus, opted_in))
            continue
        if labels.get(LABEL_MIG_CONFIG_STATE) in (STATE_PENDING, STATE_REBOOTING):
            continue  # the MIG manager works on someone else's change: its layout is about to move
        node = node_from_counts(name, info.gpu, _resources_by_name(info), info.used, info.gpu_count,
                                opted_in=opted_in, reserved=snap.rule_reserved(name), changed_at=last)
        if node is not None:
            out.append(node)
    return out


def _resources_by_name(info: NodeInfo) -> dict[str, int]:
    """The node's MIG allocatable without resources its model lacks (node_from_counts refuses those)."""
    assert info.gpu is not None
    out = {}
    for r, n in info.allocatable.items():
        try:
            if info.gpu.find(resource_profile_name(r)) is not None:
                out[r] = n
        except ProfileError:
            continue
    return out


def changes_on(snap: ClusterSnapshot) -> dict[str, Change | None]:
    """Node -> its recorded change (None when unreadable), for the nodes that hold one."""
    out: dict[str, Change | None] = {}
    for name in sorted(snap.repartitioning):
        info = snap.nodes.get(name)
        if info is not None:
            out[name] = Change.from_json(info.repartition.get(ANN_CHANGE, ""))
    return out


def describe(change: Change) -> dict[str, Any]:
    """A change as /debug/repartition shows it."""
    return {"config": change.config, "previous": change.previous, "phase": change.phase.value,
            "gpus": list(change.gpus), "before": ["+".join(x) for x in change.before],
            "after": ["+".join(x) for x in change.after], "serves": dict(change.serves),
            "started": change.started, "appliedAt": change.applied_at, "rolledBackAt": change.rolled_back_at,
            "rollbackReason": change.rolled_back_for}


# --------------------------------------------------------------------------------------------------
# The name map: the MIG manager's ConfigMap as mig-extender reads it


def parse_mig_configs(doc: Any) -> tuple[tuple[NamedConfig, ...], list[str]]:
    """The named configs of a mig-parted config (``version: v1``, ``mig-configs: {name: [groups]}``, the
    ``config.yaml`` of the MIG manager's ConfigMap), and every problem found, at once.

    A group is ``devices: all`` or ``devices: [i, ...]`` with ``mig-enabled: true`` and ``mig-devices:
    {profile: count}``. A config with several ``devices: all`` groups (mig-parted's ``device-filter``
    variants per GPU model) becomes one NamedConfig per group under the same name; the planner uses the
    one valid on the node's model (``NamedConfig.problems``). Groups with ``mig-enabled: false`` are
    not targets (a change turns MIG layouts into other MIG layouts), so such configs are left out.
    """
    table = doc.get("mig-configs") if isinstance(doc, Mapping) else None
    if not isinstance(table, Mapping) or not table:
        return (), ["no mig-configs: give the MIG manager's config.yaml (version: v1, mig-configs: ...)"]
    out: list[NamedConfig] = []
    problems: list[str] = []
    for name, groups in table.items():
        found, why = _named(str(name), groups)
        out.extend(found)
        problems.extend(why)
    if not out and not problems:
        problems.append("no config in mig-configs has a MIG layout (mig-enabled: true with mig-devices)")
    return tuple(out), problems


def _named(name: str, groups: Any) -> tuple[list[NamedConfig], list[str]]:
    if not isinstance(groups, list) or not groups:
        return [], [f"{name}: must be a list of device groups"]
    alls: list[Layout] = []
    devices: dict[int, Layout] = {}
    for g in groups:
        if not isinstance(g, Mapping):
            return [], [f"{name}: each device group must be a mapping"]
        if g.get("mig-enabled") is not True:
            return [], []  # MIG off on some GPUs: not a target (see parse_mig_configs)
        layout, why = _layout(name, g.get("mig-devices"))
        if why:
            return [], [why]
        which = g.get("devices")
        if which == "all":
            alls.append(layout)
        elif isinstance(which, list) and which and all(isinstance(i, int) and i >= 0 for i in which):
            devices.update((i, layout) for i in which)
        else:
            return [], [f"{name}: devices must be 'all' or a list of GPU indices, got {which!r}"]
    if alls and devices:
        return [], [f"{name}: mixes 'devices: all' with GPU indices"]
    if alls:
        return [NamedConfig(name, all=lay) for lay in dict.fromkeys(alls)], []
    return [NamedConfig(name, devices=devices)], []


def _layout(name: str, devices: Any) -> tuple[Layout, str]:
    if not isinstance(devices, Mapping) or not devices:
        return (), f"{name}: mig-devices must map profile names to counts"
    out: list[str] = []
    for profile, count in devices.items():
        if not isinstance(count, int) or count < 0:
            return (), f"{name}: mig-devices {profile}: count must be a whole number, got {count!r}"
        out.extend([str(profile)] * count)
    return normal(out), ""


# A Kubernetes label value (apimachinery validation.IsValidLabelValue): the MIG manager reads its config
# name from a label, so a name that is not one can never be set (the API answers 422 to the patch);
# an empty one the MIG manager ignores
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LABEL_VALUE_MAX = 63


def config_problems(configs: Sequence[NamedConfig], models: Sequence[GpuModel]) -> list[str]:
    """Configs valid on no model of the catalog (a typo in a profile name, a layout no GPU can hold), and
    names no label can carry."""
    out = [f"{name!r} is not a valid label value (at most {LABEL_VALUE_MAX} characters: letters, digits, "
           "'-', '_', '.', starting and ending with a letter or digit): nvidia.com/mig.config cannot name it"
           for name in dict.fromkeys(c.name for c in configs)
           if not name or len(name) > LABEL_VALUE_MAX or not LABEL_VALUE.fullmatch(name)]
    for c in configs:
        if all(c.problems(m) for m in models):
            out.append(f"{c.name}: {'+'.join(c.all or ()) or 'its layouts'} is a valid layout on no GPU model "
                       f"of the catalog")
    return out
