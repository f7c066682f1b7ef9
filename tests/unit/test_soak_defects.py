"""Regression tests for the defects the chaos soak found (issue 15, docs/reliability.md): D3, D4, D7, D8.

Each test is named after its defect and failed against the code before its fix.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from mig_extender.components.reconciler import Reconciler
from mig_extender.core.planner import RestartLoop, RestoreNotRestarted, filter_pod
from mig_extender.core.resources import ANN_ORIGINAL, ANN_RULE, ResourceCount, pod_info
from mig_extender.core.rules import Phase, match_restores, new_rule, rule_from_object, rule_to_object
from tests.builders import make_pod, res
from tests.unit.test_reconciler import OWNER, LaggingStore, World

STS = ("StatefulSet", "db", "sts-db")


def upgraded(w: World, owner: tuple | None = OWNER) -> tuple[dict, object]:
    """gpu-a's 1g.5gb slices stay taken; pod p was upgraded onto 2g.10gb as p2 and is bound (rule Applied)."""
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=owner))
    rule = w.record_for(pending)
    up = w.replace_with_upgraded(pending, rule, "p2", owner)
    w.reconciler.run_once()
    (bound,) = w.store.list()
    assert bound.phase is Phase.APPLIED and bound.bound_pod == up["metadata"]["uid"]
    return up, bound


# ---- D3: an Applied rule whose pod is deleted never finished ---------------------------------------


@pytest.mark.parametrize("owner", [pytest.param(OWNER, id="replicaset"), pytest.param(None, id="bare-pod"),
                                   pytest.param(STS, id="statefulset")])
def test_soak_d3_applied_rule_whose_pod_was_deleted_finishes(owner: tuple | None) -> None:
    """The user deletes the upgraded pod: its rule leaves Applied (Expired, kept for the loop guard and
    /debug/rules until retention) instead of staying active for ever."""
    w = World()
    up, _ = upgraded(w, owner)
    w.remove(up)
    w.now += 30
    counts = w.reconciler.run_once()
    (after,) = w.store.list()
    assert (after.phase, counts["pod_gone"]) == (Phase.EXPIRED, 1)
    assert "p2" in after.message and "gone" in after.message
    assert w.reconciler.run_once()["pod_gone"] == 0  # once


@pytest.mark.parametrize("in_informer, in_api, age, finished", [
    pytest.param(False, "same", 30.0, False, id="watch-lags-behind-the-api"),
    pytest.param(False, None, 2.0, False, id="bound-moments-ago"),
    pytest.param(False, None, 30.0, True, id="deleted"),
    pytest.param(False, "new-uid", 30.0, True, id="name-taken-by-a-new-pod"),
    pytest.param(True, "same", 30.0, False, id="alive"),
])
def test_soak_d3_a_pod_is_gone_only_when_the_api_says_so(in_informer: bool, in_api: str | None, age: float,
                                                          finished: bool) -> None:
    """Missing from our watch is not gone: the pod is looked up in the API by name and uid (a StatefulSet's
    or bare pod's name comes back with a new uid), and only after a grace since the rule was bound."""
    w = World()
    up, rule = upgraded(w)
    if not in_informer:
        w.inventory.delete_pod(up["metadata"]["uid"])
    if in_api is None:
        w.actions.pods.pop("p2")
    elif in_api == "new-uid":
        w.actions.pods["p2"] = make_pod("p2", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER)
    w.now = rule.updated + age
    w.reconciler.run_once()
    assert (w.store.list()[0].phase is Phase.EXPIRED) is finished


