"""Soak defect D5: with the webhook down, an upgrade restart whose replacement comes back unrewritten.

The reconciler restarted a pending bare pod for an upgrade every few seconds (each replacement asked for
its own type again, because no webhook rewrote it), and the Recorded rules left behind were later handed
to the pod's restore replacement, turning the restore into another upgrade. The in-memory world of
test_reconciler.py: a blocker holds both 1g.5gb slices, so a pending 1g.5gb pod is upgraded onto 2g.10gb.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mig_extender.components.webhook import WebhookService
from mig_extender.core.loopguard import Backoff, RestartIndex, RestartLoop, upgrade_hold
from mig_extender.core.podspec import replacement_pod
from mig_extender.core.requeue import RequeueSettings
from mig_extender.core.resources import Owner, ResourceCount, pod_info
from mig_extender.core.rules import Phase, Rule
from tests.builders import admission_review, make_pod, res
from tests.unit.test_reconciler import World, rule_stamped_on

HOUR = 3600.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def upgrading(w: World) -> int:
    return sum(1 for _, reason in w.actions.events if reason == "MigUpgrading")


def sold_out_bare_pod() -> tuple[World, dict]:
    w = World()
    w.add(make_pod("blocker", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("solo", mig={"1g.5gb": 1}))
    w.record_for(pending)
    return w, pending


def comes_back_unrewritten(w: World, old: dict) -> dict:
    """The stash recreated the pod and no webhook rewrote it: its own type again, no rule annotation;
    the extender then records a new rule for it (its type is still sold out)."""
    w.remove(old)
    back = w.add(make_pod("solo", mig={"1g.5gb": 1}, created=_iso(w.now)))
    w.record_for(back)
    return back


def run_for(w: World, seconds: float, step: float = 2.0) -> None:
    end = w.now + seconds
    while w.now < end:
        w.now += step
        w.reconciler.run_once()


def test_soak_d5_an_unrewritten_replacement_is_not_restarted_again_at_once() -> None:
    w, pending = sold_out_bare_pod()
    w.now += 1.5
    w.reconciler.run_once()
    assert upgrading(w) == 1
    comes_back_unrewritten(w, pending)
    run_for(w, 30)
    assert upgrading(w) == 1  # before the fix: restarted again ~every pass (settle 1 s)
    assert ("solo", "MigUpgradeNotRewritten") in w.actions.events


def test_soak_d5_at_most_two_restarts_per_pod_lineage_per_hour() -> None:
    w, pending = sold_out_bare_pod()
    w.now += 1.5
    w.reconciler.run_once()
    back = comes_back_unrewritten(w, pending)
    run_for(w, 2 * 60)  # past the backoff: one more try (the webhook may be back)
    assert upgrading(w) == 2
    back = comes_back_unrewritten(w, back)
    run_for(w, 30 * 60, step=30)
    assert upgrading(w) == 2  # the loop guard: two restarts of this lineage within the hour
    assert ("solo", "MigUpgradeSkipped") in w.actions.events
    run_for(w, 40 * 60, step=60)
    w.record_for(back)  # the extender records a new rule at the pod's next scheduling attempt
    run_for(w, 10)
    assert upgrading(w) == 3  # an hour after the first restart the guard lets it try again


def test_soak_d5_a_stale_recorded_rule_is_not_handed_to_the_restore_replacement() -> None:
    w, pending = sold_out_bare_pod()
    w.now += 1.5
    w.reconciler.run_once()
    (stale,) = w.store.list()
    back = comes_back_unrewritten(w, pending)
    w.now += 2
    w.reconciler.run_once()
    assert w.store.get(stale.namespace, stale.name).phase is Phase.EXPIRED
    # the webhook is back; any later pod of the lineage (a restore's replacement asks for the original
    # type) must not be handed the rule whose own replacement came and went unrewritten
    webhook = WebhookService(w.store, clock=lambda: w.now)
    later = replacement_pod(back)
    assert rule_stamped_on(later, webhook.review(admission_review(later))) != stale.name


def _rule(pod_name: str, restart_at: float = 0.0, unrewritten_at: float = 0.0, owner: tuple | None = None) -> Rule:
    return Rule(name=f"r-{pod_name}-{restart_at}", namespace="default", pod_name=pod_name, pod_uid=f"u-{pod_name}",
                owner=Owner(*owner, "apps/v1") if owner else None, original=ResourceCount(res("1g.5gb"), 1),
                substitute=ResourceCount(res("2g.10gb"), 1), node="gpu-a", created=restart_at, expires=restart_at + 120,
                phase=Phase.EXPIRED if unrewritten_at else Phase.APPLIED, restart_at=restart_at,
                unrewritten_at=unrewritten_at)


NOW = 10_000.0
RS = ("ReplicaSet", "infer", "rs-1")


@pytest.mark.parametrize("pod, rules, expected", [
    pytest.param(make_pod("solo"), [_rule("solo", NOW - 100, NOW - 90), _rule("solo", NOW - 20)],
                 RestartLoop(2, 2, HOUR), id="bare-pod-restarted-twice-this-hour"),
    pytest.param(make_pod("solo"), [_rule("solo", NOW - 30, NOW - 10)], Backoff(NOW - 10, NOW + 50),
                 id="bare-pod-back-unrewritten-10s-ago"),
    pytest.param(make_pod("solo"), [_rule("solo", NOW - 2 * HOUR, NOW - 2 * HOUR), _rule("solo", NOW - HOUR - 1)],
                 None, id="restarts-over-an-hour-ago"),
    pytest.param(make_pod("other"), [_rule("solo", NOW - 100), _rule("solo", NOW - 20)], None,
                 id="another-bare-pod"),
    pytest.param(make_pod("infer-c", owner=RS), [_rule("infer-a", NOW - 100, owner=RS),
                                                _rule("infer-b", NOW - 20, owner=RS)],
                 None, id="replicaset-replicas-do-not-share-a-budget"),
    pytest.param(make_pod("infer-c", owner=RS), [_rule("infer-a", NOW - 100, NOW - 95, owner=RS),
                                                _rule("infer-b", NOW - 20, NOW - 15, owner=RS)],
                 RestartLoop(2, 2, HOUR), id="replicaset-replacements-back-unrewritten-twice"),
])
def test_upgrade_hold(pod: dict, rules: list[Rule], expected: object) -> None:
    index = RestartIndex.build(rules, NOW, HOUR)
    assert upgrade_hold(pod_info(pod), index, NOW, backoff=60.0, limit=2, window=HOUR) == expected


def test_soak_d5_the_unrewritten_replacement_is_requeued_once_its_rule_is_expired() -> None:
    """The replacement was filtered while the old rule still reserved the 2g.10gb slice for its
    predecessor, so kube-scheduler parked it as unschedulable; expiring that rule frees the slice, but no
    cluster event tells the scheduler, and the pod waited out podMaxInUnschedulablePodsDuration (5 min)
    with no new rule (seen on the real control plane). The reconciler requeues it by updating the pod."""
    w, pending = sold_out_bare_pod()
    w.now += 1.5
    w.reconciler.run_once()
    w.remove(pending)
    back = w.add(make_pod("solo", mig={"1g.5gb": 1}, created=_iso(w.now)))  # no new rule recorded yet
    run_for(w, 4)
    assert ("solo", "MigUpgradeNotRewritten") in w.actions.events
    assert w.actions.calls.count(("requeue", "solo", back["metadata"]["uid"])) == 1


@pytest.mark.parametrize("sibling_node", [
    pytest.param("gpu-a", id="running-sibling"),
    pytest.param("", id="pending-sibling-created-before-the-mark"),
])
def test_soak_d5_a_sibling_created_just_before_the_restart_is_not_an_unrewritten_replacement(
        sibling_node: str) -> None:
    """Seen in CI on the real plane (the walkthrough): 50 ms after the restart of infer-b's scaled-up
    replica, before its replacement existed, the replica that had been running on 1g.5gb for 3 s (created
    within CLOCK_SKEW of the mark, original demand, no rule annotation) was taken for the replacement come
    back unrewritten: the rule was expired, so the real replacement was admitted unrewritten and the
    upgrade waited out the 60 s backoff. A replacement is created after the mark and is never bound."""
    owner = ("ReplicaSet", "infer-b", "rs-b")
    w = World()
    w.add(make_pod("blocker", mig={"1g.5gb": 1}, node="gpu-a"))
    w.now += 10
    w.add(make_pod("infer-b-1", mig={"1g.5gb": 1}, node=sibling_node, owner=owner, created=_iso(w.now - 3)))
    pending = w.add(make_pod("infer-b-2", mig={"1g.5gb": 1}, owner=owner, created=_iso(w.now - 2)))
    if not sibling_node:
        w.add(make_pod("filler", mig={"1g.5gb": 1}, node="gpu-a"))
    w.record_for(pending)
    w.now += 1.5
    w.reconciler.run_once()
    assert upgrading(w) == 1
    w.remove(pending)  # evicted; its replacement is not created yet
    w.now += 0.05
    w.reconciler.run_once()
    assert ("infer-b-1", "MigUpgradeNotRewritten") not in w.actions.events
    assert [r.phase for r in w.store.list()] == [Phase.RECORDED]


def test_soak_d5_a_throttled_requeue_does_not_abort_the_upgrade_pass() -> None:
    """The API answers 429 to the requeue: the rule stays expired and the Event said why; the rest of the
    pass (other upgrades) must still run, so the failure is counted, not raised out of the step."""
    from kubernetes.client.rest import ApiException

    w, pending = sold_out_bare_pod()
    w.now += 1.5
    w.reconciler.run_once()
    w.remove(pending)
    w.add(make_pod("solo", mig={"1g.5gb": 1}, created=_iso(w.now)))

    def throttled(*args, **kwargs):
        raise ApiException(status=429, reason="Too Many Requests")

    w.actions.requeue = throttled
    w.now += 2
    counts = w.reconciler.run_once()
    assert counts["requeue_errors"] == 1 and counts["errors"] == 0, counts
    assert ("solo", "MigUpgradeNotRewritten") in w.actions.events


def test_the_unrewritten_replacements_requeue_skips_a_pod_of_a_scheduler_that_does_not_call_us() -> None:
    """--requeue-schedulers (8bcb893) says pods of other schedulers are never written; the D5 path wrote
    anyway. With the extender in mig-scheduler only, the webhook (down: that is D5) never set the
    replacement's schedulerName, so default-scheduler, which never asks us, got our condition on its pod."""
    w, pending = sold_out_bare_pod()
    w.reconciler.requeue = RequeueSettings(schedulers=frozenset({"mig-scheduler"}))
    w.now += 1.5
    w.reconciler.run_once()
    w.remove(pending)
    w.add(make_pod("solo", mig={"1g.5gb": 1}, created=_iso(w.now)))  # unrewritten: default-scheduler
    run_for(w, 4)
    assert ("solo", "MigUpgradeNotRewritten") in w.actions.events
    assert [c for c in w.actions.calls if c[0] == "requeue"] == []


def test_requeues_per_pass_zero_turns_off_the_unrewritten_replacements_requeue_too() -> None:
    """``--requeues-per-pass 0`` says "0 turns requeues off"; the D5 path wrote its requeue regardless
    (it went straight to the write, outside the parked-pod planner's budget)."""
    w, pending = sold_out_bare_pod()
    w.reconciler.requeue = RequeueSettings(per_pass=0)
    w.now += 1.5
    w.reconciler.run_once()
    w.remove(pending)
    w.add(make_pod("solo", mig={"1g.5gb": 1}, created=_iso(w.now)))
    run_for(w, 4)
    assert ("solo", "MigUpgradeNotRewritten") in w.actions.events  # the rule still expired, and said so
    assert [c for c in w.actions.calls if c[0] == "requeue"] == []
