"""The Alibaba GPU trace (cluster-trace-gpu-v2023, "openb") as a MIG workload.

Mapping rule (the one stated in the trace's README, rounding *up* so no pod gets less than it asked):

* a sharing pod (``num_gpu == 1``, ``gpu_milli < 1000``) asks for ``ceil(C * gpu_milli / 1000)``
  compute slices of a C-slice GPU (C = 7 on A100/H100), snapped up to the next size that has a
  profile (1g, 2g, 3g, 4g, 7g: 5 and 6 become 7g), with that size's least-memory profile;
* a whole-GPU pod (``num_gpu == 1``, ``gpu_milli >= 1000``) asks for one 7g (the full GPU);
* a multi-GPU pod (``num_gpu == k > 1``) asks for k x 7g, which must fit on one node;
* CPU-only pods (``num_gpu == 0``) are dropped.

Times: a pod arrives at ``creation_time`` and runs for ``deletion_time - scheduled_time`` (creation
time when it never got scheduled; the trace end for pods still running there), at least 1 s. The
trace is not a steady-state log (most pods live until its end), so arrivals are compressed by one
factor, lifetimes kept as they are, until the offered load *within the compressed window* (compute
slice-seconds that fit before its end / capacity x window) equals the target.

Nodes: the trace's own cluster (6212 GPUs, ``ceil(6212 / 8) = 777`` 8-GPU nodes) holds the whole
trace's demand at once (98% of it), so no compression loads it beyond ~0.5 on average: a pod must end
inside the window to free its slice for another. The trace is therefore replayed on 100 8-GPU nodes by
default (``--nodes`` changes that; ``trace_nodes()`` gives the re-mapped 777), where 0.7-1.1 are in reach.

Must not: be needed at run time by the product (the data lives beside the repo, not in it).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.catalog import GpuModel
from .cluster import basic_profile
from .workload import Job

POD_FILE = "openb_pod_list_default.csv"
# The oldest 10% of the pods (long-running ones created over the first 80% of the trace's 149 days)
# are dropped: the other 90% arrive in its last 20%, and compressing the whole span would replay an
# almost empty window followed by one burst.
SKIP = 0.10
NODE_FILE = "openb_node_list_all_node.csv"
_REQUIRED = ("num_gpu", "gpu_milli", "creation_time", "deletion_time", "scheduled_time")


class TraceError(ValueError):
    """The trace directory or file is missing or lacks the columns the simulator needs."""


def mig_size(num_gpu: int, gpu_milli: int, gpu: GpuModel) -> tuple[int, int]:
    """(compute slices of one instance, instances) a trace pod maps to on ``gpu``; see the module doc."""
    if num_gpu < 1:
        raise ValueError("CPU-only pods have no MIG demand")
    full = gpu.compute_slices
    if num_gpu > 1 or gpu_milli >= 1000:
        return full, num_gpu
    want = max(1, math.ceil(full * max(gpu_milli, 1) / 1000))
    sizes = sorted({p.compute_slices for p in gpu.profiles})
    return min(s for s in sizes if s >= want), 1


@dataclass(frozen=True)
class TracePod:
    name: str
    num_gpu: int
    gpu_milli: int
    arrival: float
    lifetime: float


def read_pods(path: Path) -> list[TracePod]:
    """GPU pods of one openb pod list, in creation order."""
    if not path.is_file():
        raise TraceError(f"no trace file {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise TraceError(f"{path.name} lacks {', '.join(missing)} (the multigpu* lists carry no times)")
        rows = [r for r in reader if int(r["num_gpu"] or 0) > 0]
    end = max(float(r["deletion_time"] or 0) for r in rows) if rows else 0.0
    pods = []
    for r in rows:
        created = float(r["creation_time"])
        started = float(r["scheduled_time"]) if r["scheduled_time"] else created
        deleted = float(r["deletion_time"]) if r["deletion_time"] else end
        pods.append(TracePod(r["name"], int(r["num_gpu"]), int(r["gpu_milli"] or 0), created,
                             max(deleted - started, 1.0)))
    pods.sort(key=lambda p: (p.arrival, p.name))
    return pods


DEFAULT_NODES = 100


def trace_nodes(trace_dir: Path, gpus_per_node: int = 8) -> int:
    """The trace's cluster re-mapped to ``gpus_per_node``-GPU nodes (777 of 8)."""
    return math.ceil(trace_gpus(trace_dir) / gpus_per_node)