def test_soak_d3_applied_unbound_rule_whose_rewritten_pod_was_deleted_releases_its_reservation() -> None:
    """The rewritten replacement is deleted before it was bound: the substitute slice it reserved goes back
    now, not when the rule's TTL runs out."""
    w = World()
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER))
    rule = w.record_for(pending)
    w.remove(pending)
    stamped = {ANN_RULE: rule.name, ANN_ORIGINAL: f"{rule.original}"}
    rewritten = w.add(make_pod("p2", mig={"2g.10gb": 1}, owner=OWNER, annotations=stamped))
    w.reconciler.run_once()
    assert w.store.list()[0].phase is Phase.APPLIED
    assert w.inventory.snapshot(w.store.list(), w.now).free("gpu-a", res("2g.10gb")) == 0
    w.remove(rewritten)
    w.now += 30
    assert w.reconciler.run_once()["pod_gone"] == 1
    assert w.inventory.snapshot(w.store.list(), w.now).free("gpu-a", res("2g.10gb")) == 1


def test_soak_d3_a_rule_that_moved_on_meanwhile_is_not_finished() -> None:
    """Our list is stale (the rule is Restoring in the API: a restore began): the write conflicts, the fresh
    rule is no longer Applied, and nothing is finished (update_with_retry's phase guard)."""
    w = World()
    up, rule = upgraded(w)
    w.remove(up)
    w.store.update(rule.restoring("gpu-a", w.now, 120.0))
    w.reconciler.store = LaggingStore(w.store, [rule])  # type: ignore[assignment]
    w.now += 30
    w.reconciler.run_once()
    assert w.store.list()[0].phase is Phase.RESTORING


def test_soak_d3_a_rule_holding_a_stash_is_not_finished() -> None:
    """A bare pod we deleted and are about to create again (its manifest on the rule) is ours, not gone."""
    w = World()
    up, rule = upgraded(w, owner=None)
    w.store.update(replace(rule, stash='{"metadata": {"name": "p2"}}'))
    w.remove(up)
    w.now += 30
    counts = w.reconciler.run_once()
    assert counts["pod_gone"] == 0 and w.store.list()[0].phase is Phase.APPLIED


# ---- D4: two Restoring rules of one ReplicaSet both took the same new replica ----------------------


def two_restores(w: World) -> tuple[object, object]:
    """Two replicas of OWNER were upgraded (p2 on 2g.10gb, p3 on 3g.20gb); both restores began at w.now
    (original 1g.5gb reserved on gpu-a) and both old pods are gone. The ReplicaSet makes new replicas."""
    rules = []
    for old, sub in (("p2", "2g.10gb"), ("p3", "3g.20gb")):
        pod = make_pod(f"{old}-pending", mig={"1g.5gb": 1}, owner=OWNER)
        rule = new_rule(pod_info(pod), ResourceCount(res("1g.5gb"), 1), ResourceCount(res(sub), 1), "gpu-a",
                        w.now, 120.0)
        rule = w.store.record(rule)
        rule = w.store.update(rule.applied(old, w.now, 120.0).bound(f"uid-{old}", old, "gpu-a", w.now))
        rules.append(w.store.update(rule.restoring("gpu-a", w.now, 120.0)))
    return rules[0], rules[1]


def test_soak_d4_one_new_replica_finishes_one_restore_and_the_other_waits_for_the_next() -> None:
    w = World()
    first, second = two_restores(w)
    n1 = w.add(make_pod("n1", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER, created="1970-01-01T00:16:50Z"))
    w.now += 1
    assert w.reconciler.run_once()["restored"] == 1
    done = {r.name: r for r in w.store.list()}
    assert sorted(r.phase for r in done.values()) == [Phase.RESTORED, Phase.RESTORING]
    assert [r.restored_pod for r in done.values() if r.restored_pod] == [n1["metadata"]["uid"]]
    assert done[first.name].phase is Phase.RESTORED  # the oldest pod takes the oldest waiting rule

    n2 = w.add(make_pod("n2", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER, created="1970-01-01T00:16:55Z"))
    w.now += 1
    assert w.reconciler.run_once()["restored"] == 1
    assert w.store.get("default", second.name).restored_pod == n2["metadata"]["uid"]


