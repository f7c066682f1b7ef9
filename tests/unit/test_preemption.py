"""MIG-aware preemption: victim and node choice against tables of cases, one id per case.

Each ordering case is built so that it would pick differently without its criterion; the test
``test_each_ordering_case_depends_on_its_criterion`` proves it by removing the criterion and watching
the pick change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest

from mig_extender.core import preemption
from mig_extender.core.catalog import model
from mig_extender.core.planner import PlanSettings
from mig_extender.core.preemption import (
    NO_BUDGETS,
    DisruptionBudgets,
    NodeVerdict,
    NoPlan,
    NoPlanReason,
    PreemptionPlan,
    Victims,
    budgets_from_objects,
    pdb_selects,
    plan_preemption,
    process_preemption,
    split_by_pdb,
)
from mig_extender.core.resources import ANN_SUBSTITUTE, PodInfo
from mig_extender.core.snapshot import ClusterSnapshot, NodeInfo
from tests.builders import res

A40 = model("A100-40GB")
NOW = 10_000.0
HIGH = 1000
BALANCED = {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}  # one all-balanced A100-40GB


def pod(name: str, mig: Mapping[str, int], node: str = "", priority: int = 0, started: float = 0.0,
        **kw: object) -> PodInfo:
    phase = kw.pop("phase", "Running" if node else "Pending")
    return PodInfo(namespace="default", name=name, uid=f"uid-{name}", demand={res(k): n for k, n in mig.items()},
                   node=node, phase=phase, priority=priority, started=started, **kw)  # type: ignore[arg-type]


def preemptor(mig: Mapping[str, int] | None = None, priority: int = HIGH, **kw: object) -> PodInfo:
    return pod("urgent", mig or {"1g.5gb": 1}, priority=priority, **kw)


@dataclass(frozen=True)
class Scene:
    """Nodes (name -> allocatable by profile) and the pods bound to them."""

    nodes: Mapping[str, Mapping[str, int]]
    pods: Sequence[PodInfo] = ()
    unschedulable: frozenset[str] = frozenset()
    pending: Mapping[str, int] = field(default_factory=dict)

    def snapshot(self) -> ClusterSnapshot:
        infos = {}
        for name, alloc in self.nodes.items():
            used: dict[str, int] = {}
            for p in self.pods:
                if p.node == name and p.holds_slices:
                    for r, n in p.demand.items():
                        used[r] = used.get(r, 0) + n
            infos[name] = NodeInfo(name, A40, {res(k): n for k, n in alloc.items()}, used, 1,
                                   schedulable=name not in self.unschedulable)
        return ClusterSnapshot.build(infos, now=NOW, pending={res(k): n for k, n in self.pending.items()})

    def by_node(self) -> dict[str, list[PodInfo]]:
        out: dict[str, list[PodInfo]] = {}
        for p in self.pods:
            out.setdefault(p.node, []).append(p)
        return out


@dataclass(frozen=True)
class Expect:
    node: str
    victims: tuple[str, ...]
    pdb_violations: int = 0
    substitute: str = ""


def plan(scene: Scene, who: PodInfo, budgets: DisruptionBudgets = NO_BUDGETS, **kw: object):
    return plan_preemption(who, scene.snapshot(), scene.by_node(), budgets, **kw)  # type: ignore[arg-type]


def outcome(result: PreemptionPlan | NoPlan) -> Expect | NoPlanReason:
    if isinstance(result, NoPlan):
        return result.reason
    sub = result.substitute.resource if result.substitute else ""
    return Expect(result.node, tuple(p.name for p in result.victims), result.pdb_violations, sub)


def one_node(*pods: PodInfo, alloc: Mapping[str, int] = BALANCED) -> Scene:
    return Scene({"gpu-a": alloc}, pods)


def full_balanced(node: str = "gpu-a", starts: Sequence[float] = (100.0, 200.0, 300.0, 400.0),
                  **prio: int) -> list[PodInfo]:
    """Every slice of an all-balanced GPU held: 1g pods a, b; 2g pod c; 3g pod d (priorities by name)."""
    kinds = {"a": "1g.5gb", "b": "1g.5gb", "c": "2g.10gb", "d": "3g.20gb"}
    return [pod(f"{node}-{k}", {profile: 1}, node, prio.get(k, 0), start)
            for (k, profile), start in zip(kinds.items(), starts, strict=True)]


SAME_START = (100.0,) * 4


def held(node: str, name: str, priority: int, started: float, slices: int = 1) -> PodInfo:
    return pod(name, {"1g.5gb": slices}, node, priority, started)


TWO_1G = {"1g.5gb": 2}
PDB_ON = "pdb-protected"


def pdb_for(*names: str, allowed: int = 0) -> DisruptionBudgets:
    return DisruptionBudgets((allowed,), {f"uid-{n}": (0,) for n in names})


# -- who may preempt, which pods may be victims --------------------------------------------------

ELIGIBILITY = [
    pytest.param(one_node(pod("low-old", {"1g.5gb": 1}, "gpu-a", 0, 100.0),
                          pod("low-new", {"1g.5gb": 1}, "gpu-a", 0, 200.0), alloc=TWO_1G),
                 preemptor(), Expect("gpu-a", ("low-new",)),
                 id="issue-scene-two-1g-held-by-low-priority-exactly-one-victim"),
    pytest.param(one_node(pod("peer", {"1g.5gb": 1}, "gpu-a", HIGH), pod("peer2", {"1g.5gb": 1}, "gpu-a", HIGH),
                          alloc=TWO_1G),
                 preemptor(), NoPlanReason.NO_CANDIDATE, id="equal-priority-is-never-a-victim"),
    pytest.param(one_node(pod("low", {"1g.5gb": 1}, "gpu-a", 0), pod("low2", {"1g.5gb": 1}, "gpu-a", 0),
                          alloc=TWO_1G),
                 preemptor(preemption_policy="Never"), NoPlanReason.POLICY_NEVER, id="preemption-policy-never"),
    pytest.param(one_node(pod("higher", {"1g.5gb": 1}, "gpu-a", 2000, 900.0),
                          pod("low", {"1g.5gb": 1}, "gpu-a", 0, 100.0), alloc=TWO_1G),
                 preemptor(), Expect("gpu-a", ("low",)), id="higher-priority-pods-are-not-victims"),
    pytest.param(one_node(pod("holds-2g", {"2g.10gb": 1}, "gpu-a", 0)), preemptor(),
                 NoPlanReason.FITS_WITHOUT_PREEMPTION, id="own-profile-free-no-preemption"),
    pytest.param(one_node(*full_balanced()[:2]), preemptor(), NoPlanReason.FITS_WITHOUT_PREEMPTION,
                 id="compatible-substitute-free-no-preemption"),
    pytest.param(one_node(*full_balanced()[:2]), preemptor(annotations={ANN_SUBSTITUTE: "false"}),
                 Expect("gpu-a", ("gpu-a-b",)), id="substitute-free-but-pod-opted-out-preempts-own-type"),
    pytest.param(one_node(*full_balanced()), pod("urgent", {"1g.5gb": 1}, "gpu-a", HIGH),
                 NoPlanReason.NOT_PENDING, id="bound-pod-does-not-preempt"),
    pytest.param(one_node(*full_balanced()), pod("urgent", {}, priority=HIGH), NoPlanReason.NOT_A_MIG_POD,
                 id="pod-without-mig"),
    pytest.param(one_node(*full_balanced()), preemptor(problems=("bad quantity",)),
                 NoPlanReason.UNREADABLE_DEMAND, id="unreadable-demand"),
    pytest.param(one_node(pod("done", {"1g.5gb": 1}, "gpu-a", 0, phase="Succeeded"),
                          pod("low", {"1g.5gb": 1}, "gpu-a", 0), alloc=TWO_1G),
                 preemptor(), NoPlanReason.FITS_WITHOUT_PREEMPTION, id="finished-pods-hold-nothing"),
]


@pytest.mark.parametrize(("scene", "who", "want"), ELIGIBILITY)
def test_eligibility_and_victims(scene: Scene, who: PodInfo, want: Expect | NoPlanReason) -> None:
    assert outcome(plan(scene, who)) == want


# -- victims on one node: remove every lower-priority pod, then reprieve ---------------------------

VICTIMS = [
    pytest.param(one_node(pod("p10", {"1g.5gb": 1}, "gpu-a", 10), pod("p30", {"1g.5gb": 1}, "gpu-a", 30),
                          pod("p20", {"1g.5gb": 1}, "gpu-a", 20), alloc={"1g.5gb": 3}),
                 preemptor(), DisruptionBudgets(), Expect("gpu-a", ("p10",)),
                 id="reprieve-highest-priority-first-victim-is-the-lowest"),
    pytest.param(one_node(pod("older", {"1g.5gb": 1}, "gpu-a", 0, 100.0),
                          pod("newer", {"1g.5gb": 1}, "gpu-a", 0, 200.0),
                          pod("unstarted", {"1g.5gb": 1}, "gpu-a", 0, 0.0), alloc={"1g.5gb": 3}),
                 preemptor(), DisruptionBudgets(), Expect("gpu-a", ("unstarted",)),
                 id="equal-priority-victim-is-the-latest-started-unstarted-counts-as-now"),
    pytest.param(one_node(pod("p1", {"1g.5gb": 1}, "gpu-a", 1), pod("p2", {"1g.5gb": 1}, "gpu-a", 2),
                          pod("p3", {"1g.5gb": 1}, "gpu-a", 3), alloc={"1g.5gb": 3}),
                 preemptor({"1g.5gb": 2}), DisruptionBudgets(), Expect("gpu-a", ("p2", "p1")),
                 id="multi-slice-preemptor-takes-the-two-lowest"),
    pytest.param(one_node(pod("pair", {"1g.5gb": 2}, "gpu-a", 5), pod("single", {"1g.5gb": 1}, "gpu-a", 0),
                          alloc={"1g.5gb": 3}),
                 preemptor({"1g.5gb": 2}), DisruptionBudgets(), Expect("gpu-a", ("pair",)),
                 id="multi-slice-victim-frees-both-at-once-the-single-is-reprieved"),
    pytest.param(one_node(pod("cpu-only", {}, "gpu-a", 0), *full_balanced(a=5, b=6, c=1, d=1)),
                 preemptor(annotations={ANN_SUBSTITUTE: "false"}), DisruptionBudgets(),
                 Expect("gpu-a", ("gpu-a-a",)), id="only-victims-that-free-the-requested-profile"),
    pytest.param(one_node(pod("mixed", {"1g.5gb": 1, "2g.10gb": 1}, "gpu-a", 0), pod("one", {"1g.5gb": 1}, "gpu-a", 0),
                          pod("two", {"2g.10gb": 1}, "gpu-a", 0, 900.0), alloc={"1g.5gb": 2, "2g.10gb": 2}),
                 preemptor({"1g.5gb": 1, "2g.10gb": 1}, annotations={ANN_SUBSTITUTE: "false"}),
                 DisruptionBudgets(), Expect("gpu-a", ("mixed",)),
                 id="multi-type-preemptor-one-victim-holding-both-types"),
    pytest.param(one_node(pod("gone-soon", {"1g.5gb": 1}, "gpu-a", 0, 200.0, terminating=True),
                          pod("low", {"1g.5gb": 1}, "gpu-a", 0, 100.0), alloc=TWO_1G),
                 preemptor(), DisruptionBudgets(), Expect("gpu-a", ("gone-soon",)),
                 id="terminating-pods-are-potential-victims-like-kube-scheduler"),
    pytest.param(one_node(held("gpu-a", "older", 0, 100.0), held("gpu-a", "newer", 0, 200.0), alloc=TWO_1G),
                 preemptor(), pdb_for("newer"), Expect("gpu-a", ("older",)),
                 id="pdb-violating-pods-are-reprieved-first"),
    pytest.param(one_node(held("gpu-a", "older", 0, 100.0), held("gpu-a", "newer", 0, 200.0), alloc=TWO_1G),
                 preemptor({"1g.5gb": 2}), pdb_for("older", "newer", allowed=1),
                 Expect("gpu-a", ("older", "newer"), 1),
                 id="pdb-budget-consumed-in-importance-order-one-violation"),
]


@pytest.mark.parametrize(("scene", "who", "budgets", "want"), VICTIMS)
def test_victims_on_one_node(scene: Scene, who: PodInfo, budgets: DisruptionBudgets, want: Expect) -> None:
    assert outcome(plan(scene, who, budgets)) == want


# -- substitutes --------------------------------------------------------------------------------

SUBSTITUTES = [
    pytest.param(one_node(*full_balanced(a=50, b=50, c=10, d=60)), preemptor(),
                 Expect("gpu-a", ("gpu-a-c",), substitute=res("2g.10gb")),
                 id="substitute-when-it-costs-lower-victims"),
    pytest.param(one_node(*full_balanced(starts=SAME_START, a=10, b=10, c=10, d=10)), preemptor(),
                 Expect("gpu-a", ("gpu-a-b",)), id="own-profile-when-costs-tie"),
    pytest.param(one_node(*full_balanced(starts=SAME_START, a=50, b=50, c=10, d=10)), preemptor(),
                 Expect("gpu-a", ("gpu-a-c",), substitute=res("2g.10gb")),
                 id="equal-cost-substitutes-least-waste-first"),
    pytest.param(one_node(*full_balanced(a=50, b=50, c=10, d=60)), preemptor(annotations={ANN_SUBSTITUTE: "false"}),
                 Expect("gpu-a", ("gpu-a-b",)), id="opted-out-pod-frees-only-its-own-profile"),
    pytest.param(Scene({"gpu-a": BALANCED}, full_balanced(a=50, b=50, c=10, d=60), pending={"2g.10gb": 1}),
                 preemptor(), Expect("gpu-a", ("gpu-a-b",)),
                 id="substitute-type-pending-pods-wait-for-is-theirs"),
]


@pytest.mark.parametrize(("scene", "who", "want"), SUBSTITUTES)
def test_substitutes(scene: Scene, who: PodInfo, want: Expect) -> None:
    assert outcome(plan(scene, who)) == want


def test_substitution_disabled_in_settings_frees_only_the_own_profile() -> None:
    scene = one_node(*full_balanced(a=50, b=50, c=10, d=60))
    got = plan(scene, preemptor(), settings=PlanSettings(substitution=False))
    assert outcome(got) == Expect("gpu-a", ("gpu-a-b",))


# -- choosing the node: pickOneNodeForPreemption, criterion by criterion ------------------------

X, Y = "node-x", "node-y"


def two_nodes(x: Sequence[PodInfo], y: Sequence[PodInfo], alloc: Mapping[str, int] = TWO_1G) -> Scene:
    return Scene({X: alloc, Y: alloc}, [*x, *y])


# (scene, preemptor, budgets, expected pick, index of the criterion the case proves)
ORDERING = [
    pytest.param(two_nodes([held(X, "x1", 0, 100.0), held(X, "x2", 0, 100.0)],
                           [held(Y, "y1", 50, 100.0), held(Y, "y2", 50, 100.0)]),
                 preemptor(), pdb_for("x1", "x2"), Expect(Y, ("y2",)), 0,
                 id="fewest-pdb-violations"),
    pytest.param(two_nodes([held(X, "x1", 20, 100.0, slices=2)],
                           [held(Y, "y1", 5, 500.0), held(Y, "y2", 10, 500.0)]),
                 preemptor({"1g.5gb": 2}), DisruptionBudgets(), Expect(Y, ("y2", "y1")), 1,
                 id="lowest-highest-victim-priority"),
    pytest.param(two_nodes([held(X, "x1", 10, 500.0), held(X, "x2", 10, 900.0)],
                           [held(Y, "y1", 10, 100.0), held(Y, "y2", 0, 100.0)]),
                 preemptor({"1g.5gb": 2}), DisruptionBudgets(), Expect(Y, ("y1", "y2")), 2,
                 id="smallest-sum-of-priorities"),
    pytest.param(two_nodes([held(X, "x1", 0, 100.0), held(X, "x2", -2**31, 900.0)],
                           [held(Y, "y1", 0, 100.0, slices=2)]),
                 preemptor({"1g.5gb": 2}), DisruptionBudgets(), Expect(Y, ("y1",)), 3,
                 id="fewest-victims-when-sums-tie-min-int32-priority"),
    pytest.param(two_nodes([held(X, "x1", 0, 100.0), held(X, "x2", 0, 100.0)],
                           [held(Y, "y1", 0, 200.0), held(Y, "y2", 0, 200.0)]),
                 preemptor(), DisruptionBudgets(), Expect(Y, ("y2",)), 4,
                 id="latest-start-time-of-the-highest-priority-victims"),
]


@pytest.mark.parametrize(("scene", "who", "budgets", "want", "criterion"), ORDERING)
def test_node_choice_by_kube_scheduler_order(scene: Scene, who: PodInfo, budgets: DisruptionBudgets,
                                             want: Expect, criterion: int) -> None:
    got = plan(scene, who, budgets)
    assert isinstance(got, PreemptionPlan)
    assert (got.node, tuple(p.name for p in got.victims)) == (want.node, want.victims)
    assert got.candidates == 2


@pytest.mark.parametrize(("scene", "who", "budgets", "want", "criterion"), ORDERING)
def test_each_ordering_case_depends_on_its_criterion(scene: Scene, who: PodInfo, budgets: DisruptionBudgets,
                                                     want: Expect, criterion: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its criterion the case picks the other node: the table really tests each criterion."""
    full = preemption.candidate_order

    def without(victims, pdb_violations, now):  # type: ignore[no-untyped-def]
        key = full(victims, pdb_violations, now)
        return key[:criterion] + key[criterion + 1:]

    monkeypatch.setattr(preemption, "candidate_order", without)
    got = plan(scene, who, budgets)
    assert isinstance(got, PreemptionPlan) and got.node != want.node


