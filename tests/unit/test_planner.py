"""Decisions over snapshots: filter reasons, substitution choice, reservations, scores, upgrades, restores."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mig_extender.core.planner import (
    Insufficient,
    NodeUnschedulable,
    NotSynced,
    PlanSettings,
    Policy,
    choose_substitute,
    expired_rules,
    filter_pod,
    plan_restores,
    plan_upgrades,
    score_nodes,
)
from mig_extender.core.resources import (
    ANN_ORIGINAL,
    ANN_RESTORE,
    ANN_RULE,
    ANN_SUBSTITUTE,
    ResourceCount,
    parse_time,
    pod_info,
)
from mig_extender.core.rules import Phase, new_rule
from tests.builders import make_node, make_pod, res, snapshot_of

A40 = "A100-40GB"


def walkthrough_node() -> dict:
    """The issue's node: one A100-40GB with 2 x 1g.5gb, 1 x 2g.10gb, 1 x 3g.20gb."""
    return make_node("gpu-a", A40, {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1})


def test_pod_without_mig_passes_every_node_untouched() -> None:
    d = filter_pod(pod_info(make_pod()), ["a", "b", "unknown"], snapshot_of())
    assert d.passed == ("a", "b", "unknown") and not d.failed and d.record is None


def test_nodes_with_the_profile_free_pass_others_say_why() -> None:
    snap = snapshot_of(walkthrough_node(), make_node("gpu-b", A40, {"3g.20gb": 2}), make_node("cpu", None),
                       make_pod(mig={"1g.5gb": 1}, node="gpu-a"))
    d = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), ["gpu-a", "gpu-b", "cpu", "ghost"], snap)
    assert d.passed == ("gpu-a",)
    assert str(d.unresolvable["gpu-b"]) == "nvidia.com/mig-1g.5gb: none on this node"
    assert "cpu" in d.unresolvable and "ghost" in d.failed
    assert d.record is None


def test_sold_out_profile_records_least_waste_substitute() -> None:
    snap = snapshot_of(walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"))
    pod = pod_info(make_pod("infer-b-x", mig={"1g.5gb": 1}, owner=("ReplicaSet", "infer-b", "rs-b")))
    d = filter_pod(pod, ["gpu-a"], snap)
    assert d.passed == ()
    # one priority in the cluster: no preemption could free a slice (item 10), so unresolvable
    assert isinstance(d.unresolvable["gpu-a"], Insufficient) and d.unresolvable["gpu-a"].free == 0
    assert d.record is not None
    assert d.record.substitute == ResourceCount(res("2g.10gb"), 1) and d.record.node == "gpu-a"
    assert d.record.owner.uid == "rs-b" and d.record.phase is Phase.RECORDED
    assert d.note == "substitute nvidia.com/mig-2g.10gb recorded on gpu-a"


def test_reservation_keeps_two_pending_pods_from_one_slice() -> None:
    snap = snapshot_of(walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"))
    first = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), ["gpu-a"], snap).record
    snap2 = snapshot_of(walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"), rules=(first,))
    second = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), ["gpu-a"], snap2).record
    assert first.substitute.resource == res("2g.10gb")
    assert second.substitute.resource == res("3g.20gb")  # the 2g is promised; next least waste
    snap3 = snapshot_of(walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"), rules=(first, second))
    third = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), ["gpu-a"], snap3)
    assert third.record is None and third.passed == ()  # nothing compatible left unpromised


def test_reserved_slices_do_not_pass_other_pods_exact_requests() -> None:
    base = (walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"))
    rule = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), ["gpu-a"], snapshot_of(*base)).record
    d = filter_pod(pod_info(make_pod(mig={"2g.10gb": 1})), ["gpu-a"], snapshot_of(*base, rules=(rule,)))
    assert d.passed == () and "1 reserved for substitutions" in str(d.unresolvable["gpu-a"])  # see item 10


