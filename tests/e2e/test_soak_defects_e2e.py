"""Soak defects D3 and D7 (docs/reliability.md) on the real control plane, each in one focused scene.

Runs the full stack of testenv/stack.py (rule store in the API, webhook, Lease-led reconciler) like
test_lifecycle_e2e.py, in namespaces of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .testenv.cluster import E2ECluster
from .testenv.stack import NS_LABEL, SCHEDULER, Stack
from .testenv.wait import wait_for
from .testenv.workloads import make_pod

MIG_5 = "nvidia.com/mig-1g.5gb"
MIG_10 = "nvidia.com/mig-2g.10gb"


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(cluster, tmp_path_factory.mktemp("soakdefects")).start()
    yield s
    s.stop_all()


@pytest.fixture
def ns(cluster: E2ECluster, stack: Stack) -> Iterator[str]:
    name = cluster.create_namespace(prefix="soakdef", labels={NS_LABEL: "true"})
    yield name
    cluster.delete_namespace(name)


def limits(pod: Any) -> dict[str, str]:
    return pod.spec.containers[0].resources.limits or {}


def upgraded_pod(stack: Stack, ns: str, name: str | None = None, selector: str = "") -> Any:
    """The pod (by name, or the one matching ``selector``) once it runs on 2g.10gb."""
    def probe() -> Any:
        pods = [stack.core.read_namespaced_pod(name, ns)] if name else stack.pods(ns, selector)
        return next((p for p in pods if p.status.phase == "Running" and MIG_10 in limits(p)), None)

    return wait_for(probe, timeout=90, what="the pod recreated and Running on 2g.10gb")


def test_soak_d3_a_deleted_upgraded_bare_pods_rule_finishes(stack: Stack, ns: str, fleet: Any) -> None:
    """A bare pod upgraded onto 2g.10gb, then deleted by its user: its rule (owned by nothing, so never
    garbage-collected) leaves Applied for Expired once the reconciler has confirmed the pod is gone."""
    fleet.add("d3", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    stack.core.create_namespaced_pod(ns, make_pod("solo", resources={MIG_5: "1"}, scheduler_name=SCHEDULER))
    pod = upgraded_pod(stack, ns, "solo")
    (rule,) = wait_for(lambda: [r for r in stack.rules(ns) if r["status"].get("boundPod") == pod.metadata.uid],
                       timeout=30, what="the rule bound to the upgraded pod")
    assert rule["status"]["phase"] == "Applied" and "ownerReferences" not in rule["metadata"]

    stack.core.delete_namespaced_pod("solo", ns, grace_period_seconds=0)
    (done,) = wait_for(lambda: [r for r in stack.rules(ns) if r["metadata"]["name"] == rule["metadata"]["name"]
                                and r["status"]["phase"] == "Expired"],
                       timeout=60, what="the rule of the deleted pod Expired")
    assert "solo" in done["status"]["message"] and "gone" in done["status"]["message"]


def test_soak_d7_a_bind_racing_the_restore_reservation_defers_the_restore(
        stack: Stack, ns: str, fleet: Any, cluster: E2ECluster) -> None:
    """A Deployment's pod runs upgraded on 2g.10gb; the holder of the only 1g.5gb ends, so a restore reserves
    that slice. Before the restart, a pod bound straight to the node (spec.nodeName: as a bind by a
    scheduler that has not seen the reservation) takes the slice. The upgraded pod is not restarted (it
    would find 1g.5gb sold out and be upgraded a second time): the restore is deferred, Event
    MigRestoreDeferred, and the pod keeps running where it is."""
    node = fleet.add("d7", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    mark = cluster.fake_kubelet.checkpoint()
    stack.run_holder(ns, MIG_5)
    pod = make_pod("infer", resources={MIG_5: "1"}, scheduler_name=SCHEDULER, labels={"app": "infer"})
    stack.apps.create_namespaced_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "infer"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "infer"}},
                 "template": {"metadata": {"labels": {"app": "infer"}}, "spec": pod["spec"]}}})
    upgraded = upgraded_pod(stack, ns, selector="app=infer")

    stack.core.delete_namespaced_pod("holder", ns, grace_period_seconds=0)
    wait_for(lambda: [r for r in stack.rules(ns) if r["status"]["phase"] == "Restoring"], timeout=60, interval=0.05,
             what="the restore's reservation (rule Restoring)")
    stack.core.create_namespaced_pod(ns, make_pod("racer", resources={MIG_5: "1"}, node_name=node))

    (deferred,) = wait_for(lambda: [r for r in stack.rules(ns) if r["status"].get("restoreAttempts")], timeout=45,
                           what="the restore deferred")
    assert deferred["status"]["phase"] == "Applied" and not deferred["status"].get("restoreNode")
    wait_for(lambda: ("MigRestoreDeferred" in {reason for _, reason in stack.events(ns)}), timeout=15,
             what="Event MigRestoreDeferred")
    reasons = [reason for name, reason in stack.events(ns) if name == upgraded.metadata.name]
    assert "MigRestoring" not in reasons, reasons
    now = stack.core.read_namespaced_pod(upgraded.metadata.name, ns)
    assert now.metadata.uid == upgraded.metadata.uid and not now.metadata.deletion_timestamp
    assert stack.core.read_namespaced_pod("racer", ns).status.phase == "Running"
    cluster.fake_kubelet.assert_no_overcommit(mark)
