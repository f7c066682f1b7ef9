"""Repartitioning idle GPUs toward the demand substitution cannot serve: the pure planner.

Substitution answers a sold-out profile in seconds by lending a larger slice; when the same profile
stays short for minutes, the better answer is a new MIG layout on GPUs nobody uses. NVIDIA's MIG
manager can do that (node label ``nvidia.com/mig.config=<name>``, progress in
``nvidia.com/mig.config.state``), but only on idle GPUs, slowly, and it pauses the node's device plugin
while it works. So the planner here is conservative by construction:

* it reads only demand that has persisted for ``window`` seconds (``track_demand`` keeps the
  first-seen times: a profile whose demand drops to zero starts over), so an oscillating queue never
  triggers a change (hysteresis);
* it changes only idle GPUs of opted-in nodes with no change under way and no reservation (a rule's
  pod is about to land there), and never a GPU changed in the last ``cooldown`` seconds;
* at most ``max_in_flight`` GPUs are being changed cluster-wide (the budget);
* every target is a maximal valid layout of the catalog (``pack``/``layout_problems`` accept it), and
  the one chosen serves the most waiting pods (then compute slices), then changes the fewest instances.

Per node or per GPU? The live inventory knows a node's MIG allocatable as one count per resource, not
per GPU, and which GPU a running pod uses is not in the API. ``node_from_counts`` therefore infers the
per-GPU layouts with ``pack`` (a split of the counts into ``gpu_count`` valid layouts) and calls a GPU
idle only when the whole node is: with any MIG pod on the node, every GPU counts as busy (unknown is
busy). The simulator knows each pod's GPU and passes per-GPU usage, so it can change some GPUs of a
busy node; docs/repartition.md says what the live actuator needs for that (the kubelet's device
assignments).

Pure: no flask, kubernetes or cachetools; time is the ``now`` parameter. Must not act: the reconciler
(phase 2) turns plans into labels and Events, the simulator into layout changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType

from .catalog import GpuModel, Placement, Profile, layout_problems, resource_profile_name

# The GPU operator's MIG manager reads the first and writes the second (NVIDIA/mig-parted,
# deployments/gpu-operator/reconfigure-mig.sh: pending, rebooting, success, failed).
LABEL_MIG_CONFIG = "nvidia.com/mig.config"
LABEL_MIG_CONFIG_STATE = "nvidia.com/mig.config.state"
# Only nodes the operator opted in are ever repartitioned.
LABEL_REPARTITION = "mig-extender.io/repartition"
STATE_PENDING, STATE_SUCCESS, STATE_FAILED, STATE_REBOOTING = "pending", "success", "failed", "rebooting"

Layout = tuple[str, ...]  # profile names of one GPU's instances, sorted: ("1g.10gb", "1g.10gb", "3g.40gb")
EMPTY: Mapping[str, int] = MappingProxyType({})


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class RepartitionSettings:
    """Knobs of the repartition planner. Times in seconds.

    Why these defaults: the MIG manager takes minutes per change and pauses the node's device plugin,
    so a profile must be short for 5 minutes (a burst shorter than that is substitution's job) and a
    changed GPU keeps its layout for 30 minutes (pods placed there need time to use it). Four GPUs at
    once bounds how much capacity is in the air.
    """

    window: float = 300.0        # demand must persist this long before a GPU is changed for it
    cooldown: float = 1800.0     # a GPU changed this recently is not changed again
    max_in_flight: int = 4       # GPUs being repartitioned at once, cluster-wide
    min_served: int = 1          # waiting slices (pods, for one-slice pods) a change must serve
    # the live actuator only (core/repartition_change.py): a reservation waits ``settle`` before the label
    # is written (every extender's watch must have delivered it, as rules wait PlanSettings.settle), and a
    # change the MIG manager has not finished after ``timeout`` is rolled back (it can wedge in pending,
    # gpu-operator #2833; a real apply takes one to a few minutes, a reboot more)
    settle: float = 5.0
    timeout: float = 600.0


@dataclass(frozen=True)
class GpuState:
    """One GPU of a node: its layout, what runs on it and whether a change is under way.

    ``used`` is instances in use per profile name; None means unknown, which counts as busy.
    """

    index: int
    layout: Layout
    used: Mapping[str, int] | None = field(default_factory=lambda: EMPTY)
    target: Layout | None = None          # a change toward this layout is under way
    changed_at: float | None = None       # when its last change finished (for the cooldown)

    @property
    def idle(self) -> bool:
        return self.used is not None and not any(self.used.values()) and self.target is None


@dataclass(frozen=True)
class NodeGpus:
    """A node's GPUs as the planner sees them; ``reserved`` is slices per resource rules hold here."""

    name: str
    gpu: GpuModel
    gpus: tuple[GpuState, ...]
    opted_in: bool = True
    reserved: Mapping[str, int] = field(default_factory=lambda: EMPTY)

    @property
    def changing(self) -> bool:
        return any(g.target is not None for g in self.gpus)


@dataclass(frozen=True)
class Demand:
    """Slices of one resource wanted without interruption since ``since``."""

    slices: int
    since: float


def track_demand(previous: Mapping[str, Demand], current: Mapping[str, int], now: float) -> dict[str, Demand]:
    """The next demand record: a resource keeps its ``since`` while it stays wanted, restarts from
    ``now`` after a pass without demand. The caller stores the result between passes."""
    out: dict[str, Demand] = {}
    for resource, slices in current.items():
        if slices <= 0:
            continue
        seen = previous.get(resource)
        out[resource] = Demand(slices, seen.since if seen is not None else now)
    return out


@dataclass(frozen=True)
class NamedConfig:
    """One entry of the MIG manager's ConfigMap: the same layout on every GPU (``devices: all``) or
    a layout per listed GPU index (``devices: [i]``); GPUs it does not list keep their layout."""

    name: str
    all: Layout | None = None
    devices: Mapping[int, Layout] = field(default_factory=dict)

    def layouts(self, current: Sequence[Layout]) -> tuple[Layout, ...]:
        """The per-GPU layouts a node whose GPUs hold ``current`` would have after applying it."""
        return tuple(normal(self.all) if self.all is not None else normal(self.devices.get(i, lay))
                     for i, lay in enumerate(current))

    def problems(self, gpu: GpuModel) -> list[str]:
        """Why this config cannot exist on ``gpu`` (empty when every layout in it is valid)."""
        out = []
        valid = _valid_set(gpu)
        for layout in ([self.all] if self.all is not None else list(self.devices.values())):
            if normal(layout) not in valid:
                out.append(f"{self.name}: {'+'.join(layout) or 'empty'} is not a valid layout on {gpu.name}")
        return out


def normal(layout: Iterable[str]) -> Layout:
    return tuple(sorted(layout))


def config_name(configs: Iterable[NamedConfig], current: Sequence[Layout], target: Sequence[Layout]) -> str | None:
    """The first config that turns ``current`` into ``target`` exactly, or None."""
    want = tuple(normal(t) for t in target)
    return next((c.name for c in configs if c.layouts(current) == want), None)


# --------------------------------------------------------------------------------------------------
# Outputs: plans and the typed reasons for what was not done


@dataclass(frozen=True)
class GpuChange:
    index: int
    before: Layout
    after: Layout


@dataclass(frozen=True)
class Serves:
    resource: str
    slices: int


@dataclass(frozen=True)
class NodePlan:
    """Change these GPUs of ``node``; ``layouts`` is the whole node afterwards (what a config names)."""

    node: str
    changes: tuple[GpuChange, ...]
    layouts: tuple[Layout, ...]
    serves: tuple[Serves, ...]
    config: str | None = None


@dataclass(frozen=True)
class DemandTooYoung:
    resource: str
    slices: int
    since: float
    ready_at: float


@dataclass(frozen=True)
class BudgetSpent:
    in_flight: int
    limit: int


@dataclass(frozen=True)
class Unserved:
    """Demand ready to act on that no candidate GPU could serve in this pass."""

    resource: str
    slices: int


@dataclass(frozen=True)
class NodeSkipped:
    node: str
    why: str  # one of the SKIP_* constants below


@dataclass(frozen=True)
class GpuSkipped:
    node: str
    index: int
    why: str
    until: float | None = None  # for a cooldown: when it ends


SKIP_NOT_OPTED_IN = "not-opted-in"
SKIP_CHANGING = "change-under-way"
SKIP_BUSY = "busy"
SKIP_COOLDOWN = "cooldown"
SKIP_RESERVED = "reserved"


@dataclass(frozen=True)
class RepartitionPlan:
    plans: tuple[NodePlan, ...] = ()
    waiting: tuple[DemandTooYoung, ...] = ()
    unserved: tuple[Unserved, ...] = ()
    budget: BudgetSpent | None = None
    skipped: tuple[NodeSkipped | GpuSkipped, ...] = ()

    @property
    def gpus(self) -> int:
        return sum(len(p.changes) for p in self.plans)


# --------------------------------------------------------------------------------------------------
# The catalog's layouts


@cache
def valid_layouts(gpu: GpuModel) -> tuple[Layout, ...]:
    """Every multiset of ``gpu``'s profiles that some placement puts on one GPU (the empty one too).

    Enumerated once per model over placements, not multisets: ``pack`` proving that a multiset does
    NOT fit tries every order of identical instances, which made a multiset walk take ~10 s. Here
    each (profile, start) is added in increasing order only while ``layout_problems`` stays empty,
    so every valid set of placements is visited once (a few thousand on a 7-slice GPU).
    """
    options = sorted(((p, start) for p in gpu.profiles for start in p.placements), key=lambda o: (o[1], o[0].name))
    found: set[Layout] = set()

    def extend(i: int, chosen: list[Placement]) -> None:
        found.add(normal(pl.profile.name for pl in chosen))
        for j in range(i, len(options)):
            chosen.append(Placement(*options[j]))
            if not layout_problems(gpu, chosen):
                extend(j + 1, chosen)
            chosen.pop()

    extend(0, [])
    return tuple(sorted(found))


@cache
def _valid_set(gpu: GpuModel) -> frozenset[Layout]:
    return frozenset(valid_layouts(gpu))


@cache
def target_layouts(gpu: GpuModel) -> tuple[Layout, ...]:
    """Layouts a GPU may be repartitioned to: valid, without ``+me`` instances (one set of media engines
    per GPU is the operator's choice, not demand's), and maximal (no plain profile can be added)."""
    plain = [p.name for p in gpu.profiles if not p.media_extensions]
    valid = _valid_set(gpu)
    return tuple(layout for layout in sorted(valid)
                 if layout and not any(gpu.profile(n).media_extensions for n in layout)
                 and not any(normal([*layout, name]) in valid for name in plain))


def _counts(layout: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in layout:
        out[name] = out.get(name, 0) + 1
    return out


def disruption(before: Layout, after: Layout) -> int:
    """Instances destroyed plus instances created: what a change costs beyond its downtime."""
    a, b = _counts(before), _counts(after)
    return sum(abs(a.get(n, 0) - b.get(n, 0)) for n in a.keys() | b.keys())


# --------------------------------------------------------------------------------------------------
# From the live inventory's node counts


def split_layouts(gpu: GpuModel, counts: Mapping[str, int], gpus: int) -> tuple[Layout, ...] | None:
    """Per-GPU layouts (largest first) whose union is ``counts`` (profile -> instances) over ``gpus``
    GPUs, or None when no split into valid layouts exists (e.g. the device plugin is paused)."""
    need = normal(n for n, k in counts.items() for _ in range(k))
    layouts = valid_layouts(gpu)

    @cache
    def split(rest: Layout, left: int, below: Layout | None) -> tuple[Layout, ...] | None:
        if left == 0:
            return () if not rest else None
        have = _counts(rest)
        # canonical order (each GPU's layout <= the previous one) removes the GPUs' symmetry
        for layout in reversed(layouts):
            if below is not None and layout > below:
                continue
            lc = _counts(layout)
            if any(have.get(n, 0) < k for n, k in lc.items()):
                continue
            remaining = normal(n for n, k in have.items() for _ in range(k - lc.get(n, 0)))
            tail = split(remaining, left - 1, layout)
            if tail is not None:
                return (layout, *tail)
        return None

    return split(need, gpus, None)


def node_from_counts(name: str, gpu: GpuModel, allocatable: Mapping[str, int], used: Mapping[str, int],
                     gpu_count: int, *, opted_in: bool = True, reserved: Mapping[str, int] = EMPTY,
                     changed_at: float | None = None) -> NodeGpus | None:
    """A node of the live inventory (counts per resource) as per-GPU states, see the module docstring.

    None when the counts do not split into ``gpu_count`` valid layouts with an instance on every GPU:
    the node is mid-change, runs a GPU with MIG off, or its labels are wrong; the planner leaves it alone.
    """
    counts: dict[str, int] = {}
    for resource, n in allocatable.items():
        found = gpu.find(resource_profile_name(resource))
        if found is None or n < 0:
            return None
        counts[found.name] = counts.get(found.name, 0) + n
    layouts = split_layouts(gpu, counts, gpu_count)
    if layouts is None or not all(layouts):
        # a GPU without MIG instances: the device plugin is paused (a change under way, a wedged one) or
        # the GPU runs with MIG off (its nvidia.com/gpu pods are not in these counts): unknown, not idle
        return None
    idle = not any(n > 0 for n in used.values())
    gpus = tuple(GpuState(i, lay, EMPTY if idle else None, changed_at=changed_at) for i, lay in enumerate(layouts))
    return NodeGpus(name, gpu, gpus, opted_in, MappingProxyType(dict(reserved)))


# --------------------------------------------------------------------------------------------------
# The planner


@dataclass
class _Candidates:
    """Working state of one planning pass (mutable, local to ``plan_repartition``)."""

    eligible: dict[str, list[GpuState]]        # node -> idle GPUs it may change
    chosen: dict[str, dict[int, Layout]]       # node -> index -> new layout
    remaining: dict[str, int]                  # resource -> slices still wanted (ready demand)
    wanted: Mapping[str, int] = field(default_factory=dict)  # all current demand, young or not
    configs: dict[str, str] = field(default_factory=dict)  # node -> named config chosen for it


def _ready_demand(demand: Mapping[str, Demand], now: float, window: float
                  ) -> tuple[dict[str, int], list[DemandTooYoung]]:
    ready: dict[str, int] = {}
    young = []
    for resource, d in sorted(demand.items()):
        if d.slices <= 0:
            continue
        if now - d.since >= window:
            ready[resource] = d.slices
        else:
            young.append(DemandTooYoung(resource, d.slices, d.since, d.since + window))
    return ready, young


def _resource_of(gpu: GpuModel, name: str) -> str:
    return gpu.profile(name).resource


def _incoming(nodes: Sequence[NodeGpus]) -> dict[str, int]:
    """Slices changes under way will create: the pods waiting for them need no second change."""
    out: dict[str, int] = {}
    for node in nodes:
        for g in node.gpus:
            if g.target is not None:
                for n, k in _counts(g.target).items():
                    r = _resource_of(node.gpu, n)
                    out[r] = out.get(r, 0) + k
    return out


def _eligible(nodes: Sequence[NodeGpus], now: float, settings: RepartitionSettings
              ) -> tuple[dict[str, list[GpuState]], list[NodeSkipped | GpuSkipped]]:
    eligible: dict[str, list[GpuState]] = {}
    skipped: list[NodeSkipped | GpuSkipped] = []
    for node in nodes:
        if not node.opted_in:
            skipped.append(NodeSkipped(node.name, SKIP_NOT_OPTED_IN))
            continue
        if node.changing:  # one nvidia.com/mig.config label per node: one change at a time
            skipped.append(NodeSkipped(node.name, SKIP_CHANGING))
            continue
        if any(k > 0 for k in node.reserved.values()):
            # a rule's pod is about to land here; the change pauses the node's device plugin, so the pod
            # could not bind (its rule expires) or, bound just before, the kubelet would reject it
            skipped.append(NodeSkipped(node.name, SKIP_RESERVED))
            continue
        for g in node.gpus:
            if not g.idle:
                skipped.append(GpuSkipped(node.name, g.index, SKIP_BUSY))
            elif g.changed_at is not None and now - g.changed_at < settings.cooldown:
                skipped.append(GpuSkipped(node.name, g.index, SKIP_COOLDOWN, g.changed_at + settings.cooldown))
            else:
                eligible.setdefault(node.name, []).append(g)
    return eligible, skipped


Worth = tuple[int, int]  # (waiting slices served, their compute slices): pods first, then their size


def _served(gpu: GpuModel, layout: Layout, remaining: Mapping[str, int]) -> tuple[Worth, dict[str, int]]:
    """What ``layout`` would serve of the waiting demand, and the slices per resource.

    Pods first: weighting by compute alone turned GPUs toward one waiting 7g pod rather than seven
    waiting 1g pods, which raised utilisation but left more pods pending (bench/README.md).
    """
    slices = compute = 0
    per: dict[str, int] = {}
    for n, k in _counts(layout).items():
        p: Profile = gpu.profile(n)
        take = min(k, remaining.get(p.resource, 0))
        if take:
            per[p.resource] = take
            slices += take
            compute += take * p.compute_slices
    return (slices, compute), per


def _gain(after: Worth, before: Worth) -> Worth:
    return after[0] - before[0], after[1] - before[1]


def best_target(gpu: GpuModel, current: Layout, remaining: Mapping[str, int],
                wanted: Mapping[str, int] | None = None) -> tuple[Layout, int] | None:
    """The maximal layout that serves the most waiting slices (then the most compute), then changes the
    fewest instances (then the first in name order, so the answer is deterministic); with it the slices
    it serves. None when no layout serves a waiting slice, and None when a pod waits for a slice the
    GPU already has (``wanted``: all demand, however young, default ``remaining``): the scheduler is
    about to use it, it is not a shape nobody wants, and a change would only be downtime."""
    if _served(gpu, current, wanted if wanted is not None else remaining)[0][0] > 0:
        return None
    best: tuple[Worth, int] | None = None
    found: Layout | None = None
    for layout in target_layouts(gpu):
        gain = _served(gpu, layout, remaining)[0]
        if gain[0] <= 0:
            continue
        key = (gain, -disruption(current, layout))
        if best is None or key > best:
            best, found = key, layout
    return None if best is None or found is None else (found, best[0][0])


def _pick_gpu(state: _Candidates, nodes: Mapping[str, NodeGpus], settings: RepartitionSettings
              ) -> tuple[NodeGpus, GpuState, Layout] | None:
    """The next GPU to change and its target: most waiting slices served, then fewest instances
    changed, then a node already changed in this pass (one device-plugin pause instead of two), then
    node and GPU order. GPUs with the same model and layout are alike, so the best target is computed
    once per (model, layout)."""
    targets: dict[tuple[str, Layout], tuple[Layout, int] | None] = {}
    best: tuple[int, int, int] | None = None
    pick = None
    for name in sorted(state.eligible):
        node = nodes[name]
        for g in state.eligible[name]:
            key = (node.gpu.name, g.layout)
            if key not in targets:
                targets[key] = best_target(node.gpu, g.layout, state.remaining, state.wanted)
            found = targets[key]
            if found is None or found[1] < settings.min_served:
                continue
            layout, served = found
            rank = (served, -disruption(g.layout, layout), int(name in state.chosen))
            if best is not None and rank <= best:
                continue  # ties go to the first in node and GPU order
            best, pick = rank, (node, g, layout)
    return pick


def _plan_per_gpu(nodes: Mapping[str, NodeGpus], state: _Candidates, budget: int,
                  settings: RepartitionSettings) -> None:
    while budget > 0 and any(v > 0 for v in state.remaining.values()):
        found = _pick_gpu(state, nodes, settings)
        if found is None:
            return
        node, g, layout = found
        _, per = _served(node.gpu, layout, state.remaining)
        for r, k in per.items():
            state.remaining[r] -= k
        state.chosen.setdefault(node.name, {})[g.index] = layout
        state.eligible[node.name] = [x for x in state.eligible[node.name] if x.index != g.index]
        budget -= 1


def _plan_named(nodes: Mapping[str, NodeGpus], state: _Candidates, budget: int, settings: RepartitionSettings,
                configs: Sequence[NamedConfig]) -> None:
    """Whole-node targets from the operator's named configs: a config applies to a node when every GPU
    it changes is eligible; the best (served, fewest instances changed) applies first, one per node."""
    while budget > 0 and any(v > 0 for v in state.remaining.values()):
        best: tuple[Worth, int] | None = None
        pick = None
        for name in sorted(state.eligible):
            if name in state.chosen:
                continue
            node = nodes[name]
            current = tuple(g.layout for g in node.gpus)
            ok = {g.index for g in state.eligible[name]}
            for config in configs:
                if config.problems(node.gpu):
                    continue
                after = config.layouts(current)
                changed = {i for i, (a, b) in enumerate(zip(current, after, strict=True)) if a != b}
                if not changed or not changed <= ok or len(changed) > budget:
                    continue
                if any(_served(node.gpu, current[i], state.wanted)[0][0] for i in changed):
                    continue  # a pod waits for a slice it would destroy (see best_target)
                gain = _gain(_served_by(node, after, changed, state.remaining)[0],
                             _served_by(node, current, changed, state.remaining)[0])
                rank = (gain, -sum(disruption(current[i], after[i]) for i in changed))
                if gain[0] < settings.min_served or (best is not None and rank <= best):
                    continue
                best, pick = rank, (node, changed, after, config.name)
        if pick is None:
            return
        node, changed, after, cname = pick
        _, per = _served_by(node, after, changed, state.remaining)
        for r, k in per.items():
            state.remaining[r] -= k
        state.chosen[node.name] = {i: after[i] for i in sorted(changed)}
        state.configs[node.name] = cname
        budget -= len(changed)


def _served_by(node: NodeGpus, after: Sequence[Layout], changed: Iterable[int], remaining: Mapping[str, int]
               ) -> tuple[Worth, dict[str, int]]:
    """What several changed GPUs of one node serve together (one waiting pod is counted once)."""
    left = dict(remaining)
    worth = (0, 0)
    total: dict[str, int] = {}
    for i in sorted(changed):
        served, per = _served(node.gpu, after[i], left)
        worth = (worth[0] + served[0], worth[1] + served[1])
        for r, k in per.items():
            left[r] -= k
            total[r] = total.get(r, 0) + k
    return worth, total


def plan_repartition(nodes: Sequence[NodeGpus], demand: Mapping[str, Demand], now: float,
                     settings: RepartitionSettings = RepartitionSettings(),
                     configs: Sequence[NamedConfig] = ()) -> RepartitionPlan:
    """Which idle GPUs to repartition now, to what, and why nothing else.

    ``demand`` is per resource the slices pods wait for that substitution did not serve (pending pods
    plus pods running on a substitute, whose restore a new slice enables), with ``track_demand``'s
    first-seen times. Without ``configs`` every GPU gets its own best target (the simulator; the
    advise mode shows them); with ``configs`` only whole-node targets the MIG manager's ConfigMap
    names are considered, since the live actuator can only set a name.
    """
    ready, young = _ready_demand(demand, now, settings.window)
    in_flight = sum(1 for n in nodes for g in n.gpus if g.target is not None)
    for r, k in _incoming(nodes).items():
        if r in ready:
            ready[r] -= k
    ready = {r: k for r, k in ready.items() if k > 0}
    if not ready:
        return RepartitionPlan(waiting=tuple(young))
    budget = settings.max_in_flight - in_flight
    if budget <= 0:
        return RepartitionPlan(waiting=tuple(young), budget=BudgetSpent(in_flight, settings.max_in_flight),
                               unserved=tuple(Unserved(r, k) for r, k in sorted(ready.items())))
    eligible, skipped = _eligible(nodes, now, settings)
    by_name = {n.name: n for n in nodes}
    wanted = {r: d.slices for r, d in demand.items() if d.slices > 0}
    state = _Candidates(eligible, {}, dict(ready), wanted)
    if configs:
        _plan_named(by_name, state, budget, settings, configs)
    else:
        _plan_per_gpu(by_name, state, budget, settings)
    plans = tuple(_node_plan(by_name[name], chosen, ready, state.configs.get(name), configs)
                  for name, chosen in sorted(state.chosen.items()))
    spent = sum(len(c) for c in state.chosen.values())
    return RepartitionPlan(
        plans=plans, waiting=tuple(young),
        unserved=tuple(Unserved(r, k) for r, k in sorted(state.remaining.items()) if k > 0),
        budget=BudgetSpent(in_flight + spent, settings.max_in_flight) if spent >= budget else None,
        skipped=tuple(skipped))


def _node_plan(node: NodeGpus, chosen: Mapping[int, Layout], ready: Mapping[str, int], name: str | None,
               configs: Sequence[NamedConfig]) -> NodePlan:
    current = tuple(g.layout for g in node.gpus)
    after = tuple(chosen.get(i, lay) for i, lay in enumerate(current))
    changes = tuple(GpuChange(i, current[i], after[i]) for i in sorted(chosen))
    _, serves = _served_by(node, after, chosen, ready)
    if name is None and configs:
        name = config_name(configs, current, after)
    return NodePlan(node.name, changes, after, tuple(Serves(r, k) for r, k in sorted(serves.items())), name)