def test_the_upgraded_replacement_may_use_its_own_reservation() -> None:
    base = (walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"))
    rule = filter_pod(pod_info(make_pod("p", mig={"1g.5gb": 1})), ["gpu-a"], snapshot_of(*base)).record
    applied = rule.applied("p-2", 1000.0, 300)
    replacement = pod_info(make_pod("p-2", mig={"2g.10gb": 1}, annotations={ANN_RULE: rule.name}))
    d = filter_pod(replacement, ["gpu-a"], snapshot_of(*base, rules=(applied,)))
    assert d.passed == ("gpu-a",)


@pytest.mark.parametrize("pod, why", [
    pytest.param(make_pod(mig={"1g.5gb": 1}, annotations={ANN_SUBSTITUTE: "false"}), "opted out", id="opt-out"),
    pytest.param(make_pod(mig={"1g.5gb": 1, "2g.10gb": 1}), "more than one", id="two-types"),
    pytest.param(make_pod(mig={"1g.5gb": 1}, annotations={ANN_ORIGINAL: "nvidia.com/mig-1g.5gb=1"}),
                 "already", id="already-upgraded"),
])
def test_pods_that_are_never_substituted(pod: dict, why: str) -> None:
    from mig_extender.core.planner import substitution_blocker

    snap = snapshot_of(walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"))
    info = pod_info(pod)
    assert why in substitution_blocker(info, PlanSettings())
    assert filter_pod(info, ["gpu-a"], snap).record is None


def test_stock_policy_never_substitutes() -> None:
    snap = snapshot_of(walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"))
    d = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), ["gpu-a"], snap, PlanSettings(substitution=False))
    assert d.record is None


def test_me_request_only_takes_media_capable_slices() -> None:
    snap = snapshot_of(make_node("n", A40, {"1g.5gb+me": 1, "2g.10gb": 1, "7g.40gb": 0}),
                       make_node("w", A40, {"7g.40gb": 1}),
                       make_pod(mig={"1g.5gb+me": 1}, node="n"))
    rule = choose_substitute(pod_info(make_pod(mig={"1g.5gb+me": 1})), {"n", "w"}, snap)
    assert rule.substitute.resource == res("7g.40gb") and rule.node == "w"


def test_substitute_prefers_less_waste_then_scarcity_then_packing() -> None:
    snap = snapshot_of(
        make_node("big", A40, {"1g.5gb": 1, "3g.20gb": 2}),
        make_node("two-2g", A40, {"1g.5gb": 1, "2g.10gb": 2, "3g.20gb": 1}),
        make_node("one-2g", A40, {"1g.5gb": 1, "2g.10gb": 1}),
        make_pod(mig={"1g.5gb": 1}, node="big"), make_pod(mig={"1g.5gb": 1}, node="two-2g"),
        make_pod(mig={"1g.5gb": 1}, node="one-2g"),
    )
    rule = choose_substitute(pod_info(make_pod(mig={"1g.5gb": 1})), {"big", "two-2g", "one-2g"}, snap)
    assert (rule.node, rule.substitute.resource) == ("one-2g", res("2g.10gb"))


def test_substitution_respects_candidates() -> None:
    snap = snapshot_of(make_node("a", A40, {"1g.5gb": 1}), make_node("b", A40, {"2g.10gb": 1}),
                       make_pod(mig={"1g.5gb": 1}, node="a"))
    assert choose_substitute(pod_info(make_pod(mig={"1g.5gb": 1})), {"a"}, snap) is None


def test_cross_model_substitute_compares_real_sizes() -> None:
    snap = snapshot_of(make_node("h200", "H200-141GB", {"1g.18gb": 1}), make_node("a", A40, {"1g.5gb": 1}),
                       make_pod(mig={"1g.5gb": 1}, node="a"))
    rule = choose_substitute(pod_info(make_pod(mig={"1g.5gb": 1})), {"a", "h200"}, snap)
    assert rule.substitute.resource == res("1g.18gb")


def test_driver_alias_is_a_zero_waste_substitute() -> None:
    snap = snapshot_of(make_node("n", "A100-80GB", {"7g.79gb": 1}))
    rule = choose_substitute(pod_info(make_pod(mig={"7g.80gb": 1})), {"n"}, snap)
    assert rule.substitute.resource == res("7g.79gb")


def test_waiting_pod_sees_its_rule_and_a_freed_slice_cancels_it() -> None:
    node = walkthrough_node()
    holder = make_pod(mig={"1g.5gb": 2}, node="gpu-a")
    pod = make_pod(mig={"1g.5gb": 1})
    rule = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder)).record
    again = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder, rules=(rule,)))
    assert again.record is None and "waiting for the pod to be recreated" in again.note
    holder["status"]["phase"] = "Succeeded"
    freed = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder, rules=(rule,)))
    assert freed.passed == ("gpu-a",) and freed.cancel == rule


def test_rules_expire_and_release_their_reservation() -> None:
    node, holder = walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a")
    rule = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), ["gpu-a"], snapshot_of(node, holder)).record
    late = snapshot_of(node, holder, rules=(rule,), now=rule.expires + 1)
    assert late.free("gpu-a", res("2g.10gb")) == 1
    assert expired_rules(late) == [rule]


def test_pack_prefers_busy_nodes_and_spread_mirrors_it() -> None:
    snap = snapshot_of(make_node("busy", A40, {"1g.5gb": 7}), make_node("idle", A40, {"1g.5gb": 7}),
                       make_pod(mig={"1g.5gb": 5}, node="busy"))
    pod = pod_info(make_pod(mig={"1g.5gb": 1}))
    pack = dict(score_nodes(pod, ["busy", "idle"], snap))
    spread = dict(score_nodes(pod, ["busy", "idle"], snap, Policy.SPREAD))
    assert pack["busy"] > pack["idle"] and spread["idle"] > spread["busy"]
    assert all(0 <= s <= 10 for s in (*pack.values(), *spread.values()))


def _upgraded(name: str, original: str, substitute: str, node: str, owner: tuple | None = None,
              annotations: dict | None = None) -> tuple[dict, object]:
    """A pod running on ``substitute`` after an upgrade, and its Applied+bound rule."""
    pending = pod_info(make_pod(name, mig={original: 1}, owner=owner))
    rule = new_rule(pending, ResourceCount(res(original), 1), ResourceCount(res(substitute), 1), node, 900.0, 300.0)
    running = make_pod(name + "-r", mig={substitute: 1}, node=node, owner=owner,
                       annotations={ANN_RULE: rule.name, ANN_ORIGINAL: f"{res(original)}=1", **(annotations or {})})
    rule = rule.applied(name + "-r", 900.0, 300.0).bound(running["metadata"]["uid"], name + "-r", node, 950.0)
    return running, rule


def _pods(*objs: dict) -> dict:
    return {o["metadata"]["uid"]: pod_info(o) for o in objs}


def test_restore_picks_the_biggest_waster_and_reserves_the_original() -> None:
    small, r_small = _upgraded("small", "1g.5gb", "2g.10gb", "gpu-a")
    big, r_big = _upgraded("big", "1g.5gb", "3g.20gb", "gpu-a")
    node = walkthrough_node()
    snap = snapshot_of(node, small, big, make_pod(mig={"1g.5gb": 1}, node="gpu-a"), rules=(r_small, r_big))
    plans, skips = plan_restores(snap, _pods(small, big))
    assert [p.rule.name for p in plans] == [r_big.name] and plans[0].node == "gpu-a" and not skips
    restoring = plans[0].rule.restoring("gpu-a", 1000.0, 120.0)
    snap2 = snapshot_of(node, small, big, make_pod(mig={"1g.5gb": 1}, node="gpu-a"), rules=(r_small, restoring))
    assert snap2.free("gpu-a", res("1g.5gb")) == 0  # set aside for the restarted pod
    assert plan_restores(snap2, _pods(small, big)) == ([], [])  # no 1g.5gb left for the small one


