"""The repartition actuator's pure parts: the state machine over label, state and time
(core/repartition_change.py), the change record on the Node, and the reservation a change makes: the
extender's /filter must place no MIG pod on a node a repartition holds."""

from __future__ import annotations

import json

import pytest

from mig_extender.core.planner import filter_pod
from mig_extender.core.repartition import (
    LABEL_MIG_CONFIG,
    LABEL_MIG_CONFIG_STATE,
    LABEL_REPARTITION,
    GpuChange,
    NodePlan,
    RepartitionSettings,
    Serves,
)
from mig_extender.core.repartition_change import (
    ANN_CHANGE,
    ANN_LAST,
    GPU_BUSY,
    LABEL_CHANGED,
    MIG_MANAGER_BUSY,
    MIG_MANAGER_FAILED,
    OPTED_OUT,
    RESTORED,
    ROLLBACK_FAILED,
    ROLLBACK_TIMEOUT,
    TIMEOUT,
    UNREADABLE,
    Abort,
    Apply,
    Change,
    ChangePhase,
    Finish,
    Observed,
    Release,
    RollBack,
    Wait,
    changes_on,
    live_demand,
    new_change,
    next_step,
    observe,
    planner_nodes,
)
from mig_extender.core.resources import pod_info
from tests.builders import inventory_of, make_node, make_pod

L33 = ("3g.40gb", "3g.40gb")
L7 = ("7g.80gb",)
S = RepartitionSettings(settle=5.0, timeout=60.0)
T0 = 1000.0


def change(phase: ChangePhase = ChangePhase.RESERVING, applied: float | None = None, previous: str | None = "old",
           rolled_back: float | None = None, why: str | None = None) -> Change:
    return Change("all-7g", previous, (L33, L33), (L7, L7), {"nvidia.com/mig-7g.80gb": 2}, T0, phase, applied,
                  rolled_back, why)


def seen(config: str | None = "all-7g", state: str | None = None, layouts: tuple | None = None,
         busy: bool = False, opted_in: bool = True) -> Observed:
    return Observed(config, state, layouts, busy, opted_in)


APPLYING = change(ChangePhase.APPLYING, applied=T0 + 5)
ROLLING_BACK = change(ChangePhase.ROLLING_BACK, applied=T0 + 5, rolled_back=T0 + 70, why=TIMEOUT)


