"""The ``bound`` reference: the same job stream on one fluid pool, with no MIG geometry at all.

How it is computed: the cluster becomes two pools, all physical compute slices (7 per A100/H100) and
all memory slices (8 per GPU), ignoring GPU and node boundaries, profile types and static layouts. A
job takes exactly what it asked for (no substitute, no waste) the moment both pools have it, with no
scheduler retry delay and no restarts; waiting jobs start in FIFO order, a smaller job may pass a
larger one that does not fit (like the per-type queues of the real policies). Jobs that no node of the
cluster could host at all (say 7g on an all-1g layout) are never started, as for every other policy.

This removes every loss a placement policy is responsible for (fragmentation, layouts that do not
match the mix, retry latency, restart downtime), so it is the ceiling the others are measured against.
It is a reference, not a proof of optimality: a clairvoyant scheduler could hold a big job back to run
several small ones; on our streams no policy beats it (the unit tests check that on a skewed workload).

``bound-mig`` (``geometry=True``) keeps the pools and adds only what MIG geometry forces on every
7-compute-slice GPU (A100, H100, H200, ...; the catalog's placements): an instance of 4 compute slices
or more (4g, 7g) leaves no room on its GPU for another of 3 or more (4g + 3g is not a valid layout), and
a GPU holds at most two 3g. So the 4g/7g instances and the 3g pairs running at once need that many GPUs:
``big + ceil(threes / 2) <= GPUs``. Every placement any MIG policy makes satisfies this, so it is a
tighter reference of the same kind, not a layout anyone can build: small slices stay fluid, and memory
slices are pooled across GPUs. The plain bound lets each 4g share a GPU with a 3g; on the Alibaba traces
(thousands of 4g and 3g pods, few 1g/2g) that is most of its lead (bench/README.md, issue 18).

Must not: import the planner; this is the one model that deliberately ignores (almost all of) MIG.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence

from .cluster import SimCluster
from .stats import RunResult, Tally
from .workload import Job


def _geometry(job: Job) -> tuple[int, int]:
    """(instances of 4+ compute slices, instances of 3) the job runs: what ``bound-mig`` counts per GPU."""
    return (job.count if job.compute >= 4 else 0), (job.count if job.compute == 3 else 0)


def run_bound(cluster: SimCluster, jobs: Sequence[Job], duration: float, samples: int = 200,
              progress: Callable[[float], None] | None = None, geometry: bool = False) -> RunResult:
    tally = Tally(cluster.compute_capacity, duration, samples)
    free_compute, free_memory = cluster.compute_capacity, cluster.memory_capacity
    if geometry and any(m.compute_slices != 7 for m in cluster.spec.models):
        raise ValueError("bound-mig models 7-compute-slice GPUs only (A100, H100, H200, B200, ...)")
    gpus = cluster.spec.nodes * cluster.spec.gpus_per_node
    big = threes = 0  # running instances of 4+ compute slices, of 3 (bound-mig)
    hostable: dict[tuple[str, int], bool] = {}
    # per size, FIFO: a size whose oldest job does not fit blocks only its own size (bound-mig: the size
    # includes the geometry, so a 4g never blocks two 2g of the same pooled size)
    queues: dict[tuple[int, ...], deque[Job]] = {}
    heap: list[tuple[float, int, int, Job | None]] = []  # (time, kind 0=depart 1=arrive, seq, job)
    for job in jobs:
        if job.arrival < duration:
            heap.append((job.arrival, 1, job.seq, job))
    heapq.heapify(heap)
    count = 0

    def start(job: Job, now: float) -> None:
        nonlocal free_compute, free_memory, big, threes
        free_compute -= job.compute * job.count
        free_memory -= job.memory * job.count
        more_big, more_threes = _geometry(job)
        big, threes = big + more_big, threes + more_threes
        tally.started(job, job.compute_demand, now, first=True)
        heapq.heappush(heap, (now + job.lifetime, 0, job.seq, job))

    def fits(job: Job) -> bool:
        if job.compute * job.count > free_compute or job.memory * job.count > free_memory:
            return False
        if not geometry:
            return True
        more_big, more_threes = _geometry(job)
        return big + more_big + math.ceil((threes + more_threes) / 2) <= gpus

    while heap and heap[0][0] <= duration:
        now, kind, _, job = heapq.heappop(heap)
        tally.advance(now)
        count += 1
        if progress is not None and count % 4096 == 0:
            progress(now / duration)
        if kind == 1:
            tally.arrived(job)
            key = (job.resource, job.count)
            if key not in hostable:
                hostable[key] = cluster.hosts(job.resource, job.count)
            if not hostable[key]:
                continue
            size = (job.compute * job.count, job.memory * job.count, *(_geometry(job) if geometry else ()))
            queue = queues.setdefault(size, deque())
            if not queue and fits(job):
                start(job, now)
            else:
                queue.append(job)
            continue
        free_compute += job.compute * job.count
        free_memory += job.memory * job.count
        less_big, less_threes = _geometry(job)
        big, threes = big - less_big, threes - less_threes
        tally.stopped(job, job.compute_demand)
        heads = [(q[0].seq, size) for size, q in queues.items() if q]
        heapq.heapify(heads)
        while heads:
            _, size = heapq.heappop(heads)
            queue = queues[size]
            if fits(queue[0]):
                start(queue.popleft(), now)
                if queue:
                    heapq.heappush(heads, (queue[0].seq, size))
    tally.advance(duration)
    tally.events = count
    if progress is not None:
        progress(1.0)
    return tally.result("bound-mig" if geometry else "bound", free_compute)
