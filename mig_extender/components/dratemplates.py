"""The reconciler's DRA step: keep one ResourceClaimTemplate per MIG profile in every DRA namespace,
then restore upgraded DRA pods (components/drarestore.py) from the same read of the ResourceSlices.

Sync state (DRA namespaces, NVIDIA's ResourceSlices, our templates), compute what should exist
(core/dra.py), then act through cluster/draobjects.py; a pass counts what it did. Templates must exist
before a pod asking for their profile is created (the webhook rewrites pods at CREATE and a pod's claims
never change afterwards), so every profile offered anywhere gets one, plus any profile a pod of the
namespace still asks for as an extended resource. The step runs at most every ``interval`` seconds and
lists ResourceSlices only when some namespace is in DRA mode, so clusters without DRA pay one namespace
list per interval. Must not: talk to the API itself, or delete a template (a ReplicaSet's next pod may
still need it).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..core.catalog import ProfileError, resource_profile_name
from ..core.dra import (
    TemplateChange,
    desired_templates,
    is_ours,
    offered_shapes,
    slice_devices,
    template_changes,
)
from ..core.resources import PodInfo
from .drarestore import DraRestorer

log = logging.getLogger(__name__)


class DraObjects(Protocol):
    def dra_namespaces(self) -> list[str]: ...
    def slices(self) -> list[dict[str, Any]]: ...
    def templates(self) -> dict[tuple[str, str], dict[str, Any]]: ...
    def apply(self, change: TemplateChange) -> str: ...


def demanded_profiles(pods: Iterable[PodInfo], namespaces: Iterable[str]) -> dict[str, set[str]]:
    """namespace -> MIG profiles its not-yet-rewritten pods ask for as extended resources."""
    wanted = set(namespaces)
    found: dict[str, set[str]] = {}
    for pod in pods:
        if pod.namespace not in wanted:
            continue
        for resource in pod.demand:
            try:
                found.setdefault(pod.namespace, set()).add(resource_profile_name(resource))
            except ProfileError:
                continue
    return found


class DraTemplateSync:
    """``sync(counts, pods)`` once per reconcile pass; acts at most every ``interval`` seconds."""

    def __init__(self, objects: DraObjects, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, restorer: DraRestorer | None = None) -> None:
        self.objects = objects
        self.restorer = restorer  # restarts upgraded DRA pods once their own profile frees (None: never)
        self.interval = interval  # seconds: a new GPU model or DRA namespace is served within this
        self.clock = clock
        self._last = float("-inf")
        self._foreign_told: set[tuple[str, str]] = set()  # warned once each, not every interval

    def sync(self, counts: Counter[str], pods: Iterable[PodInfo]) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            return
        self._last = now
        namespaces = self.objects.dra_namespaces()
        if not namespaces:
            return
        devices = [d for s in self.objects.slices() for d in slice_devices(s)]
        offered = offered_shapes(devices)
        pods = list(pods)
        desired = desired_templates(namespaces, demanded_profiles(pods, namespaces), offered)
        existing = self.objects.templates()
        for change in template_changes(desired, existing):
            self._apply(change, counts)
        if self.restorer is not None:
            # only our templates seen in the API count: the webhook rewrites with nothing else, and one created
            # this pass may not be visible to it yet
            ours = {key for key, template in existing.items() if is_ours(template)}
            self.restorer.recreate_missed(counts, pods, namespaces, ours)
            self.restorer.run(counts, devices, offered, pods)

    def _apply(self, change: TemplateChange, counts: Counter[str]) -> None:
        outcome = self.objects.apply(change)
        counts[f"dra_template_{outcome}"] += 1
        template = change.template
        if outcome == "foreign" and (template.namespace, template.name) not in self._foreign_told:
            self._foreign_told.add((template.namespace, template.name))
            log.warning("ResourceClaimTemplate %s/%s exists and is not ours; pods asking %s use it as it is",
                        template.namespace, template.name, template.profile)
        elif outcome in ("created", "replaced"):
            log.info("ResourceClaimTemplate %s/%s %s: firstAvailable %s%s", template.namespace, template.name,
                     outcome, ", ".join(template.choices), f" (was {', '.join(change.was)})" if change.was else "")