@pytest.mark.parametrize(("record", "node", "now", "want"), [
    pytest.param(change(), seen("old"), T0 + 1, Wait("settling: every extender must see the reservation before "
                                                     "the label is written", T0 + 5), id="reserving-settles-first"),
    pytest.param(change(), seen("old"), T0 + 5, Apply(), id="reserving-settled-idle-applies"),
    pytest.param(change(), seen("old", busy=True), T0 + 5,
                 Abort(GPU_BUSY, "a MIG pod was placed on the node before the reservation reached every extender; "
                                 "nothing was changed"), id="reserving-busy-aborts-without-a-label"),
    pytest.param(change(), seen("old", busy=True), T0 + 1,
                 Abort(GPU_BUSY, "a MIG pod was placed on the node before the reservation reached every extender; "
                                 "nothing was changed"), id="reserving-busy-aborts-even-while-settling"),
    # Defect: while a reservation settled, nothing but busy was looked at, so the label was written over
    # an opt-out, over a config someone else had just set (the MIG manager then reported success for
    # theirs, read as ours), or while the MIG manager was still applying the previous one
    pytest.param(change(), seen("old", opted_in=False), T0 + 5,
                 Abort(OPTED_OUT, f"{LABEL_REPARTITION} was removed while the node was reserved; nothing was "
                                  "changed"), id="reserving-opted-out-aborts-without-a-label"),
    pytest.param(change(), seen("theirs"), T0 + 5,
                 Abort(LABEL_CHANGED, "nvidia.com/mig.config is now 'theirs', not 'old' as when the node was "
                                      "reserved: someone else set it; nothing was changed"),
                 id="reserving-label-set-by-someone-else-aborts"),
    pytest.param(change(), seen("old", state="pending"), T0 + 5,
                 Abort(MIG_MANAGER_BUSY, "the MIG manager is applying 'old' (nvidia.com/mig.config.state "
                                         "pending): its success would be read as ours; nothing was changed"),
                 id="reserving-mig-manager-pending-aborts"),
    pytest.param(change(), seen("old", state="rebooting"), T0 + 5,
                 Abort(MIG_MANAGER_BUSY, "the MIG manager is applying 'old' (nvidia.com/mig.config.state "
                                         "rebooting): its success would be read as ours; nothing was changed"),
                 id="reserving-mig-manager-rebooting-aborts"),
    pytest.param(change(previous=None), seen(None, state="success"), T0 + 5, Apply(),
                 id="reserving-no-label-before-applies"),
    pytest.param(APPLYING, seen(state="pending", opted_in=False), T0 + 30, Wait("MIG manager state pending", T0 + 65),
                 id="applying-opt-out-lets-the-mig-manager-finish"),
    pytest.param(APPLYING, seen(state=None), T0 + 6, Wait("MIG manager state not reported yet", T0 + 65),
                 id="applying-no-state-yet-waits"),
    pytest.param(APPLYING, seen(state="pending"), T0 + 30, Wait("MIG manager state pending", T0 + 65),
                 id="applying-pending-waits"),
    pytest.param(APPLYING, seen(state="success", layouts=(L7, L7)), T0 + 35, Finish(30.0),
                 id="applying-success-with-new-layout-finishes"),
    pytest.param(APPLYING, seen(state="success", layouts=(L33, L33)), T0 + 35,
                 Wait("success reported; waiting for the device plugin to advertise the new layout", T0 + 65),
                 id="applying-success-but-old-allocatable-waits"),
    pytest.param(APPLYING, seen(state="success", layouts=None), T0 + 35,
                 Wait("success reported; waiting for the device plugin to advertise the new layout", T0 + 65),
                 id="applying-success-but-plugin-paused-waits"),
    pytest.param(APPLYING, seen(state="failed"), T0 + 7,
                 RollBack(MIG_MANAGER_FAILED, "the MIG manager reported nvidia.com/mig.config.state=failed for "
                                              "all-7g", "old"), id="applying-failed-rolls-back"),
    # the MIG manager ignores a removed label: after its failure nothing is left for it to do, so the
    # node is released at once; after a Timeout it may still finish ours, so the node stays held
    pytest.param(change(ChangePhase.APPLYING, T0 + 5, previous=None), seen(state="failed"), T0 + 7,
                 RollBack(MIG_MANAGER_FAILED, "the MIG manager reported nvidia.com/mig.config.state=failed for "
                                              "all-7g", None, hold=False),
                 id="applying-failed-without-previous-removes-label-and-releases"),
    pytest.param(change(ChangePhase.APPLYING, T0 + 5, previous=None), seen(state="pending"), T0 + 65,
                 RollBack(TIMEOUT, "nvidia.com/mig.config.state pending 60s after all-7g was set (timeout 60s)",
                          None), id="applying-timeout-without-previous-removes-label-and-holds"),
    pytest.param(APPLYING, seen(state="pending"), T0 + 65,
                 RollBack(TIMEOUT, "nvidia.com/mig.config.state pending 60s after all-7g was set (timeout 60s)",
                          "old"), id="applying-wedged-pending-times-out"),
    pytest.param(APPLYING, seen(state="rebooting"), T0 + 70,
                 RollBack(TIMEOUT, "nvidia.com/mig.config.state rebooting 65s after all-7g was set (timeout 60s)",
                          "old"), id="applying-rebooting-too-long-times-out"),
    pytest.param(APPLYING, seen(state=None), T0 + 65,
                 RollBack(TIMEOUT, "nvidia.com/mig.config.state not reported 60s after all-7g was set (timeout "
                                   "60s)", "old"), id="applying-mig-manager-absent-times-out"),
    pytest.param(APPLYING, seen("someone-else", state="success"), T0 + 7,
                 Abort(LABEL_CHANGED, "nvidia.com/mig.config is now 'someone-else', not 'all-7g': someone else "
                                      "changed it; left as it is"), id="applying-label-changed-by-others-lets-go"),
    # rolling back (the previous label written at T0 + 70): held until the MIG manager is done with it
    pytest.param(ROLLING_BACK, seen("old", state=None), T0 + 75,
                 Wait("MIG manager restoring old: state not reported yet", T0 + 130), id="rolling-back-waits"),
    pytest.param(ROLLING_BACK, seen("old", "pending", layouts=None), T0 + 75,
                 Wait("MIG manager restoring old: state pending", T0 + 130), id="rolling-back-pending-waits"),
    pytest.param(ROLLING_BACK, seen("old", "success", layouts=(L7, L7)), T0 + 75,
                 Wait("MIG manager restoring old: state success", T0 + 130),
                 id="rolling-back-success-for-ours-waits-for-the-previous"),
    pytest.param(ROLLING_BACK, seen("old", "success", layouts=None), T0 + 75,
                 Wait("MIG manager restoring old: state success", T0 + 130),
                 id="rolling-back-success-with-the-device-plugin-paused-waits"),
    pytest.param(ROLLING_BACK, seen("old", "success", layouts=(L33, L33)), T0 + 75,
                 Release(RESTORED, "the MIG manager restored old in 5s after Timeout", restored=True),
                 id="rolling-back-previous-layout-back-releases"),
    pytest.param(ROLLING_BACK, seen("old", "failed"), T0 + 75,
                 Release(ROLLBACK_FAILED, "the MIG manager reported nvidia.com/mig.config.state=failed for old, "
                                          "set back after Timeout; the node's layout is unknown"),
                 id="rolling-back-failed-releases-and-says-so"),
    pytest.param(ROLLING_BACK, seen("old", "pending"), T0 + 130,
                 Release(ROLLBACK_TIMEOUT, "nvidia.com/mig.config.state pending 60s after old was set back "
                                           "(timeout 60s)"), id="rolling-back-wedged-releases-after-the-timeout"),
    pytest.param(ROLLING_BACK, seen("theirs", "pending"), T0 + 75,
                 Release(LABEL_CHANGED, "nvidia.com/mig.config is now 'theirs', not 'old' as set back: someone "
                                        "else changed it; left as it is"), id="rolling-back-label-changed-releases"),
    pytest.param(ROLLING_BACK, seen("old", "pending", opted_in=False), T0 + 75,
                 Release(OPTED_OUT, "mig-extender.io/repartition was removed while old was being restored; "
                                    "left as it is"), id="rolling-back-opted-out-releases"),
    pytest.param(change(ChangePhase.ROLLING_BACK, T0 + 5, None, T0 + 70, TIMEOUT), seen(None, "success", (L7, L7)),
                 T0 + 75, Release(RESTORED, "the MIG manager finished all-7g; label removed after Timeout",
                                  restored=True), id="rolling-back-to-no-label-releases-once-the-mig-manager-is-done"),
    pytest.param(change(ChangePhase.ROLLING_BACK, T0 + 5, None, T0 + 70, TIMEOUT), seen(None, None), T0 + 75,
                 Wait("MIG manager restoring unset: state not reported yet", T0 + 130),
                 id="rolling-back-to-no-label-waits-for-the-mig-manager"),
    pytest.param(None, seen(), T0, Abort(UNREADABLE, f"annotation {ANN_CHANGE} is not a change this version can "
                                                     "read"), id="unreadable-record-releases"),
])
def test_next_step(record: Change | None, node: Observed, now: float, want: object) -> None:
    assert next_step(record, node, now, S) == want


