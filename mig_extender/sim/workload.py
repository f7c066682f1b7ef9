"""Workloads: the seeded stream of jobs every policy of one run replays identically.

A Job is one workload (think: a one-replica Deployment): it arrives, asks for ``count`` instances of
one MIG resource, and must run for ``lifetime`` seconds of running time; restarts pause that clock,
they do not reset it. The synthetic generator makes Poisson arrivals whose offered demand (arrival
rate x compute slices x mean lifetime) is ``load`` times the cluster's physical compute slices, with
a profile mix and exponential or lognormal lifetimes, plus an optional burst of one profile.
``assign_priorities`` then gives every job of any workload a priority class (``--priorities high=0.2``)
from its own random stream, so adding classes leaves the arrivals, lifetimes and profiles as they were.

Must not: know about policies or the planner; it only produces jobs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ..core.catalog import GpuModel
from .cluster import LayoutError, resolve_profile

DEFAULT_MIX = "1g=0.5,2g=0.3,3g=0.2"
LOGNORMAL_SIGMA = 1.0  # spread of lognormal lifetimes: p99/p50 ~ 10, like batch + service mixes


@dataclass(frozen=True, slots=True)
class Job:
    seq: int            # arrival order: FIFO order everywhere
    arrival: float      # seconds from the start of the run
    lifetime: float     # seconds of running time
    resource: str       # nvidia.com/mig-* the pod asks for
    count: int          # instances of it
    compute: int        # compute slices of one instance
    memory: int         # memory slices of one instance
    model: str          # GPU model the resource name belongs to
    priority: int = 0   # spec.priority of its pods (what preemption compares)
    klass: str = ""     # its priority class name ("" when the run has no classes)

    @property
    def compute_demand(self) -> int:
        return self.compute * self.count


def parse_mix(text: str) -> dict[str, float]:
    """``1g=0.5,2g.20gb=0.3`` -> {profile: weight}; weights need not sum to 1."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, sep, weight = item.strip().partition("=")
        try:
            value = float(weight) if sep else 1.0
        except ValueError as exc:
            raise ValueError(f"--mix item {item!r}: weight is not a number") from exc
        if value < 0 or not name:
            raise ValueError(f"--mix item {item!r} must be PROFILE=WEIGHT with WEIGHT >= 0")
        mix[name.strip()] = mix.get(name.strip(), 0.0) + value
    if sum(mix.values()) <= 0:
        raise ValueError("--mix needs a positive weight")
    return mix


@dataclass(frozen=True)
class Burst:
    """``count`` jobs of ``profile`` arriving uniformly within ``window`` seconds from ``at``."""

    profile: str
    count: int
    at: float | None = None  # None: the middle of the run
    window: float = 60.0

    @classmethod
    def parse(cls, text: str) -> Burst:
        """``1g:500`` or ``1g:500@3600``."""
        head, _, at = text.partition("@")
        profile, sep, count = head.partition(":")
        if not sep or not count.strip().isdigit() or not profile.strip():
            raise ValueError(f"--burst {text!r} must be PROFILE:COUNT[@SECONDS]")
        try:
            when = float(at) if at else None
        except ValueError as exc:
            raise ValueError(f"--burst {text!r}: bad time") from exc
        return cls(profile.strip(), int(count), when)


@dataclass(frozen=True)
class _Kind:
    resource: str
    compute: int
    memory: int
    model: str


def _kinds(name: str, models: Sequence[tuple[GpuModel, float]]) -> list[tuple[_Kind, float]]:
    """The resource ``name`` means on each model (weighted by the model's share of GPUs)."""
    out = []
    for model, share in models:
        try:
            p = resolve_profile(model, name)
        except LayoutError:
            continue
        out.append((_Kind(p.resource, p.compute_slices, p.memory_slices, model.name), share))
    if not out:
        raise ValueError(f"profile {name!r} exists on none of {', '.join(m.name for m, _ in models)}")
    return out


def _lifetime(rng: random.Random, mean: float, dist: str) -> float:
    if dist == "exp":
        return rng.expovariate(1.0 / mean)
    if dist == "lognormal":
        return rng.lognormvariate(math.log(mean) - LOGNORMAL_SIGMA ** 2 / 2, LOGNORMAL_SIGMA)
    raise ValueError(f"lifetime distribution must be exp or lognormal, got {dist!r}")