def test_soak_d4_a_replica_the_extender_already_gave_to_one_restore_is_not_taken_by_another() -> None:
    """The extender's bind marked the first rule Restored with n1; the reconciler then sees the second rule
    still Restoring and n1 bound: n1 is taken, so the second keeps waiting (and so does its reservation,
    in the extender's books too)."""
    w = World()
    first, second = two_restores(w)
    n1 = w.add(make_pod("n1", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER, created="1970-01-01T00:16:50Z"))
    w.store.update(first.bound(n1["metadata"]["uid"], "n1", "gpu-a", w.now))  # what /bind writes
    w.now += 1
    w.reconciler.run_once()
    assert w.store.get("default", second.name).phase is Phase.RESTORING
    snap = w.inventory.snapshot(w.store.list(), w.now)
    assert snap.rule_for(pod_info(n1)) is None  # n1 finished a restore: it uses no other's reservation
    assert snap.reserved["gpu-a"][res("1g.5gb")] == 1  # the second restore's slice still waits


def test_soak_d4_match_restores_is_one_to_one() -> None:
    """The pure matching: pods oldest first, each takes the oldest Restoring rule that waits for it and no
    other pod took; pods some rule already counts as its own are nobody's replacement."""
    w = World()
    first, second = two_restores(w)
    pods = [pod_info(make_pod(n, mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER, created=t))
            for n, t in (("late", "1970-01-01T00:16:59Z"), ("early", "1970-01-01T00:16:51Z"))]
    matched = match_restores(w.store.list(), pods)
    assert {k: p.name for k, p in matched.items()} == {("default", first.name): "early",
                                                       ("default", second.name): "late"}
    claimed = [replace(first, phase=Phase.RESTORED, restored_pod=pods[1].uid), second]
    assert {k: p.name for k, p in match_restores(claimed, pods).items()} == {("default", second.name): "late"}


# ---- D7: a restore's reserved slice taken by a bind that raced the reservation; then a restart loop ---


def freed_after_upgrade(w: World) -> tuple[dict, object]:
    """p was upgraded onto 2g.10gb as p2 (bound); then a1 ends and both 1g.5gb slices are free."""
    up, rule = upgraded(w)
    w.remove(w.actions.pods["a1"])
    w.now += 1
    return up, rule


def test_soak_d7_a_restore_reserves_first_and_restarts_only_on_a_later_pass() -> None:
    """Reserve, then restart once every watch has had time to show the reservation (restore_confirm):
    the pass that writes Restoring restarts nothing."""
    w = World()
    freed_after_upgrade(w)
    counts = w.reconciler.run_once()
    assert counts["restoring"] == 1 and ("restart", "p2") not in w.actions.calls
    assert ("p2", "MigRestoring") not in w.actions.events
    w.now += w.reconciler.plan.restore_confirm / 2
    w.reconciler.run_once()
    assert ("restart", "p2") not in w.actions.calls
    w.now += w.reconciler.plan.restore_confirm
    assert w.reconciler.run_once()["restore_evicted"] == 1
    assert w.actions.calls.count(("restart", "p2")) == 1 and ("p2", "MigRestoring") in w.actions.events
    w.now += w.reconciler.plan.restore_confirm
    w.reconciler.run_once()
    assert w.actions.calls.count(("restart", "p2")) == 1  # once


def test_soak_d7_a_bind_that_raced_the_reservation_defers_the_restore() -> None:
    """The extender had not seen the reservation and bound another pod into the reserved slice: by the
    confirming pass our watch shows it, so the pod is not restarted (it would find its type sold out and
    be upgraded again); the restore goes back to Applied, its slice released, Event MigRestoreDeferred."""
    w = World()
    freed_after_upgrade(w)
    w.reconciler.run_once()
    (restoring,) = w.store.list()
    assert restoring.phase is Phase.RESTORING
    w.add(make_pod("racer", mig={"1g.5gb": 2}, node="gpu-a"))  # bound before the extender saw the rule
    w.now += w.reconciler.plan.restore_confirm + 1
    counts = w.reconciler.run_once()
    assert ("restart", "p2") not in w.actions.calls and counts["restore_deferred"] == 1
    (after,) = w.store.list()
    assert (after.phase, after.restore_node, after.restore_attempts) == (Phase.APPLIED, "", 1)
    assert ("p2", "MigRestoreDeferred") in w.actions.events