def test_restore_needs_the_original_free() -> None:
    pod, rule = _upgraded("p", "1g.5gb", "2g.10gb", "gpu-a")
    snap = snapshot_of(walkthrough_node(), pod, make_pod(mig={"1g.5gb": 2}, node="gpu-a"), rules=(rule,))
    assert plan_restores(snap, _pods(pod)) == ([], [])


def test_opted_out_pods_are_never_restored() -> None:
    pod, rule = _upgraded("p", "1g.5gb", "2g.10gb", "gpu-a", annotations={ANN_RESTORE: "false"})
    snap = snapshot_of(walkthrough_node(), pod, rules=(rule,))
    plans, skips = plan_restores(snap, _pods(pod))
    assert plans == [] and "opted out" in skips[0].reason


def test_restore_loop_guard() -> None:
    owner = ("ReplicaSet", "web", "rs-1")
    pod, rule = _upgraded("p", "1g.5gb", "2g.10gb", "gpu-a", owner=owner)
    earlier = replace(rule, name="earlier", phase=Phase.RESTORED, updated=990.0)
    snap = snapshot_of(walkthrough_node(), pod, rules=(rule, earlier))
    plans, skips = plan_restores(snap, _pods(pod), PlanSettings(loop_window=900))
    assert plans == [] and "avoid a loop" in skips[0].reason
    later = snapshot_of(walkthrough_node(), pod, rules=(rule, earlier), now=990.0 + 901)
    assert len(plan_restores(later, _pods(pod), PlanSettings(loop_window=900))[0]) == 1


def test_plan_upgrades_restarts_waiting_pods_and_cancels_placed_ones() -> None:
    node, holder = walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a")
    waiting = make_pod("w", mig={"1g.5gb": 1})
    rule = filter_pod(pod_info(waiting), ["gpu-a"], snapshot_of(node, holder)).record
    ups, cancel = plan_upgrades(snapshot_of(node, holder, rules=(rule,), now=rule.created + 2), _pods(waiting))
    assert [u.pod.name for u in ups] == ["w"] and cancel == []
    young, _ = plan_upgrades(snapshot_of(node, holder, rules=(rule,), now=rule.created), _pods(waiting))
    assert young == []  # not before every watch has delivered the rule
    placed = make_pod("w", mig={"1g.5gb": 1}, node="gpu-a", uid=waiting["metadata"]["uid"])
    ups, cancel = plan_upgrades(snapshot_of(node, holder, rules=(rule,)), _pods(placed))
    assert ups == [] and cancel == [rule]


def test_own_reservation_is_not_counted_twice_in_scores() -> None:
    """The replacement pod scores its reserved node like an identical node without any reservation."""
    layout = {"1g.5gb": 2, "2g.10gb": 2, "3g.20gb": 1}  # 9 compute slices: scores stay below the cap
    base = (make_node("held", A40, layout), make_node("twin", A40, layout),
            make_pod(mig={"1g.5gb": 2}, node="held"), make_pod(mig={"1g.5gb": 2}, node="twin"))
    rule = filter_pod(pod_info(make_pod("p", mig={"1g.5gb": 1})), ["held"], snapshot_of(*base)).record
    snap = snapshot_of(*base, rules=(rule,))
    replacement = pod_info(make_pod("p-2", mig={"2g.10gb": 1}, annotations={ANN_RULE: rule.name}))
    scores = dict(score_nodes(replacement, ["held", "twin"], snap))
    assert scores["held"] == scores["twin"] < 10
    other = pod_info(make_pod(mig={"2g.10gb": 1}))  # anyone else sees the reserved slice as taken
    assert dict(score_nodes(other, ["held", "twin"], snap))["held"] > scores["twin"]


def test_restores_wait_for_pods_that_want_exactly_the_freed_type() -> None:
    up, rule = _upgraded("p", "1g.5gb", "2g.10gb", "gpu-a")
    waiting = make_pod("queued", mig={"1g.5gb": 1})  # pending, asks for exactly the freed type
    snap = snapshot_of(walkthrough_node(), up, make_pod(mig={"1g.5gb": 1}, node="gpu-a"), waiting, rules=(rule,))
    assert snap.pending == {res("1g.5gb"): 1} and snap.spare(res("1g.5gb")) == 0
    assert plan_restores(snap, _pods(up)) == ([], [])  # the queued pod gets the slice, not a restart
    alone = snapshot_of(walkthrough_node(), up, make_pod(mig={"1g.5gb": 1}, node="gpu-a"), rules=(rule,))
    assert len(plan_restores(alone, _pods(up))[0]) == 1
    # but when pods also wait for the 2g.10gb the upgraded pod holds, freeing it is what the queue needs
    both = snapshot_of(walkthrough_node(), up, make_pod(mig={"1g.5gb": 1}, node="gpu-a"), waiting,
                       make_pod("wants-2g", mig={"2g.10gb": 1}), rules=(rule,))
    assert len(plan_restores(both, _pods(up))[0]) == 1


