"""The in-memory rule store and the conflict-retry every writer uses."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
from kubernetes import client

from mig_extender.cluster.rulestore import ConflictError, MemoryRuleStore, update_with_retry
from mig_extender.cluster.rulestore_kube import KubeRuleStore
from mig_extender.core.resources import PodInfo, ResourceCount
from mig_extender.core.rules import TRANSITIONS, Phase, new_rule, rule_to_object


def a_rule():
    return new_rule(PodInfo("ns", "p", "uid-p"), ResourceCount("nvidia.com/mig-1g.5gb", 1),
                    ResourceCount("nvidia.com/mig-2g.10gb", 1), "n", 1000.0, 60.0)


def test_record_is_idempotent_and_versions_every_write() -> None:
    store = MemoryRuleStore()
    first = store.record(a_rule())
    assert store.record(replace(a_rule(), node="elsewhere")) == first  # the stored one wins
    second = store.update(first.applied("p2", 1001.0, 60.0))
    assert int(second.resource_version) > int(first.resource_version)


def test_stale_write_is_a_conflict() -> None:
    store = MemoryRuleStore()
    first = store.record(a_rule())
    store.update(first.applied("p2", 1001.0, 60.0))
    with pytest.raises(ConflictError):
        store.update(replace(first, message="stale"))


def test_update_with_retry_decides_again_on_the_fresh_rule() -> None:
    store = MemoryRuleStore()
    stale = store.record(a_rule())
    store.update(replace(stale, applied_pod="winner"))  # someone else wrote first (same phase)
    seen = []

    def change(rule):
        seen.append(rule.applied_pod)
        return replace(rule, message=f"after {rule.applied_pod or 'nothing'}")

    stored = update_with_retry(store, stale, change)
    assert seen == ["", "winner"]  # tried on the stale copy, refused, re-read, applied to the fresh one
    assert stored.message == "after winner" and stored.phase is Phase.RECORDED


def test_update_with_retry_gives_up_on_a_deleted_rule() -> None:
    store = MemoryRuleStore()
    rule = store.record(a_rule())
    store.delete(rule)
    assert update_with_retry(store, rule, lambda r: r.expired(2000.0)) is None


def test_finished_rules_fall_out_after_retention() -> None:
    now = [0.0]
    store = MemoryRuleStore(retention=10, clock=lambda: now[0])
    store.record(a_rule())
    now[0] = 11
    assert store.list() == []


class RecordingObjectsApi:
    """Stands in for the generated CustomObjectsApi: answers with the object written, records the kwargs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def _answer(self, name: str, obj: dict, kwargs: dict):
        self.calls.append((name, kwargs))
        return SimpleNamespace(data=json.dumps(obj).encode(), release_conn=lambda: None)

    def replace_namespaced_custom_object_status(self, group, version, namespace, plural, name, body, **kwargs):
        body = {**rule_to_object(a_rule()), "status": body["status"]}
        body["metadata"]["resourceVersion"] = "8"
        return self._answer("update", body, kwargs)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        return self._answer("fetch", {**rule_to_object(a_rule()), "metadata": {
            **rule_to_object(a_rule())["metadata"], "resourceVersion": "8"}}, kwargs)


@pytest.mark.parametrize("timeout", [pytest.param(0.7, id="bounded"), pytest.param(None, id="client-default")])
def test_item15_kube_store_bounds_the_calls_the_webhook_makes(timeout: float | None) -> None:
    """The webhook's claim and re-read must end inside the API server's 3 s admission deadline: the
    timeout reaches the client as _request_timeout, and only when the caller gives one."""
    store = KubeRuleStore(client.ApiClient())
    api = store._api = RecordingObjectsApi()  # type: ignore[assignment]
    claimed = store.update(a_rule().claimed(1000.0, 30.0), timeout=timeout)
    store.fetch("ns", claimed.name, timeout=timeout)
    assert claimed.claimed_until == 1030.0
    expected = {} if timeout is None else {"_request_timeout": timeout}
    assert [(name, {k: v for k, v in kw.items() if k != "_preload_content"}) for name, kw in api.calls] == [
        ("update", expected), ("fetch", expected)]


def test_item14_retried_transition_cannot_resurrect_an_expired_rule() -> None:
    """A restore decided on a stale Restoring copy must not turn the (meanwhile) Expired rule Applied."""
    store = MemoryRuleStore()
    bound = store.record(a_rule())
    bound = store.update(bound.bound("uid-p2", "p2", "n", 1001.0))
    restoring = store.update(bound.restoring("n", 1002.0, 60.0))
    store.update(restoring.expired(1100.0))  # another writer expired it first
    refused: list[str] = []
    stored = update_with_retry(store, restoring, lambda r: r.restore_deferred(1101.0, 30.0, "refused"),
                               refused=refused.append)
    assert stored is None and store.get("ns", bound.name).phase is Phase.EXPIRED
    assert len(refused) == 1 and "Expired" in refused[0]


