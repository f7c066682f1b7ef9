"""Every Prometheus metric of mig-extender, in one place, all named ``mig_extender_*``.

Counters and histograms are updated by the edges (HTTP, webhook, reconciler); the per-profile slice
gauges and the rule-phase gauge are computed at scrape time from a snapshot, so the hot path never
pays for them. MIG served by DRA is exported the same way, from the DRA book's usage (core/drausage.py,
the numbers /debug/inventory shows), summed per profile so its labels stay bounded at any node count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.catalog import ProfileError, resource_shape
from ..core.drausage import DraUsage
from ..core.rules import Phase
from ..core.snapshot import ClusterSnapshot

# Extender verbs answer in about a millisecond; the buckets resolve 0.25 ms .. 1 s.
_LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """One registry per process (tests make their own, so nothing is global)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mig_extender_requests_total", "Extender/webhook requests by verb and outcome",
                                ["verb", "outcome"], registry=r)
        self.latency = Histogram("mig_extender_request_duration_seconds", "Time to answer a request",
                                 ["verb"], buckets=_LATENCY_BUCKETS, registry=r)
        self.rules = Counter("mig_extender_rule_events_total",
                             "Rule life-cycle events (recorded, applied, bound, expired, cancelled, restoring, "
                             "restored; <event>_failed: the write could not be made)", ["event"], registry=r)
        self.actions = Counter("mig_extender_reconciler_actions_total", "Reconciler actions by kind and outcome",
                               ["action", "outcome"], registry=r)
        self.preemptions = Counter("mig_extender_preemptions_total",
                                   "Preemption decisions for pending MIG pods by reason (planned, no_candidate, "
                                   "an ineligibility such as policy_never, or a failure such as throttled)",
                                   ["reason"], registry=r)
        self.repartitions = Counter("mig_extender_repartitions_total",
                                    "Repartition steps by outcome (advised, reserved, applied, repartitioned, "
                                    "failed_<reason> (rolled back), rolled_back (previous layout restored), "
                                    "released_<reason> (rollback ended otherwise), aborted_<reason>, conflict, "
                                    "throttled)",
                                    ["outcome"], registry=r)
        self.webhook = Counter("mig_extender_webhook_mutations_total", "Webhook answers by result",
                               ["result"], registry=r)
        self.webhook_claims = Counter("mig_extender_webhook_claims_total",
                                      "Webhook claims of a rule in the API by outcome (won; lost to another pod; "
                                      "error: API unreachable, slow or refusing, the pod admitted unchanged)",
                                      ["outcome"], registry=r)

    def watch(self, snapshot: Callable[[], ClusterSnapshot]) -> None:
        """Export slice and rule gauges computed from ``snapshot()`` at every scrape."""
        self.registry.register(_SnapshotCollector(snapshot))

    def watch_health(self, problems: Callable[[], list[str]],
                     disconnected: Callable[[], Mapping[str, float]]) -> None:
        """Export readiness (what /readyz says) and, per watch, the seconds it has been cut off from the API
        (0 while connected): the alerts 'not ready' and 'watch stale' need them as numbers."""
        self.registry.register(_HealthCollector(problems, disconnected))

    def watch_dra(self, usage: Callable[[], DraUsage]) -> None:
        """Export the MIG devices DRA serves (allocated/free per profile) and our claims on a larger device,
        from ``usage()`` at every scrape. Call only when the cluster serves resource.k8s.io: a cluster
        without DRA must show no such series rather than zeros."""
        self.registry.register(_DraCollector(usage))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HealthCollector(Collector):
    def __init__(self, problems: Callable[[], list[str]], disconnected: Callable[[], Mapping[str, float]]) -> None:
        self._problems, self._disconnected = problems, disconnected

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily("mig_extender_ready", "1 when /readyz answers ok (caches synced, watches fresh)")
        ready.add_metric([], 0 if self._problems() else 1)
        yield ready
        cut = GaugeMetricFamily("mig_extender_watch_disconnected_seconds",
                                "Seconds a watch has failed to reach the API server (0 while connected)",
                                labels=["watch"])
        for name, seconds in sorted(self._disconnected().items()):
            cut.add_metric([name], seconds)
        yield cut


