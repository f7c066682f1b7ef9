"""What an operator sees on a real API server (issue 16): a node whose GPU the catalog does not know is
reported once, as a Warning Event on the Node that `kubectl describe node` lists, and in /debug/inventory."""

from __future__ import annotations

from .conftest import Fleet, MigScheduler
from .testenv.cluster import E2ECluster
from .testenv.extender import ExtenderProcess
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod, wait_running

MIG_1G = "nvidia.com/mig-1g.5gb"
UNKNOWN = {"nvidia.com/gpu.product": "NVIDIA-Future-X1", "nvidia.com/gpu.count": "1"}


def test_node_with_an_unknown_gpu_gets_one_warning_event(
    cluster: E2ECluster, extender: ExtenderProcess, fleet: Fleet
) -> None:
    node = fleet.add("x", gpu=None, resources={MIG_1G: 2}, labels=UNKNOWN)
    uid = cluster.core.read_node(node).metadata.uid

    def warnings() -> list:
        # what `kubectl describe node` asks for: the core/v1 view, by involved object name and uid
        selector = f"involvedObject.kind=Node,involvedObject.name={node},involvedObject.uid={uid}"
        return [e for e in cluster.core.list_namespaced_event("default", field_selector=selector).items
                if e.reason == "MigGpuUnknown"]

    (event,) = wait_for(warnings, timeout=30, what=f"a MigGpuUnknown Event on {node}")
    assert event.type == "Warning" and "'NVIDIA-Future-X1' is not in the MIG catalog" in event.message
    (listed,) = extender.inventory(node)["nodes"]
    assert listed["problems"] == [event.message] and listed["gpu"] == "A100-40GB"  # guessed from its slices

    fleet.set("x", resources={MIG_1G: 2}, labels={**UNKNOWN, "example.com/touched": "yes"})  # node updates
    stays(lambda: len(warnings()) == 1, duration=12, what="exactly one Event")  # two reporter passes and more


def test_node_with_a_known_gpu_gets_no_event(cluster: E2ECluster, extender: ExtenderProcess, fleet: Fleet) -> None:
    node = fleet.add("ok", gpu="H100-80GB", resources={"nvidia.com/mig-1g.10gb": 7})
    wait_for(lambda: extender.inventory(node)["nodes"], timeout=15, what=f"{node} in the inventory")
    assert extender.inventory(node)["nodes"][0]["problems"] == []
    selector = f"involvedObject.kind=Node,involvedObject.name={node}"
    stays(lambda: not [e for e in cluster.core.list_namespaced_event("default", field_selector=selector).items
                       if e.reason.startswith("Mig")], duration=6, what="no Mig* Event")


def test_pods_without_mig_requests_never_reach_the_extender(
    cluster: E2ECluster, extender: ExtenderProcess, mig_scheduler: MigScheduler, namespace: str, fleet: Fleet
) -> None:
    """scheduler-config/README.md's claim, checked: kube-scheduler asks an extender with managedResources
    only about pods that request one of them (HTTPExtender.IsInterested, pkg/scheduler/extender.go), for
    filter, prioritize and bind alike, so a pod without MIG requests costs no round trip."""
    for name in ("a", "b"):  # two feasible nodes: with one the scheduler would skip prioritize anyway
        fleet.add(name, resources={MIG_1G: 1})
    verbs = ("filter", "prioritize", "bind")
    before = {v: extender.metric("mig_extender_requests_total", verb=v) for v in verbs}
    cluster.core.create_namespaced_pod(namespace, make_pod("cpu-only", resources={"cpu": "10m"},
                                                           scheduler_name="mig-scheduler"))
    assert wait_running(cluster.core, namespace, "cpu-only").spec.node_name
    assert {v: extender.metric("mig_extender_requests_total", verb=v) for v in verbs} == before
    cluster.core.create_namespaced_pod(namespace, make_pod("mig", mig={"1g.5gb": 1}, scheduler_name="mig-scheduler"))
    wait_running(cluster.core, namespace, "mig")
    assert extender.metric("mig_extender_requests_total", verb="bind") == before["bind"] + 1  # the probe can fail


def _failed_scheduling(cluster: E2ECluster, namespace: str, pod: str) -> list[str]:
    """The messages of kube-scheduler's FailedScheduling events on ``pod``: what `kubectl describe pod` shows."""
    selector = f"involvedObject.kind=Pod,involvedObject.name={pod}"
    return [e.message or "" for e in cluster.core.list_namespaced_event(namespace, field_selector=selector).items
            if e.reason == "FailedScheduling"]


def test_describe_pod_says_per_node_why_no_substitute(
    cluster: E2ECluster, extender: ExtenderProcess, mig_scheduler: MigScheduler, namespace: str, fleet: Fleet
) -> None:
    """Issue 16 "why not substituted": the FailedNodes texts reach the pod's FailedScheduling event. An
    opted-out pod is told so; a pod no profile of the node's GPU could hold is told that, per node."""
    node = fleet.add("sold", resources={MIG_1G: 1, "nvidia.com/mig-2g.10gb": 1})
    filler = make_pod("filler", mig={"1g.5gb": 1}, node_name=node)
    cluster.core.create_namespaced_pod(namespace, filler)
    wait_running(cluster.core, namespace, "filler")
    wait_for(lambda: extender.inventory(node)["nodes"][0]["resources"][MIG_1G]["used"] == 1, timeout=30,
             what=f"filler counted on {node}")

    exact = make_pod("exact", mig={"1g.5gb": 1}, scheduler_name="mig-scheduler")
    exact["metadata"]["annotations"] = {"mig-extender.io/substitute": "false"}
    cluster.core.create_namespaced_pod(namespace, exact)
    opted = "not substituted: pod opted out of substitution (mig-extender.io/substitute=false)"
    wait_for(lambda: any(opted in m for m in _failed_scheduling(cluster, namespace, "exact")), timeout=60,
             what="a FailedScheduling event saying the pod opted out")

    cluster.core.create_namespaced_pod(namespace, make_pod("huge", mig={"7g.80gb": 1}, scheduler_name="mig-scheduler"))
    larger = "not substituted here: no profile on this GPU is at least 7g.80gb"
    wait_for(lambda: any(larger in m for m in _failed_scheduling(cluster, namespace, "huge")), timeout=60,
             what="a FailedScheduling event saying no profile is large enough")
    assert all(r["pod"]["name"] not in ("exact", "huge") for r in extender.rules())  # nothing recorded
