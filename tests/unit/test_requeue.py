"""core/requeue.py: which parked pods the reconciler hands back to kube-scheduler, and when.

kube-scheduler retries a pod an extender refused on the next cluster event; a slice that frees in our books
only (a reservation released, a victim whose delete the scheduler saw before our watch) is no event. These
pin: only parked pods that fit now, never before ``after``, then doubling delays, oldest first, bounded.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mig_extender.core.requeue import Parked, RequeueSettings, fits_now, plan_requeues
from mig_extender.core.resources import pod_info
from mig_extender.core.rules import new_rule, preemption_hold
from tests.builders import make_node, make_pod, snapshot_of

MIG5, MIG10 = "1g.5gb", "2g.10gb"
NOW = 1000.0
SETTINGS = RequeueSettings(after=10.0, max_delay=80.0, per_pass=2)


def parked_pod(name: str, mig: dict | None = None, created: str = "2026-11-29T00:00:00Z", **kw) -> dict:
    pod = make_pod(name, mig=mig or {MIG5: 1}, created=created, **kw)
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    return pod


def always(pod, node) -> bool:
    return True


def plan(objs, pods, parked=None, rules=(), now=NOW, placement=always, settings=SETTINGS):
    snap = snapshot_of(*objs, rules=tuple(rules), now=now)
    return plan_requeues(snap, [pod_info(p) for p in pods], parked or {}, placement, settings)


def test_a_parked_pod_that_fits_is_requeued_after_the_schedulers_own_backoff_then_after_doubling_delays() -> None:
    node = make_node("n", mig={MIG5: 1})
    pod = parked_pod("p")
    times, memory, requeued = [NOW, NOW + 9, NOW + 10, NOW + 29, NOW + 30, NOW + 69, NOW + 70, NOW + 150], {}, []
    for t in times:
        due, memory = plan([node, pod], [pod], memory, now=t)
        requeued += [(t - NOW, d.attempt) for d in due]
    assert requeued == [(10, 1), (30, 2), (70, 3), (150, 4)]  # delays 10, 20, 40, then capped at 80


@pytest.mark.parametrize("change, why", [
    pytest.param(lambda p: p["status"].update(conditions=[]), "the scheduler has not tried it yet", id="not-tried"),
    pytest.param(lambda p: p["spec"].update(schedulingGates=[{"name": "kueue"}]), "gated", id="gated"),
    pytest.param(lambda p: p["metadata"].update(deletionTimestamp="2026-11-29T00:00:00Z"), "terminating",
                 id="terminating"),
    pytest.param(lambda p: p["spec"].update(nodeName="n"), "bound", id="bound"),
    pytest.param(lambda p: p["spec"]["containers"][0]["resources"].update(limits={}, requests={}), "no MIG",
                 id="no-mig"),
])
def test_pods_the_scheduler_does_not_hold_parked_for_us_are_left_alone(change, why) -> None:
    node, pod = make_node("n", mig={MIG5: 1}), parked_pod("p")
    change(pod)
    due, memory = plan([node], [pod], {pod["metadata"]["uid"]: Parked(since=0.0)}, now=NOW + 100)
    assert (due, memory) == ([], {}), why


def test_a_pod_that_does_not_fit_in_our_view_is_not_requeued_and_keeps_its_count() -> None:
    node = make_node("n", mig={MIG5: 1})
    holder = make_pod("holder", mig={MIG5: 1}, node="n")
    pod = parked_pod("p")
    due, memory = plan([node, holder], [pod], {pod["metadata"]["uid"]: Parked(since=0.0, requeues=3)}, now=NOW)
    assert due == []
    # still parked: its requeues are kept, and a later fit waits ``after`` at least (see the churn test)
    assert memory == {pod["metadata"]["uid"]: Parked(since=0.0, requeues=3, next_at=NOW + SETTINGS.after)}


def test_a_pod_refused_for_a_reason_we_do_not_model_costs_one_write_per_delay_under_slice_churn() -> None:
    """Before: a pass where the pod did not fit (a free slice taken, then freed again by churn) forgot its
    requeues, so the next fit wrote again ``after`` later with the count back at 1: under churn a pod the
    scheduler refuses for pod anti-affinity, a topology spread or a volume cost a write every ~after
    seconds for good. Now the count survives while the pod stays parked, and delays keep doubling."""
    node = make_node("n", mig={MIG5: 1})
    holder = make_pod("holder", mig={MIG5: 1}, node="n")
    pod = parked_pod("p")
    memory, writes = {}, []
    for t in range(0, 200):
        taken = t % 15 == 14  # another pod holds the free slice for one pass every 15 s
        due, memory = plan([node, holder] if taken else [node], [pod], memory, now=NOW + t)
        writes += [(t, d.attempt) for d in due]
    # before: 13 writes, one every 15 s, each "retry 1". Now delays 20, 40, 80 after the first (10 s),
    # each running on to the first fit ``after`` past a churn pass (14, 29, 44, ...)
    assert writes == [(10, 1), (39, 2), (84, 3), (174, 4)]


def test_a_slice_reserved_for_another_pod_does_not_count() -> None:
    node = make_node("n", mig={MIG5: 1})
    other = pod_info(parked_pod("other"))
    rule = new_rule(other, other.single_demand, other.single_demand, "n", NOW - 5, 120.0)
    pod = parked_pod("p")
    due, _ = plan([node], [pod], {pod["metadata"]["uid"]: Parked(since=0.0)}, rules=[replace(rule, pod_uid="x")])
    assert due == []


def test_a_preemptors_own_hold_counts_for_it_once_its_victims_are_gone() -> None:
    node = make_node("n", mig={MIG5: 1})
    pod = parked_pod("urgent")
    hold = preemption_hold(pod_info(pod), "n", ["victim-uid"], NOW - 20, 120.0)
    due, _ = plan([node], [pod], {pod["metadata"]["uid"]: Parked(since=NOW - 15)}, rules=[hold])
    assert [(d.pod.name, d.node) for d in due] == [("urgent", "n")]


def test_a_pod_with_its_own_substitution_under_way_is_left_to_the_restart() -> None:
    node = make_node("n", mig={MIG5: 1, MIG10: 1})
    pod = parked_pod("p")
    info = pod_info(pod)
    rule = new_rule(info, info.single_demand, pod_info(make_pod(mig={MIG10: 1})).single_demand, "n", NOW, 120.0)
    due, memory = plan([node], [pod], {info.uid: Parked(since=0.0)}, rules=[rule])
    assert (due, memory) == ([], {})


def test_placement_the_scheduler_would_refuse_anyway_is_not_a_fit() -> None:
    node = make_node("n", mig={MIG5: 1})
    pod = parked_pod("p")
    due, _ = plan([node], [pod], {pod["metadata"]["uid"]: Parked(since=0.0)}, placement=lambda p, n: False)
    assert due == []


def test_a_multi_type_pod_fits_only_where_every_type_is_free() -> None:
    pod = parked_pod("p", mig={MIG5: 1, MIG10: 1})
    snap = snapshot_of(make_node("a", mig={MIG5: 1}), make_node("b", mig={MIG10: 1}),
                       make_node("c", mig={MIG5: 1, MIG10: 1}), now=NOW)
    assert fits_now(snap, pod_info(pod), always) == "c"
    assert fits_now(snapshot_of(make_node("a", mig={MIG5: 1}), make_node("b", mig={MIG10: 1})), pod_info(pod),
                    always) is None


def test_oldest_first_and_at_most_per_pass() -> None:
    node = make_node("n", mig={MIG5: 3})
    pods = [parked_pod(f"p{i}", created=f"2026-11-29T00:00:0{9 - i}Z") for i in range(3)]
    memory = {p["metadata"]["uid"]: Parked(since=0.0) for p in pods}
    due, memory = plan([node], pods, memory)
    assert [d.pod.name for d in due] == ["p2", "p1"]  # per_pass 2, oldest first
    assert memory[pods[0]["metadata"]["uid"]].requeues == 0  # its turn comes on a later pass
    due, _ = plan([node], pods, memory, now=NOW + 1)
    assert [d.pod.name for d in due] == ["p0"]



def test_requeues_per_pass_zero_writes_no_requeue() -> None:
    """--requeues-per-pass 0 turns requeues off (docs/install.md): a pod due long ago is still not requeued."""
    node = make_node("n", mig={MIG5: 1})
    pod = parked_pod("p")
    due, _ = plan([node], [pod], {pod["metadata"]["uid"]: Parked(since=0.0)}, settings=replace(SETTINGS, per_pass=0))
    assert due == []
    due, _ = plan([node], [pod], {pod["metadata"]["uid"]: Parked(since=0.0)})
    assert [d.pod.name for d in due] == ["p"]  # the same pod with requeues on


def test_a_pod_of_a_scheduler_that_does_not_call_us_is_never_requeued() -> None:
    """Our pod condition is a write to someone else's pod when its scheduler (Volcano, YuniKorn...) never
    asks our extender: its Unschedulable verdict is not ours to second-guess. Only pods of the schedulers
    that run the extender (--requeue-schedulers) are requeued."""
    node = make_node("n", mig={MIG5: 1})
    theirs, ours = parked_pod("theirs"), parked_pod("ours")
    theirs["spec"]["schedulerName"] = "volcano"
    ours["spec"]["schedulerName"] = "mig-scheduler"
    memory = {p["metadata"]["uid"]: Parked(since=0.0) for p in (theirs, ours)}
    due, _ = plan([node], [theirs, ours], memory)
    assert [d.pod.name for d in due] == ["ours"]
    due, _ = plan([node], [theirs, ours], memory, settings=replace(SETTINGS, schedulers=frozenset({"volcano"})))
    assert [d.pod.name for d in due] == ["theirs"]
