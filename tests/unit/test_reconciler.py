"""The reconciler's passes over an in-memory cluster, with actions recorded instead of sent."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import replace

import jsonpatch
import pytest
from urllib3.exceptions import MaxRetryError

from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.extender import ExtenderService
from mig_extender.components.reconciler import Reconciler
from mig_extender.components.webhook import WebhookService
from mig_extender.core.planner import PlanSettings, filter_pod
from mig_extender.core.podspec import Restart, RestartOutcome, replacement_pod
from mig_extender.core.resources import ANN_ORIGINAL, ANN_RESTORE, ANN_RESTORED_AT, ANN_RULE, pod_info
from mig_extender.core.rulebook import RuleBook
from mig_extender.core.rules import Phase
from tests.builders import admission_review, inventory_of, make_node, make_pod, res


class FakeActions:
    """Records every call; pods it is asked about come from ``pods`` (name -> object)."""

    def __init__(self) -> None:
        self.pods: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.events: list[tuple[str, str]] = []
        self.jobs: dict[str, dict] = {}
        self.answer = RestartOutcome(Restart.EVICTED)  # what every restart returns

    def get_pod(self, namespace: str, name: str):
        return self.pods.get(name)

    def get_job(self, namespace: str, name: str):
        return self.jobs.get(name)

    def evict(self, pod) -> RestartOutcome:
        self.calls.append(("restart", pod["metadata"]["name"]))
        return self.answer

    def stash_and_evict_bare_pod(self, rule_ns, rule_name, pod, replacement) -> RestartOutcome:
        self.calls.append(("stash", pod["metadata"]["name"], replacement))
        return self.answer

    def finish_recreate(self, rule) -> str:
        self.calls.append(("recreate", json.loads(rule.stash)["metadata"]["name"]))
        return "created"

    def event(self, namespace, pod_name, pod_uid, reason, message, warning=False, action="Reconcile") -> None:
        self.events.append((pod_name, reason))

    def requeue(self, namespace, name, uid, message) -> bool:
        self.calls.append(("requeue", name, uid))
        return True


class World:
    """The issue's walkthrough node and a store, with helpers to move time and pods along."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.store = MemoryRuleStore(retention=10 * 3600, clock=lambda: self.now)
        self.inventory = inventory_of(make_node("gpu-a", "A100-40GB", {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}))
        self.inventory._clock = lambda: self.now
        self.actions = FakeActions()
        self.leader = True
        self.reconciler = Reconciler(self.inventory, self.store, self.actions, clock=lambda: self.now,
                                     is_leader=lambda: self.leader)

    def add(self, pod: dict) -> dict:
        self.inventory.upsert_pod(pod)
        self.actions.pods[pod["metadata"]["name"]] = pod
        return pod

    def remove(self, pod: dict) -> None:
        self.inventory.delete_pod(pod["metadata"]["uid"])
        self.actions.pods.pop(pod["metadata"]["name"], None)

    def replace_with_upgraded(self, pending: dict, rule, name: str, owner: tuple | None = None,
                              annotations: dict | None = None) -> dict:
        """``pending`` gone; in its place the replacement the webhook rewrote to the substitute, bound on
        gpu-a (what the controller, the webhook and the extender's bind produce between two passes)."""
        self.remove(pending)
        stamped = {ANN_RULE: rule.name, ANN_ORIGINAL: f"{rule.original}", **(annotations or {})}
        return self.add(make_pod(name, mig={"2g.10gb": 1}, node="gpu-a", owner=owner, annotations=stamped))

    def record_for(self, pod: dict):
        snap = self.inventory.snapshot(self.store.list(), self.now)
        return self.store.record(filter_pod(pod_info(pod), ["gpu-a"], snap).record)


OWNER = ("ReplicaSet", "infer-b", "rs-b")


