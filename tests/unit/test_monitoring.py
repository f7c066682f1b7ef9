"""manifests/monitoring/ (issue 16): every alert and dashboard query names metrics and labels the code exports.

The exported names are read from components/metrics.py itself: a Metrics registry with every collector
attached (snapshot gauges, health gauges, DRA gauges), each family turned into the sample names Prometheus stores
(a counter ``x`` is scraped as ``x_total``, a histogram as ``x_bucket``/``x_count``/``x_sum``).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mig_extender.components.metrics import Metrics
from mig_extender.core.resources import ResourceCount
from mig_extender.core.rules import new_rule
from tests.builders import info, make_node, make_pod, res, snapshot_of
from tests.unit.test_metrics import dra_book

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
# labels Prometheus adds to every scraped series (PodMonitor targets), and the histogram's bucket label
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "le"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}


@cache
def exported() -> dict[str, frozenset[str]]:
    """Sample name -> its label names, for everything a mig-extender process can export."""
    metrics = Metrics()
    rule = new_rule(info(make_pod("p", mig={"1g.5gb": 1})), ResourceCount(res("1g.5gb"), 1),
                    ResourceCount(res("2g.10gb"), 1), "n1", 1000.0, 120.0)
    snap = snapshot_of(make_node("n1", mig={"1g.5gb": 1, "2g.10gb": 1}), make_pod(mig={"3g.20gb": 1}), rules=(rule,))
    metrics.watch(lambda: snap)
    metrics.watch_health(lambda: [], lambda: {"nodes": 0.0})
    metrics.watch_dra(dra_book().usage)
    for child in vars(metrics).values():  # one child per labelled counter/histogram, so its labels show
        if hasattr(child, "_labelnames") and child._labelnames:
            child.labels(*["x"] * len(child._labelnames))
    names: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = labels
    return names


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert and every dashboard target."""
    out = []
    for group in yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]["groups"]:
        out += [(f"alert {r['alert']}", r["expr"]) for r in group["rules"]]
    dashboard = json.loads((MONITORING / "dashboards" / "mig-extender.json").read_text())
    out += [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    return out


def problems(expr: str, names: dict[str, frozenset[str]]) -> list[str]:
    """What in ``expr`` the code does not export: metric names, label names in matchers and by/on clauses."""
    used = set(re.findall(r"\b(mig_extender_[a-z0-9_]+)\b", expr))
    found = [f"no metric {n}" for n in sorted(used - set(names))]
    if not used and "up{" not in expr:
        found.append("names no mig-extender metric")
    for metric, matchers in re.findall(r"\b(mig_extender_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*[=!]~?", matchers):
            if label not in names.get(metric, frozenset()):
                found.append(f"{metric} has no label {label}")
    known = set().union(*(names.get(n, frozenset()) for n in used)) | TARGET_LABELS
    for clause in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        found += [f"no label {lab}" for lab in (x.strip() for x in clause.split(",")) if lab and lab not in known]
    return found


@pytest.mark.parametrize("where, expr", queries(), ids=[w for w, _ in queries()])
def test_query_names_what_the_code_exports(where: str, expr: str) -> None:
    assert not problems(expr, exported()), (where, problems(expr, exported()))


@pytest.mark.parametrize("expr, expected", [
    pytest.param("rate(mig_extender_bogus_total[5m])", ["no metric mig_extender_bogus_total"], id="unknown-metric"),
    pytest.param('mig_extender_slices{colour="free"}', ["mig_extender_slices has no label colour"], id="bad-label"),
    pytest.param("max by (gpu) (mig_extender_slices)", ["no label gpu"], id="bad-by-label"),
    pytest.param("rate(mig_extender_requests[5m])", ["no metric mig_extender_requests"], id="counter-without-total"),
    pytest.param("vector(1)", ["names no mig-extender metric"], id="no-metric-at-all"),
])
def test_the_checker_can_fail(expr: str, expected: list[str]) -> None:
    assert problems(expr, exported()) == expected


def test_the_code_exports_what_the_alerts_need() -> None:
    for name in ("mig_extender_ready", "mig_extender_watch_disconnected_seconds", "mig_extender_rules",
                 "mig_extender_pending_slices", "mig_extender_rule_events_total",
                 "mig_extender_request_duration_seconds_bucket", "mig_extender_substitution_waste",
                 "mig_extender_dra_devices", "mig_extender_dra_upgraded_claims"):
        assert name in exported(), name


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MONITORING / name).read_text()) if d]


def test_every_component_has_a_pod_monitor_on_its_metrics_port() -> None:
    files = [ROOT / "manifests" / "base" / f for f in ("scheduler.yaml", "webhook.yaml", "reconciler.yaml")]
    base = {d["metadata"]["name"]: d for f in files for d in yaml.safe_load_all(f.read_text())
            if d and d["kind"] == "Deployment"}
    monitors = _docs("podmonitors.yaml")
    assert len(monitors) == len(base) == 3
    for monitor in monitors:
        (deployment,) = [d for d in base.values() if d["spec"]["template"]["metadata"]["labels"].items()
                         >= monitor["spec"]["selector"]["matchLabels"].items()]
        template = deployment["spec"]["template"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        containers = template["spec"]["containers"] + template["spec"].get("initContainers", [])  # native sidecars
        ports = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}
        assert str(ports[endpoint["port"]]) == template["metadata"]["annotations"]["prometheus.io/port"]
        assert endpoint.get("scheme", "http") == template["metadata"]["annotations"].get("prometheus.io/scheme", "http")


def test_alerts_are_complete_and_monitoring_is_not_in_the_default_install() -> None:
    (rule,) = _docs("prometheusrule.yaml")
    for alert in rule["spec"]["groups"][0]["rules"]:
        assert alert["for"] and alert["labels"]["severity"] in ("info", "warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["podmonitors.yaml", "prometheusrule.yaml"]
    assert yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())["resources"] == ["base"]
    assert "monitoring" not in (ROOT / "manifests" / "base" / "kustomization.yaml").read_text()
