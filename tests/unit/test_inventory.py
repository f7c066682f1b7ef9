"""Per-node MIG accounting: incremental updates, assume/forget, index and GPU detection."""

from __future__ import annotations

import threading

import pytest

from mig_extender.cluster.inventory import ClusterInventory, load_list
from mig_extender.core.snapshot import UnknownGpu, detect_gpu
from tests.builders import inventory_of, make_node, make_pod, res


def test_usage_follows_pod_events() -> None:
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 3}))
    pod = make_pod(mig={"1g.5gb": 2}, node="n1")
    inv.upsert_pod(pod)
    assert inv.snapshot().free("n1", res("1g.5gb")) == 1
    pod["status"]["phase"] = "Succeeded"
    inv.upsert_pod(pod)
    assert inv.snapshot().free("n1", res("1g.5gb")) == 3
    pod["status"]["phase"] = "Running"
    inv.upsert_pod(pod)
    inv.delete_pod(pod["metadata"]["uid"])
    assert inv.snapshot().free("n1", res("1g.5gb")) == 3


def test_terminating_pod_still_holds_its_slices() -> None:
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 1}), make_pod(mig={"1g.5gb": 1}, node="n1", terminating=True))
    assert inv.snapshot().free("n1", res("1g.5gb")) == 0


def test_free_index_lists_only_nodes_with_free_slices() -> None:
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 1}), make_node("n2", mig={"1g.5gb": 1, "2g.10gb": 1}),
                       make_node("n3", mig={"1g.5gb": 1}, unschedulable=True),
                       make_pod(mig={"1g.5gb": 1}, node="n1"))
    snap = inv.snapshot()
    assert snap.nodes_with_free(res("1g.5gb")) == {"n2"}
    assert snap.nodes_with_free(res("2g.10gb")) == {"n2"}


def test_assume_counts_before_the_watch_and_forget_undoes() -> None:
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 1}))
    pod = make_pod(mig={"1g.5gb": 1})
    placed = inv.assume(inv.upsert_pod(pod), "n1")
    assert placed.node == "n1" and inv.snapshot().free("n1", res("1g.5gb")) == 0
    inv.upsert_pod(pod)  # a stale watch event (still unbound) does not undo the assumption
    assert inv.snapshot().free("n1", res("1g.5gb")) == 0
    inv.forget(pod["metadata"]["uid"])
    assert inv.snapshot().free("n1", res("1g.5gb")) == 1


def test_assumption_expires_when_never_confirmed() -> None:
    now = [0.0]
    inv = ClusterInventory(clock=lambda: now[0])
    inv.upsert_node(make_node("n1", mig={"1g.5gb": 1}))
    inv.assume(inv.upsert_pod(make_pod(mig={"1g.5gb": 1})), "n1")
    now[0] = 31.0
    assert inv.expire_assumed() == 1
    assert inv.snapshot().free("n1", res("1g.5gb")) == 1


def test_relist_drops_pods_whose_delete_was_missed() -> None:
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 2}), make_pod(mig={"1g.5gb": 1}, node="n1"))
    kept = make_pod(mig={"1g.5gb": 1}, node="n1")
    inv.replace_pods([kept])
    assert inv.snapshot().free("n1", res("1g.5gb")) == 1


def test_snapshot_is_cached_until_a_change_and_later_changes_never_show_through() -> None:
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 1}))
    a, b = inv.snapshot(), inv.snapshot()
    assert a.nodes is b.nodes
    inv.upsert_pod(make_pod(mig={"1g.5gb": 1}, node="n1"))
    inv.upsert_node(make_node("n2", mig={"1g.5gb": 1}))
    c = inv.snapshot()
    assert c.nodes is not a.nodes and a.free("n1", res("1g.5gb")) == 1 and c.free("n1", res("1g.5gb")) == 0
    assert "n2" not in a.nodes and a.nodes_with_free(res("1g.5gb")) == {"n1"}


