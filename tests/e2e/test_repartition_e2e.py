"""Issue 18 phase 2: the repartition actuator on the real control plane, driving the fake MIG manager
(testenv/migmanager.py) through node labels, with the full stack of testenv/stack.py.

The reconciler runs with ``--repartition=on`` and short knobs (window, settle, timeout: seconds, not
minutes). What must hold: demand for a profile no node has repartitions an idle opted-in node and the
waiting pod runs on the new slice; a node not opted in is never touched; while the change runs no pod
is bound to the held node (the fake kubelet rejects none); ``failed`` and a wedged ``pending`` roll the
label back with an Event saying why, the node held until the MIG manager has restored the previous layout
(or a second timeout passed); a new leader finishes the change the old one started.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from mig_extender.core.repartition import (
    LABEL_MIG_CONFIG,
    LABEL_MIG_CONFIG_STATE,
    LABEL_REPARTITION,
    STATE_FAILED,
    STATE_PENDING,
    STATE_SUCCESS,
    NamedConfig,
)
from mig_extender.core.repartition_change import ANN_CHANGE, ANN_LAST

from .conftest import Fleet
from .testenv.cluster import E2ECluster
from .testenv.migmanager import FakeMigManager
from .testenv.stack import NS_LABEL, SCHEDULER, Stack
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod

L33 = ("3g.40gb", "3g.40gb")
L7 = ("7g.80gb",)
R3, R7 = "nvidia.com/mig-3g.40gb", "nvidia.com/mig-7g.80gb"
NAMES = {"all-3g.40gb": L33, "all-7g.80gb": L7}
TIMEOUT = 15.0  # --repartition-timeout: a wedged change is rolled back after this
ENV = {"MIG_EXTENDER_REPARTITION": "on", "MIG_EXTENDER_REPARTITION_WINDOW": "2",
       "MIG_EXTENDER_REPARTITION_SETTLE": "2", "MIG_EXTENDER_REPARTITION_TIMEOUT": str(TIMEOUT),
       "MIG_EXTENDER_REPARTITION_COOLDOWN": "600"}


def name_map(path: Path) -> Path:
    """The name map as the MIG manager's config.yaml (what --mig-configs reads)."""
    doc = {"version": "v1", "mig-configs": {
        name: [{"devices": "all", "mig-enabled": True, "mig-devices": {layout[0]: len(layout)}}]
        for name, layout in NAMES.items()}}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("repartition")
    s = Stack(cluster, workdir)
    env = {**ENV, "MIG_EXTENDER_MIG_CONFIGS": str(name_map(workdir / "mig-configs.yaml"))}
    try:
        s.apply_crd()
        s.start_extender()
        s.start_scheduler()
        s.start_webhook()
        s.start_reconciler(env=env)
    except BaseException:
        s.stop_all()
        raise
    s.repartition_env = env  # type: ignore[attr-defined]  # for the leader test's second reconciler
    yield s
    s.stop_all()


@pytest.fixture
def ns(cluster: E2ECluster, stack: Stack) -> Iterator[str]:
    name = cluster.create_namespace(prefix="repart", labels={NS_LABEL: "true"})
    yield name
    cluster.delete_namespace(name)


def manager(cluster: E2ECluster, names: dict[str, tuple[str, ...]] = NAMES, delay: float = 2.0) -> FakeMigManager:
    return FakeMigManager(cluster.fake_kubelet, [NamedConfig(n, all=lay) for n, lay in names.items()], delay=delay)


@pytest.fixture
def mig_manager(cluster: E2ECluster) -> Iterator[FakeMigManager]:
    m = manager(cluster)
    yield m
    m.stop()


def gpu_node(cluster: E2ECluster, fleet: Fleet, m: FakeMigManager, name: str, opted_in: bool = True) -> str:
    full = fleet.add(name, gpu="A100-80GB", gpu_count=2, labels={LABEL_REPARTITION: "true"} if opted_in else {})
    m.manage(full, "A100-80GB", [L33, L33])
    # labelled once managed, so the fake sees the change: the config in place ends in success at once
    cluster.core.patch_node(full, {"metadata": {"labels": {LABEL_MIG_CONFIG: "all-3g.40gb"}}})
    wait_for(lambda: mig(cluster, full) == {R3: "4"} and m.history(full) == [STATE_SUCCESS], timeout=15,
             what=f"{full} advertising 4 x 3g, its initial label applied (success at once)")
    return full


def node(cluster: E2ECluster, name: str) -> Any:
    return cluster.core.read_node(name)


