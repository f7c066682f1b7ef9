"""Workloads: the seeded stream of jobs every policy of one run replays identically.

A Job is one workload (think: a one-replica Deployment): it arrives, asks for ``count`` instances of
one MIG resource, and must run for ``lifetime`` seconds of running time; restarts pause that clock,
they do not reset it. The synthetic generator makes Poisson arrivals whose offered demand (arrival
rate x compute slices x mean lifetime) is ``load`` times the cluster's physical compute slices, with
a profile mix and exponential or lognormal lifetimes, plus an optional burst of one profile.

Must not: know about policies or the planner; it only produces jobs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
