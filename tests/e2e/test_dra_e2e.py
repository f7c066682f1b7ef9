"""DRA on the real 1.36.3 control plane, with the fake NVIDIA DRA driver (testenv/dradriver.py).

What this module proves about Kubernetes itself (issue 20's facts, the ground the DRA bridge stands on):
the stock kube-scheduler's DynamicResources plugin allocates MIG devices of a `firstAvailable`
template in subrequest order, whatever the order of the devices in the slice; the resourceclaim
controller generates the claims; `status.allocation` names the subrequest that won; nothing is
allocated twice; and a pod whose request no device can meet stays Pending. Then that mig-extender's DRA
mode works on it: the reconciler writes the templates, the webhook rewrites a DRA namespace's MIG pods
into claims, and the real scheduler's DynamicResources plugin gives each pod its profile while one is
free and the least-waste substitute after; the seed walkthrough's upgrade and restore happen beside a
KEP-5004 pod (an extended resource the scheduler backs with a DRA device), whose device is counted and
never chosen.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from mig_extender.core.resources import ANN_DRA_DEMAND, LABEL_DRA

from .conftest import Fleet
from .testenv.cluster import E2ECluster
from .testenv.dradriver import DRIVER, MIG_CLASS, FakeDraDriver
from .testenv.nodes import raw
from .testenv.stack import NS_LABEL, Stack
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_deployment, make_pod


@pytest.fixture
def dra(cluster: E2ECluster) -> FakeDraDriver:
    driver = FakeDraDriver(cluster.api_client())
    driver.install()
    return driver


@pytest.fixture
def resource_api(cluster: E2ECluster) -> Iterator[client.ResourceV1Api]:
    yield client.ResourceV1Api(cluster.api_client())


def profile_selector(profile: str) -> dict[str, Any]:
    return {"cel": {"expression": f"device.attributes['{DRIVER}'].profile == '{profile}'"}}


def first_available_template(name: str, profiles: list[str]) -> dict[str, Any]:
    subrequests = [
        {"name": f"mig-{p.replace('.', '-')}", "deviceClassName": MIG_CLASS, "selectors": [profile_selector(p)]}
        for p in profiles
    ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name},
        "spec": {"spec": {"devices": {"requests": [{"name": "mig", "firstAvailable": subrequests}]}}},
    }


def claim_pod(name: str, template: str) -> dict[str, Any]:
    pod = make_pod(name)
    pod["spec"]["resourceClaims"] = [{"name": "mig", "resourceClaimTemplateName": template}]
    pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": "mig"}]}
    return pod


def allocation_of(cluster: E2ECluster, resource_api: client.ResourceV1Api, ns: str, pod: str) -> list[dict[str, Any]]:
    """The allocation results of the pod's one generated claim ([] until it is allocated)."""
    status = raw(cluster.core.read_namespaced_pod, pod, ns).get("status") or {}
    statuses = status.get("resourceClaimStatuses") or ()
    names = [s["resourceClaimName"] for s in statuses if s.get("resourceClaimName")]
    if not names:
        return []
    claim = raw(resource_api.read_namespaced_resource_claim, names[0], ns)
    return (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or []


def test_first_available_is_taken_in_subrequest_order_on_the_real_scheduler(
    cluster: E2ECluster, namespace: str, fleet: Fleet, dra: FakeDraDriver, resource_api: client.ResourceV1Api
) -> None:
    """Three pods, one template [1g.5gb, 2g.10gb], a node with 2 x 1g.5gb + 2g.10gb listed 2g first:
    1g.5gb, 1g.5gb, then 2g.10gb; a fourth stays Pending; every pod Running, no device twice."""
    node = fleet.add("dra", gpu="A100-40GB", resources={})
    # the 2g.10gb is placed at slice 0, so it comes first in the slice: order must come from the request
    dra.publish(node, "A100-40GB", [["2g.10gb", "1g.5gb", "1g.5gb"]])
    raw(resource_api.create_namespaced_resource_claim_template, namespace,
        first_available_template("mig-1g", ["1g.5gb", "2g.10gb"]))
    mark = cluster.fake_kubelet.checkpoint()
    won = []
    for i in range(3):
        name = f"p{i}"
        cluster.core.create_namespaced_pod(namespace, claim_pod(name, "mig-1g"))
        results = wait_for(lambda name=name: allocation_of(cluster, resource_api, namespace, name), timeout=60,
                           what=f"{name}'s claim allocated")
        wait_for(lambda name=name: cluster.core.read_namespaced_pod(name, namespace).status.phase == "Running",
                 timeout=30, what=f"{name} Running")
        won.append((results[0]["request"], results[0]["device"]))
    assert [request for request, _ in won] == ["mig/mig-1g-5gb", "mig/mig-1g-5gb", "mig/mig-2g-10gb"]
    assert len({device for _, device in won}) == 3
    cluster.core.create_namespaced_pod(namespace, claim_pod("p3", "mig-1g"))
    stays(lambda: cluster.core.read_namespaced_pod("p3", namespace).status.phase == "Pending", duration=3,
          what="the fourth pod Pending (no device left)")
    assert not allocation_of(cluster, resource_api, namespace, "p3")
    cluster.fake_kubelet.assert_no_overcommit(since=mark)
    admitted = [d for d in cluster.fake_kubelet.decisions(mark) if d.admitted]
    assert sorted(d.name for d in admitted) == ["p0", "p1", "p2"]


def test_fake_kubelet_waits_for_a_reserved_claim(
    cluster: E2ECluster, namespace: str, fleet: Fleet, dra: FakeDraDriver, resource_api: client.ResourceV1Api
) -> None:
    """A pod bound by hand (no scheduler, so no claim allocated or reserved) is not started by the
    kubelet: the DRA manager refuses a claim that does not list the pod in reservedFor."""
    node = fleet.add("dra", gpu="A100-40GB", resources={})
    dra.publish(node, "A100-40GB", [["1g.5gb"]])
    raw(resource_api.create_namespaced_resource_claim_template, namespace,
        first_available_template("mig-1g", ["1g.5gb"]))
    pod = claim_pod("bound", "mig-1g")
    pod["spec"]["nodeName"] = node
    mark = cluster.fake_kubelet.checkpoint()
    cluster.core.create_namespaced_pod(namespace, pod)
    time.sleep(2)
    assert cluster.core.read_namespaced_pod("bound", namespace).status.phase == "Pending"
    assert not [d for d in cluster.fake_kubelet.decisions(mark) if d.name == "bound"]


# ---- DRA mode: the reconciler's templates and the webhook's rewrite, on the real scheduler -----------------


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(cluster, tmp_path_factory.mktemp("dra")).start()
    yield s
    s.stop_all()


def templates_in(resource_api: client.ResourceV1Api, ns: str) -> dict[str, list[str]]:
    """Our templates in ``ns``: name -> its firstAvailable profiles, in order."""
    found = raw(resource_api.list_namespaced_resource_claim_template, ns)["items"]
    return {t["metadata"]["name"]: [s["selectors"][0]["cel"]["expression"].split("'")[-2]
                                    for s in t["spec"]["spec"]["devices"]["requests"][0]["firstAvailable"]]
            for t in found}


def test_dra_namespace_pods_get_their_profile_while_free_then_the_least_waste_substitute(
    cluster: E2ECluster, stack: Stack, fleet: Fleet, dra: FakeDraDriver, resource_api: client.ResourceV1Api,
    e2e_report: Any,
) -> None:
    """The seed walkthrough node (2 x 1g.5gb, 2g.10gb, 3g.20gb) served by DRA only: pods asking
    nvidia.com/mig-1g.5gb in a DRA namespace run on 1g.5gb, 1g.5gb, then 2g.10gb (not the 3g.20gb),
    then 3g.20gb, and the fifth waits; a pod of a namespace without the label keeps its request."""
    node = fleet.add("dra", gpu="A100-40GB", resources={})
    dra.publish(node, "A100-40GB", [["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]])
    t0 = time.monotonic()
    ns = cluster.create_namespace(prefix="dra", labels={NS_LABEL: "true", LABEL_DRA: "true"})
    plain_ns = cluster.create_namespace(prefix="nodra", labels={NS_LABEL: "true"})
    try:
        wait_for(lambda: templates_in(resource_api, ns).get("mig-extender-1g.5gb"), timeout=60,
                 what="the reconciler's template for 1g.5gb")
        e2e_report(f"DRA templates there {time.monotonic() - t0:.1f} s after the namespace was created")
        assert templates_in(resource_api, ns)["mig-extender-1g.5gb"] == ["1g.5gb", "2g.10gb", "3g.20gb"]
        mark = cluster.fake_kubelet.checkpoint()
        won = []
        for i in range(4):
            name = f"p{i}"
            start = time.monotonic()
            stack.core.create_namespaced_pod(ns, make_pod(name, mig={"1g.5gb": 1}))
            wait_for(lambda name=name: stack.core.read_namespaced_pod(name, ns).status.phase == "Running",
                     timeout=60, what=f"{name} Running")
            took = time.monotonic() - start
            pod = raw(stack.core.read_namespaced_pod, name, ns)
            assert pod["metadata"]["annotations"][ANN_DRA_DEMAND] == "nvidia.com/mig-1g.5gb=1"
            assert not [r for r in pod["spec"]["containers"][0]["resources"].get("limits", {})
                        if r.startswith("nvidia.com/mig-")]
            results = allocation_of(cluster, resource_api, ns, name)
            won.append((results[0]["request"], results[0]["device"]))
            e2e_report(f"DRA pod {name} asking 1g.5gb: Running on {results[0]['request']} in {took:.1f} s")
        assert [request for request, _ in won] == ["mig/mig-1g-5gb", "mig/mig-1g-5gb", "mig/mig-2g-10gb",
                                                   "mig/mig-3g-20gb"]
        assert len({device for _, device in won}) == 4
        stack.core.create_namespaced_pod(ns, make_pod("p4", mig={"1g.5gb": 1}))
        stays(lambda: stack.core.read_namespaced_pod("p4", ns).status.phase == "Pending", duration=3,
              what="the fifth pod Pending (every device taken)")
        stack.core.create_namespaced_pod(plain_ns, make_pod("plain", mig={"1g.5gb": 1}))
        plain = raw(stack.core.read_namespaced_pod, "plain", plain_ns)
        assert plain["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.5gb": "1"}
        assert not plain["spec"].get("resourceClaims")
        cluster.fake_kubelet.assert_no_overcommit(since=mark)
    finally:
        cluster.delete_namespace(ns)
        cluster.delete_namespace(plain_ns)


def running_on(cluster: E2ECluster, resource_api: client.ResourceV1Api, ns: str, app: str) -> list[tuple[str, str]]:
    """(pod, subrequest that won) of the app's Running, not terminating pods."""
    found = []
    for pod in raw(cluster.core.list_namespaced_pod, ns, label_selector=f"app={app}")["items"]:
        if pod["metadata"].get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
            continue
        results = allocation_of(cluster, resource_api, ns, pod["metadata"]["name"])
        found.append((pod["metadata"]["name"], results[0]["request"] if results else ""))
    return found


KEP5004_CLASS = "e2e-mig-1g.5gb"


@contextlib.contextmanager
def kep5004_class(resource_api: client.ResourceV1Api, profile: str) -> Iterator[str]:
    """A DeviceClass with `extendedResourceName: nvidia.com/mig-<profile>` (KEP-5004, DRAExtendedResource,
    beta and on in 1.36): pods asking that extended resource on a node that does not advertise it are
    served a matching DRA device. Cluster-scoped, so deleted on the way out."""
    selectors = [{"cel": {"expression": f"device.driver == '{DRIVER}'"}}, profile_selector(profile)]
    body = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": KEP5004_CLASS},
            "spec": {"extendedResourceName": f"nvidia.com/mig-{profile}", "selectors": selectors}}
    raw(resource_api.create_device_class, body)
    try:
        yield KEP5004_CLASS
    finally:
        resource_api.delete_device_class(KEP5004_CLASS)


def kep5004_pod(name: str, node: str, profile: str) -> dict[str, Any]:
    """A pod asking `nvidia.com/mig-<profile>: 1` as an extended resource, pinned to ``node`` (another
    test's device-plugin node advertising the resource would otherwise serve it without DRA)."""
    pod = make_pod(name, mig={profile: 1})
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return pod


def kep5004_device(cluster: E2ECluster, resource_api: client.ResourceV1Api, ns: str, pod: str) -> tuple[str, str]:
    """(pool, device) of the claim the scheduler created for the pod's extended resource; asserts the
    scheduler mapped the container's request to it (`status.extendedResourceClaimStatus`), which is what
    makes the kubelet skip it in its resource fit (pkg/kubelet/lifecycle/predicate.go)."""
    status = raw(cluster.core.read_namespaced_pod, pod, ns)["status"]
    mappings = status["extendedResourceClaimStatus"]["requestMappings"]
    assert [(m["containerName"], m["resourceName"]) for m in mappings] == [("main", "nvidia.com/mig-1g.5gb")]
    claim = raw(resource_api.read_namespaced_resource_claim,
                status["extendedResourceClaimStatus"]["resourceClaimName"], ns)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    return result["pool"], result["device"]


def device_of(cluster: E2ECluster, resource_api: client.ResourceV1Api, ns: str, pod: str) -> tuple[str, str]:
    """(pool, device) of the pod's one template claim."""
    (result,) = allocation_of(cluster, resource_api, ns, pod)
    return result["pool"], result["device"]


def phase(cluster: E2ECluster, ns: str, pod: str) -> str:
    return str(cluster.core.read_namespaced_pod(pod, ns).status.phase)


def test_dra_walkthrough_scaled_pod_runs_on_2g_at_once_and_is_restored_to_1g_when_one_frees(
    cluster: E2ECluster, stack: Stack, fleet: Fleet, dra: FakeDraDriver, resource_api: client.ResourceV1Api,
    namespace: str, e2e_report: Any,
) -> None:
    """Seed walkthrough in DRA mode, beside a KEP-5004 pod on the same node. The node has three 1g.5gb
    (two on GPU 0, one on GPU 1), a 2g.10gb and a 3g.20gb. `ext` (a KEP-5004 pod: `nvidia.com/mig-1g.5gb: 1`
    served through a DeviceClass with `extendedResourceName`) takes one 1g.5gb; `base` (2 x 1g.5gb) the
    other two; `scaled` (1g.5gb) runs on the 2g.10gb with no restart, and is not restored while only
    `ext`'s device is not ours; `base` scaled to 1 frees a 1g.5gb and the reconciler restarts `scaled`,
    whose replacement runs on the freed 1g.5gb, never on `ext`'s; `ext` Runs throughout, and a second
    KEP-5004 pod stays Pending (every 1g.5gb taken). No device twice, no over-commit.

    `ext` lives in a namespace mig-extender does not manage (no webhook, no DRA label) and is placed by
    the default scheduler: that is the realistic KEP-5004 setup. Its team chose Kubernetes' own mapping
    of the extended resource to DRA; our webhook would rewrite it into our claims (DRA namespace), and
    mig-scheduler's extender judges `nvidia.com/mig-*` from node allocatable, which a DRA node does
    not advertise, so it would veto the node. Only the default scheduler's DynamicResources plugin
    serves it, so what mig-extender must get right is the count: its claim holds a device."""
    node = fleet.add("dra", gpu="A100-40GB", resources={})
    dra.publish(node, "A100-40GB", [["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"], ["1g.5gb"]])
    ns = cluster.create_namespace(prefix="drawalk", labels={NS_LABEL: "true", LABEL_DRA: "true"})
    try:
        with kep5004_class(resource_api, "1g.5gb"):
            walkthrough_beside_kep5004(cluster, stack, resource_api, node, ns, namespace, e2e_report)
    finally:
        cluster.delete_namespace(ns)


def walkthrough_beside_kep5004(cluster: E2ECluster, stack: Stack, resource_api: client.ResourceV1Api, node: str,
                               ns: str, ext_ns: str, e2e_report: Any) -> None:
    wait_for(lambda: templates_in(resource_api, ns).get("mig-extender-1g.5gb"), timeout=60,
             what="the reconciler's template for 1g.5gb")
    mark = cluster.fake_kubelet.checkpoint()
    cluster.core.create_namespaced_pod(ext_ns, kep5004_pod("ext", node, "1g.5gb"))
    wait_for(lambda: phase(cluster, ext_ns, "ext") == "Running", timeout=60, what="the KEP-5004 pod Running")
    ext_device = kep5004_device(cluster, resource_api, ext_ns, "ext")
    assert ext_device[0] == node
    stack.apps.create_namespaced_deployment(ns, make_deployment("base", replicas=2, mig={"1g.5gb": 1}))
    wait_for(lambda: sorted(r for _, r in running_on(cluster, resource_api, ns, "base"))
             == ["mig/mig-1g-5gb", "mig/mig-1g-5gb"], timeout=60, what="base on two 1g.5gb")
    start = time.monotonic()
    stack.apps.create_namespaced_deployment(ns, make_deployment("scaled", mig={"1g.5gb": 1}))
    (first,) = wait_for(lambda: running_on(cluster, resource_api, ns, "scaled"), timeout=60, what="scaled Running")
    e2e_report(f"DRA walkthrough: scaled pod Running on {first[1]} {time.monotonic() - start:.1f} s after "
               "the Deployment was created (no restart)")
    assert first[1] == "mig/mig-2g-10gb"
    # the extender's DRA book (informers) sees the devices, counts ext's claim, and lists only ours as upgraded
    seen = wait_for(lambda: stack.extender.inventory(node)["dra"]["upgraded"], timeout=30,
                    what="the upgraded claim in /debug/inventory")
    assert [(u["pod"], u["asked"], u["got"]) for u in seen] == [(first[0], "1g.5gb", "mig-2g-10gb")]
    assert stack.extender.inventory(node)["dra"]["nodes"][node]["1g.5gb"] == {"devices": 3, "allocated": 3,
                                                                              "free": 0}
    agreed = assert_dra_metrics_match_the_debug_inventory(stack)
    e2e_report(f"DRA walkthrough: extender /metrics = /debug/inventory: {agreed}")
    # ext's device is not free for a restore: counted as free, the reconciler would restart scaled now
    stays(lambda: [p for p, _ in running_on(cluster, resource_api, ns, "scaled")] == [first[0]]
          and "MigRestoring" not in {r for name, r in stack.events(ns) if name == first[0]},
          duration=8, what="scaled left on the 2g.10gb while no 1g.5gb of its own is free")
    start = time.monotonic()
    stack.apps.patch_namespaced_deployment_scale("base", ns, {"spec": {"replicas": 1}})
    restored = wait_for(
        lambda: [p for p in running_on(cluster, resource_api, ns, "scaled") if p[1] == "mig/mig-1g-5gb"],
        timeout=90, what="scaled restored to 1g.5gb")
    e2e_report(f"DRA walkthrough: restored to 1g.5gb {time.monotonic() - start:.1f} s after a 1g.5gb freed, "
               "beside a KEP-5004 pod")
    assert restored[0][0] != first[0], "restore is a restart: a new pod"
    assert device_of(cluster, resource_api, ns, restored[0][0]) != ext_device
    wait_for(lambda: len(stack.pods(ns, "app=scaled")) == 1, timeout=30, what="one scaled pod left")
    assert "MigRestoring" in {reason for name, reason in stack.events(ns) if name == first[0]}
    assert phase(cluster, ext_ns, "ext") == "Running"
    assert kep5004_device(cluster, resource_api, ext_ns, "ext") == ext_device
    wait_for(lambda: stack.extender.inventory(node)["dra"]["nodes"][node]["1g.5gb"]
             == {"devices": 3, "allocated": 3, "free": 0}, timeout=30, what="every 1g.5gb allocated again")
    cluster.core.create_namespaced_pod(ext_ns, kep5004_pod("ext2", node, "1g.5gb"))
    stays(lambda: phase(cluster, ext_ns, "ext2") == "Pending", duration=3,
          what="the second KEP-5004 pod Pending (every 1g.5gb taken; its class matches no other profile)")
    cluster.fake_kubelet.assert_no_overcommit(since=mark)
    assert "ext" in {d.name for d in cluster.fake_kubelet.decisions(mark) if d.admitted}


def assert_dra_metrics_match_the_debug_inventory(stack: Stack) -> str:
    """The extender's /metrics says what its /debug/inventory says, summed over every DRA node (the
    metrics are cluster-wide): 1g.5gb allocated and free, and how many of our claims run upgraded. Returns
    what it read, for the report."""
    shown = stack.extender.inventory()["dra"]
    by_state = {s: sum(by.get("1g.5gb", {}).get(s, 0) for by in shown["nodes"].values()) for s in ("allocated", "free")}
    scraped = {s: stack.extender.metric("mig_extender_dra_devices", profile="1g.5gb", state=s) for s in by_state}
    assert scraped == by_state and by_state["allocated"] >= 3
    upgraded = stack.extender.metric("mig_extender_dra_upgraded_claims", profile="1g.5gb")
    assert upgraded == len([u for u in shown["upgraded"] if u["asked"] == "1g.5gb"]) >= 1
    assert stack.extender.metric("mig_extender_dra_upgraded_claims", profile="1g.5gb", got="2g.10gb") >= 1
    return f"1g.5gb allocated {scraped['allocated']:g}, free {scraped['free']:g}; upgraded 1g.5gb claims {upgraded:g}"


def test_pod_created_before_its_template_is_recreated_and_rewritten(
    cluster: E2ECluster, stack: Stack, fleet: Fleet, dra: FakeDraDriver, resource_api: client.ResourceV1Api,
    e2e_report: Any,
) -> None:
    """With no reconciler (so no template yet) the webhook admits a DRA namespace's pod unchanged, with a
    warning, and it cannot be scheduled on a DRA-only node; once the reconciler has written the templates
    it restarts the pod, and the ReplicaSet's replacement is rewritten into a claim and runs."""
    node = fleet.add("dra", gpu="A100-40GB", resources={})
    dra.publish(node, "A100-40GB", [["1g.5gb"]])
    stack.stop_reconciler()
    ns = cluster.create_namespace(prefix="draearly", labels={NS_LABEL: "true", LABEL_DRA: "true"})
    try:
        deployment = make_deployment("early", mig={"1g.5gb": 1})
        deployment["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        stack.apps.create_namespaced_deployment(ns, deployment)
        (first,) = wait_for(lambda: [p for p in stack.pods(ns, "app=early") if any(
            c.type == "PodScheduled" and c.reason == "Unschedulable" for c in p.status.conditions or ())],
            timeout=60, what="the early pod unschedulable")
        assert first.spec.containers[0].resources.limits == {"nvidia.com/mig-1g.5gb": "1"}
        assert not first.spec.resource_claims
        start = time.monotonic()
        stack.start_reconciler()
        ran = wait_for(lambda: running_on(cluster, resource_api, ns, "early"), timeout=90,
                       what="the rewritten replacement Running")
        e2e_report(f"DRA: pod created before its template recreated and Running {time.monotonic() - start:.1f} s "
                   "after the reconciler started")
        assert ran[0][0] != first.metadata.name and ran[0][1] == "mig/mig-1g-5gb"
        assert "MigDraRecreated" in {reason for name, reason in stack.events(ns) if name == first.metadata.name}
    finally:
        if not stack.reconcilers():
            stack.start_reconciler()
        cluster.delete_namespace(ns)
