"""components/dratemplates.py and drarestore.py: the reconciler's DRA step over a fake resource.k8s.io API."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pytest

from mig_extender.cluster.inventory import ClusterInventory
from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.drarestore import DraRestorer
from mig_extender.components.dratemplates import DraTemplateSync, demanded_profiles
from mig_extender.components.reconciler import Reconciler
from mig_extender.core.dra import ClaimTemplate, TemplateChange
from mig_extender.core.drapod import missed_rewrite
from mig_extender.core.podspec import Restart, RestartOutcome
from mig_extender.core.resources import ANN_DRA_PROFILE, ANN_RESTORE, LABEL_MANAGED_BY, pod_info
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
    inventory = ClusterInventory()
    inventory.synced = True  # the reconciler acts only on synced caches
    reconciler = Reconciler(inventory, MemoryRuleStore(), actions=None,  # type: ignore[arg-type]
                            is_leader=lambda: leader[0], dra=DraTemplateSync(objects, clock=lambda: 0.0))
    reconciler.run_once()
    assert objects.applied == []
    leader[0] = True
    counts = reconciler.run_once()
    assert objects.applied == [("create", "ml", "1g.5gb", ("1g.5gb",))]
    assert counts["dra_template_created"] == 1


# ---- restore -------------------------------------------------------------------------------------------

class FakeClaims:
    def __init__(self, claims: list[dict[str, Any]]) -> None:
        self.items = claims

    def claims(self) -> list[dict[str, Any]]:
        return list(self.items)


class FakeRestartActions:
    def __init__(self, pods: dict[str, dict[str, Any]], answer: Restart = Restart.EVICTED) -> None:
        self.pods, self.answer = pods, answer
        self.evicted: list[str] = []
        self.events: list[tuple[str, str]] = []

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(name)

    def evict(self, pod: Any) -> RestartOutcome:
        self.evicted.append(pod["metadata"]["name"])
        return RestartOutcome(self.answer, "a PDB")

    def event(self, namespace: str, pod_name: str, pod_uid: str, reason: str, message: str,
              warning: bool = False, action: str = "Reconcile") -> None:
        self.events.append((pod_name, reason))


def dra_claim(pod: dict[str, Any], device: str, subrequest: str, profile: str = "1g.5gb") -> dict[str, Any]:
    meta = pod["metadata"]
    return {"metadata": {"namespace": meta["namespace"], "name": f"{meta['name']}-mig",
                         "labels": {LABEL_MANAGED_BY: "mig-extender"}, "annotations": {ANN_DRA_PROFILE: profile}},
            "status": {"allocation": {"devices": {"results": [
                {"request": f"mig/{subrequest}", "driver": "gpu.nvidia.com", "pool": "a", "device": device}]}},
                       "reservedFor": [{"resource": "pods", "name": meta["name"], "uid": meta["uid"]}]}}


SLICE = make_resource_slice("a", profiles=("1g.5gb", "2g.10gb", "3g.20gb"))  # devices gpu-0-mig-0, -1, -2


def restore_world(pod: dict[str, Any], answer: Restart = Restart.EVICTED) -> tuple[DraTemplateSync, FakeRestartActions]:
    """One free 1g.5gb (gpu-0-mig-0) and ``pod``, asking 1g.5gb, running on the 2g.10gb."""
    actions = FakeRestartActions({pod["metadata"]["name"]: pod}, answer)
    restorer = DraRestorer(FakeClaims([dra_claim(pod, "gpu-0-mig-1", "mig-2g-10gb")]), actions,
                           clock=lambda: NOW[0])
    return DraTemplateSync(FakeDraObjects(["ml"], [SLICE]), interval=0, clock=lambda: NOW[0],
                           restorer=restorer), actions


NOW = [0.0]


def running(owner: tuple[str, ...] | None = ("ReplicaSet", "web-1", "rs-1"),
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return make_pod("web", namespace="ml", node="a", owner=owner, annotations=annotations)


def test_an_upgraded_dra_pod_is_restarted_once_when_its_profile_frees() -> None:
    sync, actions = restore_world(running())
    counts: Counter[str] = Counter()
    sync.sync(counts, [])
    assert actions.evicted == ["web"] and actions.events == [("web", "MigRestoring")]
    assert counts["dra_restore_evicted"] == 1
    sync.sync(counts, [])  # the old claim lingers until the pod is gone: no second restart meanwhile
    assert actions.evicted == ["web"]


@pytest.mark.parametrize(
    ("pod", "outcome"),
    [
        pytest.param(running(annotations={ANN_RESTORE: "false"}), "opted_out", id="opted-out"),
        pytest.param(running(owner=("Job", "train", "job-1")), "blocked", id="job-pod"),
        pytest.param(running(owner=None), "blocked", id="bare-pod-nobody-recreates"),
        pytest.param(running(owner=("Widget", "w", "w-1", "example.com/v1")), "blocked", id="unknown-owner"),
    ],
)
def test_dra_pods_that_must_not_be_restarted_are_not(pod: dict[str, Any], outcome: str) -> None:
    sync, actions = restore_world(pod)
    counts: Counter[str] = Counter()
    sync.sync(counts, [])
    assert actions.evicted == [] and counts[f"dra_restore_{outcome}"] == 1


def test_a_refused_dra_restore_backs_off_as_the_device_plugin_route_does() -> None:
    """A PDB that refuses the eviction (429) was asked again on every pass (10 s) for as long as it
    refused: one eviction and one pod read per pass, forever. As the device plugin route's restore
    (issue 13 item 4): Event MigRestoreDeferred, next try after 30 s, doubling up to 15 min."""
    NOW[0] = 0.0
    sync, actions = restore_world(running(), answer=Restart.REFUSED)
    tries = []
    for t in (0, 10, 29, 30, 40, 89, 90, 209, 210):
        NOW[0] = float(t)
        before = len(actions.evicted)
        sync.sync(Counter(), [])
        if len(actions.evicted) > before:
            tries.append(t)
    assert tries == [0, 30, 90, 210]  # waits of 30, 60, 120 s
    assert [e for e in actions.events if e[1] == "MigRestoreDeferred"] == [("web", "MigRestoreDeferred")] * 4
    NOW[0] = 0.0


def test_a_dra_lineage_whose_replacements_come_back_on_a_substitute_is_restored_at_most_twice_an_hour() -> None:
    """Invariant 6 on the DRA route: a restart of ours lets the replacement's claim take the free device
    of its own profile, but another pod (a KEP-5004 pod, a claim not ours) can take it first; the
    replacement then runs on a substitute again, the next free device restarts it again, and so on.
    The device plugin route's lineage guard (PlanSettings.restart_limit, 2 an hour) did not apply here:
    the replacement of a restored pod is the pod its owner created after our restart."""
    claims, pods = FakeClaims([]), {}
    actions = FakeRestartActions(pods)
    now = [0.0]
    restorer = DraRestorer(claims, actions, clock=lambda: now[0], cooldown=60)
    sync = DraTemplateSync(FakeDraObjects(["ml"], [SLICE]), interval=0, clock=lambda: now[0], restorer=restorer)
    start = time.time()
    for i, name in enumerate(["web-a", "web-b", "web-c", "web-d"]):
        stamp = datetime.fromtimestamp(start + 1 + 120 * i, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod = make_pod(name, namespace="ml", node="a", owner=("ReplicaSet", "web-1", "rs-1"), created=stamp)
        pods.clear()
        pods[name] = pod  # the one before went; its replacement took the 2g.10gb again
        claims.items = [dra_claim(pod, "gpu-0-mig-1", "mig-2g-10gb")]
        sync.sync(Counter(), [pod_info(pod)])
        now[0] += 120.0
    assert actions.evicted == ["web-a", "web-b"]
    assert [pod for pod, reason in actions.events if reason == "MigRestoreSkipped"] == ["web-c", "web-d"]
    sync.sync(Counter(), [pod_info(pods["web-d"])])  # told once per pod
    assert [pod for pod, reason in actions.events if reason == "MigRestoreSkipped"] == ["web-c", "web-d"]
    # a replica of another owner is its own lineage
    other = make_pod("api-a", namespace="ml", node="a", owner=("ReplicaSet", "api-1", "rs-2"))
    pods.clear()
    pods["api-a"] = other
    claims.items = [dra_claim(other, "gpu-0-mig-1", "mig-2g-10gb")]
    sync.sync(Counter(), [pod_info(other)])
    assert actions.evicted == ["web-a", "web-b", "api-a"]



def test_the_dra_lineage_guard_sees_pods_the_inventory_does_not_keep() -> None:
    """The reconciler hands the restorer ``inventory.pods()``, which keeps only pods asking for MIG slices;
    the webhook's rewrite removed every nvidia.com/mig-* request of a DRA pod, so none of the pods whose
    lineage the guard follows was in it and every replacement was restored again (four restarts)."""
    claims, pods = FakeClaims([]), {}
    actions = FakeRestartActions(pods)
    now = [0.0]
    restorer = DraRestorer(claims, actions, clock=lambda: now[0], cooldown=60)
    sync = DraTemplateSync(FakeDraObjects(["ml"], [SLICE]), interval=0, clock=lambda: now[0], restorer=restorer)
    inventory = ClusterInventory()
    start = time.time()
    for i, name in enumerate(["web-a", "web-b", "web-c", "web-d"]):
        stamp = datetime.fromtimestamp(start + 1 + 120 * i, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod = make_pod(name, namespace="ml", node="a", owner=("ReplicaSet", "web-1", "rs-1"), created=stamp)
        assert inventory.upsert_pod(pod) is None  # rewritten: no MIG request left, not the inventory's
        pods.clear()
        pods[name] = pod
        claims.items = [dra_claim(pod, "gpu-0-mig-1", "mig-2g-10gb")]
        sync.sync(Counter(), inventory.pods())
        now[0] += 120.0
    assert actions.evicted == ["web-a", "web-b"]
    assert [pod for pod, reason in actions.events if reason == "MigRestoreSkipped"] == ["web-c", "web-d"]



def test_a_dra_pod_whose_lineage_cannot_be_read_waits_a_pass() -> None:
    """After a restore of its profile, an upgraded pod the API will not show us now (a 503) could be that
    restore's replacement: it is not restarted this pass, and is once it can be read."""
    pods: dict[str, dict[str, Any]] = {}
    claims, actions = FakeClaims([]), FakeRestartActions(pods)
    restorer = DraRestorer(claims, actions, cooldown=0)
    sync = DraTemplateSync(FakeDraObjects(["ml"], [SLICE]), interval=0, restorer=restorer)
    first = make_pod("web-a", namespace="ml", node="a", owner=("ReplicaSet", "web-1", "rs-1"))
    pods["web-a"], claims.items = first, [dra_claim(first, "gpu-0-mig-1", "mig-2g-10gb")]
    sync.sync(Counter(), [])
    later = make_pod("web-b", namespace="ml", node="a", owner=("ReplicaSet", "web-1", "rs-1"))
    pods.clear()
    pods["web-b"], claims.items = later, [dra_claim(later, "gpu-0-mig-1", "mig-2g-10gb")]
    def api_down(namespace: str, name: str) -> None:
        raise OSError("connection refused")

    real_get, actions.get_pod = actions.get_pod, api_down  # type: ignore[method-assign]
    counts: Counter[str] = Counter()
    sync.sync(counts, [])
    assert actions.evicted == ["web-a"] and counts["dra_restore_lineage_unknown"] == 1
    actions.get_pod = real_get  # type: ignore[method-assign]
    sync.sync(Counter(), [])
    assert actions.evicted == ["web-a", "web-b"]



