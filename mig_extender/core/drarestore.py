"""Restore on DRA: which pods running on a substitute to move back to their own profile, now. Pure.

DRA never moves a pod back: a claim allocated from a later ``firstAvailable`` subrequest keeps that bigger
device until its pod ends. Such a pod is an upgraded pod (its claim says which profile it asked for, in the
``mig-extender.io/dra-profile`` annotation our templates put on every claim they generate). When a device
of that profile is free (in a ResourceSlice, in no claim's allocation), restarting the pod lets its
replacement's new claim take the free device, its first choice. As for the device plugin, the biggest
waster goes first (``catalog.waste`` of the device it holds against the profile it asked).

A free device is only counted as available for a restore when no pod is already waiting for it: a claim
of ours that is not allocated yet (a pending pod, or the replacement of a pod restored a moment ago) would
take it first, and restarting one more pod would only buy it a substitute again. ``in_flight`` are
restores started recently whose replacement may not have a claim yet, per profile.

The restart-loop guard (soak invariant 6, ``PlanSettings.restart_limit`` restarts of a pod's lineage within
``restart_window``, as on the device plugin route): a restored pod's replacement can run on a substitute
again (another pod, a claim not ours, took the free device first) and would be restored at the next free
device, and again. ``match_replacements`` follows lineages without rules: the replacement of a restore is a
pod of the same owner asking the same profile created after the restart.

Must not: talk to the API, or choose a pod whose restart nobody would undo (the caller checks the owner).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .catalog import ProfileError, ProfileShape, parse_profile_name, waste
from .dra import DRIVER, REQUEST_NAME, MigDevice, is_ours, subrequest_name
from .resources import ANN_DRA_PROFILE, PodInfo, parse_time
from .rules import CLOCK_SKEW

Device = tuple[str, str, str]  # (driver, pool, device)


@dataclass(frozen=True)
class ClaimFacts:
    """What restore needs to know about one ResourceClaim."""

    namespace: str
    name: str
    ours: bool                # generated from one of our templates
    profile: str              # the profile its pod asked for ("" when not ours)
    devices: tuple[Device, ...]
    subrequest: str           # the firstAvailable entry that won ("" when unallocated)
    pod: str = ""             # the pod it is reserved for
    pod_uid: str = ""
    created: float = 0.0      # creationTimestamp, epoch seconds (0: unknown); never before its pod's

    @property
    def allocated(self) -> bool:
        return bool(self.devices)


def claim_facts(claim: Mapping[str, Any]) -> ClaimFacts:
    meta, status = claim.get("metadata") or {}, claim.get("status") or {}
    ours = is_ours(claim)
    results = ((status.get("allocation") or {}).get("devices") or {}).get("results") or ()
    devices = tuple((str(r.get("driver", "")), str(r.get("pool", "")), str(r.get("device", ""))) for r in results)
    request = next((str(r.get("request", "")) for r in results), "")
    prefix = f"{REQUEST_NAME}/"
    pods = [r for r in status.get("reservedFor") or () if r.get("resource") == "pods"]
    return ClaimFacts(
        namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")), ours=ours,
        profile=str((meta.get("annotations") or {}).get(ANN_DRA_PROFILE, "")) if ours else "",
        devices=devices, subrequest=request[len(prefix):] if request.startswith(prefix) else "",
        pod=str(pods[0].get("name", "")) if pods else "", pod_uid=str(pods[0].get("uid", "")) if pods else "",
        created=parse_time(meta.get("creationTimestamp")))


@dataclass(frozen=True)
class DraRestore:
    """Restart ``pod`` (holding ``held`` for a claim that asked ``profile``) so it gets ``profile`` back."""

    namespace: str
    pod: str
    pod_uid: str
    claim: str
    profile: str
    held: str
    waste: tuple[int, int, int]


def _held_profile(facts: ClaimFacts, profiles: Mapping[Device, str]) -> str:
    return next((profiles[d] for d in facts.devices if d in profiles), "")


def restores(devices: Iterable[MigDevice], claims: Iterable[ClaimFacts], shapes: Mapping[str, ProfileShape],
             in_flight: Mapping[str, int] | None = None, held_back: Collection[str] = ()) -> list[DraRestore]:
    """The upgraded pods to restart now, biggest waster first within each profile, at most one per free
    device of its profile that nobody waits for. ``shapes``: offered profile name -> shape (dra.offered_shapes).
    ``held_back``: pod uids not to restart now (the loop guard, a refusal's backoff, an opt-out, a restart
    under way); the device goes to the next candidate."""
    claims = list(claims)
    by_device = {(DRIVER, d.pool, d.name): d.profile for d in devices}
    taken = {d for c in claims for d in c.devices}
    free = Counter(profile for device, profile in by_device.items() if device not in taken)
    waiting = Counter(c.profile for c in claims if c.ours and not c.allocated)
    waiting.update(in_flight or {})
    chosen: list[DraRestore] = []
    restarted: set[str] = set()
    for profile in sorted(free):
        room = free[profile] - waiting[profile]
        if room <= 0:
            continue
        candidates = []
        for c in upgraded(claims):
            if c.profile != profile or not c.pod_uid or c.pod_uid in held_back:
                continue
            held = _held_profile(c, by_device)
            try:
                excess = waste(parse_profile_name(profile), shapes.get(held) or parse_profile_name(held))
            except ProfileError:
                continue
            candidates.append(DraRestore(c.namespace, c.pod, c.pod_uid, c.name, profile, held, excess))
        candidates.sort(key=lambda r: (tuple(-x for x in r.waste), r.namespace, r.pod))
        for r in candidates:
            if room <= 0:
                break
            if r.pod_uid in restarted:
                continue  # a pod with two upgraded claims is restarted once
            restarted.add(r.pod_uid)
            chosen.append(r)
            room -= 1
    return chosen



def upgraded(claims: Iterable[ClaimFacts]) -> list[ClaimFacts]:
    """Our allocated claims that got a later firstAvailable entry than their own profile."""
    return [c for c in claims if c.ours and c.allocated and c.profile and on_substitute(c)]


@dataclass(frozen=True)
class DraRestart:
    """A restore of ours: pod ``pod_uid`` of owner ``owner`` restarted at ``at`` (epoch seconds) so that its
    replacement gets ``profile``; ``lineage``: restarts of its lineage by us so far, this one included."""

    owner: str
    profile: str
    pod_uid: str
    at: float
    lineage: int


def match_replacements(done: Iterable[DraRestart], pods: Iterable[tuple[PodInfo, str]]) -> dict[str, DraRestart]:
    """Pod uid -> the restore it is the replacement of, for ``pods`` (a pod and the profile its upgraded
    claim asked for). A replacement is a pod of the restarted pod's owner, asking the same profile, created
    after the restart (its creationTimestamp has whole seconds and the API server's clock: CLOCK_SKEW of
    slack). One pod per restore and one restore per pod, oldest restores and pods first, as
    ``rules.match_restores``; a sibling created in that slack can be taken for the replacement, which only
    holds the guard earlier for that owner."""
    waiting = sorted(done, key=lambda r: (r.at, r.pod_uid))
    out: dict[str, DraRestart] = {}
    for pod, profile in sorted(pods, key=lambda item: (item[0].created, item[0].uid)):
        if pod.owner is None:
            continue
        for i, restart in enumerate(waiting):
            if (restart.owner == pod.owner.uid and restart.profile == profile and restart.pod_uid != pod.uid
                    and pod.created >= restart.at - CLOCK_SKEW):
                out[pod.uid] = waiting.pop(i)
                break
    return out


def followed(claims: Iterable[ClaimFacts], done: Collection[DraRestart]) -> list[ClaimFacts]:
    """Our allocated claims that may be a replacement's, for the restores ``done``: a profile restored,
    and the claim not created before the earliest of those restores (a pod's claim is created after the
    pod; CLOCK_SKEW of slack as in ``match_replacements``; an unknown time is kept). Both those on a
    substitute (the lineage goes on) and those on their own profile (it ended: the restore worked)."""
    if not done:
        return []
    profiles = {r.profile for r in done}
    floor = min(r.at for r in done) - CLOCK_SKEW
    return [c for c in claims if c.ours and c.allocated and c.pod_uid and c.profile in profiles
            and not 0 < c.created < floor]


def on_substitute(claim: ClaimFacts) -> bool:
    """The claim got a later firstAvailable entry than its own profile."""
    return claim.subrequest != subrequest_name(claim.profile)