def test_walkthrough_upgrade_then_restore() -> None:
    w = World()
    a1 = w.add(make_pod("infer-a-1", mig={"1g.5gb": 1}, node="gpu-a", owner=("ReplicaSet", "infer-a", "rs-a")))
    # a sibling replica, running since long before: never mistaken for the restored pod
    w.add(make_pod("infer-b-1", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER, created="1970-01-01T00:10:00Z"))
    pending = w.add(make_pod("infer-b-2", mig={"1g.5gb": 1}, owner=OWNER))
    rule = w.record_for(pending)
    assert rule.substitute.resource == res("2g.10gb")
    assert w.reconciler.run_once()["upgrade_evicted"] == 0  # too young: webhooks may not have seen it yet

    w.now += 1.5
    counts = w.reconciler.run_once()  # upgrade: restart the pending pod
    assert counts["upgrade_evicted"] == 1 and ("restart", "infer-b-2") in w.actions.calls
    assert ("infer-b-2", "MigUpgrading") in w.actions.events
    assert w.reconciler.run_once()["upgrade_evicted"] == 0  # no second restart of the same pod

    w.now += 3
    up = w.replace_with_upgraded(pending, rule, "infer-b-3", OWNER)
    counts = w.reconciler.run_once()
    assert counts["applied"] == 1 and counts["bound"] == 1
    (stored,) = w.store.list()
    assert stored.phase is Phase.APPLIED and stored.bound_pod == up["metadata"]["uid"]
    assert ("infer-b-3", "MigSubstituted") in w.actions.events

    w.remove(a1)  # capacity frees: the original type is free again
    w.now += 5
    counts = w.reconciler.run_once()
    assert counts["restoring"] == 1 and ("restart", "infer-b-3") not in w.actions.calls  # reserved first (D7)
    w.now += w.reconciler.plan.restore_confirm
    w.reconciler.run_once()
    assert ("restart", "infer-b-3") in w.actions.calls  # the reservation confirmed on a later pass
    (restoring,) = w.store.list()
    assert restoring.phase is Phase.RESTORING and restoring.restore_node == "gpu-a"
    snap = w.inventory.snapshot(w.store.list(), w.now)
    assert snap.free("gpu-a", res("1g.5gb")) == 0  # the freed slice waits for the restarted pod

    w.remove(up)
    back = w.add(make_pod("infer-b-4", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER, created="1970-01-01T00:17:00Z"))
    counts = w.reconciler.run_once()
    assert counts["restored"] == 1 and w.store.list()[0].phase is Phase.RESTORED
    assert ("infer-b-4", "MigRestored") in w.actions.events
    assert back["metadata"]["uid"] == w.store.list()[0].restored_pod


def test_bare_pod_upgrade_and_restore_go_through_a_stashed_manifest() -> None:
    w = World()
    blocker = w.add(make_pod("blocker", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("solo", mig={"1g.5gb": 1}))
    rule = w.record_for(pending)
    w.now += 1.5
    w.reconciler.run_once()
    (stash,) = [c for c in w.actions.calls if c[0] == "stash"]
    assert stash[1] == "solo" and "uid" not in stash[2]["metadata"] and "nodeName" not in stash[2]["spec"]

    up = w.replace_with_upgraded(pending, rule, "solo")
    w.reconciler.run_once()
    w.remove(blocker)
    w.now += 1
    w.reconciler.run_once()
    w.now += w.reconciler.plan.restore_confirm
    w.reconciler.run_once()
    restore_stash = [c for c in w.actions.calls if c[0] == "stash"][-1]
    manifest = restore_stash[2]
    assert manifest["spec"]["containers"][0]["resources"]["limits"] == {res("1g.5gb"): "1"}
    annotations = manifest["metadata"]["annotations"]
    assert ANN_RULE not in annotations and ANN_RESTORED_AT in annotations
    assert up["metadata"]["uid"] != manifest["metadata"].get("uid")


def test_opted_out_pod_gets_one_warning_and_stays() -> None:
    w = World()
    a1 = w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER))
    rule = w.record_for(pending)
    w.replace_with_upgraded(pending, rule, "p2", OWNER, {ANN_RESTORE: "false"})
    w.reconciler.run_once()
    w.remove(a1)
    for _ in range(3):
        w.now += 1
        w.reconciler.run_once()
    assert [e for e in w.actions.events if e[1] == "MigRestoreSkipped"] == [("p2", "MigRestoreSkipped")]
    assert not [c for c in w.actions.calls if c == ("restart", "p2")]


def test_followers_do_nothing() -> None:
    w = World()
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    w.record_for(w.add(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER)))
    w.leader = False
    assert sum(w.reconciler.run_once().values()) == 0 and w.actions.calls == []


def test_a_new_leader_resumes_a_restore_whose_restart_never_happened() -> None:
    w = World()
    a1 = w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER))
    rule = w.record_for(pending)
    up = w.replace_with_upgraded(pending, rule, "p2", OWNER)
    w.reconciler.run_once()
    w.remove(a1)
    (bound,) = w.store.list()
    w.store.update(bound.restoring("gpu-a", w.now, 120.0))  # the old leader died right after this write
    fresh = Reconciler(w.inventory, w.store, w.actions, clock=lambda: w.now)
    w.now += fresh.plan.restore_confirm
    fresh.run_once()
    assert w.actions.calls.count(("restart", "p2")) == 1 and up["metadata"]["name"] == "p2"


