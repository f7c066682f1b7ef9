"""The fake MIG manager on the real API server: a node label starts a repartition, the node's MIG
allocatable drops to 0 and comes back changed with ``nvidia.com/mig.config.state=success``; a GPU in
use is refused (``failed``, the pod keeps running); a wedged change stays ``pending``. Phase 2's
actuator is tested against this fake, so it must behave like the real one (testenv/migmanager.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mig_extender.core.repartition import (
    LABEL_MIG_CONFIG,
    LABEL_MIG_CONFIG_STATE,
    STATE_FAILED,
    STATE_PENDING,
    STATE_SUCCESS,
    NamedConfig,
)

from .conftest import Fleet
from .testenv.cluster import E2ECluster
from .testenv.migmanager import FakeMigManager
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod, wait_running

L33 = ("3g.40gb", "3g.40gb")
L1 = ("1g.10gb",) * 7
R1, R3 = "nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb"
DELAY = 1.0
CONFIGS = (NamedConfig("all-3g.40gb", all=L33), NamedConfig("all-1g.10gb", all=L1),
           NamedConfig("gpu1-1g.10gb", devices={1: L1}))


@pytest.fixture
def mig_manager(cluster: E2ECluster) -> Iterator[FakeMigManager]:
    manager = FakeMigManager(cluster.fake_kubelet, CONFIGS, delay=DELAY)
    yield manager
    manager.stop()


def _state(cluster: E2ECluster, node: str) -> tuple[str | None, dict[str, str]]:
    """(mig.config.state label, MIG allocatable) as the API server has them."""
    obj = cluster.core.read_node(node)
    mig = {r: q for r, q in (obj.status.allocatable or {}).items() if r.startswith("nvidia.com/mig-")}
    return (obj.metadata.labels or {}).get(LABEL_MIG_CONFIG_STATE), mig


def _managed_node(cluster: E2ECluster, fleet: Fleet, manager: FakeMigManager) -> str:
    name = fleet.add("gpu", gpu="A100-80GB", gpu_count=2)
    manager.manage(name, "A100-80GB", [L33, L33])
    wait_for(lambda: _state(cluster, name)[1] == {R3: "4"}, timeout=15, what=f"{name} advertising 4 x 3g")
    return name


def _label(cluster: E2ECluster, node: str, config: str) -> None:
    cluster.core.patch_node(node, {"metadata": {"labels": {LABEL_MIG_CONFIG: config}}})


def test_label_repartitions_an_idle_node(cluster: E2ECluster, fleet: Fleet, mig_manager: FakeMigManager) -> None:
    node = _managed_node(cluster, fleet, mig_manager)
    _label(cluster, node, "all-1g.10gb")
    wait_for(lambda: _state(cluster, node) == (STATE_PENDING, {R3: "0"}), timeout=10,
             what="pending with the device plugin paused")
    wait_for(lambda: _state(cluster, node) == (STATE_SUCCESS, {R1: "14"}), timeout=15, what="success as 14 x 1g")
    assert mig_manager.history(node) == [STATE_PENDING, STATE_SUCCESS]
    assert mig_manager.layouts(node) == (L1, L1)


def test_busy_gpu_is_refused_and_its_pod_keeps_running(cluster: E2ECluster, fleet: Fleet, namespace: str,
                                                        mig_manager: FakeMigManager) -> None:
    node = _managed_node(cluster, fleet, mig_manager)
    cluster.core.create_namespaced_pod(namespace, make_pod("holder", mig={"3g.40gb": 1}, node_name=node))
    wait_running(cluster.core, namespace, "holder")
    wait_for(lambda: cluster.fake_kubelet.usage(node).get(R3) == 1, timeout=10, what="the kubelet charging the pod")
    _label(cluster, node, "all-1g.10gb")
    wait_for(lambda: _state(cluster, node) == (STATE_FAILED, {R3: "4"}), timeout=15,
             what="failed, allocatable back as it was")
    assert mig_manager.history(node) == [STATE_PENDING, STATE_FAILED]
    assert cluster.core.read_namespaced_pod("holder", namespace).status.phase == "Running"
    assert mig_manager.layouts(node) == (L33, L33)


def test_per_gpu_config_changes_only_the_idle_gpu(cluster: E2ECluster, fleet: Fleet, namespace: str,
                                                  mig_manager: FakeMigManager) -> None:
    node = _managed_node(cluster, fleet, mig_manager)
    cluster.core.create_namespaced_pod(namespace, make_pod("holder", mig={"3g.40gb": 1}, node_name=node))
    wait_running(cluster.core, namespace, "holder")
    wait_for(lambda: cluster.fake_kubelet.usage(node).get(R3) == 1, timeout=10, what="the kubelet charging the pod")
    _label(cluster, node, "gpu1-1g.10gb")
    wait_for(lambda: _state(cluster, node) == (STATE_SUCCESS, {R3: "2", R1: "7"}), timeout=15,
             what="success with GPU 1 as 7 x 1g")
    assert cluster.core.read_namespaced_pod("holder", namespace).status.phase == "Running"


def test_wedged_change_stays_pending(cluster: E2ECluster, fleet: Fleet, mig_manager: FakeMigManager) -> None:
    node = _managed_node(cluster, fleet, mig_manager)
    mig_manager.wedge(node)
    _label(cluster, node, "all-1g.10gb")
    # the fake writes the state label and the allocatable in two calls (testenv/nodes.py apply: patch_node,
    # then patch_node_status): wait for both before asserting they stay so (CI saw pending with 4 x 3g)
    wait_for(lambda: _state(cluster, node) == (STATE_PENDING, {R3: "0"}), timeout=10, what="pending, plugin paused")
    stays(lambda: _state(cluster, node) == (STATE_PENDING, {R3: "0"}), duration=3 * DELAY,
          what="wedged in pending with no MIG allocatable")
    assert mig_manager.history(node) == [STATE_PENDING]
