"""The gauges the alerts and the dashboard need (issue 16): readiness, watch disconnection, substitution waste."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mig_extender.cluster.drainventory import DraInventory
from mig_extender.components.metrics import Metrics
from mig_extender.core.dra import ANN_DRA_PROFILE, subrequest_name
from mig_extender.core.resources import LABEL_MANAGED_BY, ResourceCount
from mig_extender.core.rules import Phase, new_rule
from tests.builders import info, make_node, make_pod, make_resource_slice, res, snapshot_of
from tests.unit.test_drarestore import kep5004_claim


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


# ---- DRA-served MIG (issue 20): the same numbers as /debug/inventory's dra section, per profile ----------


def template_claim(name: str, asked: str, won: str, pool: str, device: str) -> dict[str, Any]:
    """A claim generated from our template for ``asked``, allocated from the subrequest of ``won``."""
    return {"metadata": {"namespace": "ml", "name": name, "labels": {LABEL_MANAGED_BY: "mig-extender"},
                         "annotations": {ANN_DRA_PROFILE: asked}},
            "status": {"allocation": {"devices": {"results": [
                {"request": f"mig/{subrequest_name(won)}", "driver": "gpu.nvidia.com", "pool": pool,
                 "device": device}]}}, "reservedFor": [{"resource": "pods", "name": name, "uid": f"u-{name}"}]}}


def kep5004_on(pool: str, device: str) -> dict[str, Any]:
    """The claim kube-scheduler makes for a KEP-5004 extended resource (not ours), holding ``device``."""
    claim = kep5004_claim(device)
    claim["status"]["allocation"]["devices"]["results"][0]["pool"] = pool
    return claim


def dra_book() -> DraInventory:
    """Two nodes: d1 (1g.5gb x3, 2g.10gb) and d2 (1g.5gb, 3g.20gb). On d1 a pod asking 1g.5gb got it
    (subrequest 0), one asking 1g.5gb got the 2g.10gb (a later subrequest), and a KEP-5004 claim the
    scheduler made holds another 1g.5gb; on d2 a pod asking 1g.5gb got the 3g.20gb."""
    book = DraInventory()
    book.replace_slices([make_resource_slice("d1", profiles=("1g.5gb", "1g.5gb", "1g.5gb", "2g.10gb")),
                         make_resource_slice("d2", profiles=("1g.5gb", "3g.20gb"))])
    book.replace_claims([template_claim("own", "1g.5gb", "1g.5gb", "d1", "gpu-0-mig-0"),
                         template_claim("up", "1g.5gb", "2g.10gb", "d1", "gpu-0-mig-3"),
                         template_claim("big", "1g.5gb", "3g.20gb", "d2", "gpu-0-mig-1"),
                         kep5004_on("d1", "gpu-0-mig-1")])
    return book


def dra_samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for k, v in samples(metrics).items() if k[0].startswith("mig_extender_dra_")}


def test_dra_devices_and_upgraded_claims_are_exported_per_profile_cluster_wide() -> None:
    book = dra_book()
    metrics = Metrics()
    metrics.watch_dra(book.usage)
    devices, upgraded = "mig_extender_dra_devices", "mig_extender_dra_upgraded_claims"
    assert dra_samples(metrics) == {
        # the KEP-5004 claim holds a 1g.5gb: allocated, like ours, but not upgraded (it is not ours)
        (devices, (("profile", "1g.5gb"), ("state", "allocated"))): 2,
        (devices, (("profile", "1g.5gb"), ("state", "free"))): 2,
        (devices, (("profile", "2g.10gb"), ("state", "allocated"))): 1,
        (devices, (("profile", "2g.10gb"), ("state", "free"))): 0,
        (devices, (("profile", "3g.20gb"), ("state", "allocated"))): 1,
        (devices, (("profile", "3g.20gb"), ("state", "free"))): 0,
        (upgraded, (("got", "2g.10gb"), ("profile", "1g.5gb"))): 1,
        (upgraded, (("got", "3g.20gb"), ("profile", "1g.5gb"))): 1,
    }


def test_dra_metrics_agree_with_the_debug_inventory_section() -> None:
    """One computation for both: the per-node numbers /debug/inventory shows sum to the metric's."""
    from mig_extender.web.debug import dra_json

    book = dra_book()
    metrics = Metrics()
    metrics.watch_dra(book.usage)
    shown = dra_json(book)
    for state in ("allocated", "free"):
        by_profile: dict[str, int] = {}
        for by in shown["nodes"].values():
            for profile, usage in by.items():
                by_profile[profile] = by_profile.get(profile, 0) + usage[state]
        assert {p: n for (name, labels), n in dra_samples(metrics).items() if name == "mig_extender_dra_devices"
                for p, s in [(dict(labels)["profile"], dict(labels)["state"])] if s == state} == by_profile
    assert sum(n for (name, _), n in dra_samples(metrics).items()
               if name == "mig_extender_dra_upgraded_claims") == len(shown["upgraded"]) == 2


@pytest.mark.parametrize(("served", "families"), [
    pytest.param(False, set(), id="not-served-no-dra-families-at-all"),
    pytest.param(True, {"mig_extender_dra_devices", "mig_extender_dra_upgraded_claims"}, id="served"),
])
def test_dra_metrics_exist_only_when_the_cluster_serves_dra(monkeypatch: pytest.MonkeyPatch, served: bool,
                                                            families: set[str]) -> None:
    """A cluster without resource.k8s.io must not show a DRA dashboard of zeros: the families are absent."""
    from mig_extender import process
    from mig_extender.cluster import drainventory

    monkeypatch.setattr(drainventory, "start_dra_informers", lambda api, book: [object()] if served else [])
    metrics = Metrics()
    process.watch_dra(object(), metrics)
    assert {f.name for f in metrics.registry.collect() if f.name.startswith("mig_extender_dra_")} == families


def test_an_upgraded_claim_whose_device_left_every_slice_is_counted_as_got_unknown() -> None:
    """A slice republished without the device (driver restart, GPU repartitioned) while the pod still runs:
    the claim is still upgraded, and the label says so rather than dropping the pod from the count."""
    book = DraInventory()
    book.replace_slices([make_resource_slice("d1", profiles=("1g.5gb",))])
    book.replace_claims([template_claim("up", "1g.5gb", "2g.10gb", "d1", "gpu-0-mig-9")])
    metrics = Metrics()
    metrics.watch_dra(book.usage)
    assert dra_samples(metrics)[("mig_extender_dra_upgraded_claims", (("got", "unknown"), ("profile", "1g.5gb")))] == 1