def trace_gpus(trace_dir: Path) -> int:
    """Total GPUs of the trace's cluster (6212 in openb_node_list_all_node.csv)."""
    path = trace_dir / NODE_FILE
    if not path.is_file():
        raise TraceError(f"no node list {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        return sum(int(r["gpu"] or 0) for r in csv.DictReader(fh))


def _window_load(arrivals: Sequence[float], lifetimes: Sequence[float], demand: Sequence[int], scale: float,
                 capacity: int) -> float:
    span = (arrivals[-1] - arrivals[0]) / scale
    if span <= 0:
        return math.inf
    t0 = arrivals[0]
    work = sum(d * min(life, span - (t - t0) / scale) for t, life, d in zip(arrivals, lifetimes, demand, strict=True))
    return work / (capacity * span)


def max_load(arrivals: Sequence[float], demand: Sequence[int], capacity: int) -> float:
    """The window load as the compression grows without bound: every pod lives to the end of the window.
    No compression can load the cluster more than this (the trace's own cluster reaches ~0.5)."""
    t0, span = arrivals[0], arrivals[-1] - arrivals[0]
    if span <= 0:
        return math.inf
    return sum(d * (span - (t - t0)) for t, d in zip(arrivals, demand, strict=True)) / (capacity * span)


def time_scale(arrivals: Sequence[float], lifetimes: Sequence[float], demand: Sequence[int], capacity: int,
               load: float) -> float:
    """The factor arrival times are divided by so the offered load in the window is ``load``.

    Load grows monotonically with the factor (the window shrinks, lifetimes do not), so bisect it.
    ValueError when ``load`` is out of reach on ``capacity`` (see max_load).
    """
    ceiling = max_load(arrivals, demand, capacity)
    if load >= 0.999 * ceiling:
        raise ValueError(f"load {load} is out of reach: the whole trace loads {capacity:,} compute slices at most "
                         f"{ceiling:.2f} however its arrivals are compressed; use fewer --nodes")
    lo, hi = 1e-9, 1e12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if _window_load(arrivals, lifetimes, demand, mid, capacity) < load:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return math.sqrt(lo * hi)


def jobs_from_trace(pods: Iterable[TracePod], models: Sequence[tuple[GpuModel, float]], capacity: int,
                    load: float, skip: float = SKIP) -> tuple[list[Job], float]:
    """Map trace pods to Jobs on ``models`` (round robin by share) at ``load``; returns (jobs, factor).

    The first ``skip`` fraction of pods (by creation time) is dropped, see SKIP.
    """
    pods = list(pods)
    pods = pods[int(len(pods) * skip):]
    if not pods:
        raise TraceError("the trace has no GPU pods")
    # a pod names one resource, hence one model: assign models in proportion to their GPU shares
    weights = [s for _, s in models]
    picks: list[GpuModel] = []
    acc = [0.0] * len(models)
    for _ in pods:
        i = max(range(len(models)), key=lambda k: (weights[k] - acc[k], -k))
        acc = [a + w for a, w in zip(acc, weights, strict=True)]
        acc[i] -= sum(weights)
        picks.append(models[i][0])
    sized = [(p, m, *mig_size(p.num_gpu, p.gpu_milli, m)) for p, m in zip(pods, picks, strict=True)]
    factor = time_scale([p.arrival for p in pods], [p.lifetime for p in pods], [g * n for _, _, g, n in sized],
                        capacity, load)
    t0 = pods[0].arrival
    jobs = []
    for i, (p, m, g, n) in enumerate(sized):
        prof = basic_profile(m, g)
        jobs.append(Job(i, (p.arrival - t0) / factor, p.lifetime, prof.resource, n, g, prof.memory_slices, m.name))
    return jobs, factor


def default_trace_dir(repo_root: Path) -> Path:
    return (repo_root / ".." / "shared" / "data" / "alibaba-gpu-v2023").resolve()


def summary(jobs: Sequence[Job]) -> Mapping[str, int]:
    """Jobs by requested profile, e.g. {'7g.40gb': 1406, ...} (for the report header)."""
    out: dict[str, int] = {}
    for j in jobs:
        key = j.resource.rsplit("mig-", 1)[-1] + (f"x{j.count}" if j.count > 1 else "")
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
