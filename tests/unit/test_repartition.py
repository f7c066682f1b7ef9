"""The repartition planner: which idle GPUs change, to what, and the typed reasons for the rest.

Tables of named cases compared whole (plans and reasons are values); every target layout is also
checked against the catalog's ``layout_problems`` through ``pack``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mig_extender.core.catalog import layout_problems, model, pack
from mig_extender.core.repartition import (
    SKIP_BUSY,
    SKIP_CHANGING,
    SKIP_COOLDOWN,
    SKIP_NOT_OPTED_IN,
    SKIP_RESERVED,
    BudgetSpent,
    Demand,
    DemandTooYoung,
    GpuChange,
    GpuSkipped,
    GpuState,
    NamedConfig,
    NodeGpus,
    NodePlan,
    NodeSkipped,
    RepartitionPlan,
    RepartitionSettings,
    Serves,
    Unserved,
    best_target,
    config_name,
    disruption,
    node_from_counts,
    plan_repartition,
    split_layouts,
    target_layouts,
    track_demand,
    valid_layouts,
)
from tests.builders import res

A80 = model("A100-80GB")
A40 = model("A100-40GB")
G1, G2, G3, G7 = res("1g.10gb"), res("2g.20gb"), res("3g.40gb"), res("7g.80gb")
L33 = ("3g.40gb", "3g.40gb")
L1 = ("1g.10gb",) * 7
L7 = ("7g.80gb",)
S = RepartitionSettings(window=300, cooldown=1800, max_in_flight=4, min_served=1)
NOW = 1000.0


def gpu(index: int, layout: Sequence[str] = L33, used: dict[str, int] | None = None, **kw: object) -> GpuState:
    return GpuState(index, tuple(sorted(layout)), {} if used is None else used, **kw)  # type: ignore[arg-type]


def node(name: str, *gpus: GpuState, **kw: object) -> NodeGpus:
    return NodeGpus(name, A80, tuple(gpus), **kw)  # type: ignore[arg-type]


def old(slices: int) -> Demand:
    """Demand that has persisted past the window."""
    return Demand(slices, NOW - S.window)


def one_change(name: str, index: int, before: Sequence[str], after: Sequence[str], layouts: Sequence[Sequence[str]],
               serves: dict[str, int]) -> NodePlan:
    return NodePlan(name, (GpuChange(index, tuple(before), tuple(after)),), tuple(tuple(x) for x in layouts),
                    tuple(Serves(r, k) for r, k in sorted(serves.items())))


PLANS = [
    pytest.param(
        [node("a", gpu(0), gpu(1, used={"3g.40gb": 1}))], {G1: old(7)},
        RepartitionPlan(plans=(one_change("a", 0, L33, L1, [L1, L33], {G1: 7}),),
                        skipped=(GpuSkipped("a", 1, SKIP_BUSY),)),
        id="only-idle-gpus: the busy GPU of the node keeps its layout"),
    pytest.param(
        [node("a", gpu(0, used={"3g.40gb": 1}))], {G1: old(3)},
        RepartitionPlan(unserved=(Unserved(G1, 3),), skipped=(GpuSkipped("a", 0, SKIP_BUSY),)),
        id="only-idle-gpus: no idle GPU, the demand is reported unserved"),
    pytest.param(
        [node("a", gpu(0))], {G1: Demand(7, NOW - S.window + 1)},
        RepartitionPlan(waiting=(DemandTooYoung(G1, 7, NOW - S.window + 1, NOW + 1),)),
        id="batch-window: demand younger than the window waits"),
    pytest.param(
        [node("a", gpu(0), gpu(1), gpu(2))], {G7: old(3)},
        RepartitionPlan(plans=(NodePlan("a", (GpuChange(0, L33, L7), GpuChange(1, L33, L7)), (L7, L7, L33),
                                        (Serves(G7, 2),)),),
                        unserved=(Unserved(G7, 1),), budget=BudgetSpent(4, 4)),
        id="budget: two GPUs already changing elsewhere leave room for two"),
    pytest.param(
        [node("a", gpu(0), opted_in=False), node("b", gpu(0))], {G7: old(1)},
        RepartitionPlan(plans=(one_change("b", 0, L33, L7, [L7], {G7: 1}),),
                        skipped=(NodeSkipped("a", SKIP_NOT_OPTED_IN),)),
        id="opt-in: a node without the label is never changed"),
    pytest.param(
        [node("a", gpu(0, changed_at=NOW - 60)), node("b", gpu(0, changed_at=NOW - S.cooldown))], {G7: old(1)},
        RepartitionPlan(plans=(one_change("b", 0, L33, L7, [L7], {G7: 1}),),
                        skipped=(GpuSkipped("a", 0, SKIP_COOLDOWN, NOW - 60 + S.cooldown),)),
        id="hysteresis: a GPU changed within the cooldown is left alone"),
    pytest.param(
        [node("a", gpu(0), gpu(1, used={"3g.40gb": 1}), reserved={G3: 1}), node("b", gpu(0))], {G7: old(1)},
        RepartitionPlan(plans=(one_change("b", 0, L33, L7, [L7], {G7: 1}),),
                        skipped=(NodeSkipped("a", SKIP_RESERVED),)),
        id="reservations: a node a rule's pod is about to land on is not paused"),
    pytest.param(
        [node("a", gpu(0, L1)), node("b", gpu(0))], {G3: old(2)},
        RepartitionPlan(plans=(one_change("a", 0, L1, L33, [L33], {G3: 2}),)),
        id="one change serves both 3g pods; the other idle GPU is not touched"),
    pytest.param(
        [node("a", gpu(0, ("1g.10gb", "1g.10gb", "1g.10gb", "4g.40gb")))], {G2: old(1), G3: old(1)},
        RepartitionPlan(plans=(one_change("a", 0, ("1g.10gb", "1g.10gb", "1g.10gb", "4g.40gb"),
                                          ("1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"),
                                          [("1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb")],
                                          {G2: 1, G3: 1}),)),
        id="mixed demand: one layout serves both, fewest instances changed"),
    pytest.param(
        [node("a", gpu(0, L7)), node("b", gpu(0, L1))], {G7: Demand(1, NOW), G3: old(2)},
        RepartitionPlan(plans=(one_change("b", 0, L1, L33, [L33], {G3: 2}),),
                        waiting=(DemandTooYoung(G7, 1, NOW, NOW + S.window),)),
        id="a GPU whose free slice a pod waits for (however young the demand) is not changed"),
    pytest.param(
        [node("a", gpu(0, target=L7), gpu(1))], {G7: old(1)},
        RepartitionPlan(),
        id="in flight: a change under way already serves the demand"),
    pytest.param(
        [node("a", gpu(0, target=L1), gpu(1)), node("b", gpu(0))], {G7: old(1)},
        RepartitionPlan(plans=(one_change("b", 0, L33, L7, [L7], {G7: 1}),),
                        skipped=(NodeSkipped("a", SKIP_CHANGING),)),
        id="one change per node: the MIG manager has one config label per node"),
    pytest.param(
        [node("a", gpu(0, L7))], {G1: old(0)},
        RepartitionPlan(),
        id="no demand, no plan"),
]


@pytest.mark.parametrize(("nodes", "demand", "expected"), PLANS)
def test_plan_repartition(nodes: list[NodeGpus], demand: dict[str, Demand], expected: RepartitionPlan) -> None:
    if expected.budget is not None:
        # two GPUs of another node are changing (toward 1g, which this demand cannot use): half the budget
        nodes = [*nodes, node("busy", gpu(0, target=L1), gpu(1, target=L1))]
        expected = RepartitionPlan(expected.plans, expected.waiting, expected.unserved, expected.budget,
                                   (*expected.skipped, NodeSkipped("busy", SKIP_CHANGING)))
    plan = plan_repartition(nodes, demand, NOW, S)
    assert plan == expected
    for p in plan.plans:
        for layout in p.layouts:
            placed = pack(A80, layout)
            assert placed is not None and layout_problems(A80, placed) == []


def test_budget_spent_plans_nothing_and_says_so() -> None:
    nodes = [node("a", gpu(0, target=L7), gpu(1, target=L7), gpu(2, target=L7), gpu(3, target=L7)), node("b", gpu(0))]
    plan = plan_repartition(nodes, {G3: old(2)}, NOW, S)
    assert plan == RepartitionPlan(unserved=(Unserved(G3, 2),), budget=BudgetSpent(4, 4))


def test_hysteresis_oscillating_demand_never_changes_a_gpu() -> None:
    """Demand that flips between 1g and 7g faster than the window: every pass plans nothing."""
    nodes = [node("a", gpu(0), gpu(1))]
    seen: dict[str, Demand] = {}
    changes = 0
    for step in range(40):
        now = step * 120.0  # flips every 2 minutes, the window is 5
        current = {G1: 7} if step % 2 else {G7: 1}
        seen = track_demand(seen, current, now)
        changes += plan_repartition(nodes, seen, now, S).gpus
    assert changes == 0


def test_hysteresis_slow_oscillation_changes_each_gpu_at_most_once_per_cooldown() -> None:
    """Demand that flips every 10 minutes (past the window): a changed GPU is not changed back within
    the cooldown, so over two hours each GPU changes at most 2400 s / cooldown + 1 times."""
    layouts = [L33, L33]
    changed_at: list[float | None] = [None, None]
    seen: dict[str, Demand] = {}
    count = [0, 0]
    for step in range(0, 7200, 60):
        now = float(step)
        current = {G1: 7} if (step // 600) % 2 else {G7: 1}
        seen = track_demand(seen, current, now)
        gpus = [gpu(i, layouts[i], changed_at=changed_at[i]) for i in range(2)]
        for p in plan_repartition([node("a", *gpus)], seen, now, S).plans:
            for c in p.changes:
                layouts[c.index], changed_at[c.index] = c.after, now  # the change lands at once
                count[c.index] += 1
    assert max(count) <= 7200 // S.cooldown + 1
    assert sum(count) > 0  # it did act: the guard is the cooldown, not inaction


@pytest.mark.parametrize(("previous", "current", "expected"), [
    pytest.param({}, {G1: 3}, {G1: Demand(3, NOW)}, id="new demand starts now"),
    pytest.param({G1: Demand(3, 10.0)}, {G1: 5}, {G1: Demand(5, 10.0)}, id="persisting demand keeps its start"),
    pytest.param({G1: Demand(3, 10.0)}, {G1: 0, G3: 1}, {G3: Demand(1, NOW)}, id="demand that stopped is forgotten"),
])
def test_track_demand(previous: dict[str, Demand], current: dict[str, int], expected: dict[str, Demand]) -> None:
    assert track_demand(previous, current, NOW) == expected


# two geometries (7 and 4 compute slices); pack proving a misfit is slow, so not every model
@pytest.mark.parametrize("gpu_model", ["A100-40GB", "A30-24GB"])
def test_every_target_layout_is_valid_and_maximal(gpu_model: str) -> None:
    m = model(gpu_model)
    targets = target_layouts(m)
    assert targets
    plain = [p.name for p in m.profiles if not p.media_extensions]
    for layout in targets:
        placed = pack(m, layout)
        assert placed is not None and layout_problems(m, placed) == []
        assert all(pack(m, [*layout, extra]) is None for extra in plain), layout
    # the single-profile fills an operator would name are among them
    assert tuple(sorted([m.profiles[0].name] * m.compute_slices)) in targets


def test_valid_layouts_agree_with_pack() -> None:
    layouts = set(valid_layouts(A40))
    for layout in layouts:
        assert pack(A40, layout) is not None
    # one more instance of anything on a full 1g GPU does not fit, and the enumeration knows it
    assert tuple(sorted(("1g.5gb",) * 7 + ("1g.5gb",))) not in layouts
    assert ("3g.20gb", "4g.20gb") not in layouts  # the 3g/4g exclusion


@pytest.mark.parametrize(("current", "remaining", "expected"), [
    pytest.param(L33, {G1: 7}, (L1, 7), id="seven 1g pods: all-1g"),
    pytest.param(L33, {G7: 1}, (L7, 1), id="a whole-GPU pod: 7g"),
    pytest.param(L1, {G3: 1}, (("1g.10gb",) * 4 + ("3g.40gb",), 1), id="one 3g: keep as many 1g as fit"),
    pytest.param(L33, {G7: 1, G1: 7}, (L1, 7), id="pods first: seven waiting 1g before one waiting 7g"),
    pytest.param(L33, {G3: 5}, None, id="what the GPU already has is no change"),
    pytest.param(L33, {res("2g.20gb"): 0}, None, id="nothing waiting: no target"),
])
def test_best_target(current: tuple[str, ...], remaining: dict[str, int],
                     expected: tuple[tuple[str, ...], int] | None) -> None:
    assert best_target(A80, current, remaining) == expected


def test_disruption_counts_instances_destroyed_and_created() -> None:
    assert disruption(L33, L33) == 0
    assert disruption(L33, L7) == 3
    assert disruption(("1g.10gb",) * 4 + ("3g.40gb",), L1) == 4


CONFIGS = (
    NamedConfig("all-3g.40gb", all=L33),
    NamedConfig("all-1g.10gb", all=L1),
    NamedConfig("gpu0-1g", devices={0: L1}),
)


@pytest.mark.parametrize(("nodes", "expected"), [
    pytest.param([node("a", gpu(0), gpu(1))], ("a", "all-1g.10gb", (L1, L1)),
                 id="both GPUs idle: the all-GPU config serves the most"),
    pytest.param([node("a", gpu(0), gpu(1, used={"3g.40gb": 1}))], ("a", "gpu0-1g", (L1, L33)),
                 id="one GPU busy: only the per-GPU config leaves it alone"),
    pytest.param([node("a", gpu(0, used={"3g.40gb": 1}), gpu(1))], None,
                 id="no config changes only idle GPUs: nothing"),
])
def test_named_configs(nodes: list[NodeGpus], expected: tuple[str, str, tuple] | None) -> None:
    plan = plan_repartition(nodes, {G1: old(14)}, NOW, S, configs=CONFIGS)
    got = [(p.node, p.config, p.layouts) for p in plan.plans]
    assert got == ([expected] if expected else [])


def test_config_name_matches_whole_node_only() -> None:
    assert config_name(CONFIGS, (L33, L33), (L1, L1)) == "all-1g.10gb"
    assert config_name(CONFIGS, (L33, L33), (L1, L33)) == "gpu0-1g"
    assert config_name(CONFIGS, (L33, L33), (L33, L1)) is None


def test_named_config_with_an_invalid_layout_is_never_chosen() -> None:
    bad = NamedConfig("too-many", all=("1g.10gb",) * 8)
    assert bad.problems(A80) != []
    plan = plan_repartition([node("a", gpu(0))], {G1: old(8)}, NOW, S, configs=(bad,))
    assert plan.plans == ()


@pytest.mark.parametrize(("counts", "gpus", "expected"), [
    pytest.param({"3g.40gb": 4}, 2, (L33, L33), id="homogeneous"),
    pytest.param({"3g.40gb": 2, "1g.10gb": 7}, 2, (L33, L1), id="two layouts"),
    pytest.param({"1g.10gb": 8}, 1, None, id="more than one GPU holds: no split"),
    pytest.param({}, 2, ((), ()), id="device plugin paused: empty GPUs"),
])
def test_split_layouts(counts: dict[str, int], gpus: int, expected: tuple | None) -> None:
    got = split_layouts(A80, counts, gpus)
    assert (sorted(got) if got is not None else None) == (sorted(expected) if expected is not None else None)


def test_node_from_counts_calls_gpus_idle_only_when_the_node_is() -> None:
    alloc = {G3: 2, G1: 7}
    idle = node_from_counts("a", A80, alloc, {}, 2)
    assert idle is not None and all(g.idle for g in idle.gpus)
    busy = node_from_counts("a", A80, alloc, {G1: 1}, 2)
    assert busy is not None and not any(g.idle for g in busy.gpus)
    assert node_from_counts("a", A80, {G1: 15}, {}, 2) is None
    plan = plan_repartition([busy], {G7: old(1)}, NOW, S)
    assert plan.plans == () and {s.why for s in plan.skipped} == {SKIP_BUSY}


@pytest.mark.parametrize("alloc", [
    pytest.param({}, id="no-mig-resources"),
    pytest.param({G1: 0}, id="device-plugin-paused"),
    pytest.param({G1: 7}, id="one-gpu-without-instances"),
])
def test_node_from_counts_leaves_gpus_without_mig_instances_alone(alloc: dict[str, int]) -> None:
    """Defect: no MIG allocatable split into empty per-GPU layouts, which count as idle GPUs, so the
    planner turned a node whose device plugin is paused (mid-change, wedged) or whose GPUs run with MIG
    off (nvidia.com/gpu pods the inventory does not count) into a repartition candidate."""
    assert node_from_counts("a", A80, alloc, {}, 2) is None