def test_full_tie_takes_the_first_node_in_snapshot_order() -> None:
    scene = two_nodes([held(X, "x1", 0, 100.0), held(X, "x2", 0, 100.0)],
                      [held(Y, "y1", 0, 100.0), held(Y, "y2", 0, 100.0)])
    assert outcome(plan(scene, preemptor())).node == X  # type: ignore[union-attr]
    assert outcome(plan(scene, preemptor(), candidates=[Y, X])).node == Y  # type: ignore[union-attr]


def test_full_tie_prefers_own_profile_on_another_node_over_a_substitute() -> None:
    scene = Scene({X: {"2g.10gb": 1}, Y: {"1g.5gb": 1}},
                  [held(Y, "y1", 0, 100.0), pod("x1", {"2g.10gb": 1}, X, 0, 100.0)])
    assert outcome(plan(scene, preemptor())) == Expect(Y, ("y1",))


# -- nodes that are no candidates say why -----------------------------------------------------------

def test_nodes_that_cannot_help_report_typed_reasons() -> None:
    scene = Scene({"full-high": TWO_1G, "cordoned": TWO_1G, "tainted": TWO_1G, "no-1g": {"7g.40gb": 1},
                   "empty-low": {"1g.5gb": 1}},
                  [held("full-high", "h1", 2000, 1.0), held("full-high", "h2", 2000, 1.0),
                   held("cordoned", "c1", 0, 1.0), held("cordoned", "c2", 0, 1.0),
                   held("tainted", "t1", 0, 1.0), held("tainted", "t2", 0, 1.0),
                   pod("big", {"7g.40gb": 1}, "no-1g", 3000, 1.0),
                   held("empty-low", "e1", 1500, 1.0), pod("cpu-only", {}, "empty-low", 0, 1.0)],
                  unschedulable=frozenset({"cordoned"}))
    exact = preemptor(annotations={ANN_SUBSTITUTE: "false"})  # the 7g would be a substitute otherwise
    got = plan(scene, exact, node_ok=lambda p, node: node != "tainted", candidates=[*scene.nodes, "ghost"])
    assert isinstance(got, NoPlan) and got.reason is NoPlanReason.NO_CANDIDATE
    assert got.nodes == {"full-high": NodeVerdict.NO_LOWER_PRIORITY_PODS, "cordoned": NodeVerdict.UNSCHEDULABLE,
                         "tainted": NodeVerdict.CONSTRAINTS, "no-1g": NodeVerdict.NO_SUCH_SLICES,
                         "empty-low": NodeVerdict.NOT_ENOUGH, "ghost": NodeVerdict.UNKNOWN_NODE}