def test_expired_rules_are_closed_and_later_deleted() -> None:
    w = World()
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER))
    rule = w.record_for(pending)
    w.actions.pods.pop("p")  # the restart finds nothing to do
    w.now = rule.expires + 1
    assert w.reconciler.run_once()["expired"] == 1
    assert ("p", "MigSubstitutionExpired") in w.actions.events
    w.now += 3601
    assert w.reconciler.run_once()["deleted"] == 1 and w.store.list() == []


def test_a_failing_step_is_counted_and_the_pass_goes_on() -> None:
    w = World()

    def boom(*a, **k):
        raise RuntimeError("API down")

    w.actions.get_pod = boom  # type: ignore[method-assign]
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    w.record_for(w.add(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER)))
    w.now += 1.5
    counts = w.reconciler.run_once()
    assert counts["errors"] == 1 and "API down" in w.reconciler.last_error


@pytest.mark.parametrize("error, trace", [
    pytest.param(MaxRetryError(None, "/api/v1/pods", "Connection refused"), False, id="api-unreachable"),  # type: ignore[arg-type]
    pytest.param(TypeError("a defect of ours"), True, id="defect")])
def test_a_step_that_failed_for_want_of_the_api_is_one_line_a_defect_keeps_its_trace(error, trace, caplog) -> None:
    """An API server restart failed every step that read the API with a 60-line trace each (soak seed 38:
    15 traces in 20 minutes); that is expected in production and says nothing a line does not. A defect
    of ours must still show where it is."""
    w = World()

    def failing(*a, **k):
        raise error

    w.actions.get_pod = failing  # type: ignore[method-assign]
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    w.record_for(w.add(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER)))
    w.now += 1.5
    with caplog.at_level(logging.WARNING, logger="mig_extender.components.reconciler"):
        counts = w.reconciler.run_once()
    assert counts["errors"] == 1
    failed = [r for r in caplog.records if "retrying next pass" in r.getMessage()]
    assert len(failed) == 1 and bool(failed[0].exc_info) is trace


def test_replacement_pod_strips_server_fields() -> None:
    pod = make_pod("x", mig={"1g.5gb": 1}, node="n1")
    pod["metadata"].update(resourceVersion="5", creationTimestamp="t", managedFields=[{}])
    out = replacement_pod(pod)
    assert set(out["metadata"]) == {"name", "namespace"} and "status" not in out and "nodeName" not in out["spec"]
    assert pod["spec"]["nodeName"] == "n1"  # the input is not modified


# -- issue 13 item 5: a rule belongs to its pending pod until the reconciler restarts that pod -------------


def sold_out_world() -> tuple[World, dict, object]:
    """gpu-a's 1g.5gb slices both taken (one by a running sibling), and pod infer-b-2 pending with a rule."""
    w = World()
    w.add(make_pod("infer-b-1", mig={"1g.5gb": 1}, node="gpu-a", owner=OWNER))
    w.add(make_pod("blocker", mig={"1g.5gb": 1}, node="gpu-a"))
    pending = w.add(make_pod("infer-b-2", mig={"1g.5gb": 1}, owner=OWNER))
    return w, pending, w.record_for(pending)


def rule_stamped_on(pod: dict, answer: dict) -> str:
    """The rule name the webhook's patch stamps on ``pod`` ('' when it did not rewrite it)."""
    ops = json.loads(base64.b64decode(answer["response"].get("patch") or b"W10="))
    return (jsonpatch.apply_patch(pod, ops)["metadata"].get("annotations") or {}).get(ANN_RULE, "")


def test_item5_rule_is_marked_before_its_pod_is_restarted_and_only_then_handed_over() -> None:
    """The HPA scale-up's pod, created while infer-b-2 waits, is admitted unchanged; the reconciler writes the
    restart mark before it deletes infer-b-2 (a webhook replica must see it when the replacement arrives),
    and the replacement takes the rule."""
    w, _, rule = sold_out_world()
    webhook = WebhookService(w.store, clock=lambda: w.now)
    scale_up = make_pod(mig={"1g.5gb": 1}, owner=OWNER, uid="")
    assert rule_stamped_on(scale_up, webhook.review(admission_review(scale_up))) == ""

    seen_at_restart: list = []
    restart = w.actions.evict
    w.actions.evict = lambda pod: seen_at_restart.extend(w.store.list()) or restart(pod)  # type: ignore
    w.now += 1.5
    assert w.reconciler.run_once()["upgrade_evicted"] == 1
    (marked,) = seen_at_restart
    assert (marked.phase, marked.restart_at) == (Phase.RECORDED, w.now)

    replacement = make_pod(mig={"1g.5gb": 1}, owner=OWNER, uid="")
    assert rule_stamped_on(replacement, webhook.review(admission_review(replacement))) == rule.name


