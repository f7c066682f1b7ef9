"""Workload churn: each action is a small class whose ``apply(world, rng)`` makes one change a user, a
controller or a cluster operator makes, and returns what it did (for the history).

Demand is kept near ``oversubscribe`` times the schedulable capacity (in compute slices), so some types
sell out (substitutions happen) and others free up again (restores happen). An action that does not
apply to the world as it is raises Skip; one the API refused raises ActionFailed (world.py).

Must not: check anything (invariants.py) or inject faults (faults.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

from .world import (
    GPU,
    LAYOUTS,
    MERGE,
    P1,
    P2,
    P3,
    POOL_LABEL,
    POOLS,
    PROFILES,
    ActionFailed,
    NodeState,
    PodShape,
    Skip,
    SoakWorld,
    Workload,
)

COMPUTE = {P1: 1, P2: 2, P3: 3}  # compute slices of each profile on an A100
DRAIN_TIMEOUT_S = 30.0  # longer than a slow-kubelet fault: its deletions are final only when it reports again


def compute(demand: Mapping[str, int]) -> int:
    return sum(COMPUTE.get(r, 0) * n for r, n in demand.items())


def random_shape(rng: random.Random) -> PodShape:
    """Mostly one slice; sometimes two, two profiles, an init container or a sidecar asking one too;
    some pods opt out of substitution, some are pinned to a node pool."""
    # small slices most: they sell out first, and larger free ones then stand in for them
    main_profile = rng.choices(PROFILES, weights=(6, 3, 1))[0]
    main = {main_profile: 2 if rng.random() < 0.08 else 1}
    roll = rng.random()
    second: dict[str, int] = {}
    init: dict[str, int] = {}
    sidecar: dict[str, int] = {}
    if roll < 0.06:
        second = {rng.choice([p for p in PROFILES if p != main_profile]): 1}
    elif roll < 0.14:
        init = {rng.choice(PROFILES): 1}
    elif roll < 0.20:
        sidecar = {P1: 1}
    return PodShape(main, second, init, sidecar, opt_out=rng.random() < 0.08,
                    pool=rng.choice(POOLS) if rng.random() < 0.12 else "")


def has_room(world: SoakWorld, extra: Mapping[str, int], oversubscribe: float) -> bool:
    capacity = compute(world.capacity())
    return compute(world.demand()) + compute(extra) <= oversubscribe * max(capacity, 1)


class Action:
    name = "action"
    weight = 1.0
    oversubscribe = 1.3

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def room(self, world: SoakWorld, shape: PodShape, count: int) -> None:
        if not has_room(world, {r: n * count for r, n in shape.demand().items()}, self.oversubscribe):
            raise Skip("demand budget full")


def pick(rng: random.Random, items: list[Any]) -> Any:
    if not items:
        raise Skip("nothing to act on")
    return rng.choice(items)


# ---- controllers ---------------------------------------------------------------------------------------


class CreateDeployment(Action):
    name, weight = "deployment+", 5.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        shape, replicas = random_shape(rng), rng.randint(1, 3)
        self.room(world, shape, replicas)
        name = world.new_name("dep")
        with world.api_errors_are_skips():
            world.apps.create_namespaced_deployment(world.namespace, world.deployment_manifest(name, shape, replicas))
        world.workloads[f"Deployment/{name}"] = Workload("Deployment", name, shape, replicas, time.monotonic())
        return {"name": name, "replicas": replicas, "shape": shape.describe()}


class ScaleDeployment(Action):
    """HPA-like: bursts up by several replicas at once, or down (also when there is no room to grow)."""

    name, weight = "deployment~", 12.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        w: Workload = pick(rng, world.live_workloads("Deployment"))
        up = rng.randint(1, 5)
        if rng.random() < 0.55 and has_room(world, {r: n * up for r, n in w.shape.demand().items()},
                                            self.oversubscribe):
            target = w.replicas + up
        else:
            target = max(0, w.replicas - rng.randint(1, 4))
        with world.api_errors_are_skips():
            world.apps.patch_namespaced_deployment_scale(w.name, world.namespace, {"spec": {"replicas": target}})
        before, w.replicas = w.replicas, target
        return {"name": w.name, "from": before, "to": target}


class DeleteDeployment(Action):
    name, weight = "deployment-", 2.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        w: Workload = pick(rng, world.live_workloads("Deployment"))
        with world.api_errors_are_skips():
            world.apps.delete_namespaced_deployment(w.name, world.namespace, propagation_policy="Background")
        w.deleted = True
        return {"name": w.name}


class ProtectDeployment(Action):
    """A PodDisruptionBudget on a Deployment (sometimes maxUnavailable 0): evictions of its pods, the
    product's restarts and the soak's drains alike, may be refused (429)."""

    name, weight = "pdb+", 1.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        w: Workload = pick(rng, [w for w in world.live_workloads("Deployment") if not w.protected])
        unavailable = rng.choice((0, 1, 1))
        body = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": w.name},
                "spec": {"maxUnavailable": unavailable, "selector": {"matchLabels": world.labels(w.name)}}}
        with world.api_errors_are_skips():
            world.policy.create_namespaced_pod_disruption_budget(world.namespace, body)
        w.protected = True
        return {"name": w.name, "max_unavailable": unavailable}


class CreateStatefulSet(Action):
    name, weight = "statefulset+", 3.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        shape, replicas = random_shape(rng), rng.randint(1, 3)
        self.room(world, shape, replicas)
        name = world.new_name("sts")
        with world.api_errors_are_skips():
            manifest = world.statefulset_manifest(name, shape, replicas)
            world.apps.create_namespaced_stateful_set(world.namespace, manifest)
        world.workloads[f"StatefulSet/{name}"] = Workload("StatefulSet", name, shape, replicas, time.monotonic())
        return {"name": name, "replicas": replicas, "shape": shape.describe()}


class ScaleStatefulSet(Action):
    name, weight = "statefulset~", 5.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        w: Workload = pick(rng, world.live_workloads("StatefulSet"))
        step = rng.choice((-2, -1, 1, 2))
        if step > 0 and not has_room(world, {r: n * step for r, n in w.shape.demand().items()}, self.oversubscribe):
            step = -step
        target = max(0, w.replicas + step)
        with world.api_errors_are_skips():
            world.apps.patch_namespaced_stateful_set_scale(w.name, world.namespace, {"spec": {"replicas": target}})
        before, w.replicas = w.replicas, target
        return {"name": w.name, "from": before, "to": target}


class DeleteStatefulSet(Action):
    name, weight = "statefulset-", 1.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        w: Workload = pick(rng, world.live_workloads("StatefulSet"))
        with world.api_errors_are_skips():
            world.apps.delete_namespaced_stateful_set(w.name, world.namespace, propagation_policy="Background")
        w.deleted = True
        return {"name": w.name}


class CreateJob(Action):
    """Indexed Jobs: some with backoffLimit 0 and the DisruptionTarget -> Ignore podFailurePolicy the docs
    ask for, some with backoffLimit 0 and no policy, some with the default-ish backoffLimit 6."""

    name, weight = "job+", 4.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        shape = random_shape(rng)
        completions = rng.randint(1, 4)
        parallelism = rng.randint(1, completions)
        self.room(world, shape, parallelism)
        variant = rng.choices(("policy", "strict", "lenient"), weights=(5, 2, 3))[0]
        w = Workload("Job", world.new_name("job"), shape, parallelism, time.monotonic(), completions=completions,
                     backoff_limit=6 if variant == "lenient" else 0, failure_policy=variant == "policy")
        with world.api_errors_are_skips():
            world.batch.create_namespaced_job(world.namespace, world.job_manifest(w))
        world.workloads[w.key] = w
        return {"name": w.name, "completions": completions, "parallelism": parallelism, "variant": variant,
                "shape": shape.describe()}


class FinishJobPod(Action):
    """A Job pod's work is done: its container exits 0 (the Job controller then starts the next index)."""

    name, weight = "job-pod-done", 8.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        running = [p for p in world.ledger.pods() if p.owner_kind == "Job" and p.phase == "Running" and p.live]
        pod = pick(rng, running)
        with world.api_errors_are_skips():
            world.cluster.fake_kubelet.finish_pod(world.namespace, pod.name, succeeded=True)
        return {"pod": pod.name, "job": pod.owner_name}


