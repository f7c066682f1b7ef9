"""Soak defects D1 and D5 on the real control plane (full stack of testenv/stack.py).

D1: a bare pod the user deletes, or replaces, while the reconciler restarts it must not come back from
the stash. The reconciler runs under testenv/slowevict.py, so its eviction arrives seconds after the
stash is written and the user's delete lands in that window on every run (in the soak it took luck).

D5: with the webhook down, the reconciler restarted a pending bare pod for an upgrade every few seconds
(each replacement came back unrewritten). Now: one restart, an Event saying the webhook did not rewrite
it, a backoff, one more try once the webhook is back, and no third restart of the lineage within the hour.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from .testenv.cluster import E2ECluster
from .testenv.slowevict import DELAY_ENV
from .testenv.stack import NS_LABEL, SCHEDULER, Stack
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod

MIG_5 = "nvidia.com/mig-1g.5gb"
MIG_10 = "nvidia.com/mig-2g.10gb"
ANN_RECREATE = "mig-extender.io/recreate"
FINALIZER = "example.com/keep"  # a user's own finalizer
EVICT_DELAY = 6.0  # seconds between the stash write and the eviction: the window a user's delete falls in


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(cluster, tmp_path_factory.mktemp("restart-races")).start()
    yield s
    s.stop_all()


@pytest.fixture
def ns(cluster: E2ECluster, stack: Stack) -> Iterator[str]:
    name = cluster.create_namespace(prefix="races", labels={NS_LABEL: "true"})
    yield name
    cluster.delete_namespace(name)


@pytest.fixture
def slow_evictions(stack: Stack, ns: str) -> Iterator[None]:
    """The stack's reconciler replaced by one whose evictions wait EVICT_DELAY s (log of its own)."""
    stack.stop_reconciler()
    stack.start_reconciler(env={DELAY_ENV: str(EVICT_DELAY)}, module="tests.e2e.testenv.slowevict",
                           log=f"races-reconciler-{ns}")
    yield
    stack.stop_reconciler()
    stack.start_reconciler()


def reasons(stack: Stack, ns: str, pod: str) -> list[str]:
    return [reason for name, reason in stack.events(ns) if name == pod]


def stashed(stack: Stack, ns: str) -> bool:
    return any(ANN_RECREATE in (r["metadata"].get("annotations") or {}) for r in stack.rules(ns))