def test_item5_a_new_leader_restarts_a_pod_whose_rule_was_marked_but_not_restarted() -> None:
    """The old leader wrote the mark and died before the delete: the next leader restarts the pod, and
    keeps the mark it finds (no second write)."""
    w, _, rule = sold_out_world()
    marked = w.store.update(rule.restarting(w.now))
    w.now += 1.5
    fresh = Reconciler(w.inventory, w.store, w.actions, clock=lambda: w.now)
    assert fresh.run_once()["upgrade_evicted"] == 1 and ("restart", "infer-b-2") in w.actions.calls
    assert w.store.get(rule.namespace, rule.name).resource_version == marked.resource_version


class LaggingStore:
    """A rule store whose list() (the watch cache) is behind: writes and fresh reads go to ``store``."""

    def __init__(self, store: MemoryRuleStore, stale: list) -> None:
        self.store, self.stale = store, stale

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def list(self) -> list:
        return list(self.stale)

    def book(self, now: float) -> RuleBook:
        return RuleBook.of(self.stale, now)


@pytest.mark.parametrize("meanwhile, restarted", [
    pytest.param(lambda store, rule: store.delete(rule), False, id="rule-deleted"),
    pytest.param(lambda store, rule: store.update(rule.expired(rule.created)), False, id="rule-cancelled"),
    pytest.param(lambda store, rule: store.update(replace(rule, message="touched")), True, id="rule-touched"),
])
def test_item5_mark_conflict_rereads_and_restarts_only_for_a_rule_still_recorded(meanwhile, restarted: bool) -> None:
    """The mark write gets 409 (the cache was stale): decide again on the fresh rule; a rule deleted or
    cancelled meanwhile restarts nothing."""
    w, _, rule = sold_out_world()
    stale = w.store.list()
    meanwhile(w.store, rule)
    w.now += 1.5
    reconciler = Reconciler(w.inventory, LaggingStore(w.store, stale), w.actions, clock=lambda: w.now)  # type: ignore
    reconciler.run_once()
    assert (("restart", "infer-b-2") in w.actions.calls) is restarted


def test_item5_filter_note_never_claims_a_rule_that_was_not_recorded() -> None:
    """infer-b-2's rule went to another pod (taken in the window before the fix): its next /filter must
    record a rule of its own, under a new name, not hand back the taken one while saying 'recorded'."""
    w, pending, rule = sold_out_world()
    w.inventory.upsert_node(make_node("gpu-b", "A100-40GB", {"1g.5gb": 1, "2g.10gb": 1}))
    w.inventory.upsert_pod(make_pod("b-holder", mig={"1g.5gb": 1}, node="gpu-b"))
    w.store.update(rule.applied("infer-b-9", w.now, 120.0))
    extender = ExtenderService(w.inventory, w.store, PlanSettings(), clock=lambda: w.now)
    decision = extender.filter(pending, ["gpu-a", "gpu-b"])
    assert "recorded" in decision.note and decision.record is not None
    stored = w.store.get(rule.namespace, decision.record.name)
    assert stored is not None and stored.name != rule.name
    assert (stored.phase, stored.pod_uid) == (Phase.RECORDED, pending["metadata"]["uid"])


# ---- issue 13 ------------------------------------------------------------------------------------


def upgraded_and_freed(w: World, owner: tuple | None = OWNER, name: str = "p2") -> tuple[dict, object]:
    """A pod upgraded onto 2g.10gb and bound, then its original 1g.5gb frees up: a restore is due."""
    a1 = w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=owner))
    rule = w.record_for(pending)
    up = w.replace_with_upgraded(pending, rule, name, owner)
    w.reconciler.run_once()
    w.remove(a1)
    w.now += 1
    return up, rule


def reserve_and_confirm(w: World) -> Counter:
    """Two passes: the restore's reservation, then (restore_confirm later) its restart (soak D7)."""
    counts = w.reconciler.run_once()
    w.now += w.reconciler.plan.restore_confirm
    return counts + w.reconciler.run_once()