@pytest.mark.parametrize("before, after, allowed", [
    pytest.param(Phase.RECORDED, Phase.APPLIED, True, id="recorded-applied"),
    pytest.param(Phase.APPLIED, Phase.RESTORING, True, id="applied-restoring"),
    pytest.param(Phase.RESTORING, Phase.APPLIED, True, id="restoring-deferred"),
    pytest.param(Phase.RESTORING, Phase.RESTORED, True, id="restoring-restored"),
    pytest.param(Phase.EXPIRED, Phase.APPLIED, False, id="expired-applied"),
    pytest.param(Phase.EXPIRED, Phase.EXPIRED, False, id="expired-expired"),
    pytest.param(Phase.RESTORED, Phase.RESTORING, False, id="restored-restoring"),
    pytest.param(Phase.RECORDED, Phase.RESTORING, False, id="recorded-restoring"),
])
def test_item14_transition_table(before: Phase, after: Phase, allowed: bool) -> None:
    assert ((before, after) in TRANSITIONS) is allowed


def test_item14_a_phase_change_between_decision_and_retry_is_refused() -> None:
    """The change was decided for an Applied rule; the fresh one is Restoring: deciding again is the caller's job."""
    store = MemoryRuleStore()
    stale = store.record(a_rule())
    stale = store.update(stale.bound("uid-p2", "p2", "n", 1001.0))
    store.update(stale.restoring("n", 1002.0, 60.0))
    refused: list[str] = []
    assert update_with_retry(store, stale, lambda r: r.bound("uid-x", "x", "n", 1003.0), refused=refused.append) is None
    assert store.get("ns", stale.name).phase is Phase.RESTORING and refused


@pytest.mark.parametrize(("written_rv", "deleted_rv", "listed"), [
    pytest.param("5", "7", False, id="our-write-then-deleted-by-someone-else"),
    pytest.param("9", "7", True, id="a-late-delete-of-an-older-copy-keeps-our-newer-write"),
])
def test_soak_d2_a_rule_deleted_by_someone_else_leaves_the_writers_overlay(written_rv: str, deleted_rv: str,
                                                                           listed: bool) -> None:
    """Soak defect D2: the garbage collector deleted a rule (its ReplicaSet went away) that this process
    had written; the DELETED event dropped only the informed copy, so the overlay kept the rule, and its
    reservation, for up to 60 s. A delete is newer than every version before it, so it wins over our own
    write of an older version; a DELETED event of an older object must not hide a newer one we recreated."""
    store = KubeRuleStore(client.ApiClient())
    rule = replace(a_rule(), resource_version=written_rv)
    store._remember(rule)
    gone = rule_to_object(replace(rule, resource_version=deleted_rv))
    store._on_event("DELETED", gone)
    assert ([r.name for r in store.list()] == [rule.name]) is listed


@pytest.mark.parametrize("kind", ["ADDED", "MODIFIED", "DELETED", "relist"])
def test_issue19_rule_events_notify_subscribers(kind: str) -> None:
    # the reconciler wakes on a rule's creation (by watch) instead of waiting for its next pass
    store = KubeRuleStore(client.ApiClient())
    woken: list[bool] = []
    store.subscribe(lambda: woken.append(True))
    obj = rule_to_object(a_rule())
    if kind == "relist":
        store._on_relist(iter([obj]))
    else:
        store._on_event(kind, obj)
    assert woken == [True]


def test_the_declared_cachetools_floor_reports_what_expire_drops() -> None:
    """ReportingTTLCache reads the (key, value) pairs ``TTLCache.expire()`` returns; cachetools returns them
    from 5.5.0 on (5.3 and 5.4 return None: every write then raised TypeError inside ``__setitem__``). The
    floor setup.cfg declares must be one that returns them."""
    import configparser
    import re
    from pathlib import Path

    from mig_extender.cluster.rulestore import ReportingTTLCache

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    floor = re.search(r"^\s*cachetools\s*>=\s*(\d+)\.(\d+)", setup["options"]["install_requires"], re.M)
    assert floor and (int(floor.group(1)), int(floor.group(2))) >= (5, 5), floor
    now, dropped = [0.0], []
    cache = ReportingTTLCache(maxsize=2, ttl=10.0, timer=lambda: now[0], dropped=dropped.append)
    cache["a"], cache["b"] = 1, 2
    now[0] = 5.0
    cache["c"] = 3  # full: evicts "a"
    now[0] = 12.0
    assert cache.expire() == [("b", 2)]
    assert dropped == ["a", "b"]
