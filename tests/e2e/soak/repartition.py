"""The soak's repartitioning: opted-in nodes the product's repartitioner may change, the fake MIG manager
that serves them (testenv/migmanager.py, following ``nvidia.com/mig.config`` as the real one does), the
demand only a change can serve, and a MIG manager that wedges in ``pending`` (gpu-operator #2833).

Why the world is shaped so: the planner changes only an opted-in node with no MIG pod at all, and never
one whose free slice some pod waits for. The soak's main pools keep every 1g/2g/3g type oversubscribed,
so an opted-in node advertising one of those would never qualify. The opted-in nodes therefore form a
pool of their own (label ``mig-soak/pool=big``, taint ``mig-soak/big``) advertising only 4g.20gb or
7g.40gb, which the named configs below switch between, and only the big pods (tolerating the taint,
opted out of substitution, so a 4g pod never stands in on a 7g) ask for those. Big pods are short-lived
(Jobs the churn finishes, bare pods it deletes), so nodes go idle and demand for the other size waits
out the window: changes start, finish, fail and time out all through the run.

Must not: judge (invariants.py) or drive the schedule (runner.py).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mig_extender.core.repartition import LABEL_MIG_CONFIG, LABEL_REPARTITION, NamedConfig

from ..testenv.migmanager import FakeMigManager
from .churn import Action
from .faults import ActiveFault, Fault
from .world import BIG_POOL, BIG_TAINT, GPU, MERGE, POOL_LABEL, NodeState, PodShape, Skip, SoakWorld, Workload

R4, R7 = "nvidia.com/mig-4g.20gb", "nvidia.com/mig-7g.40gb"
BIG = (R4, R7)
# the MIG manager's named configs (devices: all): one layout per GPU; --mig-configs gets the same map
CONFIGS: Mapping[str, tuple[str, ...]] = {"soak-all-4g": ("4g.20gb",), "soak-all-7g": ("7g.40gb",)}
# the repartitioner's knobs, seconds: a 10-20 minute soak must see many changes, so demand acts after
# WINDOW, a node may change again after COOLDOWN, and a wedged change is rolled back after TIMEOUT
WINDOW, COOLDOWN, SETTLE, TIMEOUT = 8.0, 20.0, 2.0, 25.0
MIG_MANAGER_DELAY = 2.0  # seconds the fake MIG manager takes to apply a config (device plugin paused)
BIG_NODES = 3
SLACK = 20.0  # a change record may outlive settle + 2 x timeout by this (passes every <= 5 s, 409s, a write)


def configs() -> list[NamedConfig]:
    return [NamedConfig(name, all=layout) for name, layout in CONFIGS.items()]


def reconciler_env(workdir: Path) -> dict[str, str]:
    """What every reconciler of the soak runs with: repartitioning on, the soak's knobs and name map."""
    path = workdir / "mig-configs.yaml"
    doc = {"version": "v1", "mig-configs": {
        name: [{"devices": "all", "mig-enabled": True, "mig-devices": {layout[0]: len(layout)}}]
        for name, layout in CONFIGS.items()}}
    path.write_text(yaml.safe_dump(doc))
    return {"MIG_EXTENDER_REPARTITION": "on", "MIG_EXTENDER_MIG_CONFIGS": str(path),
            "MIG_EXTENDER_REPARTITION_WINDOW": str(WINDOW), "MIG_EXTENDER_REPARTITION_COOLDOWN": str(COOLDOWN),
            "MIG_EXTENDER_REPARTITION_SETTLE": str(SETTLE), "MIG_EXTENDER_REPARTITION_TIMEOUT": str(TIMEOUT)}


def start_big_pool(world: SoakWorld, rng: random.Random, nodes: int = BIG_NODES) -> FakeMigManager:
    """The fake MIG manager and the opted-in nodes it serves (1 or 2 GPUs each, a random config)."""
    world.mig_manager = FakeMigManager(world.cluster.fake_kubelet, configs(), delay=MIG_MANAGER_DELAY)
    for i in range(nodes):
        add_big_node(world, rng, gpus=1 + i % 2)
    return world.mig_manager


def add_big_node(world: SoakWorld, rng: random.Random, gpus: int) -> NodeState:
    kubelet, manager = world.cluster.fake_kubelet, world.mig_manager
    assert manager is not None
    name = f"{world.run_id}-{world.new_name('big')}"
    config = rng.choice(sorted(CONFIGS))
    kubelet.add_node(name, GPU, {}, gpu_count=gpus, labels={POOL_LABEL: BIG_POOL, LABEL_REPARTITION: "true"},
                     taints=[{"key": BIG_TAINT, "value": "true", "effect": "NoSchedule"}])
    manager.manage(name, GPU, [CONFIGS[config]] * gpus)
    # labelled once managed, as the GPU operator's default config would: the MIG manager finds it in place
    world.core.patch_node(name, {"metadata": {"labels": {LABEL_MIG_CONFIG: config}}}, _content_type=MERGE)
    node = NodeState(name, {}, gpus, BIG_POOL, advertised=lambda: advertised(world, name))
    world.nodes[name] = node
    world.history.record("action", "big-node+", node=name, gpus=gpus, config=config)
    return node