def test_item4_restore_refused_by_pdb_is_retried() -> None:
    w = World()
    upgraded_and_freed(w)
    w.actions.answer = RestartOutcome(Restart.REFUSED, "Cannot evict pod as it would violate the pod's disruption "
                                                        "budget.")
    counts = reserve_and_confirm(w)
    assert counts["restoring"] == 1 and counts["restore_refused"] == 1 and counts["restore_deferred"] == 1
    (rule,) = w.store.list()
    assert rule.phase is Phase.APPLIED and rule.restore_node == "" and rule.restore_attempts == 1
    assert w.inventory.snapshot(w.store.list(), w.now).free("gpu-a", res("1g.5gb")) == 2  # original released
    assert ("p2", "MigRestoreDeferred") in w.actions.events
    w.now += 5
    assert w.reconciler.run_once()["restoring"] == 0  # backing off, not hammering the PDB
    w.actions.answer = RestartOutcome(Restart.EVICTED)
    w.now = rule.retry_restore_at + 1
    counts = reserve_and_confirm(w)
    assert counts["restoring"] == 1 and counts["restore_evicted"] == 1
    assert w.actions.calls.count(("restart", "p2")) == 2 and w.store.list()[0].phase is Phase.RESTORING


def test_item4_second_refusal_backs_off_longer() -> None:
    w = World()
    upgraded_and_freed(w)
    w.actions.answer = RestartOutcome(Restart.REFUSED, "pdb")
    reserve_and_confirm(w)
    first = w.store.list()[0]
    w.now = first.retry_restore_at + 1
    reserve_and_confirm(w)
    second = w.store.list()[0]
    assert second.restore_attempts == 2
    assert second.retry_restore_at - second.updated == 2 * (first.retry_restore_at - first.updated)


RAY = ("RayCluster", "ray-1", "ray-uid", "ray.io/v1")


def test_item6_unknown_owner_pod_is_never_restarted_and_told_why() -> None:
    w = World()
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    worker = w.add(make_pod("ray-worker", mig={"1g.5gb": 1}, owner=RAY))
    snap = w.inventory.snapshot(w.store.list(), w.now)
    decision = filter_pod(pod_info(worker), ["gpu-a"], snap)
    assert decision.record is None and "ray.io/RayCluster" in str(decision.note)
    for _ in range(3):
        w.now += 2
        w.reconciler.run_once()
    assert w.actions.calls == [] and w.store.list() == []
    told = [e for e in w.actions.events if e[1] == "MigSubstitutionSkipped"]
    assert told == [("ray-worker", "MigSubstitutionSkipped")]


def test_item6_unknown_owner_rule_from_before_is_cancelled_not_executed() -> None:
    """A rule recorded for such a pod (by an older extender) is dropped, and the pod is not touched."""
    w = World()
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    worker = w.add(make_pod("ray-worker", mig={"1g.5gb": 1}, owner=RAY))
    listed = PlanSettings(restartable_owners=frozenset({"RayCluster"}))
    snap = w.inventory.snapshot(w.store.list(), w.now)
    w.store.record(filter_pod(pod_info(worker), ["gpu-a"], snap, listed).record)
    w.now += 2
    counts = w.reconciler.run_once()
    assert counts["cancelled"] == 1 and w.actions.calls == [] and w.store.list()[0].phase is Phase.EXPIRED


def test_item6_listed_owner_is_evicted_not_recreated_by_us() -> None:
    w = World()
    w.reconciler.plan = PlanSettings(restartable_owners=frozenset({"ray.io/RayCluster"}))
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    worker = w.add(make_pod("ray-worker", mig={"1g.5gb": 1}, owner=RAY))
    snap = w.inventory.snapshot(w.store.list(), w.now)
    w.store.record(filter_pod(pod_info(worker), ["gpu-a"], snap, w.reconciler.plan).record)
    w.now += 2
    w.reconciler.run_once()
    assert w.actions.calls == [("restart", "ray-worker")]  # evicted: its operator recreates it, we do not


JOB = ("Job", "train", "job-uid")


def a_job(backoff_limit: int, failed: int = 0, ignore_disruptions: bool = False) -> dict:
    spec: dict = {"backoffLimit": backoff_limit}
    if ignore_disruptions:
        spec["podFailurePolicy"] = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    return {"metadata": {"name": "train", "uid": "job-uid"}, "spec": spec, "status": {"failed": failed}}


@pytest.mark.parametrize("job, restarted", [
    pytest.param(a_job(0), False, id="backoff-0-no-policy-skipped"),
    pytest.param(a_job(0, ignore_disruptions=True), True, id="backoff-0-disruption-ignored"),
    pytest.param(a_job(2, failed=1), True, id="room-in-backoff-limit"),
    pytest.param(a_job(2, failed=2), False, id="no-room-left"),
])
def test_item7_job_upgrade_only_when_it_cannot_fail_the_job(job: dict, restarted: bool) -> None:
    w = World()
    w.actions.jobs["train"] = job
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("train-x", mig={"1g.5gb": 1}, owner=JOB))
    w.record_for(pending)
    w.now += 1.5
    counts = w.reconciler.run_once()
    assert (("restart", "train-x") in w.actions.calls) is restarted
    assert (counts["cancelled"] == 1 and ("train-x", "MigUpgradeSkipped") in w.actions.events) is not restarted


