"""The DRA objects mig-extender reads and writes: ResourceSlices, DRA namespaces, ResourceClaimTemplates.

Thin: list, create, replace; every decision is core/dra.py's. Writes are safe under a second leader, a
lagging watch and retries: a create that finds the template already there (409) is "exists", and a
replace deletes with a resourceVersion precondition (a 409 or 404 means someone else changed it first;
the next pass reads again) before it creates. A dry run is the sandboxed API client (cluster/dryrun.py).
Must not: decide which templates should exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..core.dra import DRIVER, TEMPLATE_PREFIX, ClaimTemplate, TemplateChange
from ..core.resources import LABEL_DRA, LABEL_MANAGED_BY
from .client import JSON, raw

log = logging.getLogger(__name__)


class KubeDraObjects:
    """What the reconciler's template sync and the webhook need from the resource.k8s.io API."""

    def __init__(self, api: client.ApiClient, timeout: float = 10.0) -> None:
        self.core = client.CoreV1Api(api)
        self.resource = client.ResourceV1Api(api)
        self.timeout = timeout

    def dra_namespaces(self) -> list[str]:
        """Namespaces labelled for DRA mode."""
        found = raw(self.core.list_namespace, label_selector=f"{LABEL_DRA}=true", _request_timeout=self.timeout)
        return [ns["metadata"]["name"] for ns in found.get("items") or ()]

    def slices(self) -> list[JSON]:
        """Every ResourceSlice of NVIDIA's driver (the field selector keeps other drivers' out)."""
        found = raw(self.resource.list_resource_slice, field_selector=f"spec.driver={DRIVER}",
                    _request_timeout=self.timeout)
        return list(found.get("items") or ())

    def claims(self) -> list[JSON]:
        """Every ResourceClaim: a device is free only when no claim, ours or not, holds it."""
        found = raw(self.resource.list_resource_claim_for_all_namespaces, _request_timeout=self.timeout)
        return list(found.get("items") or ())

    def templates(self) -> dict[tuple[str, str], JSON]:
        """Every ResourceClaimTemplate named like ours, whoever wrote it (core/dra.py tells them apart)."""
        found = raw(self.resource.list_resource_claim_template_for_all_namespaces, _request_timeout=self.timeout)
        return {(t["metadata"]["namespace"], t["metadata"]["name"]): t for t in found.get("items") or ()
                if t["metadata"]["name"].startswith(TEMPLATE_PREFIX)}

    def template_names(self, namespace: str, timeout: float) -> set[str]:
        """Names of our templates in ``namespace`` (the webhook: a pod may reference only these)."""
        found = raw(self.resource.list_namespaced_resource_claim_template, namespace,
                    label_selector=f"{LABEL_MANAGED_BY}=mig-extender", _request_timeout=timeout)
        return {t["metadata"]["name"] for t in found.get("items") or ()}

    def apply(self, change: TemplateChange) -> str:
        """Make one change; returns its outcome: created, exists, replaced, conflict or foreign."""
        if change.action == "foreign":
            return "foreign"
        if change.action == "replace" and not self._delete(change.template, change.resource_version):
            return "conflict"
        outcome = self._create(change.template)
        return "replaced" if change.action == "replace" and outcome == "created" else outcome

    def _create(self, template: ClaimTemplate) -> str:
        try:
            raw(self.resource.create_namespaced_resource_claim_template, template.namespace, template.body(),
                _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 409:  # another leader (or a foreign writer) was first: the next pass compares
                return "exists"
            raise
        return "created"

    def _delete(self, template: ClaimTemplate, resource_version: str) -> bool:
        preconditions: Mapping[str, Any] = {"resourceVersion": resource_version} if resource_version else {}
        try:
            self.resource.delete_namespaced_resource_claim_template(
                template.name, template.namespace, body={"preconditions": preconditions},
                _request_timeout=self.timeout, _preload_content=False)
        except ApiException as exc:
            if exc.status in (404, 409):
                log.info("template %s/%s changed meanwhile (%s); read again next pass", template.namespace,
                         template.name, exc.status)
                return False
            raise
        return True
