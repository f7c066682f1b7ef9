"""What DRA-served MIG looks like right now: per node and profile devices/allocated/free, and our claims
running on a larger device than they asked for. Pure.

One function computes these numbers for every reader: ``/debug/inventory``'s ``dra`` section shows them per
node, the metrics sum them per profile (``mig_extender_dra_*``), so a dashboard and the debug endpoint can
never disagree about what is free. A device is allocated when any claim holds it, ours or not (a KEP-5004
claim kube-scheduler made for an extended resource holds its device too); only our claims can be upgraded
(core/drarestore.upgraded), since only ours say which profile their pod asked for.
Must not: talk to the API or decide anything (restore is core/drarestore.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .dra import DRIVER, MigDevice, ProfileUsage, device_usage
from .drarestore import claim_facts, upgraded


@dataclass(frozen=True)
class UpgradedClaim:
    """One of our claims allocated from a later ``firstAvailable`` entry: its pod runs on ``held`` (the
    profile of the device it holds; "" when no slice lists that device any more) having asked ``asked``."""

    namespace: str
    name: str
    pod: str
    asked: str
    subrequest: str  # the entry that won, as the allocator names it ("mig-2g-10gb")
    held: str


@dataclass(frozen=True)
class DraUsage:
    """``nodes``: node -> profile -> usage; ``upgraded``: our claims on a substitute, by namespace/name."""

    nodes: Mapping[str, Mapping[str, ProfileUsage]]
    upgraded: tuple[UpgradedClaim, ...]

    def by_profile(self) -> dict[str, ProfileUsage]:
        """profile -> usage summed over every node: cluster-wide, so a metric's labels stay bounded by the
        catalog whatever the number of nodes."""
        totals: dict[str, list[int]] = {}
        for by in self.nodes.values():
            for profile, usage in by.items():
                slot = totals.setdefault(profile, [0, 0])
                slot[0] += usage.devices
                slot[1] += usage.allocated
        return {p: ProfileUsage(n, a) for p, (n, a) in sorted(totals.items())}

    def upgraded_by_profile(self) -> dict[tuple[str, str], int]:
        """(asked, held) -> how many of our claims run on ``held`` having asked ``asked``."""
        return dict(sorted(Counter((c.asked, c.held) for c in self.upgraded).items()))


def dra_usage(devices: Iterable[MigDevice], claims: Iterable[Mapping[str, Any]]) -> DraUsage:
    """The usage of ``devices`` (every ResourceSlice's MIG devices) under ``claims`` (every ResourceClaim
    as the API returns it)."""
    devices = list(devices)
    facts = [claim_facts(c) for c in claims]
    taken = {d for c in facts for d in c.devices}
    profiles = {(DRIVER, d.pool, d.name): d.profile for d in devices}
    ups = tuple(UpgradedClaim(c.namespace, c.name, c.pod, c.profile, c.subrequest,
                              next((profiles[d] for d in c.devices if d in profiles), ""))
                for c in sorted(upgraded(facts), key=lambda c: (c.namespace, c.name)))
    return DraUsage(device_usage(devices, taken), ups)