def test_item7_two_job_pods_do_not_share_one_failure_of_room() -> None:
    """backoffLimit 1, none failed yet: the first restart takes the room, the second must not."""
    w = World()
    w.inventory = inventory_of(make_node("gpu-a", "A100-40GB", {"1g.5gb": 2, "2g.10gb": 2}))
    w.inventory._clock = lambda: w.now
    w.reconciler.inventory = w.inventory
    w.actions.jobs["train"] = a_job(1)
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    first, second = (w.add(make_pod(n, mig={"1g.5gb": 1}, owner=JOB)) for n in ("train-1", "train-2"))
    w.record_for(first)
    w.record_for(second)
    w.now += 1.5
    w.reconciler.run_once()
    assert sum(1 for c in w.actions.calls if c[0] == "restart") == 1


def test_item7_job_pod_without_disruption_policy_is_not_restored() -> None:
    w = World()
    w.actions.jobs["train"] = a_job(6)
    upgraded_and_freed(w, owner=JOB)
    counts = w.reconciler.run_once()
    assert counts["restoring"] == 0 and ("p2", "MigRestoreSkipped") in w.actions.events
    assert not [c for c in w.actions.calls if c[0] == "restart"]
    w.actions.jobs["train"] = a_job(6, ignore_disruptions=True)
    w.now += 31  # the Job's verdict is re-read
    assert w.reconciler.run_once()["restoring"] == 1


def test_item8_bare_pod_whose_replacement_is_refused_is_left_alone() -> None:
    w = World()
    w.add(make_pod("blocker", mig={"1g.5gb": 2}, node="gpu-a"))
    w.record_for(w.add(make_pod("solo", mig={"1g.5gb": 1})))
    w.actions.answer = RestartOutcome(Restart.INVALID, "spec.ephemeralContainers: Forbidden")
    w.now += 1.5
    counts = w.reconciler.run_once()
    assert counts["upgrade_invalid"] == 1 and counts["cancelled"] == 1
    assert ("solo", "MigUpgradeSkipped") in w.actions.events and "solo" in w.actions.pods


def test_item8_one_bad_stash_does_not_stall_the_others() -> None:
    w = World()
    w.add(make_pod("blocker", mig={"1g.5gb": 2}, node="gpu-a"))
    bad = w.record_for(w.add(make_pod("bad", mig={"1g.5gb": 1})))
    w.store.update(replace(bad, stash="{not json"))
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=OWNER))
    good = w.record_for(pending)
    w.replace_with_upgraded(pending, good, "p2", OWNER)
    counts = w.reconciler.run_once()
    assert counts["rule_errors"] == 1 and counts["applied"] == 1 and counts["bound"] == 1


def test_item8_a_rule_holding_a_stash_is_never_garbage_collected() -> None:
    w = World()
    w.add(make_pod("blocker", mig={"1g.5gb": 2}, node="gpu-a"))
    rule = w.record_for(w.add(make_pod("solo", mig={"1g.5gb": 1})))
    w.store.update(replace(rule.expired(w.now), stash=json.dumps({"metadata": {"name": "solo"}})))
    w.actions.finish_recreate = lambda *a: (_ for _ in ()).throw(RuntimeError("create refused"))
    w.now += 2 * 3600  # past the reconciler's retention (1 h), within the memory store's (10 h)
    counts = w.reconciler.run_once()
    assert counts["deleted"] == 0 and w.store.list()[0].stash


def test_item8_rule_errors_are_metered_as_errors() -> None:
    w = World()
    w.add(make_pod("blocker", mig={"1g.5gb": 2}, node="gpu-a"))
    bad = w.record_for(w.add(make_pod("bad", mig={"1g.5gb": 1})))
    w.store.update(replace(bad, stash="{not json"))
    w.reconciler.run_once()
    assert w.reconciler.metrics.actions.labels("rule_errors", "error")._value.get() == 1


def test_item4_a_new_leader_resuming_a_refused_restore_defers_it() -> None:
    """The old leader wrote Restoring and died before its eviction; the new one's eviction gets 429."""
    w = World()
    upgraded_and_freed(w)
    (bound,) = w.store.list()
    w.store.update(bound.restoring("gpu-a", w.now, 120.0))
    w.actions.answer = RestartOutcome(Restart.REFUSED, "pdb")
    fresh = Reconciler(w.inventory, w.store, w.actions, clock=lambda: w.now)
    w.now += fresh.plan.restore_confirm
    counts = fresh.run_once()
    assert counts["restore_refused"] == 1 and counts["restore_deferred"] == 1
    (rule,) = w.store.list()
    assert rule.phase is Phase.APPLIED and rule.restore_node == "" and ("p2", "MigRestoreDeferred") in w.actions.events