def synthetic(models: Sequence[tuple[GpuModel, float]], capacity: int, load: float, duration: float,
              mix: Mapping[str, float], mean_lifetime: float, lifetime: str = "exp", seed: int = 1,
              burst: Burst | None = None) -> list[Job]:
    """Poisson arrivals over ``duration`` s at ``load`` x ``capacity`` compute slices of offered demand.

    ``models`` are (GPU model, share of the cluster's GPUs); a job of profile ``1g`` asks for that
    model's 1g resource, the model drawn by its share (a pod names one resource, so one model).
    """
    if load <= 0 or duration <= 0 or mean_lifetime <= 0:
        raise ValueError("load, duration and mean lifetime must be > 0")
    rng = random.Random(seed)
    entries = [(name, w, _kinds(name, models)) for name, w in mix.items() if w > 0]
    total_w = sum(w for _, w, _ in entries)
    mean_compute = sum(w / total_w * sum(k.compute * s for k, s in kinds) / sum(s for _, s in kinds)
                       for _, w, kinds in entries)
    rate = load * capacity / (mean_compute * mean_lifetime)
    names = [name for name, _, _ in entries]
    weights = [w for _, w, _ in entries]
    by_name = {name: kinds for name, _, kinds in entries}
    arrivals: list[tuple[float, _Kind, float]] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        kinds = by_name[rng.choices(names, weights)[0]]
        kind = kinds[0][0] if len(kinds) == 1 else rng.choices([k for k, _ in kinds], [s for _, s in kinds])[0]
        arrivals.append((t, kind, _lifetime(rng, mean_lifetime, lifetime)))
    if burst is not None:
        kinds = _kinds(burst.profile, models)
        start = duration / 2 if burst.at is None else burst.at
        brng = random.Random(seed + 7919)  # its own stream: adding a burst leaves the base stream as it was
        for _ in range(burst.count):
            kind = brng.choices([k for k, _ in kinds], [s for _, s in kinds])[0]
            arrivals.append((start + brng.uniform(0, burst.window), kind, _lifetime(brng, mean_lifetime, lifetime)))
        arrivals.sort(key=lambda a: a[0])
    return [Job(i, t, max(life, 1.0), k.resource, 1, k.compute, k.memory, k.model)
            for i, (t, k, life) in enumerate(arrivals)]


def compute_shares(jobs: Sequence[Job]) -> dict[int, float]:
    """Offered compute slice-seconds by instance size (1, 2, 3, 4, 7): what the ``demand`` layout matches."""
    out: dict[int, float] = {}
    for j in jobs:
        out[j.compute] = out.get(j.compute, 0.0) + j.compute_demand * j.lifetime
    return out


def mix_shares(mix: Mapping[str, float], model: GpuModel) -> dict[int, float]:
    """Compute-slice share by instance size of a synthetic mix (lifetimes share one distribution)."""
    out: dict[int, float] = {}
    for name, w in mix.items():
        try:
            g = resolve_profile(model, name).compute_slices
        except LayoutError:
            continue
        out[g] = out.get(g, 0.0) + w * g
    return out


# Priority values of the class names a user need not spell out (PriorityClass values are user-chosen;
# these only order the classes). Any other name needs NAME:VALUE.
KNOWN_PRIORITIES: Mapping[str, int] = {"high": 1000, "default": 0, "low": -1000}
DEFAULT_CLASS = "default"


@dataclass(frozen=True)
class PriorityClass:
    name: str
    value: int
    share: float


def parse_priorities(text: str) -> tuple[PriorityClass, ...]:
    """``high=0.2`` or ``high=0.2,low:-50=0.3`` -> classes; the share left over is ``default`` (priority 0).

    Shares are fractions of all jobs (0..1, summing to at most 1); ValueError says what is wrong.
    """
    classes: dict[str, PriorityClass] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        head, sep, share_text = item.rpartition("=")
        name, colon, value_text = head.partition(":")
        name = name.strip()
        try:
            share = float(share_text)
            value = int(value_text) if colon else KNOWN_PRIORITIES[name]
        except ValueError as exc:
            raise ValueError(f"--priorities item {item!r} must be NAME[:PRIORITY]=SHARE") from exc
        except KeyError as exc:
            raise ValueError(f"--priorities item {item!r}: give {name!r} a value, like {name}:500=0.1 "
                             f"(known without one: {', '.join(KNOWN_PRIORITIES)})") from exc
        if not sep or not name or not 0 <= share <= 1 or name in classes:
            raise ValueError(f"--priorities item {item!r} must be NAME[:PRIORITY]=SHARE, SHARE in 0..1, each NAME once")
        classes[name] = PriorityClass(name, value, share)
    total = sum(c.share for c in classes.values())
    if total > 1 + 1e-9:
        raise ValueError(f"--priorities shares sum to {total:g} > 1")
    if DEFAULT_CLASS not in classes and total < 1 - 1e-9:
        classes[DEFAULT_CLASS] = PriorityClass(DEFAULT_CLASS, KNOWN_PRIORITIES[DEFAULT_CLASS], 1 - total)
    return tuple(sorted(classes.values(), key=lambda c: -c.value))


def assign_priorities(jobs: Sequence[Job], classes: Sequence[PriorityClass], seed: int) -> list[Job]:
    """Each job drawn into a class by its share, from a stream of its own (the jobs themselves unchanged)."""
    if not classes:
        return list(jobs)
    rng = random.Random(seed + 15_485_863)
    weights = [c.share for c in classes]
    return [replace(j, priority=c.value, klass=c.name) for j, c in zip(jobs, rng.choices(classes, weights, k=len(jobs)),
                                                                     strict=True)]
