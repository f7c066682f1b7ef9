"""mig-extender behind a real kube-scheduler: the scheduler calls our verbs, MIG pods land only where
their slice is free, a sold-out profile yields a substitution rule, and nothing is ever over-committed
(the fake kubelet would reject the pod with OutOf<resource>)."""

from __future__ import annotations

import time
from typing import Any

from .conftest import Fleet, MigScheduler
from .testenv.cluster import E2ECluster
from .testenv.extender import ExtenderProcess
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_deployment, make_pod, pods_of, wait_running, wait_unschedulable

MIG_1G = "nvidia.com/mig-1g.5gb"
MIG_2G = "nvidia.com/mig-2g.10gb"
MIG_3G = "nvidia.com/mig-3g.20gb"
SCHEDULER = "mig-scheduler"
REQUESTS = "mig_extender_requests_total"


def _await_inventory(extender: ExtenderProcess, node: str, **used: int) -> None:
    """Wait until the extender's inventory has `node`, with `used` slices per resource when given.

    The extender learns nodes and pods from its own watches; asserting before it has caught up would
    test the race, not the decision.
    """

    def seen() -> bool:
        nodes = extender.inventory(node)["nodes"]
        if not nodes:
            return False
        resources = nodes[0]["resources"]
        return all(resources.get(name, {}).get("used") == count for name, count in used.items())

    wait_for(seen, timeout=15, what=f"extender inventory of {node} with used={used}")


def _occupy(
    cluster: E2ECluster, namespace: str, node: str, name: str, mig: dict[str, int], extender: ExtenderProcess
) -> None:
    """Bind a filler pod straight to `node` (no scheduler) and wait until the extender counts it."""
    cluster.core.create_namespaced_pod(namespace, make_pod(name, mig=mig, node_name=node))
    wait_running(cluster.core, namespace, name)
    _await_inventory(extender, node, **{f"nvidia.com/mig-{p}": n for p, n in mig.items()})


def _verb_counts(extender: ExtenderProcess) -> dict[str, float]:
    return {verb: extender.metric(REQUESTS, verb=verb) for verb in ("filter", "prioritize", "bind")}


def test_scheduler_calls_filter_prioritize_and_bind(
    cluster: E2ECluster, extender: ExtenderProcess, mig_scheduler: MigScheduler, namespace: str, fleet: Fleet
) -> None:
    # two feasible nodes: with only one the scheduler skips /prioritize
    for name in ("a", "b"):
        _await_inventory(extender, fleet.add(name, resources={MIG_1G: 2}))
    before = _verb_counts(extender)

    cluster.core.create_namespaced_pod(namespace, make_pod("p", mig={"1g.5gb": 1}, scheduler_name=SCHEDULER))
    pod = wait_running(cluster.core, namespace, "p")

    after = _verb_counts(extender)
    assert pod.spec.node_name in fleet.names
    assert {verb: after[verb] - before[verb] >= 1 for verb in after} == dict.fromkeys(after, True), (before, after)
    assert extender.metric(REQUESTS, verb="filter", outcome="ok") >= 1


def test_mig_pod_lands_only_where_its_profile_is_free(
    cluster: E2ECluster, extender: ExtenderProcess, mig_scheduler: MigScheduler, namespace: str, fleet: Fleet
) -> None:
    mark = cluster.fake_kubelet.checkpoint()
    full = fleet.add("full", resources={MIG_1G: 1})
    _await_inventory(extender, full)
    _occupy(cluster, namespace, full, "filler", {"1g.5gb": 1}, extender)
    _await_inventory(extender, fleet.add("cpu", gpu=None))
    free = fleet.add("free", resources={MIG_1G: 1})
    _await_inventory(extender, free)

    cluster.core.create_namespaced_pod(namespace, make_pod("first", mig={"1g.5gb": 1}, scheduler_name=SCHEDULER))
    assert wait_running(cluster.core, namespace, "first").spec.node_name == free

    # every 1g.5gb slice is now taken and no node has a larger profile: the next one must wait
    cluster.core.create_namespaced_pod(namespace, make_pod("second", mig={"1g.5gb": 1}, scheduler_name=SCHEDULER))
    wait_unschedulable(cluster.core, namespace, "second")
    stays(
        lambda: cluster.core.read_namespaced_pod("second", namespace).spec.node_name is None,
        duration=2,
        what="second unbound",
    )
    cluster.fake_kubelet.assert_no_overcommit(since=mark)


