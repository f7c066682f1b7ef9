"""Repartitioning in the simulator: the ``repartition`` and ``mig-extender+repartition`` policies.

Both call ``core.repartition.plan_repartition`` every ``plan_interval`` seconds (in the reconciler's
pass) and act on its plans the way the GPU operator's MIG manager would:

* ``repartition`` (the nos-like peer): the stock scheduler (exact type only) plus repartitioning of
  idle GPUs toward the pending queue, after the batch window, with a downtime per change;
* ``mig-extender+repartition``: mig-extender (substitution, reservations, restores) plus the same
  repartitioning, whose demand also counts pods running on a substitute: a new slice of their own
  type lets ``plan_restores`` move them back and frees the larger slice.

What a change costs, like the MIG manager (NVIDIA/mig-parted, deployments/gpu-operator/
reconfigure-mig.sh): it pauses the node's device plugin, so from the label write until ``downtime``
seconds later the node takes no new MIG pod at all (its free slices are hidden; running pods keep
running), and the changed GPUs come back with their new layout. Which GPU a pod's slice is on
matters here (only idle GPUs change), so this cluster books every instance on a GPU: the kubelet
picks devices without preference (``devicemanager`` takes any free device), modelled as a seeded
random choice among the node's GPUs with a free instance (``device_pick="random"``); ``"pack"``
prefers the busiest GPU, as a device plugin with a packing GetPreferredAllocation would.

Must not: decide anything (the planner does) or import flask/kubernetes/cachetools. It hooks into
engine.Engine by subclassing (the event loop and its decisions stay in engine.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..core.catalog import GpuModel
from ..core.repartition import Demand, GpuState, NodeGpus, NodePlan, RepartitionSettings, plan_repartition, track_demand
from .cluster import ClusterSpec, LiveNodeInfo, SimCluster
from .engine import POLICIES as ENGINE_POLICIES
from .engine import Engine, Mechanics, PolicySpec, _Work, with_aging
from .stats import RunResult
from .workload import Job, parse_mix, synthetic


@dataclass(frozen=True)
class RepartitionMechanics:
    """Timing of repartitioning in the simulator, in seconds, and the planner's settings.

    ``downtime``: label written -> new slices allocatable. The MIG manager stops the device plugin,
    GFD and DCGM on the node, waits for them to go, applies the config and restarts them: a minute
    or two when it goes well, hence 120 s (docs/repartition.md).
    """

    downtime: float = 120.0
    plan_interval: float = 30.0
    settings: RepartitionSettings = field(default_factory=RepartitionSettings)
    device_pick: str = "random"   # random | pack
    seed: int = 1


_MECH = Mechanics()
# name -> (the engine policy it extends, whether pods on a substitute count as demand)
POLICIES: dict[str, tuple[PolicySpec, bool]] = {
    "repartition": (ENGINE_POLICIES["stock"], False),
    "mig-extender+repartition": (ENGINE_POLICIES["mig-extender"], True),
}


@dataclass
class _Gpu:
    index: int
    layout: tuple[str, ...]
    used: dict[str, int] = field(default_factory=dict)      # resource -> instances in use
    target: tuple[str, ...] | None = None
    changed_at: float | None = None

    def free(self, model_resources: Mapping[str, str], resource: str) -> int:
        have = sum(1 for n in self.layout if model_resources[n] == resource)
        return have - self.used.get(resource, 0)


class RepartitionCluster(SimCluster):
    """A SimCluster that knows each instance's GPU and can change GPU layouts (see module doc).

    ``owner`` is set by the engine before each allocate/release so the instances a pod took are the
    ones it gives back.
    """

    def __init__(self, spec: ClusterSpec, demand: Mapping[int, float] | None, pick: str, seed: int) -> None:
        super().__init__(spec, demand)
        if pick not in ("random", "pack"):
            raise ValueError(f"device_pick must be random or pack, got {pick!r}")
        self.pick = pick
        self.rng = random.Random(seed)
        self.gpus: dict[str, list[_Gpu]] = {n: [_Gpu(i, lay) for i, lay in enumerate(layouts)]
                                            for n, layouts in self.gpu_layouts.items()}
        self.paused: dict[str, float] = {}   # node -> when its change completes
        self.owner: object = None
        self._held: dict[int, list[_Gpu]] = {}

    def _names(self, node: str) -> dict[str, str]:
        gpu = self.nodes[node].gpu
        assert gpu is not None
        return {p.name: p.resource for p in gpu.profiles}

    def allocate(self, node: str, resource: str, count: int) -> int:
        compute = super().allocate(node, resource, count)
        names = self._names(node)
        taken = []
        for _ in range(count):
            options = [g for g in self.gpus[node] if g.target is None and g.free(names, resource) > 0]
            if self.pick == "pack":
                g = max(options, key=lambda g: (sum(g.used.values()), -g.index))
            else:
                g = self.rng.choice(options)
            g.used[resource] = g.used.get(resource, 0) + 1
            taken.append(g)
        self._held[id(self.owner)] = taken
        return compute

    def release(self, node: str, resource: str, count: int) -> int:
        compute = super().release(node, resource, count)
        for g in self._held.pop(id(self.owner), []):
            g.used[resource] -= 1
            if not g.used[resource]:
                del g.used[resource]
        if node in self.paused:
            # the device plugin is down: what the pod freed is not allocatable until the change ends
            self._free[resource].pop(node, None)
            alloc = dict(self.nodes[node].allocatable)
            alloc[resource] -= count
            self._set_allocatable(node, alloc)
        return compute

    def _set_allocatable(self, node: str, alloc: dict[str, int]) -> None:
        old = self.nodes[node]
        self.nodes[node] = LiveNodeInfo(name=node, gpu=old.gpu, allocatable=alloc, used=old.used,
                                        gpu_count=old.gpu_count)

    def start_change(self, plan: NodePlan, now: float, downtime: float) -> None:
        """The label is written: the node's free slices vanish, the changed GPUs get their target."""
        for c in plan.changes:
            g = self.gpus[plan.node][c.index]
            assert not g.used and g.target is None, f"repartition of a busy GPU {plan.node}/{c.index}"
            g.target = c.after
        used = self.nodes[plan.node].used
        self._set_allocatable(plan.node, {r: used.get(r, 0) for r in self.nodes[plan.node].allocatable})
        for nodes in self._free.values():
            nodes.pop(plan.node, None)
        self.paused[plan.node] = now + downtime

    def finish_change(self, node: str, now: float) -> list[str]:
        """The MIG manager reports success: new layouts, the device plugin back; returns the resources
        the node now has free (the engine retries the pods waiting for them)."""
        del self.paused[node]
        names = self._names(node)
        for g in self.gpus[node]:
            if g.target is not None:
                g.layout, g.target, g.changed_at = g.target, None, now
        alloc: dict[str, int] = {}
        for g in self.gpus[node]:
            for n in g.layout:
                alloc[names[n]] = alloc.get(names[n], 0) + 1
        used = self.nodes[node].used
        for r in used:
            alloc.setdefault(r, 0)  # a resource still used keeps a key (shapes are read from it)
        self._set_allocatable(node, alloc)
        freed = []
        for r, k in alloc.items():
            if k > used.get(r, 0):
                if r not in self._free:
                    self._free[r] = {}
                    self.free_index[r] = self._free[r].keys()
                    self.resources = (*self.resources, r)
                self._free[r][node] = None
                freed.append(r)
        return freed

    def node_gpus(self, node: str, reserved: Mapping[str, int]) -> NodeGpus:
        info = self.nodes[node]
        assert info.gpu is not None
        to_name = {p.resource: p.name for p in info.gpu.profiles}
        states = tuple(GpuState(g.index, tuple(sorted(g.layout)), {to_name[r]: k for r, k in g.used.items()},
                                g.target, g.changed_at) for g in self.gpus[node])
        return NodeGpus(node, info.gpu, states, True, reserved)