def test_other_constraints_move_the_plan_to_a_costlier_node() -> None:
    scene = two_nodes([held(X, "x1", 0, 100.0), held(X, "x2", 0, 100.0)],
                      [held(Y, "y1", 50, 100.0), held(Y, "y2", 50, 100.0)])
    assert outcome(plan(scene, preemptor())).node == X  # type: ignore[union-attr]
    assert outcome(plan(scene, preemptor(), node_ok=lambda p, node: node != X)).node == Y  # type: ignore[union-attr]


def test_waits_while_its_earlier_victims_terminate_on_the_nominated_node() -> None:
    leaving = pod("victim", {"1g.5gb": 1}, "gpu-a", 0, 100.0, terminating=True)
    scene = one_node(leaving, held("gpu-a", "low", 0, 200.0), alloc=TWO_1G)
    got = plan(scene, preemptor(), nominated="gpu-a", preempted={leaving.uid})
    assert isinstance(got, NoPlan) and got.reason is NoPlanReason.VICTIMS_TERMINATING
    # a pod terminating for another reason does not hold it back
    assert isinstance(plan(scene, preemptor(), nominated="gpu-a"), PreemptionPlan)


def test_reserved_slices_are_taken_victims_must_free_beyond_them() -> None:
    scene = one_node(held("gpu-a", "a", 0, 100.0), held("gpu-a", "b", 0, 200.0), alloc=TWO_1G)
    snap = scene.snapshot()
    reserved = replace(snap, reserved={"gpu-a": {res("1g.5gb"): 1}})  # e.g. promised to an earlier preemptor
    got = plan_preemption(preemptor(), reserved, scene.by_node())
    assert isinstance(got, PreemptionPlan) and [p.name for p in got.victims] == ["a", "b"]