def test_sold_out_profile_records_a_substitution_rule(
    cluster: E2ECluster, extender: ExtenderProcess, mig_scheduler: MigScheduler, namespace: str, fleet: Fleet
) -> None:
    mark = cluster.fake_kubelet.checkpoint()
    node = fleet.add("a", resources={MIG_1G: 1, MIG_2G: 1})
    _await_inventory(extender, node)
    _occupy(cluster, namespace, node, "filler", {"1g.5gb": 1}, extender)

    # a controller-owned pod: a substitution is carried out on its replacement
    cluster.apps.create_namespaced_deployment(
        namespace, make_deployment("wants-1g", mig={"1g.5gb": 1}, scheduler_name=SCHEDULER)
    )

    def rule_for_deployment() -> dict[str, Any] | None:
        for rule in extender.rules():
            if rule["pod"]["namespace"] == namespace and rule["pod"]["name"].startswith("wants-1g-"):
                return rule
        return None

    rule = wait_for(rule_for_deployment, timeout=30, what="a substitution rule for wants-1g")
    print(f"rule: {rule}")
    assert rule["original"] == {"resource": MIG_1G, "count": 1}
    assert rule["substitute"] == {"resource": MIG_2G, "count": 1}
    assert rule["node"] == node
    assert rule["phase"] in ("Recorded", "Applied")
    pod_uids = {p.metadata.uid for p in pods_of(cluster.core, namespace, "app=wants-1g")}
    assert rule["pod"]["uid"] in pod_uids or rule["phase"] == "Applied"
    time.sleep(1)  # give a wrong bind the time to reach the kubelet
    cluster.fake_kubelet.assert_no_overcommit(since=mark)


def test_no_overcommit_with_more_pods_than_slices(
    cluster: E2ECluster, extender: ExtenderProcess, mig_scheduler: MigScheduler, namespace: str, fleet: Fleet
) -> None:
    mark = cluster.fake_kubelet.checkpoint()
    capacity = {"a": {MIG_1G: 3, MIG_2G: 1}, "b": {MIG_1G: 2, MIG_3G: 1}, "c": {MIG_2G: 2}}
    nodes = {short: fleet.add(short, resources=res) for short, res in capacity.items()}
    for node in nodes.values():
        _await_inventory(extender, node)
    profiles = ["1g.5gb"] * 10 + ["2g.10gb"] * 6 + ["3g.20gb"] * 3  # 19 pods for 11 slices
    for i, profile in enumerate(profiles):
        cluster.core.create_namespaced_pod(
            namespace, make_pod(f"load-{i:02d}", mig={profile: 1}, scheduler_name=SCHEDULER)
        )

    def settled() -> dict[str, int] | None:
        pods = pods_of(cluster.core, namespace)
        bound = [p for p in pods if p.spec.node_name]
        if any(p.status.phase == "Pending" for p in bound):
            return None
        unbound = [p for p in pods if not p.spec.node_name]
        gave_up = [
            p
            for p in unbound
            if any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in p.status.conditions or ())
        ]
        if len(gave_up) != len(unbound):
            return None
        return {"running": sum(p.status.phase == "Running" for p in bound), "pending": len(unbound)}

    outcome = wait_for(settled, timeout=60, interval=0.5, what="every pod running or unschedulable")
    time.sleep(2)  # a late bind would show up as a kubelet rejection
    outcome = wait_for(settled, timeout=30, interval=0.5, what="still settled")
    print(f"load outcome: {outcome}")
    cluster.fake_kubelet.assert_no_overcommit(since=mark)
    for node in nodes.values():
        usage, allocatable = cluster.fake_kubelet.usage(node), cluster.fake_kubelet.allocatable(node)
        assert all(usage[r] <= allocatable.get(r, 0) for r in usage if r.startswith("nvidia.com/")), node
    assert outcome["running"] >= 1


