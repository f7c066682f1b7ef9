"""The extender restarts while MIG pods are pending (issue 13, item 1), on the real control plane.

A restarted extender lists nodes before the paginated pod list: in between every slice looks free.
kube-scheduler does not look at /readyz, it keeps calling; an extender that answered then bound pods
onto slices already held, and the kubelet rejected them (OutOf<resource>). Here gunicorn's worker is
SIGKILLed (as an OOM kill would) and the master forks a new one on the same port; its pod list is held
back MIG_E2E_POD_LIST_DELAY seconds (testenv/slowlist.py) so the window is as wide as on a large
cluster, and MIG pods arrive and are retried inside it. Nothing may be over-committed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from .conftest import Fleet
from .testenv.cluster import E2ECluster
from .testenv.extender import ExtenderProcess, injected_extender, own_scheduler
from .testenv.slowlist import DELAY_ENV
from .testenv.wait import wait_for
from .testenv.workloads import make_pod, wait_running, wait_unschedulable

MIG_5 = "nvidia.com/mig-1g.5gb"
SCHEDULER = "mig-restart"
POD_LIST_DELAY = 12.0  # seconds the restarted worker knows the nodes but not the pods
NOT_SYNCED = "mig-extender inventory not synced yet"


@pytest.fixture(scope="module")
def slow_extender(cluster: E2ECluster) -> Iterator[ExtenderProcess]:
    with injected_extender(cluster.kubeconfig, cluster.log_path("restart-extender"), "tests.e2e.testenv.slowlist",
                           {DELAY_ENV: str(POD_LIST_DELAY)}, timeout=POD_LIST_DELAY + 60) as process:
        yield process


@pytest.fixture(scope="module")
def restart_scheduler(cluster: E2ECluster, slow_extender: ExtenderProcess,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kube-scheduler of its own (schedulerName mig-restart) whose extender is ``slow_extender``."""
    with own_scheduler(cluster, slow_extender.url, SCHEDULER, tmp_path_factory.mktemp("restart")) as name:
        yield name


def _scheduling_notes(cluster: E2ECluster, namespace: str) -> list[str]:
    """The notes of kube-scheduler's FailedScheduling events in ``namespace`` (raw JSON: see stack.events)."""
    resp = client.EventsV1Api(cluster.api_client()).list_namespaced_event(namespace, _preload_content=False)
    return [e.get("note", "") for e in json.loads(resp.data)["items"] if e.get("reason") == "FailedScheduling"]


def _mig_pod(name: str, scheduler: str) -> dict[str, Any]:
    return make_pod(name, mig={"1g.5gb": 1}, scheduler_name=scheduler)


def _bound(cluster: E2ECluster, namespace: str, names: list[str]) -> list[str]:
    return [n for n in names if cluster.core.read_namespaced_pod(n, namespace).spec.node_name]


def _replace_worker(extender: ExtenderProcess) -> None:
    """SIGKILL gunicorn's worker; the master keeps the listening socket and forks a fresh one."""
    (worker,) = extender.worker_pids()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: (pids := extender.worker_pids()) and worker not in pids, timeout=30,
             what="gunicorn to fork a new worker")


def test_item1_extender_restart_with_pending_mig_pods_never_overcommits(
        cluster: E2ECluster, slow_extender: ExtenderProcess, restart_scheduler: str, namespace: str,
        fleet: Fleet, e2e_report: Any) -> None:
    node = fleet.add("r", "A100-40GB", {MIG_5: 2})
    for i in range(2):  # both slices held, counted by the kubelet and by the extender
        cluster.core.create_namespaced_pod(namespace, make_pod(f"holder-{i}", mig={"1g.5gb": 1}, node_name=node))
        wait_running(cluster.core, namespace, f"holder-{i}")
    wait_for(lambda: slow_extender.inventory(node)["nodes"][0]["resources"][MIG_5]["used"] == 2, timeout=30,
             what="the extender counting both holders")
    waiting = [f"before-{i}" for i in range(3)]
    for name in waiting:
        cluster.core.create_namespaced_pod(namespace, _mig_pod(name, restart_scheduler))
    for name in waiting:
        wait_unschedulable(cluster.core, namespace, name)
    mark = cluster.fake_kubelet.checkpoint()

    killed = time.monotonic()
    _replace_worker(slow_extender)
    # the window: the new worker knows the node (all free, as far as it can tell) but not the pods yet
    wait_for(lambda: (inv := slow_extender.inventory(node))["synced"] is False and inv["nodes"], timeout=30,
             what="the new worker serving with nodes listed and pods not")
    opened = time.monotonic()
    arrivals = [f"during-{i}" for i in range(3)]
    for name in arrivals:  # new pods go straight to the active queue: scheduled inside the window
        cluster.core.create_namespaced_pod(namespace, _mig_pod(name, restart_scheduler))
    cluster.core.patch_node(node, {"metadata": {"labels": {"mig-e2e/touched": "1"}}})  # requeue the earlier ones
    wait_for(slow_extender.ready, timeout=POD_LIST_DELAY + 30, what="the new worker synced (/readyz 200)")
    synced_after = time.monotonic() - killed
    time.sleep(2)  # let a bind issued at the end of the window reach the kubelet
    cluster.fake_kubelet.flush()

    cluster.fake_kubelet.assert_no_overcommit(since=mark)
    pods = waiting + arrivals
    assert _bound(cluster, namespace, pods) == []
    # the scheduler did ask inside the window (only an unsynced extender answers this): the test is not vacuous
    refused = [n for n in _scheduling_notes(cluster, namespace) if NOT_SYNCED in n]
    assert refused, "no scheduling attempt fell inside the window"

    # and afterwards it schedules from complete books: one slice freed, exactly one pod takes it
    cluster.core.delete_namespaced_pod("holder-0", namespace)
    wait_for(lambda: len(_bound(cluster, namespace, pods)) == 1, timeout=60, what="one pending pod bound")
    (winner,) = _bound(cluster, namespace, pods)
    wait_running(cluster.core, namespace, winner)
    time.sleep(2)
    assert len(_bound(cluster, namespace, pods)) == 1
    cluster.fake_kubelet.flush()
    cluster.fake_kubelet.assert_no_overcommit(since=mark)
    e2e_report(f"extender worker SIGKILLed with {len(waiting)} MIG pods pending: new worker served "
               f"{opened - killed:.1f} s later, synced after {synced_after:.1f} s; {len(refused)} scheduling "
               f"attempts answered 'not synced' in between, 0 over-commits, 0 binds")