def mig(cluster: E2ECluster, name: str) -> dict[str, str]:
    alloc = node(cluster, name).status.allocatable or {}
    return {r: q for r, q in alloc.items() if r.startswith("nvidia.com/mig-") and q != "0"}


def labels(cluster: E2ECluster, name: str) -> dict[str, str]:
    return node(cluster, name).metadata.labels or {}


def annotations(cluster: E2ECluster, name: str) -> dict[str, str]:
    return node(cluster, name).metadata.annotations or {}


def node_events(cluster: E2ECluster, name: str) -> list[tuple[str, str]]:
    """(reason, note) of the Events on node ``name`` (they live in namespace default, as the kubelet's)."""
    resp = client.EventsV1Api(cluster.api_client()).list_namespaced_event("default", _preload_content=False)
    items = json.loads(resp.data)["items"]
    return [(e.get("reason", ""), e.get("note", "")) for e in items if (e.get("regarding") or {}).get("name") == name]


def reasons(cluster: E2ECluster, name: str) -> list[str]:
    return [r for r, _ in node_events(cluster, name) if r.startswith("MigRepartition")]


def big_pod(stack: Stack, ns: str, name: str = "big") -> None:
    stack.core.create_namespaced_pod(ns, make_pod(name, mig={"7g.80gb": 1}, scheduler_name=SCHEDULER))


def phase_and_node(stack: Stack, ns: str, name: str) -> tuple[str, str]:
    pod = stack.core.read_namespaced_pod(name, ns)
    return pod.status.phase, pod.spec.node_name or ""


def test_demand_no_node_has_repartitions_the_idle_opted_in_node_only(
        stack: Stack, ns: str, fleet: Fleet, cluster: E2ECluster, mig_manager: FakeMigManager,
        e2e_report: Any) -> None:
    target = gpu_node(cluster, fleet, mig_manager, "in")
    other = gpu_node(cluster, fleet, mig_manager, "out", opted_in=False)
    mark = cluster.fake_kubelet.checkpoint()
    big_pod(stack, ns)
    wait_for(lambda: ANN_CHANGE in annotations(cluster, target), timeout=60, what="the opted-in node reserved")
    # a sibling asking for a slice the held node still advertises: it must go elsewhere, never there
    stack.core.create_namespaced_pod(ns, make_pod("sibling", mig={"3g.40gb": 1}, scheduler_name=SCHEDULER))
    wait_for(lambda: phase_and_node(stack, ns, "sibling") == ("Running", other), timeout=30,
             what="the sibling Running on the node not opted in")
    wait_for(lambda: labels(cluster, target).get(LABEL_MIG_CONFIG) == "all-7g.80gb", timeout=30,
             what="label all-7g.80gb written")
    wait_for(lambda: phase_and_node(stack, ns, "big") == ("Running", target), timeout=60,
             what="the 7g pod Running on the repartitioned node")
    wait_for(lambda: ANN_CHANGE not in annotations(cluster, target), timeout=30, what="the reservation released")
    assert mig_manager.layouts(target) == (L7, L7)
    assert mig_manager.history(target) == [STATE_SUCCESS, STATE_PENDING, STATE_SUCCESS]
    assert json.loads(annotations(cluster, target)[ANN_LAST])["outcome"] == "success"
    assert sorted(reasons(cluster, target)) == ["MigRepartitioned", "MigRepartitioning"], node_events(cluster, target)
    # the node not opted in: its label as given, no change, no record, no Event
    assert labels(cluster, other).get(LABEL_MIG_CONFIG) == "all-3g.40gb"
    assert mig_manager.history(other) == [STATE_SUCCESS]  # its initial label only
    assert not {ANN_CHANGE, ANN_LAST} & set(annotations(cluster, other)) and reasons(cluster, other) == []
    cluster.fake_kubelet.assert_no_overcommit(mark)
    e2e_report(f"repartition: 7g pod Running after 3g+3g -> 7g on {target}; no over-commit")