def test_timeout_is_measured_from_the_label_write_not_the_reservation() -> None:
    late = change(ChangePhase.APPLYING, applied=T0 + 50)
    assert isinstance(next_step(late, seen(state="pending"), T0 + 65, S), Wait)


DAY = 86_400.0


@pytest.mark.parametrize(("record", "node", "now", "seen_for", "want"), [
    pytest.param(change(ChangePhase.APPLYING, applied=T0 + DAY), seen(state="pending"), T0 + 10, 60.0,
                 RollBack(TIMEOUT, "nvidia.com/mig.config.state pending 60s after all-7g was set (timeout 60s)",
                          "old"), id="applied-by-a-clock-a-day-ahead-times-out-after-timeout-seen"),
    pytest.param(change(ChangePhase.APPLYING, applied=T0 + DAY), seen(state="pending"), T0 + 10, 59.0,
                 Wait("MIG manager state pending", T0 + 11), id="applied-by-a-clock-a-day-ahead-waits-until-then"),
    pytest.param(change(ChangePhase.APPLYING, applied=T0 + 5), seen(state="pending"), T0 + 65, 1.0,
                 RollBack(TIMEOUT, "nvidia.com/mig.config.state pending 60s after all-7g was set (timeout 60s)",
                          "old"), id="the-recorded-deadline-still-counts-for-a-new-leader"),
    pytest.param(change(ChangePhase.ROLLING_BACK, T0 + DAY, rolled_back=T0 + DAY + 60, why=TIMEOUT),
                 seen("old", "pending"), T0 + 10, 60.0,
                 Release(ROLLBACK_TIMEOUT, "nvidia.com/mig.config.state pending 60s after old was set back "
                                           "(timeout 60s)"),
                 id="rolled-back-by-a-clock-a-day-ahead-releases-after-timeout-seen"),
    pytest.param(change(ChangePhase.ROLLING_BACK, T0 + DAY, rolled_back=T0 + DAY + 60, why=TIMEOUT),
                 seen("old", "pending"), T0 + 10, 59.0, Wait("MIG manager restoring old: state pending", T0 + 11),
                 id="rolled-back-by-a-clock-a-day-ahead-waits-until-then"),
    pytest.param(Change("all-7g", "old", (L33, L33), (L7, L7), {}, T0 + DAY), seen("old"), T0, 5.0, Apply(),
                 id="reserved-by-a-clock-a-day-ahead-settles-after-settle-seen"),
    pytest.param(Change("all-7g", "old", (L33, L33), (L7, L7), {}, T0 + DAY), seen("old"), T0, 2.0,
                 Wait("settling: every extender must see the reservation before the label is written", T0 + 3),
                 id="reserved-by-a-clock-a-day-ahead-settles-then"),
])
def test_times_are_bounded_by_what_this_process_saw(record: Change, node: Observed, now: float, seen_for: float,
                                                    want: object) -> None:
    """Defect: settle and timeout were measured only as ``now`` minus a time in the record, written by
    whichever leader's wall clock. A new leader whose clock is behind the old one's (or a clock stepped
    back) waited the difference on top: a day behind held the node reserved, its device plugin wedged,
    for a day. ``seen_for``, how long this process has watched the record unchanged (a monotonic clock),
    bounds both."""
    assert next_step(record, node, now, S, seen_for) == want


