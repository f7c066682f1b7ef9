"""The in-memory rule store and the conflict-retry every writer uses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mig_extender.cluster.rulestore import ConflictError, MemoryRuleStore, update_with_retry
from mig_extender.core.resources import PodInfo, ResourceCount
from mig_extender.core.rules import Phase, new_rule


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
    store.update(stale.applied("winner", 1001.0, 60.0))  # someone else got there first
    seen = []

    def change(rule):
        seen.append(rule.applied_pod)
        return replace(rule, message=f"after {rule.applied_pod or 'nothing'}")

    stored = update_with_retry(store, stale, change)
    assert seen == ["", "winner"]  # tried on the stale copy, refused, re-read, applied to the fresh one
    assert stored.message == "after winner" and stored.phase is Phase.APPLIED


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
