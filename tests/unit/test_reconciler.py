"""The reconciler's passes over an in-memory cluster, with actions recorded instead of sent."""

from __future__ import annotations

import json

import pytest

from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.reconciler import Reconciler
from mig_extender.core.planner import filter_pod
from mig_extender.core.podspec import replacement_pod, selector_matches
from mig_extender.core.resources import ANN_ORIGINAL, ANN_RESTORE, ANN_RESTORED_AT, ANN_RULE, pod_info
from mig_extender.core.rules import Phase
from tests.builders import inventory_of, make_node, make_pod, res


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