class RepartitionEngine(Engine):
    """Engine plus the repartition pass; see the module docstring."""

    def __init__(self, spec: ClusterSpec, jobs: Sequence[Job], name: str, duration: float,
                 mech: Mechanics = _MECH, demand: dict[int, float] | None = None,
                 progress: Callable[[float], None] | None = None, rmech: RepartitionMechanics | None = None,
                 aging: float | None = None) -> None:
        rmech = rmech or RepartitionMechanics()
        base, self.count_substituted = POLICIES[name]
        base = with_aging(base, aging)
        # slices a re-partition made for pods on substitutes are theirs: that layout change is the taker a
        # restore needs (PlanSettings.restore_needs_taker), not a queued pod
        plan = replace(base.plan, restore_needs_taker=False) if self.count_substituted else base.plan
        super().__init__(spec, jobs, PolicySpec(name, plan, base.reservations, base.first_fit,
                                                base.queue_aware), duration, mech, demand, progress)
        self.cluster: RepartitionCluster = RepartitionCluster(spec, demand, rmech.device_pick, rmech.seed)
        self.tally.capacity = self.cluster.compute_capacity
        self.rmech = rmech
        self.seen: dict[str, Demand] = {}
        self.next_plan = rmech.plan_interval
        self.gpu_changes = 0
        self.node_changes = 0
        self.change_log: list[tuple[str, int, float, float]] = []  # node, GPUs changed, label written, done
        self.first_start: dict[int, float] = {}                   # job seq -> when it first ran

    def _bind(self, w: _Work, node: str, snap: object) -> None:
        self.cluster.owner = w
        self.first_start.setdefault(w.job.seq, self.now)
        super()._bind(w, node, snap)  # type: ignore[arg-type]

    def _stop(self, w: _Work) -> None:
        self.cluster.owner = w
        super()._stop(w)

    def _reconcile(self) -> None:
        super()._reconcile()
        for node, until in list(self.cluster.paused.items()):
            if until <= self.now:
                self._finish(node)
        if self.now >= self.next_plan:
            self.next_plan = self.now + self.rmech.plan_interval
            self._plan()

    def _demand(self) -> dict[str, int]:
        """Slices substitution did not serve: the queue, and (mig-extender) pods on a substitute."""
        out = {r: k for r, k in self.waiting_for.items() if k > 0}
        if self.count_substituted:
            for resource, rules in self.bound_rules.items():
                n = sum(r.original.count for r in rules.values())
                if n:
                    out[resource] = out.get(resource, 0) + n
        return out

    def _plan(self) -> None:
        self.seen = track_demand(self.seen, self._demand(), self.now)
        if not self.seen:
            return
        reserved = self._snapshot().reserved
        nodes = [self.cluster.node_gpus(n, reserved.get(n, {})) for n in self.cluster.order]
        plan = plan_repartition(nodes, self.seen, self.now, self.rmech.settings)
        for p in plan.plans:
            self.cluster.start_change(p, self.now, self.rmech.downtime)
            self.change_log.append((p.node, len(p.changes), self.now, self.now + self.rmech.downtime))
            self.gpu_changes += len(p.changes)
            self.node_changes += 1
        if plan.plans:
            self.rules_gen += 1  # the cached snapshot's nodes changed under it

    def _finish(self, node: str) -> None:
        freed = self.cluster.finish_change(node, self.now)
        new = [r for r in freed if r not in self.triggers]
        if new:
            self._compatible.clear()
            self._orders.clear()
            for key in self.queues:
                resource, _, may_substitute = key[:3]
                for r in new:
                    if r == resource or (may_substitute and r in self._compatible_with(resource)):
                        self.triggers.setdefault(r, set()).add(key)
        self.rules_gen += 1
        for r in freed:
            self._freed(r)

    def run(self) -> RunResult:
        result = super().run()
        gpus = self.cluster.spec.nodes * self.cluster.spec.gpus_per_node
        result.metrics["repartitions"] = self.gpu_changes
        result.metrics["repartition_node_changes"] = self.node_changes
        result.metrics["repartitions_per_gpu_hour"] = round(self.gpu_changes / (gpus * self.duration / 3600), 4)
        return result