class CountingReconciler(Reconciler):
    """Counts passes and can hold one open, to see what happens to wakes that arrive meanwhile."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started = threading.Semaphore(0)
        self.hold = threading.Event()
        self.hold.set()

    def run_once(self):
        self.started.release()
        self.hold.wait(5)
        return super().run_once()


def _running(w: World) -> tuple[CountingReconciler, threading.Event]:
    reconciler = CountingReconciler(w.inventory, w.store, w.actions, clock=time.time)
    stop = threading.Event()
    # a period and poll far longer than the test: only a wake can start a pass after the first
    threading.Thread(target=reconciler.run, args=(stop,), kwargs={"period": 600.0, "poll": 600.0},
                     daemon=True).start()
    assert reconciler.started.acquire(timeout=5)  # the first pass
    return reconciler, stop


def test_issue19_a_rule_event_wakes_a_pass_without_waiting_for_the_period() -> None:
    # the reconciler acted on a new rule only at its next periodic pass: 5.4 s from a pending pod to
    # its upgraded replacement Running, against 0.4 s for a restore
    w = World()
    reconciler, stop = _running(w)
    reconciler.wake()
    try:
        assert reconciler.started.acquire(timeout=5)
    finally:
        stop.set()
        reconciler.wake()


def test_issue19_wakes_during_a_pass_coalesce_into_one_more_pass() -> None:
    w = World()
    reconciler, stop = _running(w)
    reconciler.hold.clear()
    reconciler.wake()
    assert reconciler.started.acquire(timeout=5)   # the woken pass, held open
    for _ in range(5):
        reconciler.wake()                          # rule events while it runs
    reconciler.hold.set()
    try:
        assert reconciler.started.acquire(timeout=5)          # exactly one more pass
        assert not reconciler.started.acquire(timeout=0.5)
    finally:
        stop.set()
        reconciler.wake()


def test_the_next_settled_pass_is_read_from_the_recorded_rules_not_from_every_rule() -> None:
    """Each turn of the run loop asks when the youngest Recorded rule settles; it walked every rule the store
    keeps (an hour of finished ones: O(rules) per rule event). The book's Recorded rules answer it."""
    w = World()
    pending = w.add(make_pod("infer-b-2", mig={"1g.5gb": 1}, owner=OWNER))
    w.add(make_pod("infer-b-1", mig={"1g.5gb": 2}, node="gpu-a", owner=OWNER))
    rule = w.record_for(pending)
    for i in range(200):
        w.store.record(replace(rule, name=f"done-{i}", phase=Phase.RESTORED))

    def no_listing():
        raise AssertionError("every rule walked to find the next settle time")

    w.store.list = no_listing
    w.reconciler.plan = replace(w.reconciler.plan, settle=0.5)
    assert w.reconciler._next_settled() == rule.created + 0.5
    w.now += 1.0
    assert w.reconciler._next_settled() is None


def test_issue19_a_young_rule_is_upgraded_the_moment_it_settles_not_at_the_next_period() -> None:
    # the wake on the rule's creation finds it younger than `settle` (webhook replicas' watches may not
    # have it yet); the pass that acts must come when it settles, not at the next periodic pass
    w = World()
    w.now = time.time()
    pending = w.add(make_pod("infer-b-2", mig={"1g.5gb": 1}, owner=OWNER))
    w.add(make_pod("infer-b-1", mig={"1g.5gb": 2}, node="gpu-a", owner=OWNER))
    w.record_for(pending)
    reconciler = Reconciler(w.inventory, w.store, w.actions, plan=PlanSettings(settle=0.5), clock=time.time)
    stop = threading.Event()
    threading.Thread(target=reconciler.run, args=(stop,), kwargs={"period": 600.0, "poll": 600.0},
                     daemon=True).start()
    try:
        deadline = time.time() + 5
        while ("restart", "infer-b-2") not in w.actions.calls and time.time() < deadline:
            time.sleep(0.05)
        assert ("restart", "infer-b-2") in w.actions.calls
    finally:
        stop.set()
        reconciler.wake()


class CancelLost(MemoryRuleStore):
    """The extender's rule store while the API server restarts: every write fails as the client's does."""

    def update(self, rule, timeout=None):
        raise MaxRetryError(None, "/apis/mig-extender.io", "Connection refused")  # type: ignore[arg-type]