class DeleteJob(Action):
    """Finished Jobs are cleaned up; now and then a running one is deleted too."""

    name, weight = "job-", 2.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        w: Workload = pick(rng, world.live_workloads("Job"))
        with world.api_errors_are_skips():
            world.batch.delete_namespaced_job(w.name, world.namespace, propagation_policy="Background")
        w.deleted = True
        return {"name": w.name}


# ---- bare pods -----------------------------------------------------------------------------------------


class CreateBarePod(Action):
    name, weight = "pod+", 8.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        shape, gated = random_shape(rng), rng.random() < 0.15
        self.room(world, shape, 1)
        name = world.new_name("bare")
        world.ledger.expect_bare_create(name)
        try:
            with world.api_errors_are_skips():
                world.core.create_namespaced_pod(world.namespace, world.pod_manifest(name, shape, gated))
        except Exception:
            world.uncertain.add(name)  # it may exist after all (a timeout): never judge this name
            raise
        world.workloads[f"Pod/{name}"] = Workload("Pod", name, shape, 1, time.monotonic(), gated=gated)
        return {"name": name, "gated": gated, "shape": shape.describe()}


class ReleaseGate(Action):
    """Whoever holds a gated pod (a queue like Kueue) lets it go."""

    name, weight = "ungate", 4.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        pod = pick(rng, [p for p in world.ledger.pods() if p.gated and not p.terminating])
        with world.api_errors_are_skips():
            world.core.patch_namespaced_pod(pod.name, world.namespace, {"spec": {"schedulingGates": None}},
                                            _content_type=MERGE)
        return {"pod": pod.name}