@pytest.mark.parametrize(("now", "seen_for", "want"), [
    pytest.param(T0 + 64, 59.0, Apply(), id="label-not-written-yet-still-applies"),
    pytest.param(T0 + 65, 0.0, Abort(TIMEOUT, "the label could not be written in 65s (settle 5s + timeout 60s); "
                                              "nothing was changed", cooldown=True), id="label-never-written-releases"),
    pytest.param(T0 - 1000, 65.0, Abort(TIMEOUT, "the label could not be written in 65s (settle 5s + timeout "
                                                 "60s); nothing was changed", cooldown=True),
                 id="label-never-written-releases-by-this-process-clock"),
])
def test_reservation_whose_label_is_never_written_is_released(now: float, seen_for: float, want: object) -> None:
    """Defect: the reserving phase had no deadline. When the Apply patch failed on every try (a 403 or
    422 from an admission policy on nvidia.com/mig.config, a config name that is no label value), the
    node stayed reserved, no MIG pod placed there, for good."""
    assert next_step(change(), seen("old"), now, S, seen_for) == want


@pytest.mark.parametrize("record", [
    pytest.param(change(), id="reserving"),
    pytest.param(APPLYING, id="applying"),
    pytest.param(change(previous=None), id="no-previous-label"),
    pytest.param(ROLLING_BACK, id="rolling-back"),
])
def test_change_record_round_trips(record: Change) -> None:
    assert Change.from_json(record.to_json()) == record