def run_policy(spec: ClusterSpec, jobs: Sequence[Job], policy: str, duration: float, mech: Mechanics = _MECH,
               demand: dict[int, float] | None = None, progress: Callable[[float], None] | None = None,
               rmech: RepartitionMechanics | None = None, aging: float | None = None) -> RunResult:
    return RepartitionEngine(spec, jobs, policy, duration, mech, demand, progress, rmech, aging).run()


def shifting(models: Sequence[tuple[GpuModel, float]], capacity: int, load: float,
             phases: Sequence[tuple[str, float]], mean_lifetime: float, seed: int = 1) -> list[Job]:
    """A synthetic stream whose mix changes over time: ``phases`` are (mix, seconds) back to back,
    each a ``workload.synthetic`` stream at ``load`` (its own seed), arrivals shifted to its start.
    The demand a static layout was sized for stops matching it: what repartitioning is for."""
    jobs: list[Job] = []
    start = 0.0
    for i, (mix, seconds) in enumerate(phases):
        part = synthetic(models, capacity, load, seconds, parse_mix(mix), mean_lifetime, "exp", seed + 101 * i)
        jobs += [replace(j, arrival=j.arrival + start) for j in part]
        start += seconds
    return [replace(j, seq=i) for i, j in enumerate(jobs)]
