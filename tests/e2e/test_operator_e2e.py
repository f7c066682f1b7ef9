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