class _DraCollector(Collector):
    def __init__(self, usage: Callable[[], DraUsage]) -> None:
        self._usage = usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        usage = self._usage()
        devices = GaugeMetricFamily("mig_extender_dra_devices",
                                    "MIG devices in NVIDIA's ResourceSlices by profile and state (allocated: held "
                                    "by any ResourceClaim; free)", labels=["profile", "state"])
        for profile, u in usage.by_profile().items():
            devices.add_metric([profile, "allocated"], u.allocated)
            devices.add_metric([profile, "free"], u.free)
        yield devices
        upgraded = GaugeMetricFamily("mig_extender_dra_upgraded_claims",
                                     "Claims of mig-extender's templates allocated from a later firstAvailable "
                                     "entry: pods asking profile running on a got device (restore moves them back)",
                                     labels=["profile", "got"])
        for (asked, held), n in usage.upgraded_by_profile().items():
            upgraded.add_metric([asked, held or "unknown"], n)
        yield upgraded


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], ClusterSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot()
        slices = GaugeMetricFamily("mig_extender_slices", "MIG slices in the cluster by resource and state",
                                   labels=["resource", "state"])
        totals: dict[tuple[str, str], int] = {}
        for node, info in snap.nodes.items():
            reserved = snap.reserved.get(node, {})
            for r, alloc in info.allocatable.items():
                used, held = info.used.get(r, 0), reserved.get(r, 0)
                for state, n in (("allocatable", alloc), ("used", used), ("reserved", held),
                                 ("free", max(alloc - used - held, 0))):
                    totals[(r, state)] = totals.get((r, state), 0) + n
        for (r, state), n in sorted(totals.items()):
            slices.add_metric([r, state], n)
        yield slices
        phases = GaugeMetricFamily("mig_extender_rules", "Substitution rules by phase", labels=["phase"])
        counts: dict[str, int] = {}
        for rule in snap.rules:
            counts[str(rule.phase)] = counts.get(str(rule.phase), 0) + 1
        for phase in ("Recorded", "Applied", "Expired", "Restoring", "Restored"):
            phases.add_metric([phase], counts.get(phase, 0))
        yield phases
        pending = GaugeMetricFamily("mig_extender_pending_slices", "MIG slices wanted by unbound pods, by resource",
                                    labels=["resource"])
        for r, n in sorted(snap.pending.items()):
            pending.add_metric([r], n)
        yield pending
        synced = GaugeMetricFamily("mig_extender_inventory_synced", "1 once node and pod caches are synced")
        synced.add_metric([], 1 if snap.synced else 0)
        yield synced
        nodes = GaugeMetricFamily("mig_extender_nodes", "Nodes in the inventory")
        nodes.add_metric([], len(snap.nodes))
        yield nodes
        yield _waste(snap)


def _waste(snap: ClusterSnapshot) -> GaugeMetricFamily:
    """What pods running on a substitute (Applied rules) hold beyond what they asked for."""
    compute = memory = 0
    for rule in snap.rules:
        if rule.phase is not Phase.APPLIED:
            continue
        try:
            want, got = resource_shape(rule.original.resource), resource_shape(rule.substitute.resource)
        except ProfileError:
            continue
        compute += (got.compute_slices * rule.substitute.count) - (want.compute_slices * rule.original.count)
        memory += (got.memory_gb * rule.substitute.count) - (want.memory_gb * rule.original.count)
    waste = GaugeMetricFamily("mig_extender_substitution_waste",
                              "Compute slices and GB of MIG memory held by substituted pods beyond their requests",
                              labels=["unit"])
    waste.add_metric(["compute_slices"], compute)
    waste.add_metric(["memory_gb"], memory)
    return waste
