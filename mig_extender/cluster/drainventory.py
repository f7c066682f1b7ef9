"""The DRA book: NVIDIA's ResourceSlices and every ResourceClaim, kept current by informers.

What the extender shows in ``/debug/inventory`` about MIG devices served by DRA (per node and profile:
devices, allocated, free; and the claims running on a substitute). The informers start only when the
API server serves ``resource.k8s.io/v1`` (one discovery call), so clusters without DRA see no failing
watch; they are not part of readiness (the device plugin route does not depend on them).
Must not: decide anything (core/dra.py, core/drarestore.py) or write to the API.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kubernetes import client

from ..core.dra import API_VERSION, DRIVER, MigDevice, slice_devices
from ..core.drausage import DraUsage, dra_usage
from .client import JSON, raw
from .informer import Informer

log = logging.getLogger(__name__)


class DraInventory:
    """Thread-safe copies of the slices (by name) and claims (by namespace/name) the informers deliver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slices: dict[str, JSON] = {}
        self._claims: dict[tuple[str, str], JSON] = {}

    def devices(self) -> list[MigDevice]:
        with self._lock:
            slices = list(self._slices.values())
        return [d for s in slices for d in slice_devices(s)]

    def claims(self) -> list[JSON]:
        with self._lock:
            return list(self._claims.values())

    def usage(self) -> DraUsage:
        """What /debug/inventory and the metrics show (core/drausage.py); O(devices + claims), so it is
        called per debug request or scrape, never on /filter."""
        return dra_usage(self.devices(), self.claims())

    def slice_event(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self._slices.pop(name, None)
            else:
                self._slices[name] = obj

    def replace_slices(self, items: list[JSON]) -> None:
        with self._lock:
            self._slices = {o["metadata"]["name"]: o for o in items}

    def claim_event(self, kind: str, obj: JSON) -> None:
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        with self._lock:
            if kind == "DELETED":
                self._claims.pop(key, None)
            else:
                self._claims[key] = obj

    def replace_claims(self, items: list[JSON]) -> None:
        with self._lock:
            self._claims = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in items}


def dra_served(api: client.ApiClient) -> bool:
    """Does the API server serve resource.k8s.io/v1? (False when discovery fails: DRA is then left out.)"""
    group, version = API_VERSION.split("/")
    try:
        found = raw(client.ApisApi(api).get_api_versions)
    except Exception as exc:
        log.info("API discovery failed (%s); DRA devices are not watched", exc)
        return False
    return any(g.get("name") == group and any(v.get("version") == version for v in g.get("versions") or ())
               for g in found.get("groups") or ())


def start_dra_informers(api: client.ApiClient, book: DraInventory) -> list[Informer]:
    """Watch NVIDIA's ResourceSlices and all ResourceClaims into ``book``; none when DRA is not served."""
    if not dra_served(api):
        return []
    resource: Any = client.ResourceV1Api(api)
    slices = Informer("resourceslices", resource.list_resource_slice, book.slice_event, book.replace_slices,
                      {"field_selector": f"spec.driver={DRIVER}"}).start()
    claims = Informer("resourceclaims", resource.list_resource_claim_for_all_namespaces, book.claim_event,
                      book.replace_claims).start()
    return [slices, claims]