def test_failed_state_rolls_back_and_the_event_says_why(
        stack: Stack, ns: str, fleet: Fleet, cluster: E2ECluster) -> None:
    m = manager(cluster, {"all-3g.40gb": L33})  # its ConfigMap lacks all-7g.80gb: the MIG manager fails it
    try:
        target = gpu_node(cluster, fleet, m, "fail")
        mark = cluster.fake_kubelet.checkpoint()
        big_pod(stack, ns)
        wait_for(lambda: "MigRepartitionFailed" in reasons(cluster, target), timeout=60, what="MigRepartitionFailed")
        assert STATE_FAILED in m.history(target)
        note = next(n for r, n in node_events(cluster, target) if r == "MigRepartitionFailed")
        assert note.startswith("MigManagerFailed") and "label set back to all-3g.40gb" in note, note
        wait_for(lambda: ANN_CHANGE not in annotations(cluster, target), timeout=15, what="the reservation released")
        assert labels(cluster, target).get(LABEL_MIG_CONFIG) == "all-3g.40gb"
        # the cooldown keeps it from being tried again at once; the pod waits, nothing is deleted
        stays(lambda: ANN_CHANGE not in annotations(cluster, target), duration=6, what="no second try")
        assert phase_and_node(stack, ns, "big") == ("Pending", "")
        cluster.fake_kubelet.assert_no_overcommit(mark)
    finally:
        m.stop()


def test_wedged_pending_times_out_and_rolls_back(
        stack: Stack, ns: str, fleet: Fleet, cluster: E2ECluster, mig_manager: FakeMigManager) -> None:
    target = gpu_node(cluster, fleet, mig_manager, "wedge")
    mig_manager.wedge(target)
    big_pod(stack, ns)
    wait_for(lambda: labels(cluster, target).get(LABEL_MIG_CONFIG_STATE) == STATE_PENDING, timeout=60,
             what="the MIG manager wedged in pending")
    stays(lambda: ANN_CHANGE in annotations(cluster, target), duration=TIMEOUT / 2, what="held while pending")
    wait_for(lambda: "MigRepartitionFailed" in reasons(cluster, target), timeout=TIMEOUT + 20,
             what="rolled back after the timeout")
    note = next(n for r, n in node_events(cluster, target) if r == "MigRepartitionFailed")
    assert note.startswith("Timeout: nvidia.com/mig.config.state pending"), note
    assert "stays held until the MIG manager has restored the previous layout" in note, note
    assert labels(cluster, target).get(LABEL_MIG_CONFIG) == "all-3g.40gb"
    # the MIG manager is still wedged: it never restores the previous layout, so the node stays held
    # until a second timeout, then is released with an Event saying so
    assert ANN_CHANGE in annotations(cluster, target)
    wait_for(lambda: ANN_CHANGE not in annotations(cluster, target), timeout=TIMEOUT + 20,
             what="released after a second timeout")
    wait_for(lambda: any(n.startswith("RollbackTimeout") for _, n in node_events(cluster, target)), timeout=10,
             what="the Event saying the rollback was not confirmed")
    assert labels(cluster, target).get(LABEL_MIG_CONFIG) == "all-3g.40gb"
    assert phase_and_node(stack, ns, "big") == ("Pending", "")


def test_new_leader_finishes_the_change_the_dead_one_started(
        stack: Stack, ns: str, fleet: Fleet, cluster: E2ECluster) -> None:
    m = manager(cluster, delay=25.0)  # long enough for the Lease (15 s) to pass to the standby
    env = {**stack.repartition_env, "MIG_EXTENDER_REPARTITION_TIMEOUT": "90"}  # type: ignore[attr-defined]
    try:
        target = gpu_node(cluster, fleet, m, "leader")
        stack.stop_reconciler()  # releases the Lease: the next one leads at once
        stack.start_reconciler("reconciler-1", env=env)
        stack.start_reconciler("reconciler-2", env=env)
        big_pod(stack, ns)
        wait_for(lambda: labels(cluster, target).get(LABEL_MIG_CONFIG) == "all-7g.80gb", timeout=60,
                 what="label written by the first leader")
        first = stack.lease_holder()
        stack.kill_reconciler(first)
        wait_for(lambda: stack.lease_holder() not in ("", first), timeout=40, what="the standby leading")
        wait_for(lambda: phase_and_node(stack, ns, "big") == ("Running", target), timeout=60,
                 what="the 7g pod Running after the new leader finished the change")
        wait_for(lambda: "MigRepartitioned" in reasons(cluster, target), timeout=30, what="MigRepartitioned")
        assert m.history(target) == [STATE_SUCCESS, STATE_PENDING, STATE_SUCCESS]  # one change, not two
        assert reasons(cluster, target).count("MigRepartitioning") == 1
    finally:
        m.stop()
        for identity in stack.reconcilers():
            with contextlib.suppress(Exception):
                stack.stop_reconciler(identity)
        stack.start_reconciler(env=stack.repartition_env)  # type: ignore[attr-defined]
