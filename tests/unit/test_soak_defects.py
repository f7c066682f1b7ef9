"""Regression tests for the defects the chaos soak found (issue 15, docs/reliability.md): D3, D4, D7.

Each test is named after its defect and failed against the code before its fix.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mig_extender.core.resources import ANN_ORIGINAL, ANN_RULE
from mig_extender.core.rules import Phase
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