def test_plan_lists_only_running_victims_to_delete() -> None:
    leaving = pod("leaving", {"1g.5gb": 1}, "gpu-a", 0, 100.0, terminating=True)
    scene = one_node(leaving, held("gpu-a", "low", 0, 200.0), alloc=TWO_1G)
    got = plan(scene, preemptor({"1g.5gb": 2}))
    assert isinstance(got, PreemptionPlan)
    assert [p.name for p in got.victims] == ["leaving", "low"] and [p.name for p in got.to_delete] == ["low"]
    assert got.take == {res("1g.5gb"): 2}


# -- PDBs read like kube-scheduler --------------------------------------------------------------

def pdb_object(selector: object, allowed: int, namespace: str = "default", disrupted: Sequence[str] = ()) -> dict:
    return {"metadata": {"name": "pdb", "namespace": namespace}, "spec": {"selector": selector},
            "status": {"disruptionsAllowed": allowed, "disruptedPods": {n: "2026-01-01T00:00:00Z" for n in disrupted}}}


def pod_object(name: str, labels: Mapping[str, str], namespace: str = "default") -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": dict(labels)}}


@pytest.mark.parametrize(("selector", "labels", "want"), [
    pytest.param({"matchLabels": {"app": "x"}}, {"app": "x"}, True, id="match-labels"),
    pytest.param({"matchLabels": {"app": "x"}}, {"app": "y"}, False, id="other-labels"),
    pytest.param({}, {"app": "x"}, False, id="empty-selector-selects-nothing"),
    pytest.param(None, {"app": "x"}, False, id="nil-selector-selects-nothing"),
    pytest.param({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, {}, False,
                 id="pod-without-labels-never-selected"),
    pytest.param({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}, {"app": "x"}, False,
                 id="invalid-in-without-values-selects-nothing"),
    pytest.param({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}, {"app": "x"}, False,
                 id="invalid-exists-with-values-selects-nothing"),
    pytest.param({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]}, {"app": "2"}, False,
                 id="unknown-operator-selects-nothing"),
    pytest.param({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}, {"app": "x"}, True,
                 id="not-in-matches-absent-key"),
])
def test_pdb_selector_reading(selector: object, labels: Mapping[str, str], want: bool) -> None:
    assert pdb_selects(selector, labels) is want