def test_a_dra_restore_whose_replacement_got_its_profile_ends_that_lineage() -> None:
    """A replacement that got its own profile ends the lineage of the restore. It was left unmatched (only
    pods on a substitute were), so the owner's next pods on a substitute, pods nobody had restarted (a
    scale-up), inherited that restore's count: after two good restores of one Deployment, its third pod
    on a substitute was held back for the rest of the hour."""
    slices = [make_resource_slice("a", profiles=("1g.5gb", "1g.5gb", "1g.5gb", "2g.10gb"))]
    pods: dict[str, dict[str, Any]] = {}
    claims, actions, now = FakeClaims([]), FakeRestartActions(pods), [0.0]
    restorer = DraRestorer(claims, actions, clock=lambda: now[0], cooldown=60)
    sync = DraTemplateSync(FakeDraObjects(["ml"], slices), interval=0, clock=lambda: now[0], restorer=restorer)
    start = time.time()

    def web(name: str, after: float) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(start + after, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        pods[name] = make_pod(name, namespace="ml", node="a", owner=("ReplicaSet", "web-1", "rs-1"), created=stamp)
        return pods[name]

    # each step: (pod, device, firstAvailable entry that won); gpu-0-mig-3 is the 2g.10gb
    steps = [[("web-a", "gpu-0-mig-3", "mig-2g-10gb")],
             [("web-a2", "gpu-0-mig-0", "mig-1g-5gb"), ("web-s", "gpu-0-mig-3", "mig-2g-10gb")],
             [("web-a2", "gpu-0-mig-0", "mig-1g-5gb"), ("web-s2", "gpu-0-mig-1", "mig-1g-5gb"),
              ("web-t", "gpu-0-mig-3", "mig-2g-10gb")]]
    for i, step in enumerate(steps):
        claims.items = [dra_claim(pods.get(name) or web(name, 1 + 120 * i + j), device, won)
                        for j, (name, device, won) in enumerate(step)]
        sync.sync(Counter(), [])
        now[0] += 120.0
    assert [pod for pod, reason in actions.events if reason == "MigRestoreSkipped"] == []
    assert actions.evicted == ["web-a", "web-s", "web-t"]



class PdbOn(FakeRestartActions):
    """A PodDisruptionBudget refuses the eviction of the pods named in ``refused``."""

    def __init__(self, pods: dict[str, dict[str, Any]], refused: set[str]) -> None:
        super().__init__(pods)
        self.refused = refused

    def evict(self, pod: Any) -> RestartOutcome:
        if pod["metadata"]["name"] in self.refused:
            return RestartOutcome(Restart.REFUSED, "a PDB")
        return super().evict(pod)


@pytest.mark.parametrize(
    ("annotations", "refused"),
    [
        pytest.param({ANN_RESTORE: "false"}, set(), id="opted-out"),
        pytest.param(None, {"big"}, id="refused-by-a-pdb-backing-off"),
    ],
)
def test_a_top_dra_candidate_that_is_not_restarted_leaves_the_free_device_to_the_next(
        annotations: dict[str, str] | None, refused: set[str]) -> None:
    """``restores`` gave the one free 1g.5gb to the biggest waster; when that pod was not restarted (opted
    out, or a PDB refusing it during its backoff) the device went to nobody, every pass: the next candidate
    waited for ever (opted out) or up to 15 minutes (the backoff) beside a free device of its profile."""
    big = make_pod("big", namespace="ml", node="a", owner=("ReplicaSet", "big-1", "rs-1"), annotations=annotations)
    small = make_pod("small", namespace="ml", node="a", owner=("ReplicaSet", "small-1", "rs-2"))
    pods = {"big": big, "small": small}
    actions, now = PdbOn(pods, refused), [0.0]
    claims = FakeClaims([dra_claim(big, "gpu-0-mig-2", "mig-3g-20gb"), dra_claim(small, "gpu-0-mig-1", "mig-2g-10gb")])
    restorer = DraRestorer(claims, actions, clock=lambda: now[0])
    sync = DraTemplateSync(FakeDraObjects(["ml"], [SLICE]), interval=0, clock=lambda: now[0], restorer=restorer)
    for _ in range(3):
        sync.sync(Counter(), [])
        now[0] += 5.0
    assert actions.evicted == ["small"]


# ---- pods created before their templates ------------------------------------------------------------------

def unschedulable(name: str, owner: tuple[str, ...] | None = ("ReplicaSet", "web-1", "rs-1"),
                  namespace: str = "ml", mig: dict[str, int] | None = None) -> dict[str, Any]:
    pod = make_pod(name, namespace=namespace, mig=mig or {"1g.5gb": 1}, owner=owner)
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    return pod


OURS = {("ml", "mig-extender-1g.5gb")}


@pytest.mark.parametrize(
    ("pod", "templates", "found"),
    [
        pytest.param(unschedulable("p"), OURS, True, id="unschedulable-template-exists-now"),
        pytest.param(unschedulable("p"), set(), False, id="template-still-missing"),
        pytest.param(unschedulable("p", namespace="other"), {("other", "mig-extender-1g.5gb")}, False,
                     id="namespace-not-in-dra-mode"),
        pytest.param(make_pod("p", namespace="ml", mig={"1g.5gb": 1}), OURS, False, id="not-tried-by-a-scheduler-yet"),
        pytest.param(unschedulable("p", mig={"1g.5gb": 1, "2g.10gb": 1}), OURS, False, id="one-template-missing"),
    ],
)
def test_missed_rewrite(pod: dict[str, Any], templates: set[tuple[str, str]], found: bool) -> None:
    assert bool(missed_rewrite([pod_info(pod)], ["ml"], templates)) is found


def test_a_pod_created_before_its_template_is_recreated_once_per_owner() -> None:
    first, second = unschedulable("web-a"), unschedulable("web-b")
    actions = FakeRestartActions({"web-a": first, "web-b": second})
    now = [0.0]
    restorer = DraRestorer(FakeClaims([]), actions, clock=lambda: now[0], cooldown=60, recreate_every=600)
    counts: Counter[str] = Counter()
    restorer.recreate_missed(counts, [pod_info(first), pod_info(second)], ["ml"], OURS)
    assert actions.evicted == ["web-a"] and actions.events == [("web-a", "MigDraRecreated")]
    now[0] = 120.0  # the replacement missed the rewrite too (webhook down): not again within recreate_every
    restorer.recreate_missed(counts, [pod_info(second)], ["ml"], OURS)
    assert actions.evicted == ["web-a"]
    now[0] = 700.0
    restorer.recreate_missed(counts, [pod_info(second)], ["ml"], OURS)
    assert actions.evicted == ["web-a", "web-b"]
    assert counts == Counter(dra_recreate_evicted=2)


def test_a_foreign_template_of_our_name_does_not_make_pods_be_recreated() -> None:
    """The webhook only rewrites with our templates: recreating for a foreign one would loop."""
    pod = unschedulable("web-a")
    objects = FakeDraObjects(["ml"], [make_resource_slice("a", profiles=("1g.5gb",))])
    objects.stored[("ml", "mig-extender-1g.5gb")] = {"metadata": {"name": "mig-extender-1g.5gb", "labels": {}}}
    actions = FakeRestartActions({"web-a": pod})
    sync = DraTemplateSync(objects, interval=0, clock=lambda: 0.0, restorer=DraRestorer(FakeClaims([]), actions))
    sync.sync(Counter(), [pod_info(pod)])
    assert actions.evicted == []
