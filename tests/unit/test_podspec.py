"""Who may be restarted, and the manifests the reconciler creates in place of bare pods (core/podspec.py)."""

from __future__ import annotations

import pytest

from mig_extender.core.podspec import (
    JobRestartCounts,
    UnknownOwner,
    dry_run_copy,
    job_restart_problem,
    replacement_pod,
    restart_blocker,
)
from mig_extender.core.resources import Owner
from tests.builders import make_pod


def test_item8_replacement_pod_strips_what_the_api_refuses_on_create() -> None:
    pod = make_pod("solo", mig={"1g.5gb": 1}, node="n1")
    pod["metadata"].update(resourceVersion="5", creationTimestamp="t", managedFields=[{}], generation=1,
                           deletionTimestamp="t", deletionGracePeriodSeconds=0)
    pod["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
    out = replacement_pod(pod)
    assert "ephemeralContainers" not in out["spec"] and "nodeName" not in out["spec"]
    assert set(out["metadata"]) == {"name", "namespace"} and "status" not in out
    assert pod["spec"]["ephemeralContainers"]  # the input is not modified


def test_item8_dry_run_copy_takes_a_generated_name() -> None:
    out = dry_run_copy({"metadata": {"name": "solo", "namespace": "ns"}, "spec": {}})
    assert out["metadata"] == {"namespace": "ns", "generateName": "solo-"}


def owner(kind: str, api_version: str) -> Owner:
    return Owner(kind, "x", "uid-x", api_version)


@pytest.mark.parametrize("pod_owner, listed, expected", [
    pytest.param(None, (), None, id="bare-pod"),
    pytest.param(owner("ReplicaSet", "apps/v1"), (), None, id="replicaset"),
    pytest.param(owner("StatefulSet", "apps/v1"), (), None, id="statefulset"),
    pytest.param(owner("Job", "batch/v1"), (), None, id="job"),
    pytest.param(owner("ReplicationController", "v1"), (), None, id="replicationcontroller"),
    pytest.param(owner("RayCluster", "ray.io/v1"), (), UnknownOwner("ray.io/RayCluster", "x"), id="raycluster"),
    pytest.param(owner("Workflow", "argoproj.io/v1alpha1"), (), UnknownOwner("argoproj.io/Workflow", "x"),
                 id="argo-workflow"),
    pytest.param(owner("Job", "batch.volcano.sh/v1alpha1"), (), UnknownOwner("batch.volcano.sh/Job", "x"),
                 id="volcano-job-is-not-a-job"),
    pytest.param(owner("DaemonSet", "apps/v1"), (), UnknownOwner("apps/DaemonSet", "x"),
                 id="daemonset-pinned-to-its-node"),
    pytest.param(owner("RayCluster", "ray.io/v1"), ("ray.io/RayCluster",), None, id="listed-with-group"),
    pytest.param(owner("RayCluster", "ray.io/v1"), ("RayCluster",), None, id="listed-kind-only"),
    pytest.param(owner("RayCluster", "ray.io/v1"), ("example.com/RayCluster",), UnknownOwner("ray.io/RayCluster", "x"),
                 id="listed-other-group"),
])
def test_item6_only_pods_something_recreates_are_restarted(pod_owner, listed, expected) -> None:
    assert restart_blocker(pod_owner, frozenset(listed)) == expected


IGNORE_DISRUPTION = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}


def job(backoff_limit: int = 0, failed: int = 0, policy: dict | None = None, uncounted: int = 0) -> dict:
    spec = {"backoffLimit": backoff_limit, **({"podFailurePolicy": policy} if policy else {})}
    status = {"failed": failed, "uncountedTerminatedPods": {"failed": [f"u{i}" for i in range(uncounted)]}}
    return {"metadata": {"name": "train"}, "spec": spec, "status": status}


@pytest.mark.parametrize("the_job, restore, under_way, expected", [
    pytest.param(job(0, policy=IGNORE_DISRUPTION), False, 0, None, id="ignore-rule-upgrade"),
    pytest.param(job(0, policy=IGNORE_DISRUPTION), True, 0, None, id="ignore-rule-restore"),
    pytest.param(job(0), False, 0, JobRestartCounts("train", False, 0, 0), id="backoff-0-upgrade-would-fail-the-job"),
    pytest.param(job(2, failed=1), False, 0, None, id="room-left"),
    pytest.param(job(2, failed=1), False, 1, JobRestartCounts("train", False, 2, 2),
                 id="room-taken-by-a-restart-under-way"),
    pytest.param(job(2, failed=1, uncounted=1), False, 0, JobRestartCounts("train", False, 2, 2),
                 id="uncounted-failures"),
    pytest.param(job(6), True, 0, JobRestartCounts("train", True), id="restore-never-without-the-rule"),
    pytest.param(job(6, policy={"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [137]}},
                                          *IGNORE_DISRUPTION["rules"]]}), True, 0, JobRestartCounts("train", True),
                 id="exit-code-rule-first-may-match-the-evicted-container"),
    pytest.param(job(6, policy={"rules": [{"action": "Count", "onPodConditions": [{"type": "DisruptionTarget"}]}]}),
                 True, 0, JobRestartCounts("train", True), id="disruption-counted"),
    pytest.param(dict(job(6), spec={"backoffLimitPerIndex": 1}), False, 0, JobRestartCounts("train", False),
                 id="per-index-limit-not-tracked"),
])
def test_item7_job_restart_problem(the_job, restore, under_way, expected) -> None:
    assert job_restart_problem(the_job, restore, under_way) == expected


def test_item6_restartable_owners_setting_reaches_the_planner() -> None:
    from mig_extender.components.settings import Settings

    settings = Settings(restartable_owners="ray.io/RayCluster, PyTorchJob").validate()
    assert settings.plan.restartable_owners == frozenset({"ray.io/RayCluster", "PyTorchJob"})
    from_env = Settings().with_env({"MIG_EXTENDER_RESTARTABLE_OWNERS": "jobset.x-k8s.io/JobSet"}).validate()
    assert from_env.plan.restartable_owners == frozenset({"jobset.x-k8s.io/JobSet"})


def test_item6_a_bad_owner_kind_is_one_line_and_a_nonzero_exit(capsys: pytest.CaptureFixture[str]) -> None:
    from mig_extender import cli

    code = cli.main(["serve", "--snapshot", "/nonexistent.json", "--restartable-owners", "ray.io/raycluster"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "--restartable-owners" in err and len(err.splitlines()) == 1