def test_load_list_reads_kubectl_output_and_rejects_other_json() -> None:
    inv = ClusterInventory()
    n = load_list(inv, {"kind": "List", "items": [make_node("n1", mig={"1g.5gb": 1}), make_pod(mig={"1g.5gb": 1})]})
    assert n == 2 and inv.synced
    with pytest.raises(ValueError, match="v1 List"):
        load_list(inv, {"kind": "Pod"})


@pytest.mark.parametrize("labels, resources, model", [
    pytest.param({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}, [], "A100-40GB", id="a100-40-sxm"),
    pytest.param({"nvidia.com/gpu.product": "NVIDIA-A100-80GB-PCIe"}, [], "A100-80GB", id="a100-80-pcie"),
    pytest.param({"nvidia.com/gpu.product": "NVIDIA-A100-PCIE", "nvidia.com/gpu.memory": "40960"}, [], "A100-40GB",
                 id="a100-memory-label"),
    pytest.param({"nvidia.com/gpu.product": "NVIDIA-H100-NVL"}, [], "H100-94GB", id="h100-nvl"),
    pytest.param({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, [], "H100-80GB", id="h100-sxm"),
    pytest.param({"nvidia.com/gpu.product": "NVIDIA-H200"}, [], "H200-141GB", id="h200"),
    pytest.param({"nvidia.com/gpu.product": "NVIDIA-A30"}, [], "A30-24GB", id="a30"),
    pytest.param({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}, [], "A100-40GB", id="single-suffix"),
    pytest.param({}, [res("1g.5gb"), res("3g.20gb")], "A100-40GB", id="no-labels-from-resources"),
    pytest.param({}, [res("1g.18gb")], "H200-141GB", id="no-labels-h200-resources"),
])
def test_gpu_model_detection(labels: dict, resources: list, model: str) -> None:
    found = detect_gpu(labels, resources)
    assert found is not None and found.name == model


def test_gpu_model_unknown_is_none() -> None:
    assert detect_gpu({"nvidia.com/gpu.product": "Tesla-T4"}, []) is None


def test_pending_pods_do_not_invalidate_the_cached_node_copy() -> None:
    """A pod arriving or being scheduled elsewhere changes pending demand, not nodes: no O(nodes) recopy."""
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 1}))
    before = inv.snapshot()
    waiting = make_pod(mig={"1g.5gb": 1})
    inv.upsert_pod(waiting)
    after = inv.snapshot()
    assert after.nodes is before.nodes and after.pending == {res("1g.5gb"): 1} and before.pending == {}
    inv.delete_pod(waiting["metadata"]["uid"])
    assert inv.snapshot().pending == {}


def test_a_full_node_list_re_keys_names_without_changing_the_books() -> None:
    """After replace_nodes every structure holds one fresh copy per name (see _compact_names): the
    usage, the free index and later updates by an equal-but-different name string are unaffected."""
    nodes = [make_node(f"n{i}", mig={"1g.5gb": 2, "2g.10gb": 1}) for i in range(3)]
    inv = inventory_of(*nodes, make_pod(mig={"1g.5gb": 2}, node="n0"), make_pod(mig={"2g.10gb": 1}, node="n1"))
    before = inv.snapshot()
    parsed = {n["metadata"]["name"]: n["metadata"]["name"] for n in nodes}
    inv.replace_nodes(nodes)
    after = inv.snapshot()
    assert after.free_index == before.free_index
    assert {n: dict(i.used) for n, i in after.nodes.items()} == {n: dict(i.used) for n, i in before.nodes.items()}
    keys = {name: name for name in after.nodes}
    for name, info in after.nodes.items():
        assert info.name is name and name is not parsed[name]
    for members in after.free_index.values():
        assert all(member is keys[member] for member in members)
    # a pod event names its node with yet another string object: it lands on the same books
    inv.upsert_pod(make_pod(mig={"1g.5gb": 1}, node="".join(["n", "2"])))
    assert inv.snapshot().free("n2", res("1g.5gb")) == 1
    assert inv.snapshot().nodes_with_free(res("1g.5gb")) == {"n1", "n2"}


