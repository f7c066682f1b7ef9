"""Issue 19, /prioritize at 5,000 names: a node's score for a pod shape is computed once per node state.

kube-scheduler asks /prioritize for every pod; between two calls most nodes did not change (a node
changes only when a pod lands on or leaves it, and then it is a new NodeInfo). So the single-type score
is kept on the NodeInfo it was computed from, and recomputed only for the node that changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

from mig_extender.core.planner import Policy, score_nodes
from mig_extender.core.resources import pod_info
from mig_extender.core.snapshot import ClusterSnapshot
from tests.builders import inventory_of, make_node, make_pod

A40 = "A100-40GB"


class CountingUsed(Mapping[str, int]):
    """A node's ``used`` map, counting reads: a score computation reads it, a remembered score does not."""

    def __init__(self, used: Mapping[str, int]) -> None:
        self.used, self.reads = dict(used), 0

    def __getitem__(self, key: str) -> int:
        self.reads += 1
        return self.used[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.used)

    def __len__(self) -> int:
        return len(self.used)


def test_issue19_prioritize_reuses_the_scores_of_unchanged_nodes() -> None:
    inv = inventory_of(make_node("a", A40, {"1g.5gb": 4}), make_node("b", A40, {"1g.5gb": 4}),
                       make_pod(mig={"1g.5gb": 2}, node="a"))
    base = inv.snapshot()
    counters = {n: CountingUsed(info.used) for n, info in base.nodes.items()}
    nodes = {n: replace(info, used=counters[n]) for n, info in base.nodes.items()}
    snap = ClusterSnapshot.build(nodes, base.free_index, now=base.now)
    first = score_nodes(pod_info(make_pod(mig={"1g.5gb": 1})), ["a", "b"], snap)
    for c in counters.values():
        c.reads = 0
    again = score_nodes(pod_info(make_pod(mig={"1g.5gb": 1})), ["a", "b"], snap)
    assert again == first and first[0][1] > first[1][1]  # the busier node packs better
    assert [c.reads for c in counters.values()] == [0, 0]
    spread = score_nodes(pod_info(make_pod(mig={"1g.5gb": 1})), ["a", "b"], snap, Policy.SPREAD)
    assert spread[0][1] < spread[1][1]  # the policy is part of what is remembered


def test_issue19_a_changed_node_is_scored_afresh() -> None:
    inv = inventory_of(make_node("a", A40, {"1g.5gb": 4}), make_node("b", A40, {"1g.5gb": 4}))
    pod = pod_info(make_pod(mig={"1g.5gb": 1}))
    before = dict(score_nodes(pod, ["a", "b"], inv.snapshot()))
    inv.assume(pod_info(make_pod(mig={"1g.5gb": 2})), "b")
    after = dict(score_nodes(pod, ["a", "b"], inv.snapshot()))
    assert before["a"] == before["b"] == after["a"] < after["b"]
