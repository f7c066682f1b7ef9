"""Smoke tests of the harness itself: the control plane, the default scheduler and the fake kubelet
behave like a cluster as far as mig-extender's tests need. If these fail, nothing else in e2e means much."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .testenv.cluster import E2ECluster
from .testenv.wait import stays, wait_for
from .testenv.workloads import (
    make_deployment,
    make_pod,
    pods_of,
    wait_phase,
    wait_running,
    wait_unschedulable,
)

MIG_1G = "nvidia.com/mig-1g.5gb"
START_BUDGET_S = 30.0


def test_cluster_starts_within_budget(cluster: E2ECluster) -> None:
    print(f"cluster start: {cluster.startup_seconds:.1f} s, phases {cluster.control_plane.startup_phases}")
    assert cluster.startup_seconds < START_BUDGET_S
    assert all(cluster.control_plane.status().values()), cluster.control_plane.status()


def test_deployment_pods_are_created_scheduled_and_run(cluster: E2ECluster, namespace: str, fleet) -> None:
    node = fleet.add("cpu", gpu=None)
    cluster.apps.create_namespaced_deployment(namespace, make_deployment("web", replicas=3))

    def available() -> bool:
        status = cluster.apps.read_namespaced_deployment_status("web", namespace).status
        return status.available_replicas == 3

    wait_for(available, timeout=30, what="3 available replicas")
    pods = pods_of(cluster.core, namespace, "app=web")
    assert {p.spec.node_name for p in pods} == {node}
    assert {p.status.phase for p in pods} == {"Running"}
    assert all(p.spec.scheduler_name == "default-scheduler" for p in pods)


def test_pod_asking_more_mig_than_any_node_has_stays_pending(cluster: E2ECluster, namespace: str, fleet) -> None:
    fleet.add("a", resources={MIG_1G: 2})
    fleet.add("b", resources={MIG_1G: 1})
    cluster.core.create_namespaced_pod(namespace, make_pod("greedy", mig={"1g.5gb": 3}))

    pod = wait_unschedulable(cluster.core, namespace, "greedy")
    message = next(c.message for c in pod.status.conditions if c.type == "PodScheduled")
    assert f"Insufficient {MIG_1G}" in message
    stays(
        lambda: cluster.core.read_namespaced_pod("greedy", namespace).spec.node_name is None,
        duration=2,
        what="greedy unbound",
    )


def test_fake_kubelet_rejects_overcommit_like_a_kubelet(cluster: E2ECluster, namespace: str, fleet) -> None:
    node = fleet.add("a", resources={MIG_1G: 1})
    mark = cluster.fake_kubelet.checkpoint()
    cluster.core.create_namespaced_pod(namespace, make_pod("first", mig={"1g.5gb": 1}, node_name=node))
    wait_running(cluster.core, namespace, "first")
    cluster.core.create_namespaced_pod(namespace, make_pod("second", mig={"1g.5gb": 1}, node_name=node))

    pod = wait_phase(cluster.core, namespace, "second", "Failed")
    assert pod.status.reason == f"OutOf{MIG_1G}"
    [rejected] = cluster.fake_kubelet.rejections(since=mark)
    assert (rejected.name, rejected.node, rejected.reason) == ("second", node, f"OutOf{MIG_1G}")
    with pytest.raises(AssertionError, match="over-commit"):
        cluster.fake_kubelet.assert_no_overcommit(since=mark)


def test_fake_kubelet_charges_init_containers_like_a_kubelet(cluster: E2ECluster, namespace: str, fleet) -> None:
    """Effective request = max(sum of containers, largest init container): 2 here, so a third slice
    stays free for the next pod and a fourth is over-commit."""
    node = fleet.add("a", resources={MIG_1G: 3})
    cluster.core.create_namespaced_pod(
        namespace, make_pod("init-heavy", mig={"1g.5gb": 1}, init_mig={"1g.5gb": 2}, node_name=node)
    )
    wait_running(cluster.core, namespace, "init-heavy")
    assert cluster.fake_kubelet.usage(node)[MIG_1G] == 2
    cluster.core.create_namespaced_pod(namespace, make_pod("fits", mig={"1g.5gb": 1}, node_name=node))
    wait_running(cluster.core, namespace, "fits")
    cluster.core.create_namespaced_pod(namespace, make_pod("over", mig={"1g.5gb": 1}, node_name=node))
    assert wait_phase(cluster.core, namespace, "over", "Failed").status.reason == f"OutOf{MIG_1G}"


def test_fake_kubelet_holds_pods_until_the_block_ends(cluster: E2ECluster, namespace: str, fleet) -> None:
    """holding_pods() (used by bench/e2e_throughput.py) defers admission, then admits in watch order."""
    node = fleet.add("a", resources={MIG_1G: 1})
    with cluster.fake_kubelet.holding_pods():
        for name in ("first", "second"):
            cluster.core.create_namespaced_pod(namespace, make_pod(name, mig={"1g.5gb": 1}, node_name=node))
        stays(lambda: all(p.status.phase == "Pending" for p in pods_of(cluster.core, namespace)), duration=1.5,
              what="both pods Pending while held")
    wait_running(cluster.core, namespace, "first")
    wait_phase(cluster.core, namespace, "second", "Failed")  # one slice: the later pod is rejected, as ever


def test_freed_capacity_is_reused_after_a_pod_finishes(cluster: E2ECluster, namespace: str, fleet) -> None:
    node = fleet.add("a", resources={MIG_1G: 1})
    cluster.core.create_namespaced_pod(namespace, make_pod("job", mig={"1g.5gb": 1}, node_name=node))
    wait_running(cluster.core, namespace, "job")
    cluster.fake_kubelet.finish_pod(namespace, "job")
    wait_phase(cluster.core, namespace, "job", "Succeeded")
    cluster.core.create_namespaced_pod(namespace, make_pod("next", mig={"1g.5gb": 1}, node_name=node))
    wait_running(cluster.core, namespace, "next")


def test_garbage_collector_deletes_a_deleted_deployments_pods(cluster: E2ECluster, namespace: str, fleet) -> None:
    fleet.add("a", resources={MIG_1G: 2})
    cluster.apps.create_namespaced_deployment(namespace, make_deployment("gpu", replicas=2, mig={"1g.5gb": 1}))
    wait_for(
        lambda: len([p for p in pods_of(cluster.core, namespace, "app=gpu") if p.status.phase == "Running"]) == 2,
        timeout=30,
        what="2 running pods",
    )

    cluster.apps.delete_namespaced_deployment("gpu", namespace, propagation_policy="Background")
    wait_for(lambda: not pods_of(cluster.core, namespace, "app=gpu"), timeout=30, what="pods deleted by GC")
    wait_for(
        lambda: not cluster.apps.list_namespaced_replica_set(namespace).items,
        timeout=30,
        what="ReplicaSet deleted by GC",
    )


def test_rbac_is_enforced_for_service_accounts_and_users(cluster: E2ECluster, namespace: str) -> None:
    sa_config = cluster.service_account_kubeconfig(namespace, "reader")
    with cluster.api_client(sa_config) as api:
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(api).list_namespaced_pod(namespace)
        assert denied.value.status == 403
        rbac = client.RbacAuthorizationV1Api(cluster.api_client())
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        )
        wait_for(
            lambda: client.CoreV1Api(api).list_namespaced_pod(namespace) is not None,
            timeout=10,
            what="RoleBinding in effect",
        )

    with cluster.api_client(cluster.user_kubeconfig("alice", groups=("team-a",))) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review({}, _preload_content=False)
    user_info = json.loads(review.data)["status"]["userInfo"]
    assert user_info["username"] == "alice"
    assert "team-a" in user_info["groups"]


def test_second_scheduler_can_be_restarted_with_a_config(cluster: E2ECluster, namespace: str, fleet, tmp_path) -> None:
    config = tmp_path / "plain-mig-scheduler.yaml"
    config.write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
        "clientConnection:\n  kubeconfig: '@KUBECONFIG@'\nprofiles:\n- schedulerName: mig-scheduler\n"
    )
    node = fleet.add("a", resources={MIG_1G: 1})
    try:
        for attempt in range(2):
            started = time.monotonic()
            cluster.start_mig_scheduler(config)
            print(f"mig-scheduler (re)start {attempt}: {time.monotonic() - started:.1f} s")
            name = f"second-{attempt}"
            cluster.core.create_namespaced_pod(namespace, make_pod(name, scheduler_name="mig-scheduler"))
            assert wait_running(cluster.core, namespace, name).spec.node_name == node
    finally:
        cluster.stop_mig_scheduler()
