"""Issue 14: MIG-aware priority preemption on the real control plane (full stack of testenv/stack.py).

The measurement from the issue: a node with 2 x 1g.5gb held by a low-priority Deployment and a
high-priority pod asking 1g.5gb. The stock scheduler runs it in 0.3 s with one victim; with the extender
it must run too (within 5 s plus the victims' grace period, which is 0 here), with exactly one victim.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .testenv.cluster import E2ECluster
from .testenv.slowlist import DELAY_ENV
from .testenv.stack import NS_LABEL, SCHEDULER, Stack
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod

MIG_5 = "nvidia.com/mig-1g.5gb"
LOW, HIGH, HIGH_NEVER = "mig-e2e-low", "mig-e2e-high", "mig-e2e-high-never"
PRIORITIES = {LOW: 10, HIGH: 1000, HIGH_NEVER: 1000}
POD_LIST_DELAY = 8.0  # seconds a new leader knows the rules but not the pods (its first pod list answers late)
WITHIN = 5.0  # seconds; the victims' grace period is 0 (workloads.make_pod), so this is the whole budget


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(cluster, tmp_path_factory.mktemp("preemption")).start()
    scheduling = client.SchedulingV1Api(s.api)
    for name, value in PRIORITIES.items():
        with contextlib.suppress(ApiException):
            scheduling.create_priority_class({"metadata": {"name": name}, "value": value, "preemptionPolicy":
                                              "Never" if name == HIGH_NEVER else "PreemptLowerPriority"})
    yield s
    for name in PRIORITIES:
        with contextlib.suppress(ApiException):
            scheduling.delete_priority_class(name)
    s.stop_all()


@pytest.fixture
def ns(cluster: E2ECluster, stack: Stack) -> Iterator[str]:
    name = cluster.create_namespace(prefix="preempt", labels={NS_LABEL: "true"})
    yield name
    cluster.delete_namespace(name)


def pod_spec(name: str, priority_class: str) -> dict[str, Any]:
    """The priority admission plugin fills spec.priority and spec.preemptionPolicy from the class."""
    pod = make_pod(name, resources={MIG_5: "1"}, scheduler_name=SCHEDULER, labels={"app": name})
    pod["spec"]["priorityClassName"] = priority_class
    return pod


def low_deployment(stack: Stack, ns: str, name: str, replicas: int, node: str = "") -> None:
    pod = pod_spec(name, LOW)
    if node:
        pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod["spec"]}}}
    stack.apps.create_namespaced_deployment(ns, body)
    wait_for(lambda: len(running(stack, ns, f"app={name}")) == replicas, timeout=60,
             what=f"{replicas} {name} pods Running")


def running(stack: Stack, ns: str, selector: str) -> list[Any]:
    return [p for p in stack.pods(ns, selector) if p.status.phase == "Running"]


def uids(pods: list[Any]) -> set[str]:
    return {p.metadata.uid for p in pods}


def test_measurement_high_priority_pod_runs_with_exactly_one_victim(
    stack: Stack, ns: str, fleet: Any, cluster: E2ECluster, e2e_report: Any
) -> None:
    node = fleet.add("pa", "A100-40GB", {MIG_5: 2})
    low_deployment(stack, ns, "low", 2)
    before = uids(running(stack, ns, "app=low"))
    mark = cluster.fake_kubelet.checkpoint()
    started = time.monotonic()
    stack.core.create_namespaced_pod(ns, pod_spec("urgent", HIGH))
    wait_for(lambda: stack.core.read_namespaced_pod("urgent", ns).status.phase == "Running", timeout=WITHIN,
             interval=0.1, what=f"urgent Running within {WITHIN:g} s")
    seconds = time.monotonic() - started
    assert stack.core.read_namespaced_pod("urgent", ns).spec.node_name == node
    survivors = before & uids(running(stack, ns, "app=low"))
    assert len(survivors) == 1, f"exactly one victim expected, {len(before) - len(survivors)} preempted"
    # the victim's replacement (same low priority) waits: nobody else is preempted for it
    stays(lambda: len(before & uids(running(stack, ns, "app=low"))) == 1, duration=3, what="one survivor")
    events = stack.events(ns)
    assert sum(1 for _, reason in events if reason == "Preempted") == 1
    assert ("urgent", "Preempting") in events
    (hold,) = [r for r in stack.rules(ns) if r["spec"].get("preemption")]
    assert len(hold["spec"]["preemption"]["victims"]) == 1 and hold["status"]["phase"] == "Expired"
    cluster.fake_kubelet.assert_no_overcommit(mark)
    e2e_report(f"preemption measurement: high-priority 1g.5gb pod Running {seconds:.1f} s, 1 victim")


@pytest.mark.parametrize("priority_class", [
    pytest.param(LOW, id="equal-priority"),
    pytest.param(HIGH_NEVER, id="preemption-policy-never"),
])
def test_equal_priority_and_policy_never_preempt_nobody(stack: Stack, ns: str, fleet: Any, priority_class: str) -> None:
    fleet.add("pn", "A100-40GB", {MIG_5: 1})
    low_deployment(stack, ns, "low", 1)
    before = uids(running(stack, ns, "app=low"))
    stack.core.create_namespaced_pod(ns, pod_spec("waiter", priority_class))
    stays(lambda: uids(running(stack, ns, "app=low")) == before
          and stack.core.read_namespaced_pod("waiter", ns).status.phase == "Pending", duration=8,
          what="the low pod keeps running and the waiter stays Pending")
    assert [r for r in stack.rules(ns) if r["spec"].get("preemption")] == []


def test_pdb_protected_victim_is_avoided_when_another_node_has_an_unprotected_one(
    stack: Stack, ns: str, fleet: Any
) -> None:
    guarded_node = fleet.add("pg", "A100-40GB", {MIG_5: 1})
    free_node = fleet.add("pf", "A100-40GB", {MIG_5: 1})
    low_deployment(stack, ns, "guarded", 1, node=guarded_node)
    low_deployment(stack, ns, "plain", 1, node=free_node)
    client.PolicyV1Api(stack.api).create_namespaced_pod_disruption_budget(ns, {
        "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}})
    wait_for(lambda: client.PolicyV1Api(stack.api).read_namespaced_pod_disruption_budget("guarded", ns)
             .status.observed_generation, timeout=30, what="the PDB observed by the disruption controller")
    guarded = uids(running(stack, ns, "app=guarded"))
    stack.core.create_namespaced_pod(ns, pod_spec("urgent", HIGH))
    wait_for(lambda: stack.core.read_namespaced_pod("urgent", ns).status.phase == "Running", timeout=20,
             what="urgent Running")
    assert stack.core.read_namespaced_pod("urgent", ns).spec.node_name == free_node
    assert uids(running(stack, ns, "app=guarded")) == guarded


def test_job_victim_gets_disruption_target_and_the_job_does_not_fail(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("pj", "A100-40GB", {MIG_5: 1})
    pod = pod_spec("train", LOW)
    pod["spec"]["restartPolicy"] = "Never"
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
           "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "train"}}, "spec": pod["spec"]},
                    "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [
                        {"type": "DisruptionTarget"}]}]}}}
    batch = client.BatchV1Api(stack.api)
    batch.create_namespaced_job(ns, job)
    (victim,) = wait_for(lambda: running(stack, ns, "app=train"), timeout=60, what="the Job's pod Running")
    stack.core.create_namespaced_pod(ns, pod_spec("urgent", HIGH))

    def disrupted() -> Any:
        # the Job's tracking finalizer keeps the victim readable until the Job controller has counted it
        got = stack.core.read_namespaced_pod(victim.metadata.name, ns)
        return next((c for c in got.status.conditions or [] if c.type == "DisruptionTarget"), None)

    condition = wait_for(disrupted, timeout=20, interval=0.05, what="DisruptionTarget on the Job's pod")
    assert (condition.status, condition.reason) == ("True", "PreemptionByScheduler")
    wait_for(lambda: stack.core.read_namespaced_pod("urgent", ns).status.phase == "Running", timeout=20,
             what="urgent Running")
    status = batch.read_namespaced_job("train", ns).status
    assert not status.failed and not any(c.type == "Failed" and c.status == "True" for c in status.conditions or [])


def test_node_short_of_cpu_and_mig_goes_through_the_preempt_verb(stack: Stack, ns: str, fleet: Any) -> None:
    """kube-scheduler's dry run picks the CPU hog alone; the preempt verb adds the pod whose MIG slice must
    go too, and kube-scheduler deletes both (our reconciler leaves a CPU-short node to it)."""
    fleet.add("pv", "A100-40GB", {MIG_5: 2, "cpu": "4"})
    stack.core.create_namespaced_pod(ns, pod_spec("plain", LOW))
    wait_for(lambda: stack.core.read_namespaced_pod("plain", ns).status.phase == "Running", timeout=60,
             what="plain Running")
    time.sleep(1.1)  # startTime has second resolution: plain is the older, more important one
    hog = pod_spec("hog", LOW)
    hog["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "3"
    stack.core.create_namespaced_pod(ns, hog)
    wait_for(lambda: stack.core.read_namespaced_pod("hog", ns).status.phase == "Running", timeout=60,
             what="hog Running")
    before = stack.extender.metric("mig_extender_requests_total", verb="preempt", outcome="ok")
    urgent = pod_spec("urgent", HIGH)
    urgent["spec"]["containers"][0]["resources"]["limits"].update({MIG_5: "2", "cpu": "2"})
    stack.core.create_namespaced_pod(ns, urgent)
    wait_for(lambda: stack.core.read_namespaced_pod("urgent", ns).status.phase == "Running", timeout=30,
             what="urgent Running")
    assert (stack.extender.metric("mig_extender_requests_total", verb="preempt", outcome="ok")) > before
    assert [p.metadata.name for p in stack.pods(ns) if p.metadata.name in ("plain", "hog")] == []
    assert [r for r in stack.rules(ns) if r["spec"].get("preemption")] == []  # kube-scheduler acted, not us


def test_a_new_leader_finishes_a_preemption_whose_leader_died_before_the_deletes(
    stack: Stack, ns: str, fleet: Any
) -> None:
    """The hold is persisted, then the leader dies before deleting anything: the next leader deletes the
    hold's victims (not victims of a plan of its own: the hold names the older pod, which the planner
    would spare) and the preemptor runs.

    The next leader's pod list answers late (testenv/slowlist.py), as the first list does on a busy
    cluster: this test timed out in 2 of 4 full-suite runs because the new leader began its passes with
    the rules listed and the pods not, took the preemptor for gone and cancelled the hold. It now waits
    for both caches (Reconciler._synced); the delay makes that window as wide on every run."""
    import json

    from mig_extender.core.resources import pod_info
    from mig_extender.core.rules import preemption_hold, rule_to_object

    node = fleet.add("pl", "A100-40GB", {MIG_5: 2})
    low_deployment(stack, ns, "low", 2)
    older = min(running(stack, ns, "app=low"), key=lambda p: (p.status.start_time, p.metadata.name))
    stack.stop_reconciler()
    try:
        stack.core.create_namespaced_pod(ns, pod_spec("urgent", HIGH))
        raw = stack.core.read_namespaced_pod("urgent", ns, _preload_content=False)
        urgent = pod_info(json.loads(raw.data))
        hold = rule_to_object(preemption_hold(urgent, node, [older.metadata.uid], time.time(), 120.0))
        stack.custom.create_namespaced_custom_object("mig-extender.io", "v1alpha1", ns, "migsubstitutions", hold)
        stays(lambda: stack.core.read_namespaced_pod("urgent", ns).status.phase == "Pending", duration=3,
              what="urgent Pending while nobody acts on the hold")
    finally:
        stack.start_reconciler(env={DELAY_ENV: str(POD_LIST_DELAY)}, module="tests.e2e.testenv.slowlist",
                               log=f"preempt-new-leader-{ns}")  # returns once it is ready: caches synced
    wait_for(lambda: stack.core.read_namespaced_pod("urgent", ns).status.phase == "Running", timeout=30,
             what="urgent Running once the new leader re-issued the delete")
    assert len([r for r in stack.rules(ns) if r["spec"].get("preemption")]) == 1  # the hold, no plan of its own
    survivors = uids(running(stack, ns, "app=low"))
    assert older.metadata.uid not in survivors and len(survivors) == 1