class DeletePod(Action):
    """A user (or an operator) deletes one pod, gracefully or not."""

    name, weight = "pod-", 6.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        pod = pick(rng, [p for p in world.ledger.pods() if p.live])
        grace = rng.choice((0, 5))
        with world.api_errors_are_skips():
            world.delete_pod(pod.name, pod.uid, grace, job=pod.owner_name if pod.owner_kind == "Job" else "")
        if not pod.owner_kind and (w := world.workloads.get(f"Pod/{pod.name}")) is not None:
            w.deleted = True
        return {"pod": pod.name, "uid": pod.uid[:8], "owner": pod.owner_kind or "-", "grace": grace}


# ---- nodes ---------------------------------------------------------------------------------------------


def random_layout(rng: random.Random) -> tuple[Mapping[str, int], int]:
    return rng.choice(LAYOUTS), rng.choice((1, 1, 2))


def add_node(world: SoakWorld, rng: random.Random) -> NodeState:
    per_gpu, gpus = random_layout(rng)
    node = NodeState(f"{world.run_id}-{world.new_name('n')}", per_gpu, gpus, rng.choice(POOLS))
    world.cluster.fake_kubelet.add_node(node.name, GPU, node.allocatable, gpu_count=gpus,
                                        labels={POOL_LABEL: node.pool})
    world.nodes[node.name] = node
    return node


def set_cordon(world: SoakWorld, node: NodeState, cordoned: bool) -> None:
    world.core.patch_node(node.name, {"spec": {"unschedulable": cordoned or None}}, _content_type=MERGE)
    node.cordoned = cordoned


def drain(world: SoakWorld, node: NodeState) -> int:
    """Evict the node's pods (kubectl drain) until none is left, terminating ones included: the layout
    may change only under an empty node (a terminating pod still holds its slice until the kubelet lets it
    go); returns how many were evicted."""
    evicted = 0
    kubelet = world.cluster.fake_kubelet
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        present = [p for p in world.pods_on(node.name) if p.status.phase not in ("Succeeded", "Failed")]
        charged = {r: n for r, n in kubelet.usage(node.name).items() if r.startswith("nvidia.com/mig-") and n}
        if not present and not charged:  # gone from the API and from the kubelet's own accounting
            return evicted
        for pod in (p for p in present if not p.metadata.deletion_timestamp):
            job = pod.metadata.labels.get("job-name", "") if pod.metadata.labels else ""
            world.evict_pod(pod.metadata.name, pod.metadata.uid, job=job)
            evicted += 1
        time.sleep(0.5)
    raise Skip(f"node {node.name} not drained in {DRAIN_TIMEOUT_S:.0f} s")