def test_no_overcommit_when_binds_overlap(
    cluster: E2ECluster, extender: ExtenderProcess, mig_scheduler: MigScheduler, namespace: str, fleet: Fleet
) -> None:
    """kube-scheduler binds asynchronously: /filter for the next pod can arrive before /bind of the
    previous one. Many identical pods for few slices make that overlap likely; the extender must not
    promise the same slice twice (the fake kubelet would reject the second pod)."""
    mark = cluster.fake_kubelet.checkpoint()
    node = fleet.add("a", resources={MIG_1G: 4})
    _await_inventory(extender, node)
    for i in range(12):
        cluster.core.create_namespaced_pod(
            namespace, make_pod(f"same-{i:02d}", mig={"1g.5gb": 1}, scheduler_name=SCHEDULER)
        )

    def bound_pods_settled() -> list[Any] | None:
        bound = [p for p in pods_of(cluster.core, namespace) if p.spec.node_name]
        return None if any(p.status.phase == "Pending" for p in bound) else bound or None

    wait_for(bound_pods_settled, timeout=30, what="bound pods admitted or rejected")
    time.sleep(2)
    wait_for(bound_pods_settled, timeout=30, what="bound pods admitted or rejected")
    cluster.fake_kubelet.assert_no_overcommit(since=mark)
    running = [p for p in pods_of(cluster.core, namespace) if p.status.phase == "Running"]
    assert len(running) == 4


def test_a_binding_the_api_refuses_is_a_502_and_the_assumed_slice_is_forgotten(
    cluster: E2ECluster, extender: ExtenderProcess, namespace: str, fleet: Fleet
) -> None:
    """/bind writes the Binding straight through the client's pool (kube.JsonPoster): the API server's
    refusal comes back as the verb's error with its status, and the slice assumed for the pod is
    forgotten, so the same pod's correct bind still finds it free."""
    node = fleet.add("a", resources={MIG_1G: 1})
    _await_inventory(extender, node)
    pod = cluster.core.create_namespaced_pod(namespace, make_pod("p", mig={"1g.5gb": 1}, scheduler_name="none"))
    wait_for(lambda: extender.metric("mig_extender_pending_slices", resource=MIG_1G) == 1, timeout=15,
             what="the extender sees the pod waiting")
    uid = pod.metadata.uid
    # known uid, so the slice is assumed first; the API has no pod of that name: 404
    answer = extender.post("/bind", {"PodName": "not-p", "PodNamespace": namespace, "PodUID": uid, "Node": node})
    assert answer.status_code == 502 and "404" in answer.json()["Error"], answer.json()
    # the right name with a uid the pod does not have: the API's precondition check refuses it (409)
    answer = extender.post("/bind", {"PodName": "p", "PodNamespace": namespace,
                                     "PodUID": "00000000-0000-4000-8000-000000000000", "Node": node})
    assert answer.status_code == 502 and "409" in answer.json()["Error"], answer.json()
    assert extender.inventory(node)["nodes"][0]["resources"][MIG_1G]["used"] == 0
    answer = extender.post("/bind", {"PodName": "p", "PodNamespace": namespace, "PodUID": uid, "Node": node})
    assert answer.status_code == 200, answer.json()
    wait_running(cluster.core, namespace, "p")
    _await_inventory(extender, node, **{MIG_1G: 1})
