"""Issue 19, sold-out /filter: the substitute search reads an index by profile, not every node.

The property test pins the choice to the plain definition (least waste, then the scarcest free count,
then the least free compute left, then the name, over every candidate holding a free slice of a
compatible type); the counting test pins the cost: once the index is built, a search reads a handful
of nodes, not every holder.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mig_extender.core.catalog import can_substitute, resource_shape, waste
from mig_extender.core.planner import PlanSettings, choose_substitute
from mig_extender.core.resources import ResourceCount, pod_info
from mig_extender.core.rules import new_rule
from mig_extender.core.snapshot import ClusterSnapshot, NodeInfo
from tests.builders import inventory_of, make_node, make_pod, res, snapshot_of

A40 = "A100-40GB"
TYPES = ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]


def reference(pod, candidates, snap: ClusterSnapshot):
    """Every candidate node and compatible type, through snap.free(): (node, substitute) or None."""
    want = pod.single_demand
    requested = resource_shape(want.resource)
    best = None
    for node in candidates:
        info = snap.nodes.get(node)
        if info is None or node in snap.cordoned:
            continue
        for resource, offered in info.shapes.items():
            if resource == want.resource or not can_substitute(requested, offered):
                continue
            if snap.pending.get(resource) and snap.spare(resource) < want.count:
                continue
            free = snap.free(node, resource)
            if free < want.count:
                continue
            left = info.total_compute - info.busy_compute - offered.compute_slices * want.count
            cost = (waste(requested, offered), free - want.count, left, node)
            if best is None or cost < best[0]:
                best = (cost, node, resource)
    return None if best is None else (best[1], best[2])


node_spec = st.fixed_dictionaries({t: st.integers(0, 2) for t in TYPES})


@settings(max_examples=300, deadline=None)
@given(nodes=st.lists(node_spec, min_size=1, max_size=8),
       used=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(TYPES)), max_size=12),
       reserve=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(TYPES)), max_size=4),
       pending=st.lists(st.sampled_from(TYPES), max_size=3),
       cordoned=st.sets(st.integers(0, 7), max_size=2),
       subset=st.sets(st.integers(0, 7), min_size=1),
       want=st.sampled_from(TYPES[:3]))
def test_sold_out_search_agrees_with_the_definition(nodes, used, reserve, pending, cordoned, subset, want) -> None:
    objects = [make_node(f"n{i}", A40, spec, unschedulable=i in cordoned) for i, spec in enumerate(nodes)]
    objects += [make_pod(mig={t: 1}, node=f"n{i % len(nodes)}") for i, t in used]
    objects += [make_pod(mig={t: 1}) for t in pending]  # unbound: they wait for exactly that type
    rules = tuple(new_rule(pod_info(make_pod(f"r{j}", mig={"1g.5gb": 1})), ResourceCount(res("1g.5gb"), 1),
                           ResourceCount(res(t), 1), f"n{i % len(nodes)}", 900.0, 300.0)
                  for j, (i, t) in enumerate(reserve))
    snap = snapshot_of(*objects, rules=rules)
    pod = pod_info(make_pod("p", mig={want: 1}))
    candidates = [f"n{i}" for i in sorted(subset) if i < len(nodes)] or ["n0"]
    rule = choose_substitute(pod, candidates, snap, PlanSettings())
    assert (None if rule is None else (rule.node, rule.substitute.resource)) == reference(pod, candidates, snap)


class CountingNodes(Mapping[str, NodeInfo]):
    """The snapshot's nodes, counting every node read."""

    def __init__(self, nodes: Mapping[str, NodeInfo]) -> None:
        self.nodes, self.reads = nodes, 0

    def __getitem__(self, name: str) -> NodeInfo:
        self.reads += 1
        return self.nodes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)


@pytest.mark.parametrize("holders", [pytest.param(200, id="200-nodes"), pytest.param(2000, id="2000-nodes")])
def test_issue19_sold_out_filter_reads_few_nodes(holders: int) -> None:
    """Every node has its 3g.20gb taken and a free 7g.40gb: the search for a 3g.20gb pod reads at most a
    few nodes per compatible type once the index is built (the first search builds it), not all of them."""
    objects = [make_node(f"n{i:05d}", A40, {"3g.20gb": 1, "7g.40gb": 1}) for i in range(holders)]
    objects += [make_pod(mig={"3g.20gb": 1}, node=f"n{i:05d}") for i in range(holders)]
    base = snapshot_of(*objects)
    counting = CountingNodes(base.nodes)
    snap = ClusterSnapshot.build(counting, base.free_index, now=base.now, lowest_priority=base.lowest_priority)
    names = list(base.nodes)
    first = choose_substitute(pod_info(make_pod("a", mig={"3g.20gb": 1})), names, snap)
    counting.reads = 0
    again = choose_substitute(pod_info(make_pod("b", mig={"3g.20gb": 1})), names, snap)
    assert first is not None and again is not None and again.node == first.node == "n00000"
    assert counting.reads <= 10, f"read {counting.reads} of {holders} nodes"


def test_issue19_free_order_follows_the_inventory() -> None:
    """The order is shared by snapshots of one inventory state, never a stale one: after a bind takes
    the chosen node's last free 7g slice, the next search picks another node."""
    inv = inventory_of(*[make_node(f"n{i}", A40, {"3g.20gb": 1, "7g.40gb": 1}) for i in range(3)],
                       *[make_pod(mig={"3g.20gb": 1}, node=f"n{i}") for i in range(3)])
    names = ["n0", "n1", "n2"]
    first = choose_substitute(pod_info(make_pod("a", mig={"3g.20gb": 1})), names, inv.snapshot())
    inv.assume(pod_info(make_pod("b", mig={"7g.40gb": 1})), first.node)
    again = choose_substitute(pod_info(make_pod("c", mig={"3g.20gb": 1})), names, inv.snapshot())
    assert (first.node, again.node) == ("n0", "n1")