def test_budgets_from_objects_skip_other_namespaces_and_disrupted_pods() -> None:
    pdbs = [pdb_object({"matchLabels": {"app": "x"}}, 1, disrupted=["p-gone"]),
            pdb_object({"matchLabels": {"app": "x"}}, 0, namespace="other")]
    pods = [pod_object("p1", {"app": "x"}), pod_object("p-gone", {"app": "x"}), pod_object("p2", {"app": "y"}),
            pod_object("p3", {"app": "x"}, namespace="other")]
    assert budgets_from_objects(pdbs, pods) == DisruptionBudgets((1, 0), {"uid-p1": (0,), "uid-p3": (1,)})


def test_a_pod_consumes_every_pdb_that_covers_it() -> None:
    budgets = DisruptionBudgets((1, 0), {"uid-a": (0, 1), "uid-b": (0,)})
    a, b = pod("a", {"1g.5gb": 1}), pod("b", {"1g.5gb": 1})
    # a breaks PDB 1 and still spends PDB 0's one disruption, so b (after it) breaks PDB 0
    assert split_by_pdb([a, b], budgets) == ([a, b], [])
    assert split_by_pdb([b, a], budgets) == ([a], [b])


# -- the preempt verb -----------------------------------------------------------------------------

def verb(scene: Scene, who: PodInfo, proposed: Mapping[str, Sequence[PodInfo]],
         budgets: DisruptionBudgets = NO_BUDGETS) -> dict[str, object]:
    answer = process_preemption(who, {n: Victims(tuple(v), 0) for n, v in proposed.items()}, scene.snapshot(),
                                scene.by_node(), budgets)
    out: dict[str, object] = {n: tuple(p.name for p in v.pods) for n, v in answer.nodes.items()}
    out.update({n: r for n, r in answer.dropped.items()})
    return out


