"""The reconciler's passes over an in-memory cluster, with actions recorded instead of sent."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import jsonpatch
import pytest

from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.extender import ExtenderService
from mig_extender.components.reconciler import Reconciler
from mig_extender.components.webhook import WebhookService
from mig_extender.core.planner import PlanSettings, filter_pod
from mig_extender.core.podspec import replacement_pod, selector_matches
from mig_extender.core.resources import ANN_ORIGINAL, ANN_RESTORE, ANN_RESTORED_AT, ANN_RULE, pod_info
from mig_extender.core.rules import Phase
from tests.builders import admission_review, inventory_of, make_node, make_pod, res


class FakeActions:
    """Records every call; pods it is asked about come from ``pods`` (name -> object)."""

    def __init__(self) -> None:
        self.pods: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.events: list[tuple[str, str]] = []

    def get_pod(self, namespace: str, name: str):
        return self.pods.get(name)

    def evict_or_delete(self, pod) -> str:
        self.calls.append(("restart", pod["metadata"]["name"]))
        return "deleted"

    def stash_and_delete_bare_pod(self, rule_ns, rule_name, pod, replacement) -> str:
        self.calls.append(("stash", pod["metadata"]["name"], replacement))
        return "deleted"

    def finish_recreate(self, rule_ns, rule_name, manifest_json) -> str:
        self.calls.append(("recreate", json.loads(manifest_json)["metadata"]["name"]))
        return "created"

    def event(self, namespace, pod_name, pod_uid, reason, message, warning=False, action="Reconcile") -> None:
        self.events.append((pod_name, reason))


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
    assert w.reconciler.run_once()["upgrade_deleted"] == 0  # too young: webhooks may not have seen it yet

    w.now += 1.5
    counts = w.reconciler.run_once()  # upgrade: restart the pending pod
    assert counts["upgrade_deleted"] == 1 and ("restart", "infer-b-2") in w.actions.calls
    assert ("infer-b-2", "MigUpgrading") in w.actions.events
    assert w.reconciler.run_once()["upgrade_deleted"] == 0  # no second restart of the same pod

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
    assert counts["restoring"] == 1 and ("restart", "infer-b-3") in w.actions.calls
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


@pytest.mark.parametrize("selector, labels, match", [
    ({}, {"a": "1"}, True), (None, {"a": "1"}, False), ({"matchLabels": {"a": "1"}}, {"a": "1"}, True),
    ({"matchLabels": {"a": "2"}}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "1"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]}, {"a": "1"}, True),
])
def test_pdb_selectors(selector, labels, match) -> None:
    assert selector_matches(selector, labels) is match


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
    restart = w.actions.evict_or_delete
    w.actions.evict_or_delete = lambda pod: seen_at_restart.extend(w.store.list()) or restart(pod)  # type: ignore
    w.now += 1.5
    assert w.reconciler.run_once()["upgrade_deleted"] == 1
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
    assert fresh.run_once()["upgrade_deleted"] == 1 and ("restart", "infer-b-2") in w.actions.calls
    assert w.store.get(rule.namespace, rule.name).resource_version == marked.resource_version


class LaggingStore:
    """A rule store whose list() (the watch cache) is behind: writes and fresh reads go to ``store``."""

    def __init__(self, store: MemoryRuleStore, stale: list) -> None:
        self.store, self.stale = store, stale

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def list(self) -> list:
        return list(self.stale)


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