def looped(w: World) -> tuple[dict, object]:
    """p upgraded (restart 1) to p2, p2 restarted for a restore (restart 2); the ReplicaSet's new replica
    p3 then finds 1g.5gb sold out (taken by a pod the extender bound before it saw the reservation)."""
    up, rule = freed_after_upgrade(w)
    w.reconciler.run_once()
    w.now += w.reconciler.plan.restore_confirm + 1
    w.reconciler.run_once()
    w.remove(up)
    w.add(make_pod("racer", mig={"1g.5gb": 2}, node="gpu-a"))
    p3 = w.add(make_pod("p3", mig={"1g.5gb": 1}, owner=OWNER, created="1970-01-01T00:17:00Z"))
    w.now += 1
    return p3, w.store.get("default", rule.name)


def test_soak_d7_a_third_restart_in_a_lineage_within_the_hour_is_never_planned() -> None:
    """Upgrades and restores count together per pod lineage: p3 descends from p (upgraded) and p2 (restored),
    so it is not substituted again: no rule is recorded for it, and a rule recorded for it anyway (a
    lagging extender) is cancelled with Event MigUpgradeSkipped instead of restarting p3."""
    w = World()
    p3, restore = looped(w)
    assert restore.phase is Phase.RESTORING
    snap = w.inventory.snapshot(w.store.list(), w.now)
    decision = filter_pod(pod_info(p3), ["gpu-a"], snap)
    assert decision.record is None and isinstance(decision.note, RestartLoop)
    assert (decision.note.restarts, decision.note.limit) == (2, 2)

    sneaked = w.store.record(new_rule(pod_info(p3), restore.original, ResourceCount(res("3g.20gb"), 1), "gpu-a",
                                      w.now, 120.0))
    w.now += 2
    w.reconciler.run_once()
    assert ("restart", "p3") not in w.actions.calls and ("p3", "MigUpgradeSkipped") in w.actions.events
    assert w.store.get("default", sneaked.name).phase is Phase.EXPIRED


def test_restart_limit_one_keeps_an_upgraded_pod_on_its_substitute() -> None:
    """--restart-limit 1 (docs/install.md): the upgrade is the lineage's one restart, so no restore follows
    when its own type frees; the default limit of 2 restores it (test above)."""
    w = World()
    w.reconciler.plan = replace(w.reconciler.plan, restart_limit=1)
    freed_after_upgrade(w)
    for _ in range(3):
        w.reconciler.run_once()
        w.now += w.reconciler.plan.restore_confirm + 1
    assert ("restart", "p2") not in w.actions.calls
    assert all(r.phase is Phase.APPLIED for r in w.store.list())


def test_soak_d7_the_lineage_guard_forgets_restarts_older_than_its_window() -> None:
    """The upgrade an hour ago no longer counts, the restore a second ago does."""
    w = World()
    p3, restore = looped(w)
    w.now += w.reconciler.plan.restart_window + 1
    w.store.update(replace(restore, phase=Phase.RESTORED, restored_pod=p3["metadata"]["uid"], updated=w.now - 1,
                           restart_at=1.0, created=1.0))
    snap = w.inventory.snapshot(w.store.list(), w.now)
    assert snap.lineage_restarts(pod_info(p3), w.reconciler.plan.restart_window) == 1


# ---- D8: a running sibling replica finished a restore whose upgraded pod was never restarted ----------


