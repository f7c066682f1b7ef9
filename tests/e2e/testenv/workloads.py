"""Builders for the objects e2e tests create, and waits on the states tests care about.

Builders return plain dicts (what `kubectl apply` would send), so a test reads like a manifest.
`mig={"1g.5gb": 1}` is shorthand for the `nvidia.com/mig-1g.5gb` limit, as in the unit tests.

Must not: create anything itself; the test passes the dict to the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client

from .wait import wait_for

MIG_PREFIX = "nvidia.com/mig-"
IMAGE = "registry.invalid/never-pulled:0"  # nothing runs: the fake kubelet never pulls


def mig_resources(mig: Mapping[str, int] | None) -> dict[str, str]:
    return {f"{MIG_PREFIX}{profile}": str(count) for profile, count in (mig or {}).items()}


def make_pod(
    name: str,
    *,
    mig: Mapping[str, int] | None = None,
    resources: Mapping[str, str] | None = None,
    scheduler_name: str | None = None,
    node_name: str | None = None,
    labels: Mapping[str, str] | None = None,
    init_mig: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A one-container pod; extended resources go in limits (requests default to them, as for GPUs)."""
    limits = {**mig_resources(mig), **dict(resources or {})}
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": IMAGE, "resources": {"limits": limits} if limits else {}}],
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
    }
    if init_mig:
        spec["initContainers"] = [{"name": "init", "image": IMAGE, "resources": {"limits": mig_resources(init_mig)}}]
    if scheduler_name:
        spec["schedulerName"] = scheduler_name
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": dict(labels or {})}, "spec": spec}


def make_deployment(
    name: str, *, replicas: int = 1, mig: Mapping[str, int] | None = None, scheduler_name: str | None = None
) -> dict[str, Any]:
    pod = make_pod(name, mig=mig, scheduler_name=scheduler_name, labels={"app": name})
    # the client validates dict bodies against its models: a template has no apiVersion/kind
    template = {"metadata": {"labels": pod["metadata"]["labels"]}, "spec": pod["spec"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template},
    }


def pods_of(core: client.CoreV1Api, namespace: str, selector: str = "") -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=selector or None).items)


def wait_running(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 30.0) -> Any:
    """The pod once it is Running; fails fast with the reason if it failed instead."""

    def probe() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.status.phase == "Failed":
            raise AssertionError(f"pod {namespace}/{name} failed: {pod.status.reason}: {pod.status.message}")
        return pod if pod.status.phase == "Running" else None

    return _wait_no_retry_on_assert(probe, timeout, f"pod {namespace}/{name} Running")


def wait_phase(core: client.CoreV1Api, namespace: str, name: str, phase: str, timeout: float = 30.0) -> Any:
    return wait_for(
        lambda: _with_phase(core.read_namespaced_pod(name, namespace), phase),
        timeout=timeout,
        what=f"pod {namespace}/{name} {phase}",
    )


def wait_unschedulable(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 30.0) -> Any:
    """The pod once its PodScheduled condition says Unschedulable (the scheduler tried and gave up)."""

    def probe() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        for condition in pod.status.conditions or ():
            if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
                return pod
        return None

    return wait_for(probe, timeout=timeout, what=f"pod {namespace}/{name} Unschedulable")


def _with_phase(pod: Any, phase: str) -> Any:
    return pod if pod.status.phase == phase else None


def _wait_no_retry_on_assert(probe: Any, timeout: float, what: str) -> Any:
    def guarded() -> Any:
        try:
            return probe()
        except AssertionError as exc:
            return _Failure(exc)

    result = wait_for(guarded, timeout=timeout, what=what)
    if isinstance(result, _Failure):
        raise result.error
    return result


class _Failure:
    def __init__(self, error: AssertionError) -> None:
        self.error = error

    def __bool__(self) -> bool:
        return True
