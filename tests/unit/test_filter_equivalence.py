"""The filter's fast paths decide exactly what the plain per-node computation decides (property test)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mig_extender.core.planner import filter_pod
from mig_extender.core.resources import ANN_RULE, ResourceCount, pod_info
from mig_extender.core.rules import new_rule
from tests.builders import make_node, make_pod, res, snapshot_of

TYPES = ["1g.5gb", "2g.10gb", "3g.20gb"]
PRIOS = [-10, 0, 100]  # pod priorities: one holder priority is the common case, several the one item 10 is about


def relievable(pod, node, resource, bound):
    """Slices of ``resource`` on ``node`` held by bound pods of strictly lower priority, read off the pods."""
    if pod.preemption_policy == "Never":
        return 0
    return sum(p.demand.get(resource, 0) for p in bound if p.node == node and p.priority < pod.priority)


def reference(pod, candidates, snap, tolerant, bound):
    """Plain arithmetic through snap.free() for every node and resource: the definition of fitting."""
    passed, failed, unresolvable = set(), set(), set()
    for node in candidates:
        info = snap.nodes.get(node)
        if info is None:
            failed.add(node)
            continue
        if not info.schedulable and not tolerant:  # cordoned: kube-scheduler's NodeUnschedulable
            unresolvable.add(node)
            continue
        short = [(r, n, snap.free(node, r, pod)) for r, n in pod.demand.items() if snap.free(node, r, pod) < n]
        if not short:
            passed.add(node)
        elif any(n > info.allocatable.get(r, 0) or free + relievable(pod, node, r, bound) < n
                 for r, n, free in short):  # fit.go: requested > allocatable; or lower priorities hold too few
            unresolvable.add(node)
        else:
            failed.add(node)
    own = snap.own_reservation(pod)
    if own is not None and own[0] in passed:  # a pod with a reserved slice goes there, nowhere else
        failed |= passed - {own[0]}
        passed = {own[0]}
    return passed, failed, unresolvable


node_spec = st.fixed_dictionaries({t: st.integers(0, 3) for t in TYPES})
TOLERATE_CORDON = [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]


@settings(max_examples=300, deadline=None)
@given(nodes=st.lists(node_spec, min_size=1, max_size=8),
       used=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(TYPES), st.integers(1, 2), st.sampled_from(PRIOS)),
                     max_size=10),
       reserve=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(TYPES)), max_size=4),
       demand=st.dictionaries(st.sampled_from(TYPES), st.integers(1, 2), min_size=1, max_size=2),
       own=st.booleans(), extra=st.booleans(), cordoned=st.sets(st.integers(0, 7), max_size=3),
       tolerant=st.booleans(), priority=st.sampled_from(PRIOS), never=st.booleans())
def test_fast_paths_agree_with_the_definition(nodes, used, reserve, demand, own, extra, cordoned, tolerant,
                                              priority, never) -> None:
    objects = [make_node(f"n{i}", "A100-40GB", spec, unschedulable=i in cordoned) for i, spec in enumerate(nodes)]
    holders = [make_pod(mig={t: k}, node=f"n{i % len(nodes)}") for i, t, k, _ in used]
    for holder, (*_, p) in zip(holders, used, strict=True):
        holder["spec"]["priority"] = p
    objects += holders
    rules = []
    for j, (i, t) in enumerate(reserve):
        holder = pod_info(make_pod(f"r{j}", mig={"1g.5gb": 1}))
        rules.append(new_rule(holder, ResourceCount(res("1g.5gb"), 1), ResourceCount(res(t), 1),
                              f"n{i % len(nodes)}", 900.0, 300.0))
    annotations = {ANN_RULE: rules[0].name} if own and rules else {}
    pod_obj = make_pod("p", mig=demand, annotations=annotations)
    if tolerant:
        pod_obj["spec"]["tolerations"] = TOLERATE_CORDON
    pod_obj["spec"]["priority"] = priority
    if never:
        pod_obj["spec"]["preemptionPolicy"] = "Never"
    pod = pod_info(pod_obj)
    if own and rules:  # the pod is the rewritten replacement that may use rules[0]'s reservation
        rules[0] = replace(rules[0], namespace=pod.namespace)
    snap = snapshot_of(*objects, rules=tuple(rules))
    candidates = [f"n{i}" for i in range(len(nodes))] + (["ghost"] if extra else [])
    d = filter_pod(pod, candidates, snap)
    got = (set(d.passed), set(d.failed), set(d.unresolvable))
    assert got == reference(pod, candidates, snap, tolerant, [pod_info(h) for h in holders])
    assert len(d.passed) + len(d.failed) + len(d.unresolvable) == len(candidates)