def stamp(epoch: float) -> str:
    """A creationTimestamp as the API server writes it: whole seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def restore_beside_a_sibling(w: World, sibling_after_upgrade: bool) -> tuple[dict, dict, object]:
    """The e2e walkthrough, as CI caught it: infer-b's scale-up replica is upgraded onto 2g.10gb, infer-a
    ends a moment later and the restore reserves the freed 1g.5gb. The sibling replica runs on 1g.5gb,
    created 2 s before the upgraded pod (or, a later scale-up into a slice another pod left, 1 s after
    it): inside CLOCK_SKEW of the reservation either way. Returns (sibling, upgraded pod, Restoring rule)."""
    a1 = w.add(make_pod("infer-a-1", mig={"1g.5gb": 1}, node="gpu-a", owner=("ReplicaSet", "infer-a", "rs-a"),
                        created=stamp(w.now - 2)))
    sibling = make_pod("infer-b-1", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER, created=stamp(w.now - 2))
    other = w.add(sibling if not sibling_after_upgrade else
                  make_pod("other", mig={"1g.5gb": 1}, node="gpu-a", owner=("ReplicaSet", "x", "rs-x")))
    pending = w.add(make_pod("infer-b-2", mig={"1g.5gb": 1}, owner=OWNER, created=stamp(w.now - 1)))
    rule = w.record_for(pending)
    w.now += 1.5
    assert w.reconciler.run_once()["upgrade_evicted"] == 1
    w.remove(pending)
    up = w.add(make_pod("infer-b-3", mig={"2g.10gb": 1}, node="gpu-a", owner=OWNER, created=stamp(w.now),
                        annotations={ANN_RULE: rule.name, ANN_ORIGINAL: f"{rule.original}"}))
    assert w.reconciler.run_once()["bound"] == 1
    if sibling_after_upgrade:  # `other` ends and a scale-up's replica takes its slice
        w.remove(other)
        w.now += 1
        sibling["metadata"]["creationTimestamp"] = stamp(w.now)
        w.add(sibling)
    w.remove(a1)
    w.now += 0.3
    assert w.reconciler.run_once()["restoring"] == 1
    (restoring,) = w.store.list()
    assert restoring.phase is Phase.RESTORING
    return sibling, up, restoring


@pytest.mark.parametrize("sibling_after_upgrade", [
    pytest.param(False, id="sibling-older-than-the-upgraded-pod"),
    pytest.param(True, id="sibling-of-a-later-scale-up"),
])
def test_soak_d8_a_running_sibling_never_finishes_a_restore_before_the_upgraded_pod_is_restarted(
        sibling_after_upgrade: bool) -> None:
    """Before: 15 ms after the reservation the sibling was taken for the replacement (rule Restored) and
    the upgraded pod was never moved back. Now no pod finishes a restore whose upgraded pod still runs
    (ClusterSnapshot.unrestarted), in the reconciler's matching and in the extender's rule_for alike."""
    w = World()
    sibling, up, restoring = restore_beside_a_sibling(w, sibling_after_upgrade)
    w.now += 0.015
    assert w.reconciler.run_once()["restored"] == 0
    assert w.store.get("default", restoring.name).phase is Phase.RESTORING
    snap = w.inventory.snapshot(w.store.list(), w.now)
    assert snap.unrestarted == {up["metadata"]["uid"]}
    assert snap.rule_for(pod_info(sibling)) is None  # /filter and /bind give it no reservation either


def test_soak_d8_a_new_leader_does_not_finish_the_restore_with_the_sibling_either() -> None:
    """The leader dies right after the reservation: its successor keeps no memory of it, and reads
    ``unrestarted`` from its own view of the pods, so the running sibling is no replacement for it either;
    it then confirms and restarts the upgraded pod as the old leader would have."""
    w = World()
    _, up, restoring = restore_beside_a_sibling(w, sibling_after_upgrade=True)
    assert w.inventory.snapshot(w.store.list(), w.now).unrestarted == {up["metadata"]["uid"]}
    successor = Reconciler(w.inventory, w.store, w.actions, clock=lambda: w.now)
    assert successor.run_once()["restored"] == 0
    w.now += successor.plan.restore_confirm + 0.1
    assert successor.run_once()["restore_evicted"] == 1
    assert w.store.get("default", restoring.name).phase is Phase.RESTORING


def test_soak_d8_the_restores_own_replacement_finishes_it_not_the_older_sibling() -> None:
    """After the confirming pass restarts the upgraded pod, the sibling (older than the upgraded pod:
    ``restore_after``) still is not the replacement; the ReplicaSet's new replica is."""
    w = World()
    _, up, restoring = restore_beside_a_sibling(w, sibling_after_upgrade=False)
    assert restoring.restore_after == int(restoring.restore_after) > 0  # the upgraded pod's creationTimestamp
    w.now += w.reconciler.plan.restore_confirm + 0.1
    assert w.reconciler.run_once()["restore_evicted"] == 1
    up["metadata"]["deletionTimestamp"] = stamp(w.now + 30)
    w.add(up)  # evicted: terminating in our view
    assert w.reconciler.run_once()["restored"] == 0  # the sibling is older than the upgraded pod
    w.now += 1
    new = w.add(make_pod("infer-b-4", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER, created=stamp(w.now)))
    assert w.reconciler.run_once()["restored"] == 1
    done = w.store.get("default", restoring.name)
    assert (done.phase, done.restored_pod) == (Phase.RESTORED, new["metadata"]["uid"])