def test_node_with_an_unknown_gpu_keeps_its_problem_through_pod_events() -> None:
    """Issue 16: a MIG node whose GPU is unknown is reported, not silently `gpu: null`."""
    node = make_node("x1", None, {"1g.5gb": 2}, labels={"nvidia.com/gpu.product": "NVIDIA-Future-X1"})
    inv = inventory_of(node, make_node("a1", mig={"1g.5gb": 1}))
    problem = UnknownGpu("NVIDIA-Future-X1", None, "A100-40GB")
    assert inv.gpu_problems() == {"x1": problem}
    inv.upsert_pod(make_pod(mig={"1g.5gb": 1}, node="x1"))  # a pod event rebuilds the node's NodeInfo
    assert inv.snapshot().nodes["x1"].problems == (str(problem),) and inv.snapshot().nodes["a1"].problems == ()
    node["metadata"]["labels"]["nvidia.com/gpu.product"] = "NVIDIA-A100-SXM4-40GB"  # the label is fixed
    inv.upsert_node(node)
    assert inv.gpu_problems() == {} and inv.snapshot().nodes["x1"].problems == ()
    inv.upsert_node(make_node("x2", None, {"5g.77gb": 1}))
    inv.delete_node("x2")
    assert inv.gpu_problems() == {}


def test_item9_inventory_books_cpu_and_memory_of_every_bound_pod() -> None:
    """NodeFacts.used_* come from ALL bound pods (not only MIG ones); /filter's cached snapshot is kept."""
    inv = inventory_of(make_node("n1", "A100-40GB", {"1g.5gb": 2}))
    cached = inv.snapshot()
    web = make_pod("web", node="n1")  # no MIG at all
    web["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1500m", "memory": "1Gi"}}
    inv.upsert_pod(web)
    assert inv.snapshot() is not None and inv.snapshot().nodes is cached.nodes  # the filter's cache survives
    facts = inv.snapshot(usage=True).nodes["n1"].facts
    assert (facts.used_cpu_milli, facts.used_memory_bytes) == (1500, 1024 ** 3)
    done = dict(web, status={"phase": "Succeeded"})
    inv.upsert_pod(done)
    assert inv.snapshot(usage=True).nodes["n1"].facts.used_cpu_milli == 0  # a finished pod holds nothing
    inv.upsert_pod(web)
    inv.replace_pods([])  # relist without it: its delete event was missed
    assert inv.snapshot(usage=True).nodes["n1"].facts.used_cpu_milli == 0
    inv.upsert_pod(web)
    inv.delete_pod(web["metadata"]["uid"])
    assert inv.snapshot(usage=True).nodes["n1"].facts.used_memory_bytes == 0


