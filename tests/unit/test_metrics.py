"""The gauges the alerts and the dashboard need (issue 16): readiness, watch disconnection, substitution waste."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from mig_extender.components.metrics import Metrics
from mig_extender.core.resources import ResourceCount
from mig_extender.core.rules import Phase, new_rule
from tests.builders import info, make_node, make_pod, res, snapshot_of


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}


def test_ready_gauge_follows_the_readiness_problems() -> None:
    problems: list[str] = ["node/pod inventory not synced"]
    metrics = Metrics()
    metrics.watch_health(lambda: list(problems), lambda: {"nodes": 0.0, "pods": 42.5})
    assert samples(metrics)[("mig_extender_ready", ())] == 0
    assert samples(metrics)[("mig_extender_watch_disconnected_seconds", (("watch", "pods"),))] == 42.5
    problems.clear()
    assert samples(metrics)[("mig_extender_ready", ())] == 1


def test_waste_counts_what_running_substitutes_hold_beyond_their_requests() -> None:
    pod = info(make_pod("p", mig={"1g.5gb": 1}))
    up = new_rule(pod, ResourceCount(res("1g.5gb"), 1), ResourceCount(res("3g.20gb"), 1), "n1", 1000.0, 120.0)
    recorded = new_rule(info(make_pod("q", mig={"1g.5gb": 2})), ResourceCount(res("1g.5gb"), 2),
                        ResourceCount(res("2g.10gb"), 2), "n1", 1000.0, 120.0)
    snap = snapshot_of(make_node("n1", mig={"1g.5gb": 2, "3g.20gb": 1, "2g.10gb": 2}),
                       rules=(replace(up, phase=Phase.APPLIED), recorded))
    metrics = Metrics()
    metrics.watch(lambda: snap)
    got = samples(metrics)
    # only the Applied rule's pod runs on a larger slice: 3g.20gb for 1g.5gb is 2 compute slices and 15 GB
    assert got[("mig_extender_substitution_waste", (("unit", "compute_slices"),))] == 2
    assert got[("mig_extender_substitution_waste", (("unit", "memory_gb"),))] == 15
