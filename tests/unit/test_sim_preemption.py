"""The simulator's priority classes and preemption: hand-built scenes with exact times, and whole runs."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace

import pytest

from mig_extender import cli
from mig_extender.core.catalog import model
from mig_extender.sim.cluster import ClusterSpec
from mig_extender.sim.engine import POLICIES, Engine, Mechanics
from mig_extender.sim.runner import SimConfig, prepare, run_all
from mig_extender.sim.workload import Job, PriorityClass, assign_priorities, parse_priorities

A40 = model("A100-40GB")
R1G, R2G = A40.profile("1g.5gb").resource, A40.profile("2g.10gb").resource
PREEMPTING = ("stock", "mig-extender+preempt")
MECH = Mechanics()


def job(seq: int, at: float, life: float, resource: str = R1G, priority: int = 0, klass: str = "low") -> Job:
    compute = 2 if resource == R2G else 1
    return Job(seq, at, life, resource, 1, compute, compute, A40.name, priority, klass)


def run_scene(layout: str, jobs: list[Job], policy: str, duration: float = 500.0) -> dict:
    engine = Engine(ClusterSpec(1, 1, (A40,), layout), jobs, POLICIES[policy], duration, MECH)
    metrics = engine.run().metrics
    metrics["running_at_end"] = engine.tally.running
    return metrics


# The issue's scene: a node with 2 x 1g.5gb held by a low-priority Deployment, a high-priority pod asking 1g.5gb.
ISSUE_SCENE = [job(0, 0.0, 10_000.0), job(1, 1.0, 10_000.0), job(2, 10.0, 100.0, priority=1000, klass="high")]


@pytest.mark.parametrize("policy", PREEMPTING)
def test_issue_scene_one_victim_preemptor_runs_after_the_grace_period(policy: str) -> None:
    m = run_scene("1g.5gb*2", ISSUE_SCENE, policy)
    high, low = m["by_class"]["high"], m["by_class"]["low"]
    assert (m["preemptions"], m["preempted"], low["preempted"], high["preempted"]) == (1, 1, 1, 0)
    assert high["time_to_run_p50"] == MECH.grace_period  # victims hold their slices until gone
    # the victim's workload re-queued and ran again once the high pod was done at t=140: nobody lost
    assert (m["placed"], m["waiting_at_end"], m["running_at_end"]) == (3, 0, 2)


def test_issue_scene_without_preemption_the_high_pod_waits_forever() -> None:
    m = run_scene("1g.5gb*2", ISSUE_SCENE, "mig-extender")
    assert m["by_class"]["high"]["placed"] == 0 and m["preemptions"] == 0 and m["waiting_at_end"] == 1


def test_the_queue_is_ordered_by_priority_then_arrival() -> None:
    # one slice, busy until t=50; a low pod queues at t=1, a high one at t=2: the free goes to the high one
    jobs = [job(0, 0.0, 50.0), job(1, 1.0, 100.0), job(2, 2.0, 100.0, priority=1000, klass="high")]
    m = run_scene("1g.5gb", jobs, "mig-extender")
    assert m["by_class"]["high"]["time_to_run_p50"] == 50.0 + MECH.retry_interval - 2.0
    # the low one gets the slice when the high one is done
    assert m["by_class"]["low"]["time_to_run_p99"] == 50.0 + MECH.retry_interval + 100.0 + MECH.retry_interval - 1.0


def test_equal_priority_never_preempts() -> None:
    same = [replace(j, priority=0, klass="low") for j in ISSUE_SCENE]
    for policy in PREEMPTING:
        m = run_scene("1g.5gb*2", same, policy)
        assert (m["preemptions"], m["waiting_at_end"]) == (0, 1), policy


# 1g slices held by "mid" (50), the 2g by "low" (0): stock can only evict a mid pod; mig-extender evicts
# the lower low pod and runs the high pod on the freed 2g, restarting it during the victim's grace period.
SUBSTITUTE_SCENE = [job(0, 0.0, 10_000.0, priority=50, klass="mid"), job(1, 1.0, 10_000.0, priority=50, klass="mid"),
                    job(2, 2.0, 10_000.0, R2G), job(3, 10.0, 100.0, priority=1000, klass="high")]


@pytest.mark.parametrize(("policy", "victim_class", "upgrades"), [
    pytest.param("stock", "mid", 0, id="stock-evicts-the-own-profile"),
    pytest.param("mig-extender+preempt", "low", 1, id="mig-extender-frees-a-substitute-with-a-lower-victim"),
])
def test_substitute_preemption_costs_a_lower_victim_and_no_extra_time(policy: str, victim_class: str,
                                                                      upgrades: int) -> None:
    m = run_scene("1g.5gb*2,2g.10gb", SUBSTITUTE_SCENE, policy, duration=60.0)
    assert (m["preemptions"], m["preempted"], m["by_class"][victim_class]["preempted"]) == (1, 1, 1)
    assert m["upgrades"] == upgrades
    assert m["by_class"]["high"]["time_to_run_p50"] == MECH.grace_period


@pytest.mark.parametrize("policy", PREEMPTING)
def test_two_preemptors_for_one_node_evict_each_slice_once(policy: str) -> None:
    jobs = [*ISSUE_SCENE[:2], job(2, 10.0, 100.0, priority=1000, klass="high"),
            job(3, 11.0, 100.0, priority=1000, klass="high")]
    m = run_scene("1g.5gb*2", jobs, policy, duration=100.0)
    assert m["preempted"] == 2 and m["by_class"]["high"]["placed"] == 2
    # the second preemptor's promise covers the second victim's slice, so the first waits for it too
    # (kube-scheduler counts a nominated pod of equal priority the same way): at most one second later
    assert m["by_class"]["high"]["time_to_run_p99"] <= MECH.grace_period + 1


# -- workloads with classes -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    pytest.param("high=0.2", (PriorityClass("high", 1000, 0.2), PriorityClass("default", 0, 0.8)), id="high"),
    pytest.param("low=0.5,critical:5000=0.1",
                 (PriorityClass("critical", 5000, 0.1), PriorityClass("default", 0, 0.4),
                  PriorityClass("low", -1000, 0.5)), id="custom-value-and-low"),
    pytest.param("high=0.5,default=0.5", (PriorityClass("high", 1000, 0.5), PriorityClass("default", 0, 0.5)),
                 id="all-shares-given"),
])
def test_parse_priorities(text: str, want: tuple[PriorityClass, ...]) -> None:
    assert parse_priorities(text) == want


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("urgent=0.1", "give 'urgent' a value", id="unknown-name-without-value"),
    pytest.param("high=0.7,low=0.6", "sum to 1.3", id="shares-above-one"),
    pytest.param("high=x", "NAME[:PRIORITY]=SHARE", id="bad-share"),
    pytest.param("high", "NAME[:PRIORITY]=SHARE", id="no-share"),
    pytest.param("high=0.1,high=0.2", "each NAME once", id="duplicate"),
])
def test_bad_priorities_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_priorities(text)


def test_classes_leave_the_job_stream_as_it_was() -> None:
    base = SimConfig(nodes=4, duration=3600, seed=3)
    plain, classed = prepare(base).jobs, prepare(replace(base, priorities="high=0.2")).jobs
    assert [replace(j, priority=0, klass="") for j in classed] == plain
    high = sum(j.klass == "high" for j in classed)
    assert 0.15 < high / len(classed) < 0.25 and {j.priority for j in classed} == {0, 1000}
    assert assign_priorities(plain, parse_priorities("high=0.2"), 3) == classed  # seeded: same draw


# -- whole runs -------------------------------------------------------------------------------------

SKEWED = SimConfig(nodes=6, duration=5400, load=1.1, mix="1g=0.8,2g=0.1,3g=0.1", mean_lifetime=900, seed=7)
POLICIES_3 = ("stock", "mig-extender", "mig-extender+preempt")


def run(cfg: SimConfig, policies: tuple[str, ...] = POLICIES_3) -> dict[str, dict]:
    prep = prepare(cfg)
    return {p: r.metrics for p, r in run_all(prep, policies, cfg.mech, jobs=1).items()}


@pytest.fixture(scope="module")
def with_classes() -> dict[str, dict]:
    return run(replace(SKEWED, priorities="high=0.2"))


def test_high_priority_p99_with_preemption_is_no_worse_than_stock(with_classes: dict[str, dict]) -> None:
    stock, ours = with_classes["stock"], with_classes["mig-extender+preempt"]
    assert stock["preemptions"] > 0 and ours["preemptions"] > 0
    assert ours["by_class"]["high"]["time_to_run_p99"] <= stock["by_class"]["high"]["time_to_run_p99"]


def test_victims_are_strictly_lower_priority_and_counted_once(with_classes: dict[str, dict]) -> None:
    for policy, m in with_classes.items():
        assert m["by_class"]["high"]["preempted"] == 0, policy
        assert m["preempted"] == sum(c["preempted"] for c in m["by_class"].values()), policy
    assert with_classes["mig-extender"]["preemptions"] == 0


def test_without_classes_preemption_changes_nothing() -> None:
    plain = run(replace(SKEWED, nodes=3, duration=2400), ("mig-extender", "mig-extender+preempt"))
    strip = {"sim_seconds", "sim_cpu_seconds"}
    first, second = ({k: v for k, v in m.items() if k not in strip} for m in plain.values())
    assert second == first and second["preemptions"] == 0 and "by_class" not in second


def test_table_shows_classes_and_preemptions() -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["simulate", "--nodes", "2", "--duration", "1200", "--jobs", "1", "--load", "1.2",
                         "--priorities", "high=0.3", "--policies", "stock,mig-extender+preempt"])
    text = out.getvalue()
    assert code == 0, err.getvalue()
    assert "priority classes: high (1000) 30%, default (0) 70%" in text
    assert "[high] time to run p99 (s)" in text and "[default] pods preempted" in text and "preemptions" in text


def test_bad_priorities_flag_exits_2() -> None:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main(["simulate", "--nodes", "2", "--duration", "600", "--priorities", "urgent=0.1"])
    assert code == 2 and "give 'urgent' a value" in err.getvalue()