class AddNode(Action):
    name, weight = "node+", 1.5
    max_nodes = 8

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        if len(world.nodes) >= self.max_nodes:
            raise Skip("enough nodes")
        with world.api_errors_are_skips():
            node = add_node(world, rng)
        return {"node": node.name, "layout": dict(node.allocatable), "pool": node.pool}


class RemoveNode(Action):
    """The machine goes away: cordoned, its pods deleted (grace 0), the Node deleted."""

    name, weight = "node-", 0.7
    min_nodes = 3

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        if len(world.nodes) <= self.min_nodes:
            raise Skip("too few nodes")
        # the opted-in nodes stay: the big pool is small, and the fake MIG manager serves a fixed set
        node: NodeState = pick(rng, [n for n in world.nodes.values() if not n.managed])
        world.removed_nodes.add(node.name)  # before any pod goes: their deletions are ours
        try:
            with world.api_errors_are_skips():
                set_cordon(world, node, True)
                for pod in world.pods_on(node.name):
                    job = (pod.metadata.labels or {}).get("job-name", "")
                    world.delete_pod(pod.metadata.name, pod.metadata.uid, 0, job=job)
                world.cluster.fake_kubelet.remove_node(node.name)
        except ActionFailed:
            world.removed_nodes.discard(node.name)  # the Node is still there (a later action may remove it)
            raise
        del world.nodes[node.name]
        return {"node": node.name}


class CordonNode(Action):
    name, weight = "cordon", 1.5

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        node: NodeState = pick(rng, [n for n in world.nodes.values() if not n.cordoned])
        if len([n for n in world.schedulable_nodes() if not n.managed]) <= 2:
            raise Skip("keep two nodes schedulable")
        with world.api_errors_are_skips():
            set_cordon(world, node, True)
        return {"node": node.name}


class UncordonNode(Action):
    name, weight = "uncordon", 1.5

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        node: NodeState = pick(rng, [n for n in world.nodes.values() if n.cordoned])
        with world.api_errors_are_skips():
            set_cordon(world, node, False)
        return {"node": node.name}


class RepartitionNode(Action):
    """mig-parted's way: cordon, drain, change the MIG layout (allocatable), uncordon. It runs on the node
    beside its kubelet, so it waits until the kubelet itself has let the pods go, and never while the
    kubelet lags (the slow-kubelet fault)."""

    name, weight = "repartition", 1.0

    def apply(self, world: SoakWorld, rng: random.Random) -> dict[str, Any]:
        if world.cluster.fake_kubelet.holding:
            raise Skip("the kubelet lags (slow-kubelet fault): mig-parted waits for the node to report")
        # never an opted-in node: its operator gave its layout to our repartitioner and the MIG manager
        # (one label, one MIG manager serialising changes); mig-parted run by hand beside them would
        # fight both, which no real cluster does
        node: NodeState = pick(rng, [n for n in world.nodes.values() if not n.managed])
        layout = rng.choice([lay for lay in LAYOUTS if lay != node.per_gpu])
        was_cordoned = node.cordoned
        with world.api_errors_are_skips():
            set_cordon(world, node, True)
            try:
                evicted = drain(world, node)
                resources = {r: layout.get(r, 0) * node.gpus for r in PROFILES if r in layout or r in node.per_gpu}
                world.cluster.fake_kubelet.set_node(node.name, {r: n or "-" for r, n in resources.items()})
                before, node.per_gpu = dict(node.allocatable), layout
            finally:
                if not was_cordoned:
                    set_cordon(world, node, False)
        return {"node": node.name, "from": before, "to": dict(node.allocatable), "evicted": evicted}


CHURN: tuple[Action, ...] = (
    CreateDeployment(), ScaleDeployment(), DeleteDeployment(), ProtectDeployment(),
    CreateStatefulSet(), ScaleStatefulSet(), DeleteStatefulSet(),
    CreateJob(), FinishJobPod(), DeleteJob(),
    CreateBarePod(), ReleaseGate(), DeletePod(),
    AddNode(), RemoveNode(), CordonNode(), UncordonNode(), RepartitionNode(),
)
