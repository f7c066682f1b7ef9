"""Repartitioning in the simulator: one change by hand, and properties of whole runs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mig_extender.core.catalog import model
from mig_extender.core.repartition import RepartitionSettings, valid_layouts
from mig_extender.sim.cluster import ClusterSpec
from mig_extender.sim.engine import Mechanics
from mig_extender.sim.repartition import RepartitionEngine, RepartitionMechanics, shifting
from mig_extender.sim.runner import SimConfig, prepare, run_all
from mig_extender.sim.workload import Job

A40 = model("A100-40GB")
R1, R3 = A40.profile("1g.5gb").resource, A40.profile("3g.20gb").resource
FAST = RepartitionMechanics(downtime=60, plan_interval=10, settings=RepartitionSettings(window=100, cooldown=600))


def job(seq: int, at: float, life: float, resource: str) -> Job:
    p = A40.find(resource.rsplit("mig-", 1)[1])
    assert p is not None
    return Job(seq, at, life, resource, 1, p.compute_slices, p.memory_slices, A40.name)


def one_node_demand_shift(policy: str) -> tuple[RepartitionEngine, dict]:
    """One node, two GPUs of 3g+3g; a long 3g pod holds one GPU; seven 1g pods arrive at t=10; a 3g
    pod arrives while the other GPU is being changed."""
    spec = ClusterSpec(1, 2, (A40,), "all-3g")
    jobs = [job(0, 0.0, 5000.0, R3), *(job(i, 10.0, 1000.0, R1) for i in range(1, 8)), job(8, 150.0, 100.0, R3)]
    engine = RepartitionEngine(spec, jobs, policy, 2000.0, Mechanics(), rmech=FAST)
    return engine, engine.run().metrics


def test_idle_gpu_is_repartitioned_and_the_pods_run_on_their_own_profile() -> None:
    engine, m = one_node_demand_shift("repartition")
    layouts = sorted(tuple(sorted(g.layout)) for g in engine.cluster.gpus["node-00000"])
    assert layouts == [("1g.5gb",) * 7, ("3g.20gb", "3g.20gb")]
    assert m["repartitions"] == 1 and m["placed"] == 9 and m["restarts"] == 0
    # the 1g pods waited for the window, a plan pass and the downtime; nothing ran on a substitute
    assert m["time_to_run_p99"] >= FAST.settings.window + FAST.downtime - 10.0
    assert m["waste_slice_fraction"] == 0


def test_no_pod_lands_on_a_node_during_its_change() -> None:
    """The 3g pod arriving at t=150 finds a free 3g slice on the busy GPU, but the node's device plugin
    is paused from the label write until the change is done: it starts only then, with the 1g pods."""
    engine, _ = one_node_demand_shift("repartition")
    ((node, gpus, begun, done),) = engine.change_log
    assert (node, gpus) == ("node-00000", 1) and begun < 150.0 < done
    assert engine.first_start[8] >= done
    assert all(engine.first_start[i] >= done for i in range(1, 8))


def test_stock_alone_never_places_the_1g_pods() -> None:
    _, m = one_node_demand_shift("repartition")
    spec = ClusterSpec(1, 2, (A40,), "all-3g")
    jobs = [job(0, 0.0, 5000.0, R3), *(job(i, 10.0, 1000.0, R1) for i in range(1, 8))]
    from mig_extender.sim.engine import POLICIES, Engine
    stock = Engine(spec, jobs, POLICIES["stock"], 2000.0).run().metrics
    assert stock["placed"] == 1 < m["placed"]


SHIFT = [("1g=0.9,3g=0.1", 2400.0), ("3g=0.6,7g=0.4", 2400.0)]


@pytest.mark.parametrize("policy", ["repartition", "mig-extender+repartition"])
@pytest.mark.parametrize("pick", ["random", "pack"])
def test_whole_runs_change_only_idle_gpus_to_valid_layouts(policy: str, pick: str) -> None:
    """start_change asserts the GPU is idle; every layout at the end is a valid one."""
    spec = ClusterSpec(4, 4, (A40,), "all-balanced")
    jobs = shifting([(A40, 1.0)], 4 * 4 * 7, 0.6, SHIFT, 600.0, seed=3)  # at 0.9 no GPU of 16 is ever idle
    engine = RepartitionEngine(spec, jobs, policy, 4800.0, Mechanics(), rmech=replace(FAST, device_pick=pick))
    m = engine.run().metrics
    valid = set(valid_layouts(A40))
    assert all(tuple(sorted(g.layout)) in valid for gs in engine.cluster.gpus.values() for g in gs)
    assert m["repartitions"] > 0
    assert m["repartitions_per_gpu_hour"] == pytest.approx(m["repartitions"] / (16 * 4800 / 3600), abs=1e-3)
    # the books agree: instances booked on GPUs = slices the node counts as used
    for name, gs in engine.cluster.gpus.items():
        booked: dict[str, int] = {}
        for g in gs:
            for r, k in g.used.items():
                booked[r] = booked.get(r, 0) + k
        assert booked == {r: k for r, k in engine.cluster.nodes[name].used.items() if k}


def test_runner_knows_the_policies_and_results_repeat() -> None:
    cfg = SimConfig(nodes=3, duration=1800, load=0.9, mix="1g=0.8,3g=0.2", mean_lifetime=600, seed=5,
                    policies=("repartition", "mig-extender+repartition"))
    prep = prepare(cfg)
    first = {p: r.metrics for p, r in run_all(prep, cfg.policies, cfg.mech, jobs=1).items()}
    second = {p: r.metrics for p, r in run_all(prep, cfg.policies, cfg.mech, jobs=1).items()}
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("sim_")}  # noqa: E731
    assert {p: strip(m) for p, m in first.items()} == {p: strip(m) for p, m in second.items()}
    with pytest.raises(ValueError, match="unknown"):
        prepare(replace(cfg, policies=("repartitionn",)))


def test_pods_on_a_substitute_are_restored_onto_the_new_slices() -> None:
    """Two 1g pods run on 3g substitutes (no 1g anywhere); their demand persists, the idle GPU becomes
    7 x 1g, and the restore step moves both back to their own profile."""
    spec = ClusterSpec(1, 2, (A40,), "all-3g")
    jobs = [job(0, 0.0, 5000.0, R1), job(1, 1.0, 5000.0, R1)]
    engine = RepartitionEngine(spec, jobs, "mig-extender+repartition", 2000.0, Mechanics(),
                               rmech=replace(FAST, device_pick="pack"))
    m = engine.run().metrics
    assert (m["upgrades"], m["repartitions"], m["restores"]) == (2, 1, 2)
    assert engine.cluster.nodes["node-00000"].used == {R1: 2}
