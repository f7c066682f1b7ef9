"""The reconciler's DRA restore: restart pods running on a substitute once their own profile frees.

Reads every ResourceClaim (a device is free only if no claim of anyone holds it), asks core/drarestore.py
which pods to restart, and restarts each through the Eviction API with a uid precondition, as the device
plugin route's restore does (PDBs honoured, a repeated call a no-op). Only pods a controller recreates
are restarted, and not Job pods (an eviction may count as a Job failure; the device plugin route weighs
that, this first DRA slice does not yet). A restore stays "in flight" for ``cooldown`` seconds, counted
against the free device of its profile, so the next pass does not restart a second pod for the device
the first one's replacement is about to take. Must not: talk to the API but through its objects and
actions, or restart a pod that opted out (``mig-extender.io/restore: "false"``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

from cachetools import TTLCache

from ..core.catalog import ProfileShape
from ..core.dra import MigDevice
from ..core.drarestore import DraRestore, claim_facts, restores
from ..core.podspec import Restart, RestartOutcome, is_job_owner, restart_blocker
from ..core.resources import DemandError, pod_info

log = logging.getLogger(__name__)


class ClaimSource(Protocol):
    def claims(self) -> list[dict[str, Any]]: ...


class RestartActions(Protocol):
    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def evict(self, pod: Mapping[str, Any]) -> RestartOutcome: ...
    def event(self, namespace: str, pod_name: str, pod_uid: str, reason: str, message: str,
              warning: bool = False, action: str = "Reconcile") -> None: ...


class DraRestorer:
    """``run(counts, devices, shapes)`` once per DRA step."""

    def __init__(self, claims: ClaimSource, actions: RestartActions, restartable_owners: Collection[str] = (),
                 cooldown: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.claims = claims
        self.actions = actions
        self.restartable_owners = restartable_owners
        # pod uid -> the profile its restore frees for it: seconds until its replacement surely has a claim
        self._in_flight: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=cooldown, timer=clock)

    def run(self, counts: Counter[str], devices: Iterable[MigDevice], shapes: Mapping[str, ProfileShape]) -> None:
        facts = [claim_facts(c) for c in self.claims.claims()]
        in_flight = Counter(self._in_flight.values())
        for restore in restores(devices, facts, shapes, in_flight):
            if restore.pod_uid in self._in_flight:
                continue  # its eviction was accepted; the old claim lingers until the pod is gone
            counts[f"dra_restore_{self._restore(restore)}"] += 1

    def _restore(self, restore: DraRestore) -> str:
        obj = self.actions.get_pod(restore.namespace, restore.pod)
        if obj is None or obj["metadata"].get("uid") != restore.pod_uid:
            return str(Restart.GONE)
        try:
            pod = pod_info(obj)
        except DemandError:
            return "skipped"
        if pod.terminating or pod.phase != "Running":
            return "skipped"
        if not pod.may_restore:
            return "opted_out"
        if pod.owner is None or is_job_owner(pod.owner) or restart_blocker(pod.owner, self.restartable_owners):
            return str(Restart.BLOCKED)
        outcome = self.actions.evict(obj)
        if outcome.kind == Restart.EVICTED:
            self._in_flight[restore.pod_uid] = restore.profile
            message = (f"restarted so that its replacement gets {restore.profile} (it asked for it and ran on "
                       f"{restore.held}); a {restore.profile} device is free")
            log.info("DRA restore %s/%s: %s", restore.namespace, restore.pod, message)
            self.actions.event(restore.namespace, restore.pod, restore.pod_uid, "MigRestoring", message,
                               action="Restore")
        elif outcome.kind == Restart.REFUSED:
            log.info("DRA restore %s/%s refused: %s", restore.namespace, restore.pod, outcome.detail)
        return str(outcome.kind)
