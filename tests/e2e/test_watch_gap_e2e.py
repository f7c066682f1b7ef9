"""Soak defect D12 on the real control plane: the API server is back, our node watch is not yet.

Seen in the 30-minute soak (seed 34): the API server restarted; our informers retried with a growing
backoff, and after it came back the node watch waited its next step (8 s) before relisting. A MIG
re-partition changed a node meanwhile, kube-scheduler (its own watches back) sent us two pods, our books
still counted the node's old slices, /bind bound them, and the kubelet rejected both (a bare pod then stays
Failed). The extender's node watch is held back here (testenv/slowwatch.py) so the window is there on
every run: /filter may answer from the cache, but no MIG pod may be bound until the watch has caught up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from .conftest import Fleet
from .testenv.cluster import E2ECluster
from .testenv.extender import ExtenderProcess, injected_extender, own_scheduler
from .testenv.slowwatch import DELAY_ENV
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod

MIG_5 = "nvidia.com/mig-1g.5gb"
SCHEDULER = "mig-gap"
REWATCH_DELAY = 12.0  # seconds our node watch stays away after the API server is back


@pytest.fixture(scope="module")
def gap_extender(cluster: E2ECluster) -> Iterator[ExtenderProcess]:
    with injected_extender(cluster.kubeconfig, cluster.log_path("gap-extender"), "tests.e2e.testenv.slowwatch",
                           {DELAY_ENV: str(REWATCH_DELAY)}) as process:
        yield process


@pytest.fixture(scope="module")
def gap_scheduler(cluster: E2ECluster, gap_extender: ExtenderProcess,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kube-scheduler of its own (schedulerName mig-gap) whose extender is ``gap_extender``."""
    with own_scheduler(cluster, gap_extender.url, SCHEDULER, tmp_path_factory.mktemp("gap")) as name:
        yield name


def test_soak_d12_no_pod_is_bound_onto_slices_a_node_lost_while_our_watch_was_away(
        cluster: E2ECluster, gap_extender: ExtenderProcess, gap_scheduler: str, namespace: str, fleet: Fleet,
        e2e_report: Any) -> None:
    node = fleet.add("g", "A100-40GB", {MIG_5: 2})
    wait_for(lambda: (n := gap_extender.inventory(node)["nodes"]) and n[0]["resources"][MIG_5]["allocatable"] == 2,
             timeout=30, what="the extender counting the node's two 1g.5gb")
    mark = cluster.fake_kubelet.checkpoint()
    cluster.restart_apiserver(down=2)
    wait_for(lambda: cluster.core.list_namespace(limit=1) is not None, timeout=60, what="the API server back")
    back = time.monotonic()
    fleet.set("g", {MIG_5: "-"})  # the node lost its 1g.5gb (a MIG re-partition) while our node watch is away
    cluster.core.create_namespaced_pod(namespace, make_pod("late", mig={"1g.5gb": 1}, scheduler_name=gap_scheduler))

    def placed() -> str:
        pod = cluster.core.read_namespaced_pod("late", namespace)
        return pod.spec.node_name or ("" if pod.status.phase == "Pending" else pod.status.phase)

    stays(lambda: placed() == "", duration=REWATCH_DELAY + 3, what="'late' neither bound nor failed")
    wait_for(lambda: MIG_5 not in gap_extender.inventory(node)["nodes"][0]["resources"], timeout=30,
             what="the node watch back, the 1g.5gb gone from our books")
    cluster.fake_kubelet.flush()
    cluster.fake_kubelet.assert_no_overcommit(since=mark)
    # the scheduler did bind through us while our watch was away, and was refused: the test is not vacuous
    events = client.EventsV1Api(cluster.api_client()).list_namespaced_event(namespace, _preload_content=False)
    notes = [e.get("note", "") for e in json.loads(events.data)["items"] if e.get("reason") == "FailedScheduling"]
    # (a 503 from /bind: kube-scheduler reports the code, not our text, "watch of nodes is reconnecting")
    assert any("failed bind with extender" in n and "code 503" in n for n in notes), notes
    e2e_report(f"API server restarted; our node watch back {time.monotonic() - back:.1f} s later; "
               "no MIG pod bound onto the slices the node lost meanwhile")
