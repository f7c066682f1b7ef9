"""Every change mig-extender makes to the cluster: Bindings, restarts, bare-pod recreation, Events.

One owner for side effects (as the descheduler's evictions package): each mutating call can run dry
(``dry_run=True`` logs what it would do), carries a uid precondition where it restarts a pod, and none is
made on the extender's filter path. Must not: decide which pod to act on (the planner does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..core.podspec import selector_matches
from ..core.rules import ANN_RECREATE
from .client import JSON, MERGE_PATCH, JsonPoster, raw

log = logging.getLogger(__name__)


class KubeBinder:
    """Creates pods' Bindings (the extender's bind verb)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._poster = JsonPoster(api)

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self._poster.post(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}/binding", body)



class KubeActions:
    """Every change the reconciler makes to the cluster. ``dry_run`` logs instead of acting."""

    def __init__(self, api: client.ApiClient, component: str = "mig-extender-reconciler",
                 dry_run: bool = False) -> None:
        self._core = client.CoreV1Api(api)
        self._policy = client.PolicyV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._events = client.EventsV1Api(api)
        self.component = component
        self.dry_run = dry_run
        self.host = os.environ.get("HOSTNAME", "")

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return raw(self._core.read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pdb_covers(self, pod: JSON) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        pdbs = raw(self._policy.list_namespaced_pod_disruption_budget, pod["metadata"]["namespace"])
        return any(selector_matches((p.get("spec") or {}).get("selector"), labels) for p in pdbs.get("items") or [])

    def evict_or_delete(self, pod: JSON) -> str:
        """Restart a controller-owned pod: the Eviction API when a PDB covers it, else a delete. The uid
        precondition makes a repeated call (another leader, a retry) a no-op instead of a second restart."""
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        use_eviction = self.pdb_covers(pod)
        if self.dry_run:
            log.info("dry-run: would %s pod %s/%s", "evict" if use_eviction else "delete", ns, name)
            return "dry-run"
        options = {"preconditions": {"uid": uid}}
        try:
            if use_eviction:
                body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns},
                        "deleteOptions": options}
                raw(self._core.create_namespaced_pod_eviction, name, ns, body)
                return "evicted"
            raw(self._core.delete_namespaced_pod, name, ns, body=options)
            return "deleted"
        except ApiException as exc:
            if exc.status in (404, 409):
                return "gone"
            raise

    def stash_and_delete_bare_pod(self, rule_ns: str, rule_name: str, pod: JSON, replacement: JSON) -> str:
        """Write the replacement manifest onto the rule first, then delete the pod: if we die in between,
        whoever leads next finds the manifest and creates the pod (``finish_recreate``)."""
        meta = pod["metadata"]
        if self.dry_run:
            log.info("dry-run: would recreate bare pod %s/%s", meta["namespace"], meta["name"])
            return "dry-run"
        patch = {"metadata": {"annotations": {ANN_RECREATE: json.dumps(replacement, separators=(",", ":"))}}}
        raw(self._custom.patch_namespaced_custom_object,
            "mig-extender.io", "v1alpha1", rule_ns, "migsubstitutions", rule_name, patch,
            _content_type=MERGE_PATCH)
        try:
            raw(self._core.delete_namespaced_pod, meta["name"], meta["namespace"],
                body={"preconditions": {"uid": meta["uid"]}})
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
        return "deleted"

    def finish_recreate(self, rule_ns: str, rule_name: str, manifest_json: str) -> str:
        """Create the stashed bare pod once its predecessor is gone, then clear the stash. Idempotent."""
        manifest = json.loads(manifest_json)
        ns, name = manifest["metadata"].get("namespace", rule_ns), manifest["metadata"]["name"]
        current = self.get_pod(ns, name)
        if current is not None and (current.get("metadata") or {}).get("deletionTimestamp"):
            return "waiting"  # the old pod is still terminating
        outcome = "exists"
        if current is None:
            if self.dry_run:
                return "dry-run"
            try:
                raw(self._core.create_namespaced_pod, ns, manifest)
                outcome = "created"
            except ApiException as exc:
                if exc.status != 409:
                    raise
        patch = {"metadata": {"annotations": {ANN_RECREATE: None}}}
        raw(self._custom.patch_namespaced_custom_object,
            "mig-extender.io", "v1alpha1", rule_ns, "migsubstitutions", rule_name, patch,
            _content_type=MERGE_PATCH)
        return outcome

    def event(self, namespace: str, pod_name: str, pod_uid: str, reason: str, message: str,
              warning: bool = False, action: str = "Reconcile") -> None:
        """An events.k8s.io/v1 Event on the pod (``kubectl describe pod`` shows it). Never raises."""
        if self.dry_run:
            log.info("dry-run: event %s on %s/%s: %s", reason, namespace, pod_name, message)
            return
        now = datetime.now(timezone.utc)
        instance = self.host or self.component
        body = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            # named like client-go's recorder; a generateName ending in "." is invalid since 1.36
            "metadata": {"name": f"{pod_name}.{time.time_ns():x}", "namespace": namespace},
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": f"mig-extender.io/{self.component}", "reportingInstance": instance,
            "action": action, "reason": reason, "note": message[:1024], "type": "Warning" if warning else "Normal",
            "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": pod_name, "uid": pod_uid},
        }
        try:
            raw(self._events.create_namespaced_event, namespace, body)
        except Exception as exc:
            log.warning("event %s on %s/%s not recorded: %s", reason, namespace, pod_name, exc)


class NodeEvents:
    """Warning Events on Nodes (``kubectl describe node`` shows them), each written once per node, reason
    and message: the Event's name is derived from them and the node's uid, so the other extender replica,
    or this one after a restart, gets 409 instead of writing a duplicate. Node Events live in namespace
    ``default``, as the kubelet's do."""

    NAMESPACE = "default"

    def __init__(self, api: client.ApiClient, component: str = "mig-extender") -> None:
        self._core = client.CoreV1Api(api)
        self._events = client.EventsV1Api(api)
        self.component = component
        self.host = os.environ.get("HOSTNAME", "")

    def warn(self, node: str, reason: str, message: str) -> str:
        """'created', 'exists' (written before) or 'gone' (no such node); raises ApiException otherwise."""
        try:
            uid = (raw(self._core.read_node, node, _request_timeout=10).get("metadata") or {}).get("uid", "")
        except ApiException as exc:
            if exc.status == 404:
                return "gone"
            raise
        digest = hashlib.sha256(f"{uid}/{reason}/{message}".encode()).hexdigest()[:12]
        now = datetime.now(timezone.utc)
        body = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": f"{node[:200]}.{reason.lower()}.{digest}", "namespace": self.NAMESPACE},
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": f"mig-extender.io/{self.component}",
            "reportingInstance": self.host or self.component,
            "action": "Inventory", "reason": reason, "note": message[:1024], "type": "Warning",
            "regarding": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid},
        }
        try:
            raw(self._events.create_namespaced_event, self.NAMESPACE, body, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 409:
                return "exists"
            raise
        return "created"
