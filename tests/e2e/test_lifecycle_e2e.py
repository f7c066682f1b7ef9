"""The substitution life cycle on the real control plane: rule store, webhook, reconciler, restore.

Runs the full stack of testenv/stack.py (isolated from the other e2e modules: its own scheduler
profile name, webhook selected by a namespace label).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from mig_extender.core.resources import ANN_ORIGINAL, ANN_RULE, ANN_SUBSTITUTE

from .testenv import procs
from .testenv.cluster import E2ECluster
from .testenv.stack import NS_LABEL, SCHEDULER, Stack
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod

MIG_5 = "nvidia.com/mig-1g.5gb"
MIG_10 = "nvidia.com/mig-2g.10gb"
WALKTHROUGH_NODE = {MIG_5: 2, MIG_10: 1, "nvidia.com/mig-3g.20gb": 1}


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(cluster, tmp_path_factory.mktemp("lifecycle")).start()
    yield s
    s.stop_all()


@pytest.fixture
def ns(cluster: E2ECluster, stack: Stack) -> Iterator[str]:
    name = cluster.create_namespace(prefix="lifecycle", labels={NS_LABEL: "true"})
    yield name
    cluster.delete_namespace(name)


def deployment(name: str, replicas: int = 1, mig: str = MIG_5, annotations: dict | None = None) -> dict[str, Any]:
    pod = make_pod(name, resources={mig: "1"}, scheduler_name=SCHEDULER, labels={"app": name})
    template = {"metadata": {"labels": {"app": name}, "annotations": annotations or {}}, "spec": pod["spec"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template},
    }


def running_with(stack: Stack, ns: str, app: str, resource: str) -> list[Any]:
    return [
        p
        for p in stack.pods(ns, f"app={app}")
        if p.status.phase == "Running" and resource in (p.spec.containers[0].resources.limits or {})
    ]


def test_walkthrough_scale_up_is_upgraded_and_restored_when_capacity_frees(
    stack: Stack, ns: str, fleet: Any, cluster: E2ECluster, e2e_report: Any
) -> None:
    node = fleet.add("a", "A100-40GB", WALKTHROUGH_NODE)
    mark = cluster.fake_kubelet.checkpoint()
    stack.apps.create_namespaced_deployment(ns, deployment("infer-a"))
    stack.apps.create_namespaced_deployment(ns, deployment("infer-b"))
    wait_for(
        lambda: running_with(stack, ns, "infer-a", MIG_5) and running_with(stack, ns, "infer-b", MIG_5),
        timeout=60,
        what="infer-a and infer-b Running on 1g.5gb",
    )

    scaled = time.monotonic()
    stack.apps.patch_namespaced_deployment_scale("infer-b", ns, {"spec": {"replicas": 2}})
    (upgraded,) = wait_for(
        lambda: running_with(stack, ns, "infer-b", MIG_10),
        timeout=90,
        what="the new infer-b replica Running on 2g.10gb",
    )
    upgrade_seconds = time.monotonic() - scaled
    assert upgraded.spec.node_name == node
    assert upgraded.metadata.annotations[ANN_ORIGINAL] == f"{MIG_5}=1"
    (rule,) = stack.rules(ns)
    assert rule["status"]["phase"] == "Applied" and rule["spec"]["substitute"]["resource"] == MIG_10
    assert upgraded.metadata.annotations[ANN_RULE] == rule["metadata"]["name"]
    assert rule["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"

    freed = time.monotonic()
    stack.apps.delete_namespaced_deployment("infer-a", ns, propagation_policy="Foreground")
    wait_for(
        lambda: len(running_with(stack, ns, "infer-b", MIG_5)) == 2 and not running_with(stack, ns, "infer-b", MIG_10),
        timeout=90,
        what="both infer-b replicas Running on 1g.5gb",
    )
    restore_seconds = time.monotonic() - freed
    wait_for(lambda: [r["status"]["phase"] for r in stack.rules(ns)] == ["Restored"], timeout=15,
             what="the rule Restored")
    wanted = {"MigUpgrading", "MigSubstituted", "MigRestoring", "MigRestored"}
    wait_for(lambda: wanted <= {reason for _, reason in stack.events(ns)}, timeout=15,
             what=f"Events {sorted(wanted)} on the pods")
    cluster.fake_kubelet.assert_no_overcommit(mark)
    e2e_report(f"walkthrough: scaled -> upgraded pod Running {upgrade_seconds:.1f} s; "
               f"capacity freed -> restored pod Running {restore_seconds:.1f} s")


def test_bare_pod_is_upgraded_under_its_own_name(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("b", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    stack.core.create_namespaced_pod(ns, make_pod("solo", resources={MIG_5: "1"}, scheduler_name=SCHEDULER))
    first_uid = stack.core.read_namespaced_pod("solo", ns).metadata.uid

    def upgraded() -> Any:
        pod = stack.core.read_namespaced_pod("solo", ns)
        limits = pod.spec.containers[0].resources.limits or {}
        return pod if pod.status.phase == "Running" and MIG_10 in limits else None

    pod = wait_for(upgraded, timeout=90, what="bare pod solo recreated and Running on 2g.10gb")
    assert pod.metadata.uid != first_uid and pod.metadata.annotations[ANN_ORIGINAL] == f"{MIG_5}=1"
    (rule,) = stack.rules(ns)
    assert "ownerReferences" not in rule["metadata"] and "mig-extender.io/recreate" not in (
        rule["metadata"].get("annotations") or {}
    )


def test_opted_out_pod_is_never_touched(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("c", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    pod = make_pod("shy", resources={MIG_5: "1"}, scheduler_name=SCHEDULER)
    pod["metadata"]["annotations"] = {ANN_SUBSTITUTE: "false"}
    uid = stack.core.create_namespaced_pod(ns, pod).metadata.uid
    stays(
        lambda: (p := stack.core.read_namespaced_pod("shy", ns)).status.phase == "Pending" and p.metadata.uid == uid,
        duration=6,
        what="opted-out pod stays Pending, same uid",
    )
    assert stack.rules(ns) == []


def test_webhook_down_does_not_stop_pod_creation(stack: Stack, cluster: E2ECluster) -> None:
    """failurePolicy Ignore against the real API server: a webhook nobody answers admits the pod."""
    label = "mig-e2e/dead-webhook"
    stack.register_webhook("mig-dead", f"https://127.0.0.1:{procs.free_port()}/mutate", "", label)
    dead_ns = cluster.create_namespace(prefix="deadhook", labels={label: "true"})
    try:
        started = time.monotonic()
        created = stack.core.create_namespaced_pod(dead_ns, make_pod("p", resources={MIG_5: "1"}))
        assert created.metadata.uid and time.monotonic() - started < 10
        assert ANN_RULE not in (created.metadata.annotations or {})
    finally:
        client.AdmissionregistrationV1Api(stack.api).delete_mutating_webhook_configuration("mig-dead")
        cluster.delete_namespace(dead_ns)


def test_extender_restart_between_rule_and_recreation_loses_nothing(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("d", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.stop_reconciler()  # freeze the life cycle right after the rule is recorded
    try:
        stack.apps.create_namespaced_deployment(ns, deployment("first"))
        wait_for(lambda: running_with(stack, ns, "first", MIG_5), timeout=60, what="first Running")
        stack.apps.create_namespaced_deployment(ns, deployment("second"))
        (rule,) = wait_for(lambda: stack.rules(ns), timeout=60, what="a rule for the second deployment")
        stack.stop_extender()
        stack.start_extender()  # a new process: its rules can only come from the API
        stack.start_scheduler()  # the new extender listens on a new port
        names = {r["name"] for r in stack.extender.rules()}
        assert rule["metadata"]["name"] in names
    finally:
        stack.start_reconciler()
    wait_for(
        lambda: running_with(stack, ns, "second", MIG_10),
        timeout=90,
        what="second Running on 2g.10gb after the restart",
    )


def test_item5_scale_up_sibling_does_not_take_the_pending_pods_rule(stack: Stack, ns: str, fleet: Any) -> None:
    """Issue 13 item 5 on the real control plane: pod P of a Deployment waits for a sold-out 1g.5gb and its
    rule is recorded; the Deployment is scaled up (as an HPA would) before the reconciler restarts P. The
    new sibling is admitted unchanged (the rule is P's until P is restarted); P's replacement takes it."""
    fleet.add("i5", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    stack.stop_reconciler()  # P stays pending with its rule Recorded: the window a scale-up falls into
    try:
        stack.apps.create_namespaced_deployment(ns, deployment("web"))
        # the rule is created, then its status written (rulestore_kube.record): wait for both
        (rule,) = wait_for(lambda: [r for r in stack.rules(ns) if "status" in r], timeout=60,
                           what="a rule, with its status, for web's pending pod")
        (pending,) = stack.pods(ns, "app=web")
        assert rule["spec"]["podUID"] == pending.metadata.uid and "restartAt" not in rule["status"]

        stack.apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 2}})
        (sibling,) = wait_for(lambda: [p for p in stack.pods(ns, "app=web") if p.metadata.uid != pending.metadata.uid],
                              timeout=30, what="the scale-up's new pod")
        assert ANN_RULE not in (sibling.metadata.annotations or {})
        assert MIG_5 in sibling.spec.containers[0].resources.limits
    finally:
        stack.start_reconciler()

    def replacement() -> Any:
        return next((p for p in running_with(stack, ns, "web", MIG_10)
                     if p.metadata.uid not in (pending.metadata.uid, sibling.metadata.uid)), None)

    upgraded = wait_for(replacement, timeout=90, what="P's replacement Running on 2g.10gb")
    assert upgraded.metadata.annotations[ANN_RULE] == rule["metadata"]["name"]
    taken = stack.custom.get_namespaced_custom_object("mig-extender.io", "v1alpha1", ns, "migsubstitutions",
                                                      rule["metadata"]["name"])
    assert taken["status"]["appliedPod"] == upgraded.metadata.name and taken["status"]["restartAt"]
    assert ANN_RULE not in (stack.core.read_namespaced_pod(sibling.metadata.name, ns).metadata.annotations or {})