def advertised(world: SoakWorld, node: str) -> dict[str, int]:
    """The node's MIG allocatable as the fake kubelet last wrote it (the device plugin's view)."""
    try:
        current = world.cluster.fake_kubelet.allocatable(node)
    except KeyError:
        return {}
    return {r: int(q) for r, q in current.items() if r.startswith("nvidia.com/mig-") and q > 0}


def big_pods_live(world: SoakWorld) -> int:
    return sum(1 for p in world.ledger.pods() if p.live and p.selector.get(POOL_LABEL) == BIG_POOL)


class CreateBigPod(Action):
    """A pod asking one 4g or 7g slice of the big pool: a bare pod or a one- or two-completion Job
    (ended by big-done, job-pod-done, pod-). At most one per big GPU + 1 at once.

    Demand comes in waves: WAVE creations mostly of one size, then of the other. With both sizes
    always waiting no node ever qualifies (the planner never destroys a slice some pod waits for; seed
    40's second run saw 3 changes in 5 minutes); a wave leaves the other size's nodes idle as its pods
    end, and the waiting size then outlives the window."""

    name, weight = "big+", 4.0
    WAVE = 25

    def __init__(self) -> None:
        self.created = 0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        if world.mig_manager is None:
            raise Skip("the soak does not repartition")
        gpus = sum(n.gpus for n in world.nodes.values() if n.managed)
        if big_pods_live(world) >= gpus + 1:
            raise Skip("big pool demand full")
        wave = BIG[(self.created // self.WAVE) % 2]
        self.created += 1
        shape = PodShape({wave if rng.random() < 0.85 else rng.choice(BIG): 1}, opt_out=True, pool=BIG_POOL)
        if rng.random() < 0.5:
            name = world.new_name("bigpod")
            world.ledger.expect_bare_create(name)
            try:
                with world.api_errors_are_skips():
                    world.core.create_namespaced_pod(world.namespace, world.pod_manifest(name, shape))
            except Exception:
                world.uncertain.add(name)
                raise
            world.workloads[f"Pod/{name}"] = Workload("Pod", name, shape, 1, time.monotonic())
            return {"name": name, "shape": shape.describe()}
        w = Workload("Job", world.new_name("bigjob"), shape, 1, time.monotonic(), completions=rng.randint(1, 2),
                     backoff_limit=0, failure_policy=True)
        with world.api_errors_are_skips():
            world.batch.create_namespaced_job(world.namespace, world.job_manifest(w))
        world.workloads[w.key] = w
        return {"name": w.name, "completions": w.completions, "shape": shape.describe()}


class EndBigPod(Action):
    """A big pod's work is done: a Job's pod exits 0, a bare pod is deleted. Without it the pool fills
    with long-lived pods, no node goes idle and changes stop (seed 40: none in the last 190 s)."""

    name, weight = "big-done", 3.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        pods = [p for p in world.ledger.pods() if p.live and p.node and p.selector.get(POOL_LABEL) == BIG_POOL]
        if not pods:
            raise Skip("no big pod runs")
        pod = rng.choice(pods)
        with world.api_errors_are_skips():
            if pod.owner_kind == "Job":
                world.cluster.fake_kubelet.finish_pod(world.namespace, pod.name, succeeded=True)
            else:
                world.delete_pod(pod.name, pod.uid)
        return {"pod": pod.name, "owner": pod.owner_kind or "-"}


class WedgeMigManager(Fault):
    """The MIG manager on some opted-in nodes wedges: a change it starts meanwhile writes ``pending``,
    pauses the device plugin and goes no further (gpu-operator #2833). Undone by restarting it, which
    applies each stuck node's label as it is then: the change is carried out late, or, once our timeout
    rolled the label back, the previous config is found in place and the device plugin comes back."""

    name, weight = "wedge-mig-manager", 2.0

    def apply(self, world: SoakWorld, rng: random.Random) -> ActiveFault:
        manager = world.mig_manager
        if manager is None or not manager.managed():
            raise Skip("no MIG manager")
        nodes = manager.managed()
        chosen = rng.sample(nodes, k=rng.randint(1, len(nodes)))
        for node in chosen:
            manager.wedge(node)
        length = rng.uniform(10.0, 2 * TIMEOUT)

        def recover() -> None:
            for node in chosen:
                with contextlib.suppress(Exception):
                    manager.unwedge(node)

        return ActiveFault(self.name, time.monotonic() + length, recover,
                           {"nodes": chosen, "length_s": round(length, 1)})