def test_item13_gated_pods_are_not_waiting_demand_until_their_gates_are_removed() -> None:
    """A pod held by spec.schedulingGates (Kueue's admission gate, say) is not scheduled, so it must not
    claim freed slices ahead of substitutions and restores; the update that removes the gate adds it."""
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 1}))
    pod = make_pod(mig={"1g.5gb": 1})
    pod["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    inv.upsert_pod(pod)
    assert inv.snapshot().pending == {}
    del pod["spec"]["schedulingGates"]
    inv.upsert_pod(pod)
    assert inv.snapshot().pending == {res("1g.5gb"): 1}
    inv.delete_pod(pod["metadata"]["uid"])
    assert inv.snapshot().pending == {}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bound_by_us(bound: bool = True) -> tuple[Clock, ClusterInventory, dict]:
    """Node n1 with one 1g.5gb, and a pod the extender placed there (assumed; its Binding answered 2xx
    unless ``bound`` is False)."""
    clock = Clock()
    inv = ClusterInventory(clock=clock)
    inv.upsert_node(make_node("n1", mig={"1g.5gb": 1}))
    pod = make_pod(mig={"1g.5gb": 1})
    inv.assume(inv.upsert_pod(pod), "n1")
    if bound:
        inv.finish_binding(pod["metadata"]["uid"])
    return clock, inv, pod


def test_item11_a_successful_binding_stays_booked_while_the_watch_lags() -> None:
    """kube-scheduler's cache never expires an assumed pod once its Binding succeeded (v1.36
    pkg/scheduler/backend/cache has no expiry; earlier releases set durationToExpireAssumedPod = 0):
    only the watch confirms or deletes it. Here no event comes for 60 s after the bind."""
    clock, inv, pod = bound_by_us()
    clock.now += 60
    assert inv.expire_assumed() == 0
    assert inv.snapshot().free("n1", res("1g.5gb")) == 0
    inv.upsert_pod(make_pod(mig={"1g.5gb": 1}, node="n1", uid=pod["metadata"]["uid"]))  # the watch confirms
    clock.now += 600
    assert inv.expire_assumed() == 0 and inv.snapshot().free("n1", res("1g.5gb")) == 0
    inv.delete_pod(pod["metadata"]["uid"])
    assert inv.snapshot().free("n1", res("1g.5gb")) == 1


def test_item11_a_bound_pod_missing_from_a_later_relist_is_dropped() -> None:
    """A bound assumption never expires, so a delete the watch missed must still release it: a relist
    that does not hold the pod, begun after the Binding succeeded, shows the pod is gone. A relist begun
    no later than the Binding's answer may predate it and keeps the slice booked."""
    clock, inv, _ = bound_by_us()
    inv.replace_pods([])
    assert inv.snapshot().free("n1", res("1g.5gb")) == 0
    clock.now += 60
    inv.replace_pods([])
    assert inv.snapshot().free("n1", res("1g.5gb")) == 1


def test_item10_slices_held_per_priority_follow_pod_events() -> None:
    """Kept per node, resource and priority as pods come and go (never a scan of pods per filter)."""
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 3, "2g.10gb": 1}))
    low, high = make_pod(mig={"1g.5gb": 2}, node="n1"), make_pod(mig={"1g.5gb": 1, "2g.10gb": 1}, node="n1")
    low["spec"]["priority"], high["spec"]["priority"] = -5, 1000
    inv.upsert_pod(low)
    inv.upsert_pod(high)
    snap = inv.snapshot()
    assert snap.nodes["n1"].held_by_priority == {res("1g.5gb"): {-5: 2, 1000: 1}, res("2g.10gb"): {1000: 1}}
    assert snap.lowest_priority == -5
    assert snap.nodes["n1"].held_below(res("1g.5gb"), 1000) == 2 and snap.nodes["n1"].held_below(res("1g.5gb"), -5) == 0
    low["status"]["phase"] = "Succeeded"
    inv.upsert_pod(low)
    snap = inv.snapshot()
    assert snap.nodes["n1"].held_by_priority == {res("1g.5gb"): {1000: 1}, res("2g.10gb"): {1000: 1}}
    assert snap.lowest_priority == 1000
    inv.delete_pod(high["metadata"]["uid"])
    snap = inv.snapshot()
    assert snap.nodes["n1"].held_by_priority == {} and snap.lowest_priority > 2**31 - 1  # nobody holds anything


def test_cordoned_nodes_follow_node_events() -> None:
    """The filter reads cordons from this set (no per-node flag read when it is empty)."""
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 1}), make_node("n2", mig={"1g.5gb": 1}))
    assert inv.snapshot().cordoned == frozenset()
    inv.upsert_node(make_node("n1", mig={"1g.5gb": 1}, unschedulable=True))
    assert inv.snapshot().cordoned == {"n1"}
    inv.replace_nodes([make_node("n1", mig={"1g.5gb": 1}, unschedulable=True), make_node("n2", mig={"1g.5gb": 1})])
    assert inv.snapshot().cordoned == {"n1"}
    inv.upsert_node(make_node("n1", mig={"1g.5gb": 1}))
    assert inv.snapshot().cordoned == frozenset()
    inv.upsert_node(make_node("n2", mig={"1g.5gb": 1}, unschedulable=True))
    inv.delete_node("n2")
    assert inv.snapshot().cordoned == frozenset()