def test_a_record_written_before_rolling_back_existed_still_reads() -> None:
    """A reconciler upgraded mid-change finds records without ``rolledBackAt``/``rollbackReason``."""
    old = json.dumps({"config": "all-7g", "previous": "old", "before": [list(L33)] * 2, "after": [list(L7)] * 2,
                      "gpus": [0, 1], "serves": {}, "started": T0, "phase": "applying", "appliedAt": T0 + 5})
    assert Change.from_json(old) == Change("all-7g", "old", (L33, L33), (L7, L7), {}, T0, ChangePhase.APPLYING,
                                           T0 + 5)


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("{", id="not-json"),
    pytest.param(json.dumps({"config": "x"}), id="fields-missing"),
    pytest.param(json.dumps({"config": "x", "before": [["3g.40gb"]], "after": [], "started": 1}),
                 id="gpu-counts-differ"),
    pytest.param(json.dumps({"config": "x", "before": [], "after": [], "started": 1, "phase": "weird"}),
                 id="bad-phase"),
])
def test_unreadable_records_are_none(text: str) -> None:
    assert Change.from_json(text) is None


def test_new_change_records_the_whole_node_before_and_after() -> None:
    plan = NodePlan("n", (GpuChange(1, L33, L7),), (L33, L7), (Serves("nvidia.com/mig-7g.80gb", 1),), "gpu1-7g")
    got = new_change(plan, None, T0)
    assert got == Change("gpu1-7g", None, (L33, L33), (L33, L7), {"nvidia.com/mig-7g.80gb": 1}, T0)
    assert got.gpus == (1,)


# --------------------------------------------------------------------------------------------------
# The reservation: a node holding a change is full for every MIG pod


def node_json(name: str, annotations: dict[str, str] | None = None, mig: dict[str, int] | None = None,
              labels: dict[str, str] | None = None) -> dict:
    obj = make_node(name, gpu="A100-80GB", mig=mig if mig is not None else {"3g.40gb": 4},
                    labels={"nvidia.com/gpu.count": "2", LABEL_REPARTITION: "true", **(labels or {})})
    if annotations:
        obj["metadata"]["annotations"] = annotations
    return obj


HELD = {ANN_CHANGE: change().to_json()}


@pytest.mark.parametrize(("record", "labels"), [
    pytest.param(HELD, {}, id="reserving"),
    # rolling back, with the MIG manager's success for our value or the previous one: held all the same
    # until the actuator releases it (the MIG manager may still apply the previous value under the pods)
    pytest.param({ANN_CHANGE: ROLLING_BACK.to_json()}, {LABEL_MIG_CONFIG: "old", LABEL_MIG_CONFIG_STATE: "success"},
                 id="rolling-back"),
])
def test_filter_places_no_mig_pod_on_a_node_a_repartition_holds(record: dict[str, str],
                                                                 labels: dict[str, str]) -> None:
    inv = inventory_of(node_json("held", record, labels=labels), node_json("free"))
    pod = pod_info(make_pod("p", mig={"3g.40gb": 1}))
    decision = filter_pod(pod, ["held", "free"], inv.snapshot(now=T0))
    assert decision.passed == ("free",)
    assert "held" in decision.failed or "held" in decision.unresolvable


