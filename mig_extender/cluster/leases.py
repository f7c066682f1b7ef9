"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it.

Only the Lease holder's reconciler acts; a partitioned leader stops acting before anyone else may take
over. Must not: act on anything but the Lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException

from .client import raw

log = logging.getLogger(__name__)


def _micro(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_micro(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class LeaseElector:
    """Holds a Lease while alive. ``is_leader()`` is true only while the last renewal is younger than
    ``renew_deadline``, so a partitioned leader stops acting before anyone else may take over
    (``lease_duration`` > ``renew_deadline``)."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self._clock = clock
        self._renewed = 0.0
        self.transitions = 0
        self._stop = threading.Event()

    def is_leader(self) -> bool:
        return self._renewed > 0 and self._clock() - self._renewed < self.renew_deadline

    def try_acquire_or_renew(self) -> bool:
        now = self._clock()
        try:
            lease = raw(self._coord.read_namespaced_lease, self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                             "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}}
            try:
                raw(self._coord.create_namespaced_lease, self.namespace, body)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
            self._renewed = now
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        expires = _parse_micro(spec.get("renewTime")) + float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder != self.identity and holder and now < expires:
            self._renewed = 0.0
            return False
        if holder != self.identity:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = _micro(now)
            self.transitions += 1
        spec.update(holderIdentity=self.identity, renewTime=_micro(now),
                    leaseDurationSeconds=int(self.lease_duration))
        lease["spec"] = spec
        try:  # the resourceVersion we read makes this a compare-and-swap
            raw(self._coord.replace_namespaced_lease, self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._renewed = now
        return True

    def run(self) -> LeaseElector:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.try_acquire_or_renew()
                except Exception as exc:
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                self._stop.wait(self.retry_period)

        threading.Thread(target=loop, name="leader-election", daemon=True).start()
        return self

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if release and self.is_leader():
            try:  # hand over at once rather than after lease_duration
                lease = raw(self._coord.read_namespaced_lease, self.name, self.namespace)
                lease["spec"]["holderIdentity"] = ""
                raw(self._coord.replace_namespaced_lease, self.name, self.namespace, lease)
            except Exception as exc:
                log.warning("releasing lease: %s", exc)
        self._renewed = 0.0