CPU_LOW = pod("cpu-hog", {}, "gpu-a", 0, 50.0)

PREEMPT_VERB = [
    pytest.param(one_node(CPU_LOW, held("gpu-a", "a", 0, 100.0), held("gpu-a", "b", 0, 200.0), alloc=TWO_1G),
                 {"gpu-a": [CPU_LOW]}, {"gpu-a": ("cpu-hog", "b")},
                 id="adds-the-least-important-mig-victim-to-the-schedulers"),
    pytest.param(one_node(held("gpu-a", "a", 0, 100.0), held("gpu-a", "b", 0, 200.0), alloc=TWO_1G),
                 {"gpu-a": [pod("a", {"1g.5gb": 1}, "gpu-a", 0, 100.0)]}, {"gpu-a": ("a",)},
                 id="keeps-the-schedulers-victims-when-they-free-the-slice"),
    pytest.param(one_node(CPU_LOW, held("gpu-a", "h1", 2000, 1.0), held("gpu-a", "h2", 2000, 1.0), alloc=TWO_1G),
                 {"gpu-a": [CPU_LOW]}, {"gpu-a": NodeVerdict.NOT_ENOUGH},
                 id="drops-a-node-where-mig-can-never-fit"),
    pytest.param(one_node(CPU_LOW, alloc=TWO_1G), {"gpu-a": [CPU_LOW], "ghost": [CPU_LOW]},
                 {"gpu-a": ("cpu-hog",), "ghost": NodeVerdict.UNKNOWN_NODE},
                 id="drops-a-node-not-in-the-inventory"),
    pytest.param(one_node(CPU_LOW, *full_balanced(a=50, b=50, c=10, d=60)), {"gpu-a": [CPU_LOW]},
                 {"gpu-a": ("gpu-a-c", "cpu-hog")}, id="adds-a-substitute-victim-and-sorts-by-importance"),
]