def pending_bare_pod(stack: Stack, ns: str, fleet: Any, name: str = "solo") -> str:
    """A node whose 1g.5gb slice a holder takes, so pod ``name`` (1g.5gb) is upgraded onto its 2g.10gb."""
    fleet.add("r", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    return str(stack.core.create_namespaced_pod(ns, make_pod(name, resources={MIG_5: "1"},
                                                                scheduler_name=SCHEDULER)).metadata.uid)


@pytest.mark.usefixtures("slow_evictions")
def test_soak_d1_a_bare_pod_the_user_deletes_while_it_is_restarted_stays_deleted(
    stack: Stack, ns: str, fleet: Any
) -> None:
    pending_bare_pod(stack, ns, fleet)
    wait_for(lambda: stashed(stack, ns), timeout=60, interval=0.1, what="the reconciler's stash on the rule")
    stack.core.delete_namespaced_pod("solo", ns, grace_period_seconds=0)  # the user, before our eviction
    wait_for(lambda: not stashed(stack, ns), timeout=EVICT_DELAY + 30, what="the stash dropped after a 404")
    stays(lambda: [p.metadata.name for p in stack.pods(ns) if p.metadata.name == "solo"] == [],
          duration=EVICT_DELAY, what="solo stays deleted")
    assert "MigRestartAbandoned" in reasons(stack, ns, "solo")


@pytest.mark.usefixtures("slow_evictions")
def test_soak_d1_a_namesake_the_user_creates_while_the_pod_is_restarted_is_left_alone(
    stack: Stack, ns: str, fleet: Any
) -> None:
    pending_bare_pod(stack, ns, fleet)
    wait_for(lambda: stashed(stack, ns), timeout=60, interval=0.1, what="the reconciler's stash on the rule")
    stack.core.delete_namespaced_pod("solo", ns, grace_period_seconds=0)
    mine = make_pod("solo", resources={"cpu": "10m"}, scheduler_name=SCHEDULER)  # the user's own, no MIG
    uid = stack.core.create_namespaced_pod(ns, mine).metadata.uid
    wait_for(lambda: not stashed(stack, ns), timeout=EVICT_DELAY + 30, what="the stash dropped after a 409")
    stays(lambda: stack.core.read_namespaced_pod("solo", ns).metadata.uid == uid, duration=EVICT_DELAY,
          what="the user's solo untouched")


@pytest.mark.usefixtures("slow_evictions")
def test_soak_d11_a_bare_pod_the_user_deletes_gracefully_while_it_is_restarted_stays_deleted(
    stack: Stack, ns: str, fleet: Any
) -> None:
    """D11 (found reading D10's history): the user's delete does not always remove the pod at once; a
    graceful delete leaves it terminating while its kubelet stops it (a finalizer here, so the window is
    deterministic). The Eviction API deletes a terminating pod without asking (eviction.go, canIgnorePDB),
    so our eviction 'succeeded' and we recreated a pod the user had deleted."""
    fleet.add("r", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.run_holder(ns, MIG_5)
    manifest = make_pod("solo", resources={MIG_5: "1"}, scheduler_name=SCHEDULER)
    manifest["metadata"]["finalizers"] = [FINALIZER]
    uid = stack.core.create_namespaced_pod(ns, manifest).metadata.uid
    try:
        wait_for(lambda: stashed(stack, ns), timeout=60, interval=0.1, what="the reconciler's stash on the rule")
        stack.core.delete_namespaced_pod("solo", ns)  # the user, before our eviction; the finalizer holds it
        wait_for(lambda: not stashed(stack, ns), timeout=EVICT_DELAY + 30,
                 what="the stash dropped: the pod was being deleted by someone else")
    finally:  # the user's finalizer done (a uid in a patch is a precondition: never a recreated namesake)
        stack.core.patch_namespaced_pod("solo", ns, {"metadata": {"uid": uid, "finalizers": None}})
    stays(lambda: [p.metadata.name for p in stack.pods(ns) if p.metadata.name == "solo"] == [],
          duration=EVICT_DELAY, what="solo stays deleted")
    assert "MigRestartAbandoned" in reasons(stack, ns, "solo")


def test_soak_d5_webhook_down_an_upgrade_is_retried_after_a_backoff_not_in_a_loop(
    stack: Stack, ns: str, fleet: Any
) -> None:
    stack.stop_webhook()
    try:
        pending_bare_pod(stack, ns, fleet)
        wait_for(lambda: "MigUpgradeNotRewritten" in reasons(stack, ns, "solo"), timeout=90,
                 what="the Event saying the webhook did not rewrite solo's replacement")
        # before the fix: a restart every few seconds; the backoff is 60 s (PlanSettings.upgrade_backoff)
        stays(lambda: reasons(stack, ns, "solo").count("MigUpgrading") == 1, duration=30,
              what="no second upgrade restart while the webhook is down, within the backoff")
    finally:
        stack.start_webhook()

    def upgraded() -> Any:
        pod = stack.core.read_namespaced_pod("solo", ns)
        limits = pod.spec.containers[0].resources.limits or {}
        return pod if pod.status.phase == "Running" and MIG_10 in limits else None

    wait_for(upgraded, timeout=120, what="solo Running on 2g.10gb once the webhook is back and the backoff over")
    assert reasons(stack, ns, "solo").count("MigUpgrading") == 2
    # the rule whose replacement came back unrewritten was expired, so nothing can hand it to a later pod
    phases = sorted(r["status"]["phase"] for r in stack.rules(ns))
    assert phases.count("Applied") == 1 and set(phases) <= {"Applied", "Expired"}, json.dumps(phases)
    # two restarts of this lineage within the hour: freeing its own type does not restore it (invariant 6)
    stack.core.delete_namespaced_pod("holder", ns, grace_period_seconds=0)
    wait_for(lambda: "MigRestoreSkipped" in reasons(stack, ns, "solo"), timeout=60,
             what="the restore skipped by the loop guard")
    assert "MigRestoring" not in reasons(stack, ns, "solo")
    assert client.CoreV1Api(stack.api).read_namespaced_pod("solo", ns).status.phase == "Running"
