"""What a run measures, and the metric names the JSON output and the table share.

Integrals are exact (piecewise constant between events). Definitions:

* ``placed_fraction``: jobs that started running (at least once) / jobs that arrived in the run.
* ``pending_pod_seconds``: integral of jobs that exist but do not run: waiting to be placed, or
  between a delete and the replacement running (upgrade and restore restarts count).
* ``pending_before_first_start``: the part of it before each pod's first start (sum of time to run).
* ``time_to_run_p50/p99``: arrival -> first running; jobs never placed count with the time they
  waited until the end (a lower bound), so placing fewer pods cannot improve the percentiles.
* ``wait_per_pod_p50/p99``: every wait of a pod added up: before its first start, and again after a
  restore, preemption or restart took it off a running slice (restart downtime included); pods still
  waiting at the end count with their wait so far. The sum over pods is ``pending_pod_seconds``. Time
  to run does not see a pod that starts early on a substitute and waits again after its restore.
* ``waste_slice_fraction``: (allocated - requested) / allocated compute slice-seconds; a pod on a
  larger substitute is allocated the substitute's slices.
* ``utilisation``: allocated compute slice-seconds / (physical compute slices x duration);
  ``requested_utilisation`` counts what the running pods asked for instead (useful work).
* ``arrivals`` = ``placed`` + ``waiting_at_end`` (never placed, still waiting at the end);
  ``in_restart_at_end``: pods placed before that were waiting for their replacement at the end.
* ``restarts`` = ``upgrades`` + ``restores``: pods deleted and recreated by the policy.
* ``restore_delay_p50``: seconds from the first reconciler pass that saw a free slice of an upgraded
  pod's own type to the pod running on it again (restored pods only; null when none).
* ``stranded_slices``: free compute slices (allocatable, unreserved) at the end while pods still wait.
* ``preemptions``: preemption plans carried out (one preemptor each); ``preempted``: victims evicted.
* ``by_profile``: per requested profile (``1g.10gb``...), its ``arrivals``, ``placed`` and
  ``time_to_run_p50/p99`` (same definition as above): no class of pod may starve for the others' sake.
* ``by_outcome``: time to run p50/p99 of the pods whose first start was on their own type
  (``own``), on a substitute (``substituted``; of those, ``restored``: moved back later), and of the
  pods never placed (``never``, their wait so far): which pods make the tail.
* ``restores_no_taker``: restores that freed a substitute slice no queued pod could use at that moment
  (pure cost: a restart that gave nobody anything); ``reupgrades``: upgrades of a workload restored
  before (the restore did not stick).
* ``by_class`` (runs with ``--priorities`` only): per priority class, highest first, its ``arrivals``,
  ``placed``, ``time_to_run_p50/p99`` (same definition as above) and the pods of it ``preempted``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.catalog import resource_profile_name
from .workload import Job

METRICS = (
    "placed_fraction", "pending_pod_seconds", "time_to_run_p50", "time_to_run_p99", "waste_slice_fraction",
    "utilisation", "requested_utilisation", "restarts", "upgrades", "restores", "restore_delay_p50", "stranded_slices",
    "preemptions", "preempted",
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RunResult:
    policy: str
    metrics: dict[str, Any]
    # t, running, allocated util, pods not running, requested (useful) util, restarts so far
    timeline: list[tuple[float, int, float, int, float, int]] = field(default_factory=list)


class Tally:
    """Running counters of one policy's run; ``advance(t)`` before every state change at ``t``."""

    def __init__(self, capacity: int, duration: float, samples: int = 200) -> None:
        self.capacity = capacity
        self.duration = duration
        self.t = 0.0
        self.waiting_now = 0
        self.running = 0
        self.allocated = 0   # compute slices held by running pods
        self.requested = 0   # compute slices those pods asked for
        self.pending_ps = 0.0
        self.alloc_cs = 0.0
        self.req_cs = 0.0
        self.arrivals = 0
        self.ttr: list[float] = []
        self.unstarted: dict[int, float] = {}
        self.restore_delays: list[float] = []
        self.upgrades = self.restores = self.expired = self.off_reservation = 0
        self.preemptions = self.preempted = 0
        # per priority class (jobs with a class only): time to run, arrivals, victims; priority for the order
        self.class_ttr: dict[str, list[float]] = {}
        self.class_waiting: dict[int, str] = {}
        self.class_arrivals: dict[str, int] = {}
        self.class_preempted: dict[str, int] = {}
        self.class_priority: dict[str, int] = {}
        self.profile_ttr: dict[str, list[float]] = {}       # requested profile -> time to run of the placed
        self.profile_of: dict[int, str] = {}                # job seq -> its requested profile
        self.first_ttr: dict[int, float] = {}               # job seq -> its time to run (placed jobs)
        self.on_substitute: set[int] = set()                # job seqs whose first start was on a substitute
        self.restored_jobs: set[int] = set()                # job seqs restored at least once
        self.restores_no_taker = self.reupgrades = 0
        self.events = 0
        self.rewaited: dict[int, float] = {}                # job seq -> its waits after its first start, ended
        self.rewaiting: dict[int, float] = {}               # job seq -> since when it waits again (placed before)
        self.timeline: list[tuple[float, int, float, int, float, int]] = []
        self._step = duration / max(samples, 1)
        self._next_sample = 0.0

    def advance(self, t: float) -> None:
        while self._next_sample <= t and self._next_sample <= self.duration:
            self.timeline.append((round(self._next_sample, 3), self.running,
                                  round(self.allocated / self.capacity, 4), self.waiting_now,
                                  round(self.requested / self.capacity, 4), self.upgrades + self.restores))
            self._next_sample += self._step
        dt = t - self.t
        if dt > 0:
            self.pending_ps += self.waiting_now * dt
            self.alloc_cs += self.allocated * dt
            self.req_cs += self.requested * dt
            self.t = t

    def requeued(self, job: Job, now: float) -> None:
        """A pod that ran is waiting again (restored, preempted, restarted): its wait counts anew."""
        self.waiting_now += 1
        self.rewaiting[job.seq] = now

    def arrived(self, job: Job) -> None:
        self.arrivals += 1
        self.waiting_now += 1
        self.unstarted[job.seq] = job.arrival
        self.profile_of[job.seq] = profile = resource_profile_name(job.resource)
        self.profile_ttr.setdefault(profile, [])
        if job.klass:
            self.class_arrivals[job.klass] = self.class_arrivals.get(job.klass, 0) + 1
            self.class_priority[job.klass] = job.priority
            self.class_ttr.setdefault(job.klass, [])
            self.class_waiting[job.seq] = job.klass

    def started(self, job: Job, allocated: int, now: float, first: bool, substitute: bool = False) -> None:
        self.waiting_now -= 1
        self.running += 1
        self.allocated += allocated
        self.requested += job.compute_demand
        since = self.rewaiting.pop(job.seq, None)
        if since is not None:
            self.rewaited[job.seq] = self.rewaited.get(job.seq, 0.0) + now - since
        if first:
            self.ttr.append(now - self.unstarted.pop(job.seq))
            self.first_ttr[job.seq] = self.ttr[-1]
            if substitute:
                self.on_substitute.add(job.seq)
            self.profile_ttr[self.profile_of[job.seq]].append(self.ttr[-1])
            klass = self.class_waiting.pop(job.seq, "")
            if klass:
                self.class_ttr[klass].append(self.ttr[-1])

    def preempted_pod(self, job: Job) -> None:
        self.preempted += 1
        if job.klass:
            self.class_preempted[job.klass] = self.class_preempted.get(job.klass, 0) + 1

    def stopped(self, job: Job, allocated: int) -> None:
        self.running -= 1
        self.allocated -= allocated
        self.requested -= job.compute_demand

    def restored(self, delay: float) -> None:
        self.restore_delays.append(delay)

    def waits(self) -> dict[int, float]:
        """Every pod's waits added up (``wait_per_pod``), those still waiting with their wait so far."""
        total = dict(self.first_ttr)
        for seq, arrival in self.unstarted.items():
            total[seq] = self.duration - arrival
        for seq, wait in self.rewaited.items():
            total[seq] += wait
        for seq, since in self.rewaiting.items():
            total[seq] += self.duration - since
        return total

    def result(self, policy: str, stranded: int, extra: Mapping[str, Any] | None = None) -> RunResult:
        censored = [self.duration - a for a in self.unstarted.values()]
        ttr = self.ttr + censored
        waits = list(self.waits().values())
        placed = len(self.ttr)
        metrics: dict[str, Any] = {
            "placed_fraction": round(placed / self.arrivals, 6) if self.arrivals else None,
            "pending_pod_seconds": round(self.pending_ps, 1),
            # of which before a pod's first start (the rest: restart downtime, and a restored or preempted pod
            # waiting for a slice again, which time to run does not see)
            "pending_before_first_start": round(sum(ttr), 1),
            "time_to_run_p50": _round(percentile(ttr, 50)),
            "time_to_run_p99": _round(percentile(ttr, 99)),
            "wait_per_pod_p50": _round(percentile(waits, 50)),
            "wait_per_pod_p99": _round(percentile(waits, 99)),
            "waste_slice_fraction": round((self.alloc_cs - self.req_cs) / self.alloc_cs, 6) if self.alloc_cs else 0.0,
            "utilisation": round(self.alloc_cs / (self.capacity * self.duration), 6),
            "requested_utilisation": round(self.req_cs / (self.capacity * self.duration), 6),
            "restarts": self.upgrades + self.restores,
            "upgrades": self.upgrades,
            "restores": self.restores,
            "restore_delay_p50": _round(percentile(self.restore_delays, 50)),
            "stranded_slices": stranded if self.waiting_now > 0 else 0,
            "preemptions": self.preemptions,
            "preempted": self.preempted,
            "arrivals": self.arrivals,
            "placed": placed,
            # never placed and still waiting, so placed + waiting_at_end == arrivals; pods placed before
            # and now between a delete (restore, preemption) and their replacement running, apart
            "waiting_at_end": len(self.unstarted),
            "in_restart_at_end": self.waiting_now - len(self.unstarted),
            "reservations_expired": self.expired,
            "bound_off_reservation": self.off_reservation,
            "events": self.events,
        }
        metrics["by_profile"] = self._by_profile()
        metrics["by_outcome"] = self._by_outcome()
        metrics["restores_no_taker"] = self.restores_no_taker
        metrics["reupgrades"] = self.reupgrades
        if self.class_arrivals:
            metrics["by_class"] = self._by_class()
        metrics.update(extra or {})
        return RunResult(policy, metrics, self.timeline)

    def _by_profile(self) -> dict[str, dict[str, Any]]:
        """Per requested profile, smallest first; jobs never placed count with their wait so far."""
        censored: dict[str, list[float]] = {}
        for seq, arrival in self.unstarted.items():
            censored.setdefault(self.profile_of[seq], []).append(self.duration - arrival)
        out = {}
        for profile in sorted(self.profile_ttr, key=_profile_order):
            ttr = self.profile_ttr[profile] + censored.get(profile, [])
            out[profile] = {
                "arrivals": len(ttr),
                "placed": len(self.profile_ttr[profile]),
                "time_to_run_p50": _round(percentile(ttr, 50)),
                "time_to_run_p99": _round(percentile(ttr, 99)),
            }
        return out

    def _by_outcome(self) -> dict[str, dict[str, Any]]:
        """Time to run by what happened to the pod: own type, substitute (restored or not), never placed."""
        groups: dict[str, list[float]] = {"own": [], "substituted": [], "restored": []}
        for seq, ttr in self.first_ttr.items():
            groups["substituted" if seq in self.on_substitute else "own"].append(ttr)
            if seq in self.restored_jobs:
                groups["restored"].append(ttr)
        groups["never"] = [self.duration - a for a in self.unstarted.values()]
        return {name: {"pods": len(v), "time_to_run_p50": _round(percentile(v, 50)),
                       "time_to_run_p99": _round(percentile(v, 99))} for name, v in groups.items()}

    def _by_class(self) -> dict[str, dict[str, Any]]:
        """Per class, highest priority first; jobs never placed count with their wait so far (as above)."""
        censored: dict[str, list[float]] = {}
        for seq, klass in self.class_waiting.items():
            censored.setdefault(klass, []).append(self.duration - self.unstarted[seq])
        out = {}
        for klass in sorted(self.class_arrivals, key=lambda k: (-self.class_priority[k], k)):
            ttr = self.class_ttr[klass] + censored.get(klass, [])
            out[klass] = {
                "priority": self.class_priority[klass],
                "arrivals": self.class_arrivals[klass],
                "placed": len(self.class_ttr[klass]),
                "time_to_run_p50": _round(percentile(ttr, 50)),
                "time_to_run_p99": _round(percentile(ttr, 99)),
                "preempted": self.class_preempted.get(klass, 0),
            }
        return out


def _profile_order(profile: str) -> tuple[int, str]:
    """``2g.20gb`` before ``10g...``: by compute slices, then name."""
    head = profile.split("g.", 1)[0]
    return (int(head) if head.isdigit() else 0, profile)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
