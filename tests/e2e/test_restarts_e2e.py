"""Who the reconciler may restart, on the real control plane (issue 13 items 6 and 7).

Item 6: a pod owned by a controller we do not know (here a stand-in RayCluster operator that recreates
its worker under a generated name, as KubeRay does) is neither substituted nor restarted: restarting it
would leave two workers (ours recreated from a stash, and the operator's). Listed in
--restartable-owners, the same worker is evicted once and the operator's replacement is upgraded.

Item 7: the real Job controller. A backoffLimit-0 Job whose podFailurePolicy ignores DisruptionTarget is
upgraded through the Eviction API and does not fail; one without that rule is left alone (the rule is
cancelled, Event MigUpgradeSkipped) rather than failed by our restart.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .testenv.cluster import E2ECluster
from .testenv.stack import NS_LABEL, SCHEDULER, Stack
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod

MIG_5 = "nvidia.com/mig-1g.5gb"
MIG_10 = "nvidia.com/mig-2g.10gb"
RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayclusters"
OWNERS_ENV = "MIG_EXTENDER_RESTARTABLE_OWNERS"


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(cluster, tmp_path_factory.mktemp("restarts")).start()
    _apply_raycluster_crd(s.api)
    yield s
    s.stop_all()


@pytest.fixture
def ns(cluster: E2ECluster, stack: Stack) -> Iterator[str]:
    name = cluster.create_namespace(prefix="restarts", labels={NS_LABEL: "true"})
    yield name
    cluster.delete_namespace(name)


def _apply_raycluster_crd(api: client.ApiClient) -> None:
    """A minimal stand-in for KubeRay's RayCluster CRD: an owner kind mig-extender does not know."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{RAY_PLURAL}.{RAY_GROUP}"},
        "spec": {"group": RAY_GROUP, "scope": "Namespaced",
                 "names": {"plural": RAY_PLURAL, "singular": "raycluster", "kind": "RayCluster"},
                 "versions": [{"name": RAY_VERSION, "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]},
    }
    ext = client.ApiextensionsV1Api(api)
    with contextlib.suppress(ApiException):
        ext.create_custom_resource_definition(crd)

    def established() -> bool:
        got = ext.read_custom_resource_definition(crd["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or [])

    wait_for(established, timeout=30, what="RayCluster CRD established")


class StandInOperator:
    """Keeps one worker pod of a RayCluster alive, as KubeRay does: a worker that is gone (or terminating)
    is replaced by a new one with a generated name. Counts what it created."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.core, self.namespace, self.name = client.CoreV1Api(api), namespace, name
        body = {"apiVersion": f"{RAY_GROUP}/{RAY_VERSION}", "kind": "RayCluster", "metadata": {"name": name}}
        owner = client.CustomObjectsApi(api).create_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, body)
        self.owner_ref = {"apiVersion": f"{RAY_GROUP}/{RAY_VERSION}", "kind": "RayCluster", "name": name,
                          "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        self.created: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"operator-{name}", daemon=True)

    def __enter__(self) -> StandInOperator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def workers(self) -> list[Any]:
        """Live (not terminating) worker pods."""
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"ray.io/cluster={self.name}").items
        return [p for p in pods if not p.metadata.deletion_timestamp]

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            with contextlib.suppress(ApiException):
                if not self.workers():
                    self._create()

    def _create(self) -> None:
        pod = make_pod("unused", resources={MIG_5: "1"}, scheduler_name=SCHEDULER,
                       labels={"ray.io/cluster": self.name})
        pod["metadata"] = {"generateName": f"{self.name}-worker-", "labels": pod["metadata"]["labels"],
                           "ownerReferences": [self.owner_ref]}
        created = self.core.create_namespaced_pod(self.namespace, pod)
        self.created.append(created.metadata.name)


def _events(stack: Stack, namespace: str, reason: str) -> list[str]:
    return [name for name, why in stack.events(namespace) if why == reason]


def _limits(pod: Any) -> dict[str, str]:
    return pod.spec.containers[0].resources.limits or {}


def test_item6_unknown_owner_pod_is_not_duplicated(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("u", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    with StandInOperator(stack.api, ns, "ray-a") as operator:
        (worker,) = wait_for(operator.workers, timeout=30, what="the operator's first worker")
        wait_for(lambda: worker.metadata.name in _events(stack, ns, "MigSubstitutionSkipped"), timeout=60,
                 what="Event MigSubstitutionSkipped on the worker")
        stays(lambda: [p.metadata.uid for p in operator.workers()] == [worker.metadata.uid]
              and operator.workers()[0].status.phase == "Pending", duration=8,
              what="one worker, the same one, Pending")
        assert operator.created == [worker.metadata.name] and stack.rules(ns) == []


def test_item7_job_with_disruption_policy_is_upgraded_and_does_not_fail(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("j", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    batch = client.BatchV1Api(stack.api)
    batch.create_namespaced_job(ns, _job("train", ignore_disruptions=True))

    def upgraded() -> Any:
        pods = [p for p in stack.pods(ns, "job-name=train") if p.status.phase == "Running"]
        return pods if pods and MIG_10 in _limits(pods[0]) else None

    (pod,) = wait_for(upgraded, timeout=120, what="the Job's replacement pod Running on 2g.10gb")
    job = batch.read_namespaced_job("train", ns)
    assert not job.status.failed and not [c for c in job.status.conditions or [] if c.type == "Failed"]
    assert "MigUpgrading" in {why for _, why in stack.events(ns)}
    (rule,) = stack.rules(ns)
    assert rule["status"]["phase"] == "Applied" and rule["status"]["boundPod"] == pod.metadata.uid


def test_item7_job_without_disruption_policy_is_left_alone(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("k", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    batch = client.BatchV1Api(stack.api)
    batch.create_namespaced_job(ns, _job("fragile", ignore_disruptions=False))
    (pending,) = wait_for(lambda: stack.pods(ns, "job-name=fragile"), timeout=30, what="the Job's pod")
    wait_for(lambda: pending.metadata.name in _events(stack, ns, "MigUpgradeSkipped"), timeout=60,
             what="Event MigUpgradeSkipped on the Job's pod")
    stays(lambda: [p.metadata.uid for p in stack.pods(ns, "job-name=fragile")] == [pending.metadata.uid],
          duration=5, what="the same Job pod, never restarted")
    job = batch.read_namespaced_job("fragile", ns)
    assert not job.status.failed and not [c for c in job.status.conditions or [] if c.type == "Failed"]
    assert [r["status"]["phase"] for r in stack.rules(ns)] == ["Expired"]  # cancelled: its slice released


def test_item6_listed_owner_is_evicted_once_and_its_replacement_upgraded(stack: Stack, ns: str, fleet: Any) -> None:
    """Last in the module: restarts the extender and the reconciler with RayCluster listed."""
    fleet.add("l", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    listed = {OWNERS_ENV: f"{RAY_GROUP}/RayCluster"}
    stack.stop_reconciler()
    stack.stop_extender()
    stack.start_extender({**os.environ, **listed})
    stack.start_scheduler()
    stack.start_reconciler(env=listed)
    started = time.monotonic()
    with StandInOperator(stack.api, ns, "ray-b") as operator:

        def upgraded() -> Any:
            live = operator.workers()
            return live if len(live) == 1 and live[0].status.phase == "Running" and MIG_10 in _limits(live[0]) \
                else None

        (worker,) = wait_for(upgraded, timeout=120, what="one worker, Running on 2g.10gb")
        stays(lambda: len(operator.workers()) == 1, duration=5, what="exactly one live worker")
        assert len(operator.created) == 2  # the first, evicted once; its replacement, upgraded
        (rule,) = stack.rules(ns)
        assert rule["status"]["phase"] == "Applied" and rule["status"]["boundPod"] == worker.metadata.uid
        assert "ownerReferences" in rule["metadata"]  # owned by the RayCluster: deleted with it
    assert time.monotonic() - started < 120


def _job(name: str, ignore_disruptions: bool) -> dict[str, Any]:
    pod = make_pod(name, resources={MIG_5: "1"}, scheduler_name=SCHEDULER)
    spec = dict(pod["spec"], restartPolicy="Never")
    job_spec: dict[str, Any] = {"backoffLimit": 0, "template": {"metadata": {}, "spec": spec}}
    if ignore_disruptions:
        job_spec["podFailurePolicy"] = {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": job_spec}