def test_held_node_offers_no_substitute_either() -> None:
    inv = inventory_of(node_json("held", HELD))
    pod = pod_info(make_pod("p", mig={"1g.10gb": 1}, owner=("ReplicaSet", "rs", "rs-uid")))
    decision = filter_pod(pod, ["held"], inv.snapshot(now=T0))
    assert decision.passed == () and decision.record is None


def test_hold_covers_the_new_layout_when_allocatable_comes_back_changed() -> None:
    inv = inventory_of(node_json("held", HELD, mig={"7g.80gb": 2}))
    pod = pod_info(make_pod("p", mig={"7g.80gb": 1}))
    assert filter_pod(pod, ["held"], inv.snapshot(now=T0)).passed == ()


def test_removing_the_annotation_releases_the_node() -> None:
    inv = inventory_of(node_json("held", HELD))
    inv.upsert_node(node_json("held"))
    pod = pod_info(make_pod("p", mig={"3g.40gb": 1}))
    assert filter_pod(pod, ["held"], inv.snapshot(now=T0)).passed == ("held",)


def test_only_the_change_annotation_holds_the_node() -> None:
    inv = inventory_of(node_json("done", {ANN_LAST: json.dumps({"at": T0, "outcome": "success"})}))
    assert inv.snapshot(now=T0).held_nodes == frozenset()
    pod = pod_info(make_pod("p", mig={"3g.40gb": 1}))
    assert filter_pod(pod, ["done"], inv.snapshot(now=T0)).passed == ("done",)


# --------------------------------------------------------------------------------------------------
# What the actuator reads from a snapshot


def test_observe_reads_the_labels_the_split_and_busy() -> None:
    node = node_json("n", labels={LABEL_MIG_CONFIG: "all-3g", LABEL_MIG_CONFIG_STATE: "success"})
    pod = make_pod("p", mig={"3g.40gb": 1}, node="n", phase="Running")
    snap = inventory_of(node, pod).snapshot(now=T0)
    assert observe(snap.nodes["n"], snap) == Observed("all-3g", "success", (L33, L33), True)


def test_observe_paused_device_plugin_does_not_split() -> None:
    snap = inventory_of(node_json("n", mig={"3g.40gb": 0})).snapshot(now=T0)
    assert observe(snap.nodes["n"], snap).layouts in (None, ((), ()))


def test_planner_sees_a_held_node_by_its_record_with_targets() -> None:
    snap = inventory_of(node_json("held", HELD, mig={})).snapshot(now=T0)
    (node,) = planner_nodes(snap, changes_on(snap))
    assert node.changing and [g.target for g in node.gpus] == [L7, L7]


def test_planner_sees_a_node_rolling_back_by_its_previous_layout() -> None:
    """A rollback creates the slices of ``before``, not those of ``after``: the planner must not count
    the target's slices against the demand while the MIG manager restores the previous layout."""
    snap = inventory_of(node_json("held", {ANN_CHANGE: ROLLING_BACK.to_json()}, mig={})).snapshot(now=T0)
    (node,) = planner_nodes(snap, changes_on(snap))
    assert node.changing and [g.target for g in node.gpus] == [L33, L33]


def test_live_demand_counts_pending_pods() -> None:
    snap = inventory_of(node_json("n"), make_pod("w", mig={"7g.80gb": 1}),
                        make_pod("v", mig={"7g.80gb": 1})).snapshot(now=T0)
    assert live_demand(snap) == {"nvidia.com/mig-7g.80gb": 2}


@pytest.mark.parametrize("state", [pytest.param("pending", id="pending"), pytest.param("rebooting", id="rebooting")])
def test_node_the_mig_manager_is_changing_for_someone_else_is_not_planned(state: str) -> None:
    snap = inventory_of(node_json("n", labels={LABEL_MIG_CONFIG_STATE: state})).snapshot(now=T0)
    assert planner_nodes(snap, changes_on(snap)) == []