def test_several_restores_run_at_once_within_the_limits() -> None:
    ups = [_upgraded(f"p{i}", "1g.5gb", "2g.10gb", "big") for i in range(4)]
    node = make_node("big", A40, {"1g.5gb": 7, "2g.10gb": 7})
    snap = snapshot_of(node, *(u for u, _ in ups), rules=tuple(r for _, r in ups))
    plans, _ = plan_restores(snap, _pods(*(u for u, _ in ups)), PlanSettings(restores_per_pass=3))
    assert len(plans) == 3  # the per-pass limit
    restoring = tuple(p.rule.restoring("big", 1000.0, 120.0) for p in plans)
    rest = tuple(r for _, r in ups if r.name not in {p.rule.name for p in plans})
    snap2 = snapshot_of(node, *(u for u, _ in ups), rules=restoring + rest)
    assert plan_restores(snap2, _pods(*(u for u, _ in ups)), PlanSettings(restores_in_flight=3)) == ([], [])
    assert len(plan_restores(snap2, _pods(*(u for u, _ in ups)), PlanSettings(restores_in_flight=4))[0]) == 1


def test_no_substitute_is_taken_from_a_type_its_own_queue_needs() -> None:
    base = (make_node("n", A40, {"1g.5gb": 1, "2g.10gb": 1, "3g.20gb": 1}), make_pod(mig={"1g.5gb": 1}, node="n"))
    pod = pod_info(make_pod(mig={"1g.5gb": 1}))
    assert choose_substitute(pod, {"n"}, snapshot_of(*base)).substitute.resource == res("2g.10gb")
    queued_2g = make_pod("wants-2g", mig={"2g.10gb": 1})
    rule = choose_substitute(pod, {"n"}, snapshot_of(*base, queued_2g))
    assert rule.substitute.resource == res("3g.20gb")  # the 2g is left to the pod waiting for it


def test_the_rewritten_pod_is_placed_on_its_reserved_node() -> None:
    base = (make_node("a", A40, {"1g.5gb": 1, "2g.10gb": 1}), make_node("b", A40, {"2g.10gb": 1}),
            make_pod(mig={"1g.5gb": 1}, node="a"))
    rule = choose_substitute(pod_info(make_pod("p", mig={"1g.5gb": 1})), {"a"}, snapshot_of(*base))
    replacement = pod_info(make_pod("p-2", mig={"2g.10gb": 1}, annotations={ANN_RULE: rule.name}))
    d = filter_pod(replacement, ["a", "b"], snapshot_of(*base, rules=(rule.applied("p-2", 1000.0, 60.0),)))
    assert list(d.passed) == ["a"]
    assert "reserved on another node" in str(d.failed["b"])


def _taken(rule, now: float = 950.0):
    """``rule`` as another pod left it: handed to that pod (before the fix, any sibling could)."""
    return rule.restarting(now - 10).applied("sibling", now, 300.0)


@pytest.mark.parametrize("previous", [
    pytest.param(lambda r: r.expired(950.0), id="after-an-expired-rule"),
    pytest.param(_taken, id="after-a-rule-another-pod-took"),
])
def test_item5_second_rule_for_a_pod_gets_a_new_name(previous) -> None:
    """Issue 13 item 5: the rule name was a hash of namespace/name/uid, so a pod's second rule collided with
    its first and recording it handed back the old one. The next name follows from the pod's newest rule,
    so every replica deciding on the same rules still picks the same name (a retry stays idempotent)."""
    node, holder = walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a")
    pod = make_pod(mig={"1g.5gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    first = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder)).record
    old = previous(first)
    second = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder, rules=(old,), now=1010.0)).record
    again = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder, rules=(old,), now=1011.0)).record
    assert second is not None and second.name != first.name and second.name == again.name
    spent = (second.expired(1015.0), old)  # listed newest first: the order must not matter
    third = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder, rules=spent, now=1020.0))
    assert third.record is not None and third.record.name not in (first.name, second.name)


@pytest.mark.parametrize("newest_first", [pytest.param(True, id="newest-listed-first"),
                                          pytest.param(False, id="newest-listed-last")])
def test_item5_pending_pod_is_judged_by_its_newest_rule(newest_first: bool) -> None:
    """A pod with an old rule (taken) and its new Recorded one waits for the new one, whatever order the
    store lists them in: it must not record a third."""
    node, holder = walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a")
    pod = make_pod(mig={"1g.5gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    first = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder, now=900.0)).record
    old = _taken(first, now=920.0)
    new = replace(first, name="web-second", created=950.0, expires=1070.0)
    rules = (new, old) if newest_first else (old, new)
    again = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, holder, rules=rules))
    assert again.record is None and "waiting for the pod to be recreated" in again.note


