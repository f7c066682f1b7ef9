"""components/dratemplates.py: the reconciler's DRA step over a fake resource.k8s.io API."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mig_extender.cluster.inventory import ClusterInventory
from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.dratemplates import DraTemplateSync, demanded_profiles
from mig_extender.components.reconciler import Reconciler
from mig_extender.core.dra import ClaimTemplate, TemplateChange
from mig_extender.core.resources import pod_info
from tests.builders import make_pod, make_resource_slice


class FakeDraObjects:
    """Templates kept as the API would keep them: create, replace (delete+create), 409 when present."""

    def __init__(self, namespaces: list[str], slices: list[dict[str, Any]]) -> None:
        self.namespaces, self.slice_list = namespaces, slices
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, str, str, tuple[str, ...]]] = []
        self.slice_reads = 0

    def dra_namespaces(self) -> list[str]:
        return list(self.namespaces)

    def slices(self) -> list[dict[str, Any]]:
        self.slice_reads += 1
        return list(self.slice_list)

    def templates(self) -> dict[tuple[str, str], dict[str, Any]]:
        return dict(self.stored)

    def apply(self, change: TemplateChange) -> str:
        t: ClaimTemplate = change.template
        self.applied.append((change.action, t.namespace, t.profile, t.choices))
        if change.action == "foreign":
            return "foreign"
        body = t.body()
        body["metadata"]["resourceVersion"] = str(len(self.applied))
        self.stored[(t.namespace, t.name)] = body
        return "created" if change.action == "create" else "replaced"


def test_sync_creates_a_template_per_namespace_and_offered_profile_then_is_idle() -> None:
    objects = FakeDraObjects(["ml"], [make_resource_slice("a", profiles=("1g.5gb", "2g.10gb"))])
    now = [0.0]
    sync = DraTemplateSync(objects, interval=10, clock=lambda: now[0])
    counts: Counter[str] = Counter()
    sync.sync(counts, [])
    assert objects.applied == [("create", "ml", "1g.5gb", ("1g.5gb", "2g.10gb")),
                               ("create", "ml", "2g.10gb", ("2g.10gb",))]
    assert counts == Counter(dra_template_created=2)
    now[0] = 5.0
    sync.sync(counts, [])
    assert objects.slice_reads == 1, "within the interval nothing is read"
    now[0] = 20.0
    sync.sync(counts, [])
    assert len(objects.applied) == 2, "up to date: nothing written again"


def test_a_new_gpu_model_replaces_the_templates_whose_choices_change() -> None:
    objects = FakeDraObjects(["ml"], [make_resource_slice("a", profiles=("1g.10gb",))])
    now = [0.0]
    sync = DraTemplateSync(objects, interval=10, clock=lambda: now[0])
    sync.sync(Counter(), [])
    objects.slice_list.append(make_resource_slice("h", "H100-80GB", profiles=("1g.20gb",)))
    now[0] = 11.0
    counts: Counter[str] = Counter()
    sync.sync(counts, [])
    assert objects.applied[-2:] == [("replace", "ml", "1g.10gb", ("1g.10gb", "1g.20gb")),
                                    ("create", "ml", "1g.20gb", ("1g.20gb",))]
    assert counts == Counter(dra_template_replaced=1, dra_template_created=1)


def test_no_dra_namespace_means_no_slice_listing() -> None:
    objects = FakeDraObjects([], [make_resource_slice("a")])
    DraTemplateSync(objects, clock=lambda: 0.0).sync(Counter(), [])
    assert objects.slice_reads == 0 and objects.applied == []


def test_pods_still_asking_extended_resources_get_their_profile_templated() -> None:
    pods = [pod_info(make_pod("p", mig={"3g.20gb": 1}, namespace="ml")),
            pod_info(make_pod("q", mig={"7g.40gb": 1}, namespace="other"))]
    assert demanded_profiles(pods, ["ml"]) == {"ml": {"3g.20gb"}}


def test_the_reconciler_runs_the_dra_step_only_as_leader() -> None:
    objects = FakeDraObjects(["ml"], [make_resource_slice("a", profiles=("1g.5gb",))])
    leader = [False]
    reconciler = Reconciler(ClusterInventory(), MemoryRuleStore(), actions=None,  # type: ignore[arg-type]
                            is_leader=lambda: leader[0], dra=DraTemplateSync(objects, clock=lambda: 0.0))
    reconciler.run_once()
    assert objects.applied == []
    leader[0] = True
    counts = reconciler.run_once()
    assert objects.applied == [("create", "ml", "1g.5gb", ("1g.5gb",))]
    assert counts["dra_template_created"] == 1