@pytest.mark.parametrize("owner", [pytest.param(OWNER, id="replicaset"), pytest.param(None, id="bare-pod")])
def test_an_upgrade_never_restarts_a_pod_the_api_shows_bound_when_the_cancel_was_lost(owner) -> None:
    """/filter found the pending pod fits its own type now and decided to cancel its rule, but the write
    failed (the API server restarting): /filter still passes the node (``_transition`` counts
    ``cancelled_failed``) and kube-scheduler binds the pod there. The reconciler's watch has not shown the
    Binding yet: its pass still sees the pod pending with a settled Recorded rule. Restarting it now
    evicts a pod that just started on the very type it asked for, and brings it back on the substitute."""
    w = World()
    blocker = w.add(make_pod("blocker", mig={"1g.5gb": 2}, node="gpu-a"))
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=owner))
    rule = w.record_for(pending)
    w.remove(blocker)  # a 1g.5gb frees: the pod fits as it is
    extender_store = CancelLost(clock=lambda: w.now)
    extender_store.record(rule)
    extender = ExtenderService(inventory_of(make_node("gpu-a", "A100-40GB", {"1g.5gb": 2, "2g.10gb": 1,
                                                                               "3g.20gb": 1})),
                               extender_store, PlanSettings(), clock=lambda: w.now)
    decision = extender.filter(pending, ["gpu-a"])
    assert decision.passed == ("gpu-a",) and decision.cancel is not None  # the cancel decided, and lost
    bound = json.loads(json.dumps(pending))
    bound["spec"]["nodeName"] = "gpu-a"
    w.actions.pods["p"] = bound  # the API has the Binding; the reconciler's inventory does not yet
    w.now += 1.5  # the rule has settled
    counts = w.reconciler.run_once()
    assert not [c for c in w.actions.calls if c[0] in ("restart", "stash")], w.actions.calls
    assert counts["cancelled"] == 1 and w.store.list()[0].phase is Phase.EXPIRED  # released, never handed on
    assert ("p", "MigUpgradeSkipped") in w.actions.events  # the MigUpgrading just before is corrected


@pytest.mark.parametrize("owner", [pytest.param(OWNER, id="replicaset"), pytest.param(None, id="bare-pod")])
def test_a_new_leader_does_not_restart_a_pod_bound_after_the_old_one_marked_its_rule(owner) -> None:
    """The leader marked the rule (the replacement may take it) and died before the restart; the pod was
    bound on its own type meanwhile. The next leader, its watch still showing the pod pending, restarts a
    marked rule as it is (``_mark_restart``): the fresh read must stop it there too, and release the rule."""
    w = World()
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}, owner=owner))
    w.add(make_pod("blocker", mig={"1g.5gb": 2}, node="gpu-a"))
    rule = w.record_for(pending)
    w.store.update(w.store.get(rule.namespace, rule.name).restarting(w.now))  # the old leader's mark
    bound = json.loads(json.dumps(pending))
    bound["spec"]["nodeName"] = "gpu-a"
    w.actions.pods["p"] = bound  # bound in the API; not in this leader's watch yet
    w.now += 1.5
    counts = w.reconciler.run_once()
    assert not [c for c in w.actions.calls if c[0] in ("restart", "stash")], w.actions.calls
    assert counts["cancelled"] == 1 and w.store.list()[0].phase is Phase.EXPIRED


@pytest.mark.parametrize("error, trace", [
    pytest.param(MaxRetryError(None, "/api/v1/pods", "Connection refused"), False, id="api-unreachable"),  # type: ignore[arg-type]
    pytest.param(TypeError("a defect of ours"), True, id="defect")])
def test_a_rule_whose_observation_failed_for_want_of_the_api_is_one_line_a_defect_keeps_its_trace(
        error, trace, caplog) -> None:
    """The step-level rule holds per rule too: _observe isolates each rule, and while the API server
    restarts every rule with a bare pod's stashed manifest fails there, each pass, each with its trace."""
    w = World()
    pending = w.add(make_pod("p", mig={"1g.5gb": 1}))
    w.add(make_pod("a1", mig={"1g.5gb": 2}, node="gpu-a"))
    rule = w.record_for(pending)
    w.store.update(replace(w.store.get(rule.namespace, rule.name), stash='{"metadata": {"name": "p"}}'))

    def failing(rule):
        raise error

    w.actions.finish_recreate = failing  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="mig_extender.components.reconciler"):
        counts = w.reconciler.run_once()
    assert counts["rule_errors"] == 1
    failed = [r for r in caplog.records if "observing rule" in r.getMessage()]
    assert len(failed) == 1 and bool(failed[0].exc_info) is trace