def applying_json() -> str:
    return change(ChangePhase.APPLYING, applied=T0 + 5).to_json()


@pytest.mark.parametrize(("record", "state", "held"), [
    pytest.param(change().to_json(), None, True, id="reserving"),
    pytest.param(change().to_json(), "success", True, id="reserving-with-an-old-success-label"),
    pytest.param(applying_json(), None, True, id="applying-no-state"),
    pytest.param(applying_json(), "pending", True, id="applying-pending"),
    pytest.param(applying_json(), "failed", True, id="applying-failed-until-rolled-back"),
    pytest.param(applying_json(), "success", False, id="applying-success-lifts-the-hold"),
    # the MIG manager's success for our value, or for the previous one: it may apply the other next
    pytest.param(ROLLING_BACK.to_json(), "success", True, id="rolling-back-holds-even-on-success"),
    pytest.param(ROLLING_BACK.to_json(), "pending", True, id="rolling-back-pending-holds"),
    pytest.param("not json", "success", True, id="unreadable-holds"),
])
def test_hold_lifts_when_the_mig_manager_reports_success(record: str, state: str | None, held: bool) -> None:
    """Defect (seen in e2e): the hold lasted until the actuator removed its record, after the new allocatable
    had arrived. kube-scheduler requeues a pod that NodeResourcesFit rejected elsewhere on the node's
    allocatable update (pkg/scheduler/framework/plugins/noderesources/fit.go isSchedulableAfterNodeChange),
    not on the annotation's removal, so the waiting pod, retried while the hold was still there, sat in
    the unschedulable queue for up to 5 minutes. The MIG manager writes success before the device plugin
    is back (mig-parted reconfigure-mig.sh), so lifting the hold on success lets the allocatable update
    requeue it onto a free node."""
    labels = {LABEL_MIG_CONFIG_STATE: state} if state else {}
    inv = inventory_of(node_json("n", {ANN_CHANGE: record}, mig={"7g.80gb": 2}, labels=labels))
    snap = inv.snapshot(now=T0)
    pod = pod_info(make_pod("p", mig={"7g.80gb": 1}))
    assert (filter_pod(pod, ["n"], snap).passed == ()) is held
    assert ("n" in snap.held_nodes) is held
    assert "n" in changes_on(snap)  # the actuator still follows it to its end


@pytest.mark.parametrize(("mig", "held"), [
    pytest.param({"7g.80gb": 2}, False, id="success-with-the-target-allocatable-lifts"),
    pytest.param({"3g.40gb": 0}, False, id="success-with-the-device-plugin-still-paused-lifts"),
    pytest.param({}, False, id="success-with-no-mig-resource-yet-lifts"),
    pytest.param({"3g.40gb": 4}, True, id="success-with-the-old-layout-advertised-holds"),
    pytest.param({"1g.10gb": 14}, True, id="success-with-another-layout-advertised-holds"),
])
def test_success_lifts_the_hold_only_for_a_layout_nobody_else_asked_for(mig: dict[str, int], held: bool) -> None:
    """Defect: any ``success`` in phase applying lifted the hold. One written for another config (the MIG
    manager finished a value it had started before our label, mig-parted applies values in turn) or a
    device plugin back with a layout other than the target (a different strategy, a config that does
    not say what our file says) let the scheduler place pods on the node; the Timeout then set the
    label back and the MIG manager reconfigured GPUs in use (device plugin paused, pods rejected by the
    kubelet). The hold lifts on success only while the MIG allocatable is paused (no slice to place
    there; its update to the target requeues the waiting pods) or already is the target."""
    labels = {LABEL_MIG_CONFIG: "all-7g", LABEL_MIG_CONFIG_STATE: "success"}
    inv = inventory_of(node_json("n", {ANN_CHANGE: applying_json()}, mig=mig, labels=labels))
    assert ("n" in inv.snapshot(now=T0).held_nodes) is held