def test_soak_d8_restore_after_round_trips_through_the_migsubstitution_object() -> None:
    rule = new_rule(pod_info(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER)), ResourceCount(res("1g.5gb"), 1),
                    ResourceCount(res("2g.10gb"), 1), "gpu-a", 1000.0, 120.0)
    rule = rule.applied("p2", 1000.0, 120.0).bound("uid-p2", "p2", "gpu-a", 1001.0).restoring(
        "gpu-a", 1010.0, 120.0, after=1001.0)
    assert rule_from_object(rule_to_object(rule)).restore_after == 1001.0


def test_soak_d8_a_replacement_filtered_before_our_watch_shows_its_upgraded_pod_going_is_not_substituted() -> None:
    """The controller makes the replacement once the upgraded pod is terminating, and kube-scheduler may
    hand it to /filter before our pod watch shows that (the watches are independent). Before: the restore's
    reservation (the only free original slice) counted against its own replacement, so /filter recorded a
    new substitution for it; the reconciler cancelled that rule, which from then on was the pod's rule by
    uid, so the replacement never got the reservation and waited until the restore expired
    (restore_ttl). Now /filter records nothing for a pod such a restore would take, and once the watch
    shows the upgraded pod going, the replacement fits on the reserved slice."""
    w = World()
    _, up, restoring = restore_beside_a_sibling(w, sibling_after_upgrade=False)
    w.now += w.reconciler.plan.restore_confirm + 0.1
    assert w.reconciler.run_once()["restore_evicted"] == 1
    w.now += 1
    new = pod_info(make_pod("infer-b-4", mig={"1g.5gb": 1}, owner=OWNER, created=stamp(w.now)))
    lagging = w.inventory.snapshot(w.store.list(), w.now)
    assert lagging.unrestarted == {up["metadata"]["uid"]}  # our watch: the upgraded pod still runs
    decision = filter_pod(new, ["gpu-a"], lagging, w.reconciler.plan)
    assert (decision.passed, decision.record) == ((), None)
    assert decision.note == RestoreNotRestarted(restoring.name, up["metadata"]["name"])
    up["metadata"]["deletionTimestamp"] = stamp(w.now + 30)
    w.add(up)  # the watch catches up
    caught_up = w.inventory.snapshot(w.store.list(), w.now)
    assert filter_pod(new, ["gpu-a"], caught_up, w.reconciler.plan).passed == ("gpu-a",)
