"""The simulated cluster: N nodes x G MIG GPUs with static layouts, and their slice accounting.

Every GPU layout is produced by ``profiles.pack()``, so each one is a layout the driver accepts
(placements, instance limits, the 3g/4g exclusion). Usage is kept *in place*: one ``used`` dict per
node inside its NodeInfo, and one insertion-ordered dict per resource listing the nodes with a free
slice of it. The planner reads this live state through a ClusterSnapshot built over these objects
without copying (``snapshot()``), so a decision must finish before the state changes again (the
event loop is single-threaded). Insertion order, not hash order, is what any iteration sees, so a
seeded run gives the same answer in every process.

Must not: decide anything (fit, substitution and restore are planner.py's), or import flask,
kubernetes or cachetools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..core.catalog import GpuModel, Profile, ProfileError, can_substitute, pack, resource_profile_name
from ..core.rules import Rule
from ..core.snapshot import ClusterSnapshot, FreeOrder, NodeInfo

# Named per-GPU layouts, by compute slices of each instance ("1g" = the model's 1-compute-slice
# profile with the least memory). Keyed by the model's compute slices (7: A100/H100/H200/B200, 4: A30).
# all-balanced is NVIDIA mig-parted's "all-balanced" (A100-40GB: 2x1g.5gb, 1x2g.10gb, 1x3g.20gb).
_NAMED: Mapping[str, Mapping[int, Sequence[Sequence[int]]]] = {
    "all-1g": {7: [[1] * 7], 4: [[1] * 4]},
    "all-2g": {7: [[2, 2, 2]], 4: [[2, 2]]},
    "all-3g": {7: [[3, 3]]},
    "all-4g": {7: [[4, 1, 1, 1]], 4: [[4]]},
    "all-7g": {7: [[7]], 4: [[4]]},
    "all-balanced": {7: [[3, 2, 1, 1]], 4: [[2, 1, 1]]},
    # GPUs of a node cycle through these: some of every size
    "mixed": {7: [[3, 2, 1, 1], [1] * 7, [3, 3], [7]], 4: [[2, 1, 1], [1] * 4, [2, 2], [4]]},
    # capacity mostly in large slices: small requests sell out first (where substitution matters)
    "skewed": {7: [[7], [3, 3], [7], [3, 2, 1, 1]], 4: [[4], [2, 2], [4], [2, 1, 1]]},
}
LAYOUT_NAMES = (*_NAMED, "demand", "<profile>[*n],.../...")
# Single-size layouts used by the "demand" layout, by compute slices of the wanted profile.
_FILL: Mapping[int, Mapping[int, Sequence[int]]] = {
    7: {1: [1] * 7, 2: [2, 2, 2, 1], 3: [3, 3], 4: [4, 1, 1, 1], 7: [7]},
    4: {1: [1] * 4, 2: [2, 2], 4: [4]},
}


class LiveNodeInfo(NodeInfo):
    """A NodeInfo over the simulator's live usage map (``used`` changes in place): nothing derived from
    the usage may be remembered the way the inventory's immutable NodeInfos remember it, neither the
    scores nor the compute in use (a cached one froze the pack score at its first read)."""

    @property
    def scores(self) -> dict[tuple, int]:  # type: ignore[override]
        return {}

    @property
    def busy_compute(self) -> int:  # type: ignore[override]
        return self.used_compute()


class LayoutError(ValueError):
    """A layout name or spec that does not give a valid MIG layout on the chosen GPU."""


def basic_profile(gpu: GpuModel, compute_slices: int) -> Profile:
    """The plain (no +me) profile with ``compute_slices`` and the least memory, e.g. 1g -> 1g.5gb."""
    found = [p for p in gpu.profiles if p.compute_slices == compute_slices and not p.media_extensions
             and (not p.full_gpu or compute_slices == gpu.compute_slices)]
    if not found:
        raise LayoutError(f"{gpu.name} has no {compute_slices}g profile")
    return min(found, key=lambda p: p.memory_slices)


def resolve_profile(gpu: GpuModel, name: str) -> Profile:
    """``1g`` (compute slices only) or a profile name (``1g.10gb``) on ``gpu``; LayoutError if none."""
    text = name.strip()
    if text.endswith("g") and text[:-1].isdigit():
        return basic_profile(gpu, int(text[:-1]))
    try:
        return gpu.profile(text)
    except ProfileError as exc:
        raise LayoutError(str(exc)) from exc


def _checked(gpu: GpuModel, names: Sequence[str], spec: str) -> tuple[str, ...]:
    if pack(gpu, names) is None:
        raise LayoutError(f"layout {spec!r} is not a valid MIG layout on {gpu.name}: {', '.join(names)}")
    return tuple(sorted(names))


def gpu_layouts(gpu: GpuModel, spec: str, demand: Mapping[int, float] | None = None,
                gpus: int = 1) -> list[tuple[str, ...]]:
    """The per-GPU layouts ``spec`` stands for on ``gpu``; GPU i of the cluster gets item i % len.

    ``spec`` is a name of ``LAYOUT_NAMES`` or a custom spec: GPUs separated by ``/``, instances by
    ``,``, ``*n`` repeats (``3g.20gb,2g.10gb,1g.5gb*2/7g.40gb``). ``demand`` layout: ``gpus`` GPUs
    split over single-size layouts in proportion to ``demand`` (compute-slice share by profile size),
    as an operator would size the cluster for the expected mix.
    """
    if spec == "demand":
        return _demand_layouts(gpu, demand or {1: 1.0}, gpus)
    named = _NAMED.get(spec)
    if named is not None:
        sizes = named.get(gpu.compute_slices)
        if sizes is None:
            raise LayoutError(f"layout {spec!r} has no version for {gpu.name}")
        return [_checked(gpu, [basic_profile(gpu, g).name for g in one], spec) for one in sizes]
    out = []
    for part in spec.split("/"):
        names: list[str] = []
        for item in part.split(","):
            name, _, times = item.strip().partition("*")
            if not times.strip().isdigit() and times:
                raise LayoutError(f"bad repeat in layout item {item!r}")
            try:
                names += [resolve_profile(gpu, name).name] * (int(times) if times else 1)
            except LayoutError as exc:
                raise LayoutError(f"layout {spec!r} is not a known layout ({', '.join(LAYOUT_NAMES)}) nor a list "
                                  f"of {gpu.name} profiles: {exc}") from exc
        out.append(_checked(gpu, names, spec))
    if not out or not all(out):
        raise LayoutError(f"layout {spec!r} is empty; known: {', '.join(LAYOUT_NAMES)}")
    return out


def _demand_layouts(gpu: GpuModel, demand: Mapping[int, float], gpus: int) -> list[tuple[str, ...]]:
    fills = _FILL[gpu.compute_slices]
    shares = {g: w for g, w in demand.items() if w > 0}
    for g in list(shares):
        if g not in fills:  # e.g. a 5g share on a 7-slice GPU: round up to the next size that exists
            up = min((s for s in fills if s > g), default=max(fills))
            shares[up] = shares.get(up, 0.0) + shares.pop(g)
    total = sum(shares.values()) or 1.0
    exact = {g: gpus * w / total for g, w in sorted(shares.items())}
    counts = {g: int(x) for g, x in exact.items()}
    for g in sorted(exact, key=lambda g: (counts[g] - exact[g], g))[: gpus - sum(counts.values())]:
        counts[g] += 1
    # interleave the sizes (each evenly spaced over the list), so every node gets a mix
    spread = sorted(((i + 0.5) / n, g) for g, n in counts.items() for i in range(n))
    layouts = [_checked(gpu, [basic_profile(gpu, s).name for s in fills[g]], "demand") for _, g in spread]
    return layouts or [_checked(gpu, [basic_profile(gpu, 1).name] * gpu.compute_slices, "demand")]


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    gpus_per_node: int
    models: tuple[GpuModel, ...]
    layout: str

    def model_of(self, index: int) -> GpuModel:
        return self.models[index % len(self.models)]


def node_name(index: int) -> str:
    # zero-padded: name order is creation order, which the planner's tie-breaks rely on
    return f"node-{index:05d}"


class SimCluster:
    """Nodes and their mutable MIG usage; ``snapshot()`` shows it to the planner without copying."""

    def __init__(self, spec: ClusterSpec, demand: Mapping[int, float] | None = None) -> None:
        self.spec = spec
        self.nodes: dict[str, NodeInfo] = {}
        self.order: list[str] = []
        self._used: dict[str, dict[str, int]] = {}
        self._free: dict[str, dict[str, None]] = {}
        layouts = {m.name: gpu_layouts(m, spec.layout, demand, spec.nodes * spec.gpus_per_node // len(spec.models))
                   for m in spec.models}
        self.layouts = layouts
        # node -> each GPU's layout, in GPU order (the repartitioning simulation changes them)
        self.gpu_layouts: dict[str, list[tuple[str, ...]]] = {}
        gpu_index: dict[str, int] = {}
        for i in range(spec.nodes):
            model = spec.model_of(i)
            alloc: dict[str, int] = {}
            per_gpu = []
            for _ in range(spec.gpus_per_node):
                k = gpu_index.get(model.name, 0)
                gpu_index[model.name] = k + 1
                # spread the layouts over nodes: GPU k of the model gets layout k % len (round robin)
                per_gpu.append(layouts[model.name][k % len(layouts[model.name])])
                for name in per_gpu[-1]:
                    resource = model.profile(name).resource
                    alloc[resource] = alloc.get(resource, 0) + 1
            name = node_name(i)
            self.gpu_layouts[name] = per_gpu
            used: dict[str, int] = {}
            self._used[name] = used
            # plain dicts, read-only by convention (MappingProxyType lookups cost ~10x a dict's)
            self.nodes[name] = LiveNodeInfo(name=name, gpu=model, allocatable=alloc, used=used,
                                        gpu_count=spec.gpus_per_node)
            self.order.append(name)
            for r in alloc:
                self._free.setdefault(r, {})[name] = None
        self.all_nodes: set[str] = set(self.order)  # a plain set: see choose_substitute's intersections
        # live views: the snapshot's free index reads these dicts as they change
        self.free_index: dict[str, object] = {r: d.keys() for r, d in self._free.items()}
        # physical capacity (every compute and memory slice of every GPU), whatever the layout uses
        self.compute_capacity = sum(spec.model_of(i).compute_slices for i in range(spec.nodes)) * spec.gpus_per_node
        self.memory_capacity = sum(spec.model_of(i).memory_slices for i in range(spec.nodes)) * spec.gpus_per_node
        self.allocated_compute = 0
        self.resources: tuple[str, ...] = tuple(self._free)

    # -- accounting -----------------------------------------------------------------------------

    def allocate(self, node: str, resource: str, count: int) -> int:
        """Take ``count`` slices; returns the compute slices they are. The caller checked the fit."""
        used = self._used[node]
        n = used.get(resource, 0) + count
        info = self.nodes[node]
        if n > info.allocatable.get(resource, 0):
            raise AssertionError(f"over-allocation of {resource} on {node}: {n} > {info.allocatable.get(resource)}")
        used[resource] = n
        if n == info.allocatable[resource]:
            self._free[resource].pop(node, None)
        compute = info.shapes[resource].compute_slices * count
        self.allocated_compute += compute
        return compute

    def release(self, node: str, resource: str, count: int) -> int:
        used = self._used[node]
        n = used[resource] - count
        if n < 0:
            raise AssertionError(f"release of {resource} on {node} below zero")
        if n:
            used[resource] = n
        else:
            del used[resource]
        self._free[resource][node] = None
        compute = self.nodes[node].shapes[resource].compute_slices * count
        self.allocated_compute -= compute
        return compute

    def free_nodes(self, resource: str) -> Mapping[str, None]:
        """Nodes with at least one free slice of ``resource`` (reservations not subtracted), oldest first."""
        return self._free.get(resource, {})

    def snapshot(self, rules: Iterable[Rule], now: float, pending: Mapping[str, int] | None = None,
                 pending_since: Mapping[str, float] | None = None) -> ClusterSnapshot:
        # nodes and the free index are live views: the substitute order must not be memoised over them
        order = FreeOrder(self.nodes, self.free_index, memo=False)  # type: ignore[arg-type]
        return ClusterSnapshot.build(self.nodes, self.free_index, rules, now,  # type: ignore[arg-type]
                                     pending=pending, pending_since=pending_since, free_order=order)

    # -- catalog facts about this cluster -------------------------------------------------------

    def compatible(self, resource: str) -> frozenset[str]:
        """Resources of this cluster that may stand in for ``resource`` on some node (itself excluded)."""
        out = set()
        for model in self.spec.models:
            want = model.find(resource_profile_name(resource))
            if want is None:
                continue
            for r in self.resources:
                have = model.find(resource_profile_name(r))
                if have is not None and have != want and can_substitute(want.shape, have.shape):
                    out.add(r)
        return frozenset(out)

    def hosts(self, resource: str, count: int) -> bool:
        """Can some node of this cluster hold ``count`` slices of ``resource`` or of a substitute for it?"""
        names = {resource} | self.compatible(resource)
        return any(info.allocatable.get(r, 0) >= count for info in self.nodes.values() for r in names)

    def free_compute(self, reserved: Mapping[str, Mapping[str, int]]) -> int:
        """Compute slices of the layouts neither used nor reserved."""
        held = sum(self.nodes[n].shapes[r].compute_slices * k for n, per in reserved.items() for r, k in per.items())
        return sum(n.total_compute for n in self.nodes.values()) - self.allocated_compute - held