@pytest.mark.parametrize(("scene", "proposed", "want"), PREEMPT_VERB)
def test_preempt_verb(scene: Scene, proposed: Mapping[str, Sequence[PodInfo]], want: dict) -> None:
    assert verb(scene, preemptor(), proposed) == want


def test_preempt_verb_passes_non_mig_pods_through_and_reports_unreadable_ones() -> None:
    proposed = {"gpu-a": Victims((CPU_LOW,), 3)}
    scene = one_node(CPU_LOW)
    assert process_preemption(pod("web", {}, priority=HIGH), proposed, scene.snapshot(), {}).nodes == proposed
    bad = process_preemption(preemptor(problems=("x: 'abc' is not a quantity",)), proposed, scene.snapshot(), {})
    assert bad.error == "x: 'abc' is not a quantity" and not bad.nodes


def test_preempt_verb_recounts_pdb_violations_when_it_adds_victims() -> None:
    scene = one_node(CPU_LOW, held("gpu-a", "a", 0, 100.0), held("gpu-a", "b", 0, 200.0), alloc=TWO_1G)
    answer = process_preemption(preemptor(), {"gpu-a": Victims((CPU_LOW,), 0)}, scene.snapshot(), scene.by_node(),
                                pdb_for("a", "b"))
    # both 1g pods break the PDB: the older (more important) is reprieved first, the newer is the victim
    assert answer.nodes["gpu-a"] == Victims((CPU_LOW, scene.pods[2]), 1)