def test_item5_filter_note_says_when_the_pods_rule_no_longer_holds_a_substitute() -> None:
    """Nothing left to substitute, and the pod's own rule went to another pod: the note says so instead of
    staying silent about the rule a reader of the rules would find for this pod."""
    node = walkthrough_node()
    holders = [make_pod(mig={"1g.5gb": 2}, node="gpu-a"), make_pod(mig={"3g.20gb": 1}, node="gpu-a")]
    pod = make_pod(mig={"1g.5gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    first = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, *holders)).record
    taken = _taken(first)
    decision = filter_pod(pod_info(pod), ["gpu-a"], snapshot_of(node, *holders, rules=(taken,)))
    assert decision.record is None and "recorded" not in decision.note
    assert taken.name in decision.note and "Applied" in decision.note


# ---- issue 13: restore order, placement, loop guard, backoff, owners ------------------------------


@pytest.mark.parametrize("substitutes, expected", [
    pytest.param([("a", "2g.10gb", 900.0), ("b", "3g.20gb", 950.0)], ["b", "a"], id="bigger-waste-first"),
    pytest.param([("new", "2g.10gb", 950.0), ("old", "2g.10gb", 900.0)], ["old", "new"], id="ties-oldest-first"),
    pytest.param([("me", "1g.5gb+me", 900.0), ("plain", "1g.10gb", 950.0)], ["plain", "me"],
                 id="plain-larger-before-me"),
])
def test_restore_order_biggest_waster_first_ties_oldest_first(substitutes: list, expected: list) -> None:
    """catalog.waste(): (extra compute, extra GB, unneeded media engine), compared in that order."""
    node = make_node("big", A40, {"1g.5gb": 7, "2g.10gb": 3, "3g.20gb": 2, "1g.10gb": 4, "1g.5gb+me": 1})
    pods, rules = [], []
    for name, sub, created in substitutes:
        pod, rule = _upgraded(name, "1g.5gb", sub, "big")
        pods.append(pod)
        rules.append(replace(rule, created=created))
    snap = snapshot_of(node, *pods, rules=tuple(rules))
    # the order of restores, whether anybody wants the freed slices or not (issue 17 made that a condition)
    plans, _ = plan_restores(snap, _pods(*pods), PlanSettings(restores_per_pass=len(pods),
                                                              restores_in_flight=len(pods), restore_needs_taker=False))
    assert [p.pod.name.removesuffix("-r") for p in plans] == expected


def _with_spec(obj: dict, **spec: object) -> dict:
    obj["spec"].update(spec)
    return obj


@pytest.mark.parametrize("pod_spec, free_node, expected", [
    pytest.param({"nodeSelector": {"zone": "b"}}, {"labels": {"zone": "a"}}, "", id="node-selector"),
    pytest.param({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}},
        {"labels": {"zone": "a"}}, "", id="required-affinity"),
    pytest.param({}, {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}, "", id="taint"),
    pytest.param({"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
                 {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}, "free", id="tolerated"),
    pytest.param({"containers": [{"name": "c", "image": "i", "resources": {
        "limits": {res("2g.10gb"): "1"}, "requests": {res("2g.10gb"): "1", "cpu": "30"}}}]},
        {"cpu_used": "20"}, "", id="cpu-does-not-fit"),
    pytest.param({}, {}, "free", id="no-constraints"),
])
def test_item9_restore_reserves_only_where_the_pod_can_run(pod_spec: dict, free_node: dict, expected: str) -> None:
    """The pod's own node has no free original slice; the only free one is on node 'free'."""
    own = make_node("own", A40, {"1g.5gb": 1, "2g.10gb": 1}, labels={"zone": "b"})
    other = make_node("free", A40, {"1g.5gb": 1}, labels=free_node.get("labels"))
    if "taints" in free_node:
        other["spec"]["taints"] = free_node["taints"]
    pod, rule = _upgraded("p", "1g.5gb", "2g.10gb", "own")
    _with_spec(pod, **pod_spec)
    others = [make_pod(mig={"1g.5gb": 1}, node="own")]
    if "cpu_used" in free_node:
        busy = make_pod(node="free")
        busy["spec"]["containers"][0]["resources"] = {"requests": {"cpu": free_node["cpu_used"]}}
        others.append(busy)
    snap = snapshot_of(own, other, pod, *others, rules=(rule,))
    plans, _ = plan_restores(snap, _pods(pod))
    assert [p.node for p in plans] == ([expected] if expected else [])


def test_item9_own_node_counts_the_pods_own_cpu_as_freed() -> None:
    node = make_node("own", A40, {"1g.5gb": 1, "2g.10gb": 1})
    pod, rule = _upgraded("p", "1g.5gb", "2g.10gb", "own")
    pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "30"  # of 32: fits only by replacing itself
    snap = snapshot_of(node, pod, rules=(rule,))
    assert [p.node for p in plan_restores(snap, _pods(pod))[0]] == ["own"]


def test_item9_an_expired_restore_counts_as_a_loop() -> None:
    owner = ("ReplicaSet", "web", "rs-1")
    pod, rule = _upgraded("p", "1g.5gb", "2g.10gb", "gpu-a", owner=owner)
    failed = replace(rule, name="earlier", phase=Phase.EXPIRED, restore_node="elsewhere", updated=990.0)
    snap = snapshot_of(walkthrough_node(), pod, rules=(rule, failed))
    plans, skips = plan_restores(snap, _pods(pod), PlanSettings(loop_window=900))
    assert plans == [] and "avoid a loop" in skips[0].reason
    never_restored = replace(failed, restore_node="")  # an upgrade that expired is no restore
    snap = snapshot_of(walkthrough_node(), pod, rules=(rule, never_restored))
    assert len(plan_restores(snap, _pods(pod), PlanSettings(loop_window=900))[0]) == 1


def test_item4_a_deferred_restore_waits_for_its_backoff() -> None:
    pod, rule = _upgraded("p", "1g.5gb", "2g.10gb", "gpu-a")
    deferred = rule.restoring("gpu-a", 990.0, 120.0).restore_deferred(995.0, 30.0, "PDB refused the eviction")
    assert deferred.phase is Phase.APPLIED and deferred.reservation(996.0) is None  # original slice released
    assert plan_restores(snapshot_of(walkthrough_node(), pod, rules=(deferred,), now=1000.0), _pods(pod)) == ([], [])
    later = snapshot_of(walkthrough_node(), pod, rules=(deferred,), now=995.0 + 31)
    assert len(plan_restores(later, _pods(pod))[0]) == 1


RAY = ("RayCluster", "ray-1", "ray-uid", "ray.io/v1")


def test_item6_pods_of_unknown_owners_are_not_substituted() -> None:
    from mig_extender.core.planner import substitution_blocker

    snap = snapshot_of(walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a"))
    worker = pod_info(make_pod("worker", mig={"1g.5gb": 1}, owner=RAY))
    assert "ray.io/RayCluster" in substitution_blocker(worker, PlanSettings())
    assert filter_pod(worker, ["gpu-a"], snap).record is None
    listed = PlanSettings(restartable_owners=frozenset({"ray.io/RayCluster"}))
    assert filter_pod(worker, ["gpu-a"], snap, listed).record is not None


def test_item6_unknown_owners_are_neither_upgraded_nor_restored() -> None:
    node, holder = walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a")
    waiting = make_pod("w", mig={"1g.5gb": 1}, owner=RAY)
    listed = PlanSettings(restartable_owners=frozenset({"RayCluster"}))
    rule = filter_pod(pod_info(waiting), ["gpu-a"], snapshot_of(node, holder), listed).record
    snap = snapshot_of(node, holder, rules=(rule,), now=rule.created + 2)
    assert plan_upgrades(snap, _pods(waiting), listed)[0] != []
    ups, cancel = plan_upgrades(snap, _pods(waiting))  # the operator took RayCluster off the list
    assert ups == [] and cancel == [rule]
    pod, applied = _upgraded("p", "1g.5gb", "2g.10gb", "gpu-a", owner=RAY)
    plans, skips = plan_restores(snapshot_of(walkthrough_node(), pod, rules=(applied,)), _pods(pod))
    assert plans == [] and "ray.io/RayCluster" in skips[0].reason


def test_item6_a_listed_owner_that_renames_its_pods_gets_its_rule_applied() -> None:
    """A RayCluster-like operator recreates a worker under a generated name: the rule must still find it
    (by owner uid, as for a ReplicaSet), or every replacement would be upgraded again, in a loop."""
    node, holder = walkthrough_node(), make_pod(mig={"1g.5gb": 2}, node="gpu-a")
    listed = PlanSettings(restartable_owners=frozenset({"ray.io/RayCluster"}))
    waiting = make_pod("worker-abcde", mig={"1g.5gb": 1}, owner=RAY)
    rule = filter_pod(pod_info(waiting), ["gpu-a"], snapshot_of(node, holder), listed).record
    renamed = pod_info(make_pod("worker-fghij", mig={"1g.5gb": 1}, owner=RAY))
    assert not rule.awaits_upgrade(renamed)  # item 5: until the waiting pod is restarted it is not a replacement
    assert rule.restarting(rule.created + 2).awaits_upgrade(renamed)


def test_item13_a_gated_pod_does_not_block_a_substitution() -> None:
    base = (make_node("n", A40, {"1g.5gb": 1, "2g.10gb": 1, "3g.20gb": 1}), make_pod(mig={"1g.5gb": 1}, node="n"))
    gated = make_pod("gated-2g", mig={"2g.10gb": 1})
    gated["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    rule = choose_substitute(pod_info(make_pod(mig={"1g.5gb": 1})), {"n"}, snapshot_of(*base, gated))
    assert rule.substitute.resource == res("2g.10gb")  # the gated pod is not waiting for the 2g yet


def test_item1_filter_refuses_until_synced() -> None:
    snap = replace(snapshot_of(walkthrough_node()), synced=False)
    d = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), ["gpu-a", "ghost"], snap)
    assert d.passed == () and d.record is None and not d.unresolvable
    assert d.failed == {"gpu-a": NotSynced(), "ghost": NotSynced()}
    assert d.failed["gpu-a"] is d.failed["ghost"]  # one reason object for every node
    plain = filter_pod(pod_info(make_pod()), ["gpu-a", "ghost"], snap)
    assert plain.passed == ("gpu-a", "ghost") and not plain.failed


TOLERATE_CORDON = [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]


def _tolerating(pod: dict) -> dict:
    pod["spec"]["tolerations"] = TOLERATE_CORDON
    return pod


@pytest.mark.parametrize("mig", [
    pytest.param({"1g.5gb": 1}, id="one-type"),
    pytest.param({"1g.5gb": 2}, id="one-type-two-slices"),
    pytest.param({"1g.5gb": 1, "2g.10gb": 1}, id="two-types"),
])
def test_item12_a_cordoned_node_fails_every_pod_alike_as_unschedulable(mig: dict) -> None:
    snap = snapshot_of(make_node("cordoned", A40, {"1g.5gb": 4, "2g.10gb": 1}, unschedulable=True))
    d = filter_pod(pod_info(make_pod(mig=mig)), ["cordoned"], snap)
    assert d.passed == () and not d.failed and d.unresolvable == {"cordoned": NodeUnschedulable()}
    assert str(d.unresolvable["cordoned"]) == "node is unschedulable"


@pytest.mark.parametrize("mig, fits", [
    pytest.param({"1g.5gb": 1}, True, id="one-type"),
    pytest.param({"1g.5gb": 1, "2g.10gb": 1}, True, id="two-types"),
    pytest.param({"2g.10gb": 2}, False, id="short"),
])
def test_item12_a_pod_tolerating_the_cordon_counts_the_slices_normally(mig: dict, fits: bool) -> None:
    snap = snapshot_of(make_node("cordoned", A40, {"1g.5gb": 4, "2g.10gb": 1}, unschedulable=True))
    d = filter_pod(pod_info(_tolerating(make_pod(mig=mig))), ["cordoned"], snap)
    if fits:
        assert d.passed == ("cordoned",)
    else:  # short of slices like any node (which map says whether preemption helps is items 10 and 16)
        assert d.passed == () and {**d.failed, **d.unresolvable} == {"cordoned": Insufficient(res("2g.10gb"), 2, 1, 1)}


def _spellings(prof) -> set[str]:
    """A catalog profile's name, its aliases and every drifted spelling within 2 GB either way."""
    me = "+me" if prof.media_extensions else ""
    drifted = {f"{prof.compute_slices}g.{prof.memory_gb + d}gb{me}" for d in (-2, -1, 1, 2) if prof.memory_gb + d > 0}
    return {prof.name, *prof.aliases, *drifted}


def test_item2_a_substitute_never_has_less_compute_or_memory_than_the_name_asked_for() -> None:
    """Property over the whole catalog: for every model, profile and drifted spelling, on a node of every
    model offering all its profiles, the chosen substitute's real slice (the catalog's profile on that
    node) has at least the compute and memory the requested *name* says, and media engines if asked."""
    from mig_extender.core.catalog import MODELS, parse_profile_name, resource_profile_name

    nodes = {m.name: snapshot_of(make_node("n", m.name, {prof.name: 1 for prof in m.profiles})) for m in MODELS}
    checked = 0
    for asked_model in MODELS:
        for prof in asked_model.profiles:
            for name in sorted(_spellings(prof)):
                want = parse_profile_name(name)
                pod = pod_info(make_pod(mig={name: 1}))
                for node_model in MODELS:
                    rule = choose_substitute(pod, {"n"}, nodes[node_model.name])
                    if rule is None:
                        continue
                    got = node_model.find(resource_profile_name(rule.substitute.resource), strict=True).shape
                    assert got.compute_slices >= want.compute_slices and got.memory_gb >= want.memory_gb, \
                        (name, node_model.name, got.name)
                    assert got.media_extensions or not want.media_extensions, (name, node_model.name, got.name)
                    checked += 1
    assert checked > 500  # the property was exercised, not vacuously true


@pytest.mark.parametrize("layout, held, mig, reason", [
    pytest.param({"1g.5gb": 1}, 0, {"1g.5gb": 2}, Insufficient(res("1g.5gb"), 2, 1, 1), id="free-but-too-few"),
    pytest.param({"1g.5gb": 1}, 1, {"1g.5gb": 2}, Insufficient(res("1g.5gb"), 2, 0, 1), id="none-free-too-few"),
    pytest.param({"1g.5gb": 1, "2g.10gb": 1}, 0, {"1g.5gb": 2, "2g.10gb": 1}, Insufficient(res("1g.5gb"), 2, 1, 1),
                 id="two-types"),
    pytest.param({"2g.10gb": 1}, 0, {"1g.5gb": 1}, Insufficient(res("1g.5gb"), 1, 0, 0), id="none-on-node"),
])
def test_item16_more_slices_than_the_node_has_is_unresolvable(layout: dict, held: int, mig: dict,
                                                              reason: Insufficient) -> None:
    """As kube-scheduler's fitsRequest (noderesources/fit.go): Unresolvable when requested > allocatable,
    however many pods preemption would evict."""
    objects = [make_node("n", A40, layout)] + [make_pod(mig={"1g.5gb": 1}, node="n")] * held
    d = filter_pod(pod_info(make_pod(mig=mig)), ["n"], snapshot_of(*objects))
    assert d.passed == () and not d.failed and d.unresolvable == {"n": reason}
    assert reason.unresolvable


def _prio(pod: dict, priority: int, policy: str = "") -> dict:
    pod["spec"]["priority"] = priority
    if policy:
        pod["spec"]["preemptionPolicy"] = policy
    return pod


@pytest.mark.parametrize("holders, pod, reason, resolvable", [
    pytest.param([0, 0], _prio(make_pod(mig={"1g.5gb": 1}), 0), Insufficient(res("1g.5gb"), 1, 0, 2), False,
                 id="one-priority"),
    pytest.param([0, 0], _prio(make_pod(mig={"1g.5gb": 1}), 100), Insufficient(res("1g.5gb"), 1, 0, 2, 0, 2), True,
                 id="lower-priority-holders"),
    pytest.param([100, 0], _prio(make_pod(mig={"1g.5gb": 1}), 100), Insufficient(res("1g.5gb"), 1, 0, 2, 0, 1), True,
                 id="one-lower-holder-is-enough"),
    pytest.param([100, 100], _prio(make_pod(mig={"1g.5gb": 1}), 100), Insufficient(res("1g.5gb"), 1, 0, 2), False,
                 id="equal-priority-is-not-lower"),
    pytest.param([100, 0], _prio(make_pod(mig={"1g.5gb": 2}), 100), Insufficient(res("1g.5gb"), 2, 0, 2, 0, 1), False,
                 id="lower-holders-too-few"),
    pytest.param([0, 0], _prio(make_pod(mig={"1g.5gb": 1}), 100, "Never"), Insufficient(res("1g.5gb"), 1, 0, 2), False,
                 id="preemption-policy-never"),
    pytest.param([0, 0], _prio(make_pod(mig={"1g.5gb": 1, "2g.10gb": 1}), 100),
                 Insufficient(res("1g.5gb"), 1, 0, 2, 0, 2), True, id="two-types"),
])
def test_item10_a_shortfall_is_resolvable_only_if_lower_priority_pods_hold_enough(
        holders: list[int], pod: dict, reason: Insufficient, resolvable: bool) -> None:
    """kube-scheduler preempts only pods of strictly lower priority (defaultpreemption isPreemptionAllowed)
    and never for a preemptionPolicy: Never pod: a MIG shortfall nothing evictable could relieve goes to
    FailedAndUnresolvableNodes, or the scheduler evicts CPU victims for a node we refuse again."""
    snap = snapshot_of(make_node("n", A40, {"1g.5gb": 2, "2g.10gb": 1}),
                       *(_prio(make_pod(mig={"1g.5gb": 1}, node="n"), p) for p in holders))
    d = filter_pod(pod_info(pod), ["n"], snap)
    assert d.passed == ()
    assert (d.failed if resolvable else d.unresolvable) == {"n": reason}
    assert not (d.unresolvable if resolvable else d.failed)


def test_item10_a_single_priority_cluster_answers_every_shortfall_unresolvable_with_shared_reasons() -> None:
    """The common case costs what it did: no per-node priority lookup, one reason object per shortfall."""
    snap = snapshot_of(*(make_node(f"n{i}", A40, {"1g.5gb": 1}) for i in range(4)),
                       *(make_pod(mig={"1g.5gb": 1}, node=f"n{i}") for i in range(4)))
    assert snap.lowest_priority == 0
    d = filter_pod(pod_info(make_pod(mig={"1g.5gb": 1})), [f"n{i}" for i in range(4)], snap)
    assert not d.failed and len(d.unresolvable) == 4 and len({id(r) for r in d.unresolvable.values()}) == 1


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(("asker_age", "queue_age", "expected"), [
    pytest.param(60.0, 30.0, "3g.20gb", id="young-pod-leaves-the-2g-to-its-queue"),
    pytest.param(600.0, 900.0, "3g.20gb", id="old-pod-but-the-2g-queue-waits-longer"),
    pytest.param(600.0, 30.0, "2g.10gb", id="pod-waiting-past-aging-outranks-a-younger-2g-queue"),
    pytest.param(600.0, 30.0, "2g.10gb", id="an-older-pod-asking-for-several-2g-slices-does-not-stop-aging"),
])
def test_issue17_aging_a_long_waiting_pod_outranks_younger_queued_pods(asker_age: float, queue_age: float,
                                                                       expected: str,
                                                                       request: pytest.FixtureRequest) -> None:
    """Issue 17: a type in short supply starved behind the queue of a type it could use; a pod pending
    longer than PlanSettings.aging (and longer than every pod of that queue) takes the least-waste slice."""
    now = 1_800_000_000.0
    base = (make_node("n", A40, {"1g.5gb": 1, "2g.10gb": 1, "3g.20gb": 1}), make_pod(mig={"1g.5gb": 1}, node="n"))
    queued_2g = make_pod("wants-2g", mig={"2g.10gb": 1}, created=_iso(now - queue_age))
    pod = pod_info(make_pod("asker", mig={"1g.5gb": 1}, created=_iso(now - asker_age)))
    extra = ()
    if "several" in request.node.callspec.id:  # older than the asker, but waits for a whole GPU's 2g slices
        extra = (make_pod("wants-3x2g", mig={"2g.10gb": 3}, created=_iso(now - 2 * asker_age)),)
    snap = snapshot_of(*base, queued_2g, *extra, now=now)
    rule = choose_substitute(pod, {"n"}, snap, PlanSettings(aging=300.0))
    assert rule is not None and rule.substitute.resource == res(expected)


@pytest.mark.parametrize("aging", [pytest.param(0.0, id="aging-0"), pytest.param(300.0, id="aging-default"),
                                   pytest.param(float("inf"), id="aging-never")])
def test_issue17_no_aging_substitutes_a_pod_whose_owner_nothing_recreates(aging: float) -> None:
    """--aging reorders who may take a slice; it never makes a substitution possible that needs a restart
    nothing would answer: a pod of an owner kind we do not know (not in --restartable-owners), however
    long it waited and with the larger type free and unqueued, gets no rule."""
    now = 1_800_000_000.0
    node = make_node("n", A40, {"1g.5gb": 1, "2g.10gb": 1, "3g.20gb": 1})
    held = make_pod(mig={"1g.5gb": 1}, node="n")
    unknown = pod_info(make_pod("op-pod", mig={"1g.5gb": 1}, created=_iso(now - 3_600.0),
                                owner=("Notebook", "nb", "nb-1", "kubeflow.org/v1")))
    known = pod_info(make_pod("rs-pod", mig={"1g.5gb": 1}, created=_iso(now - 3_600.0),
                              owner=("ReplicaSet", "web", "rs-1")))
    snap = snapshot_of(node, held, now=now)
    assert choose_substitute(unknown, {"n"}, snap, PlanSettings(aging=aging)) is None
    rule = choose_substitute(known, {"n"}, snap, PlanSettings(aging=aging))  # the same pod, a known owner
    assert rule is not None and rule.substitute.resource == res("2g.10gb")


# ---- issue 17: a restore needs a taker for the slice it frees ----------------------------------------

_STARTED = "2026-11-29T00:00:00Z"


@pytest.mark.parametrize("original, substitute, queued, age, restored", [
    pytest.param("1g.5gb", "2g.10gb", {}, 600.0, False, id="nobody-wants-the-freed-slice"),
    pytest.param("1g.5gb", "2g.10gb", {"2g.10gb": 1}, 600.0, True, id="a-queued-pod-wants-the-freed-type"),
    pytest.param("1g.5gb", "3g.20gb", {"2g.10gb": 1}, 600.0, True, id="a-queued-pod-fits-the-freed-slice"),
    pytest.param("1g.5gb", "2g.10gb", {"1g.5gb": 1}, 600.0, False, id="only-the-original-size-waits"),
    pytest.param("1g.5gb", "2g.10gb", {}, 10.0, True, id="young-pod-on-twice-its-compute"),
    pytest.param("2g.10gb", "3g.20gb", {}, 10.0, False, id="young-pod-on-less-than-twice"),
])
def test_issue17_restore_without_a_taker_is_a_restart_for_nothing(original: str, substitute: str, queued: dict,
                                                                    age: float, restored: bool) -> None:
    """Measured in the simulator: most restores freed a slice no queued pod could use (s-syn-1.1: 483 of
    890), each one a restart that gave nobody anything; a young pod on a large waste is the exception."""
    up, rule = _upgraded("p", original, substitute, "gpu-a")
    up["status"]["startTime"] = _STARTED
    waiting = [make_pod(f"queued-{r}", mig={r: n}) for r, n in queued.items()]
    now = parse_time(_STARTED) + age
    snap = snapshot_of(walkthrough_node(), up, *waiting, rules=(rule,), now=now)
    plans, skips = plan_restores(snap, _pods(up))
    assert ([p.rule.name for p in plans], skips) == ([rule.name] if restored else [], [])