def test_issue17_pending_since_follows_the_oldest_single_slice_waiter() -> None:
    """The snapshot's pending_since (aging) is the oldest unbound pod asking for one slice of a type; it
    moves on when that pod binds or is deleted, and pods asking for several slices never set it."""
    inv = inventory_of(make_node("n1", "A100-40GB", {"1g.5gb": 2}))
    old = make_pod("old", mig={"1g.5gb": 1}, uid="u-old", created="2026-01-01T00:00:00Z")
    young = make_pod("young", mig={"1g.5gb": 1}, uid="u-young", created="2026-01-01T00:10:00Z")
    several = make_pod("several", mig={"1g.5gb": 2}, uid="u-several", created="2025-12-31T00:00:00Z")
    for pod in (young, several, old):
        inv.upsert_pod(pod)
    since = inv.snapshot().pending_since
    assert since == {res("1g.5gb"): 1767225600.0}  # old's, not several's (a day older)
    inv.upsert_pod({**old, "spec": {**old["spec"], "nodeName": "n1"}, "status": {"phase": "Running"}})
    assert inv.snapshot().pending_since == {res("1g.5gb"): 1767225600.0 + 600}
    inv.delete_pod("u-young")
    assert inv.snapshot().pending_since == {}
    assert inv.snapshot().pending == {res("1g.5gb"): 2}  # the multi-slice pod still claims


def test_issue19_a_relist_does_not_hold_the_lock_while_its_pages_arrive() -> None:
    # the informer now streams a relist page by page (each page a request to the API): a lock held over
    # the whole iteration would stall every /filter for the length of a 100k-pod list
    inv = inventory_of(make_node("n1", mig={"1g.5gb": 4}))
    stalled: list[bool] = []

    def pages():
        for i in range(2):
            reader = threading.Thread(target=inv.snapshot)
            reader.start()
            reader.join(2.0)
            stalled.append(reader.is_alive())
            yield make_pod(mig={"1g.5gb": 1}, node="n1", name=f"p{i}")

    inv.replace_pods(pages())
    assert stalled == [False, False]
    assert inv.snapshot().free("n1", res("1g.5gb")) == 2


def test_soak_d9_a_pod_bound_before_a_relist_began_and_missing_from_it_is_dropped() -> None:
    """Soak seed 31 (30 min, invariant 7 at 1,337 s): three pods bound by the extender ~1 s before an API
    server restart ended (a Job pod Succeeded, two StatefulSet pods deleted) while the watch was down; the
    relist 16 s after the binds lacked them, and the 30 s rule kept them booked. No later relist came, so
    3 slices stayed used in the books for good. A list that begins after the Binding succeeded cannot
    predate it (a consistent read): missing from it, the pod is gone or finished."""
    clock, inv, _ = bound_by_us()
    clock.now += 16
    inv.replace_pods([])
    assert inv.snapshot().free("n1", res("1g.5gb")) == 1


def test_soak_d9_a_binding_that_succeeds_while_the_relist_runs_stays_booked() -> None:
    """The other side: a Binding whose success arrives after the list began may postdate the list's
    snapshot; the watch from the list's resourceVersion will show the pod (or its delete)."""
    clock, inv, pod = bound_by_us(bound=False)

    def pages():
        clock.now += 1  # the list is under way when the Binding's answer comes
        inv.finish_binding(pod["metadata"]["uid"])
        yield from ()

    inv.replace_pods(pages())
    assert inv.snapshot().free("n1", res("1g.5gb")) == 0
