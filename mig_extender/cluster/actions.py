"""Every change mig-extender makes to the cluster: Bindings, restarts, bare-pod recreation, Events.

One owner for side effects (as the descheduler's evictions package): restarts always go through the
Eviction API with a uid precondition, a 429 is a typed outcome (``Restart.REFUSED``), and none is made on
the extender's filter path. A dry run is a sandboxed API client (cluster/dryrun.py), not a flag here.
Must not: decide which pod to act on (the planner does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import Any
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..core.podspec import Recreate, RecreateReason, RecreateStep, Restart, RestartOutcome, dry_run_copy, recreate_step
from ..core.preemption import DISRUPTION_MESSAGE, DISRUPTION_REASON, Deletion
from ..core.rules import ANN_RECREATE, ANN_RECREATE_DELETED, ANN_RECREATE_OF, Rule
from .client import JSON, MERGE_PATCH, JsonPoster, raw

# our pod condition: a pending pod told to retry scheduling once a reservation that blocked it is gone
REQUEUE_CONDITION = "mig-extender.io/Requeued"

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"  # merges status.conditions by type

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
    """Every change the reconciler makes to the cluster. A dry run swaps the API client for a sandboxed one
    (cluster/dryrun.py) that logs every write instead of sending it: this class does not branch on it."""

    def __init__(self, api: client.ApiClient, component: str = "mig-extender-reconciler") -> None:
        self._core = client.CoreV1Api(api)
        self._batch = client.BatchV1Api(api)
        self._policy = client.PolicyV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._events = client.EventsV1Api(api)
        self.component = component
        self.host = os.environ.get("HOSTNAME", "")
        # (rule ns, rule name, pod uid) -> did our eviction remove that pod: kept until the rule holds it
        self._evictions: dict[tuple[str, str, str], bool] = {}

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self._core.read_namespaced_pod, name, namespace)

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Job owning a pod: its podFailurePolicy and failure counts decide whether a restart is free."""
        return self._read(self._batch.read_namespaced_job, name, namespace)

    @staticmethod
    def _read(call: Any, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return raw(call, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def evict(self, pod: JSON, exact: bool = False) -> RestartOutcome:
        """Restart a pod through the Eviction API: the API server enforces PodDisruptionBudgets (429 when one
        refuses) and sets the DisruptionTarget condition, which a Job's podFailurePolicy can ignore (a plain
        delete would count against its backoffLimit). The uid precondition makes a repeated call (another
        leader, a retry) a no-op instead of a second restart. ``exact`` adds the pod's resourceVersion: the
        eviction applies only to the pod as read (409 once anything changed it, a delete above all; the
        Eviction subresource honours it and then does not retry, eviction.go ``resourceVersionIsUnset``)."""
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        preconditions = {"uid": uid}
        if exact and meta.get("resourceVersion"):
            preconditions["resourceVersion"] = meta["resourceVersion"]
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns},
                "deleteOptions": {"preconditions": preconditions}}
        try:
            raw(self._core.create_namespaced_pod_eviction, name, ns, body)
        except ApiException as exc:
            if exc.status == 409 and _conflict_on(exc) == "poddisruptionbudgets":
                # eviction.go gives up after 20 conflicts on the PDB's status and answers the last one:
                # contention on the budget, the pod untouched (retried later, as a 429)
                return RestartOutcome(Restart.REFUSED, _api_message(exc))
            if exc.status in (404, 409):
                return RestartOutcome(Restart.GONE)
            if exc.status == 429:
                return RestartOutcome(Restart.REFUSED, _api_message(exc))
            raise
        return RestartOutcome(Restart.EVICTED)

    def preempt(self, namespace: str, name: str, uid: str) -> Deletion:
        """Delete a preemption victim as kube-scheduler does (``Executor.PreemptPod``, framework/preemption):
        first the DisruptionTarget condition (reason PreemptionByScheduler), so a Job whose
        podFailurePolicy ignores DisruptionTarget does not count the pod as failed, then a DELETE with the
        pod's own grace period. There is no Eviction: kube-scheduler honours PDBs only through its choice of
        victims, and so do we. The uid precondition makes a repeated call (a new leader) harmless."""
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": "DisruptionTarget", "status": "True", "reason": DISRUPTION_REASON,
                     "message": DISRUPTION_MESSAGE, "lastTransitionTime": now}
        try:
            # metadata.uid in a patch is a precondition (409 on a namesake): the new pod is never touched
            raw(self._core.patch_namespaced_pod_status, name, namespace,
                {"metadata": {"uid": uid}, "status": {"conditions": [condition]}}, _content_type=STRATEGIC_MERGE_PATCH)
            raw(self._core.delete_namespaced_pod, name, namespace, body={"preconditions": {"uid": uid}})
        except ApiException as exc:
            if exc.status in (404, 409):
                return Deletion.GONE
            if exc.status == 429:
                return Deletion.THROTTLED
            raise
        return Deletion.DELETED

    def nominate(self, namespace: str, name: str, uid: str, node: str) -> bool:
        """Set the preemptor's status.nominatedNodeName, as kube-scheduler's PostFilter result does, so its
        in-tree filters count the pod on that node. False when the pod is gone or replaced (404, 409 on the
        uid), or already bound: with short grace periods the scheduler may bind it first, and the API
        refuses the field on a bound pod (422)."""
        return self._patch_pod_status(namespace, name, uid, {"nominatedNodeName": node}, MERGE_PATCH)

    def requeue(self, namespace: str, name: str, uid: str, message: str) -> bool:
        """Ask kube-scheduler to retry a pending pod it parked as unschedulable, after we freed what our
        ``/filter`` refused it for (a reservation released). The scheduler cannot see our rules, so no
        cluster event would wake it before podMaxInUnschedulablePodsDuration (5 min). Any update of the
        pod does: PriorityQueue.Update (pkg/scheduler/backend/queue/scheduling_queue.go) checks the
        update with isPodWorthRequeuing, which answers queueAfterBackoff for a pod no plugin rejected
        (our rejection is an extender's). We write our own pod condition (pods/status, a right the
        reconciler already has for DisruptionTarget), which also tells the user why. False when the pod is
        gone or replaced (404, 409 on the uid) or already bound (422)."""
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": REQUEUE_CONDITION, "status": "True", "reason": "ReservationReleased",
                     "message": message, "lastTransitionTime": now}
        return self._patch_pod_status(namespace, name, uid, {"conditions": [condition]}, STRATEGIC_MERGE_PATCH)

    def _patch_pod_status(self, namespace: str, name: str, uid: str, status: JSON, content_type: str) -> bool:
        """Patch the status of the pod ``uid`` (a precondition: never its namesake). False when it is gone
        (404), replaced (409 on the uid) or bound meanwhile (422 for fields a bound pod refuses)."""
        try:
            raw(self._core.patch_namespaced_pod_status, name, namespace,
                {"metadata": {"uid": uid}, "status": status}, _content_type=content_type)
        except ApiException as exc:
            if exc.status in (404, 409, 422):
                return False
            raise
        return True

    def list_pdbs(self) -> list[dict[str, Any]]:
        """Every PodDisruptionBudget (policy/v1): read once per reconciler pass that has a preemptor."""
        return list(raw(self._policy.list_pod_disruption_budget_for_all_namespaces).get("items") or [])

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        """The pods of one namespace (their labels decide which PDBs cover them)."""
        return list(raw(self._core.list_namespaced_pod, namespace).get("items") or [])

    def replacement_problem(self, manifest: JSON) -> str:
        """Why the API server would refuse to create ``manifest`` ('' when it would accept it): a server-side
        dry run (``dryRun=All``, nothing is stored) under a generated name, the old pod still holding the real
        one. Validation, admission webhooks and quota all run as for the real create."""
        ns = manifest["metadata"].get("namespace", "default")
        try:
            raw(self._core.create_namespaced_pod, ns, dry_run_copy(manifest), dry_run="All")
        except ApiException as exc:
            if 400 <= exc.status < 500 and exc.status != 429:
                return _api_message(exc)
            raise
        return ""

    def stash_and_evict_bare_pod(self, rule_ns: str, rule_name: str, pod: JSON, replacement: JSON) -> RestartOutcome:
        """A bare pod has nobody to recreate it: check the replacement would be accepted (else leave the pod
        alone), write it onto the rule with the uid it replaces, evict the pod, and record on the rule
        whether OUR eviction removed it. Only then does ``finish_recreate`` create it (soak defect D1): an
        eviction answered 404 (someone deleted the pod first) or 409 (a namesake holds the name) deleted
        nothing of ours, so the stash is dropped and the user's delete stays final. If we die after the
        eviction, whoever leads next reads the record and creates the pod, once."""
        problem = self.replacement_problem(replacement)
        if problem:
            return RestartOutcome(Restart.INVALID, problem)
        if pod["metadata"].get("deletionTimestamp"):
            return RestartOutcome(Restart.GONE, "being deleted by someone else: not restarted")
        uid = str(pod["metadata"]["uid"])
        self._set_stash(rule_ns, rule_name, json.dumps(replacement, separators=(",", ":")), uid)
        outcome = self._evict_as_read(pod)
        self._record_eviction(rule_ns, rule_name, uid, outcome.kind is Restart.EVICTED)
        if outcome.kind is Restart.GONE:
            return RestartOutcome(Restart.GONE, "deleted or replaced by someone else while being restarted: "
                                                "not recreated")
        return outcome

    def _evict_as_read(self, pod: JSON, tries: int = 3) -> RestartOutcome:
        """Evict a bare pod only if nobody has started deleting it (soak D11). A user's graceful delete
        leaves the pod terminating while its kubelet stops it, and the Eviction API deletes a terminating
        pod without asking (eviction.go ``canIgnorePDB``), so a uid precondition alone let our eviction
        'succeed' on the user's delete, and we recreated a pod the user had deleted. With the
        resourceVersion too, any change since our read answers 409; we read again and go on only while
        the pod is the same one and not being deleted (a status update from its kubelet is harmless).
        A 409 proves our eviction deleted nothing, so what cannot be settled after one (the re-read
        failed, or the pod changed before each try) is REFUSED, tried again later, never raised: raising
        left the stash without a record, and a new leader recreated the user's pod once it was gone."""
        for _ in range(tries):
            outcome = self.evict(pod, exact=True)
            if outcome.kind is not Restart.GONE:
                return outcome
            meta = pod["metadata"]
            try:
                fresh = self.get_pod(meta["namespace"], meta["name"])
            except Exception as exc:  # ApiException, or the connection (urllib3): the 409 stands either way
                return RestartOutcome(Restart.REFUSED, f"changed since read, and reading it again failed: {exc}")
            if fresh is None or fresh["metadata"].get("uid") != meta["uid"] or fresh["metadata"].get(
                    "deletionTimestamp"):
                return outcome
            pod = fresh
        return RestartOutcome(Restart.REFUSED, f"changed between our read and our eviction {tries} times in a row")

    def _record_eviction(self, rule_ns: str, rule_name: str, uid: str, ours: bool) -> None:
        """Write down whether our eviction removed pod ``uid`` (mark the stash) or not (drop it). A write that
        fails is remembered here, so this process still acts on what it knows (the stash alone would read
        "unproven"); the next ``finish_recreate`` writes it again."""
        self._evictions[(rule_ns, rule_name, uid)] = ours
        try:
            if ours:
                self._patch_rule_annotations(rule_ns, rule_name, {ANN_RECREATE_DELETED: uid})
            else:
                self._set_stash(rule_ns, rule_name, None)
        except ApiException as exc:
            log.warning("rule %s/%s: recording the eviction of %s failed (%s); kept in memory", rule_ns,
                        rule_name, uid, exc)
            return
        if not ours:
            self._evictions.pop((rule_ns, rule_name, uid), None)

    def _set_stash(self, rule_ns: str, rule_name: str, manifest_json: str | None, replaces: str = "") -> None:
        """Write (or with None clear) the stash and the uid of the pod it replaces; a new stash starts with
        no record of an eviction."""
        self._patch_rule_annotations(rule_ns, rule_name, {ANN_RECREATE: manifest_json,
                                                          ANN_RECREATE_OF: replaces or None,
                                                          ANN_RECREATE_DELETED: None})

    def _patch_rule_annotations(self, rule_ns: str, rule_name: str, annotations: dict[str, str | None]) -> None:
        patch = {"metadata": {"annotations": annotations}}
        raw(self._custom.patch_namespaced_custom_object,
            "mig-extender.io", "v1alpha1", rule_ns, "migsubstitutions", rule_name, patch,
            _content_type=MERGE_PATCH)

    def finish_recreate(self, rule: Rule) -> str:
        """Create the stashed bare pod once OUR eviction removed its predecessor (``recreate_step``), then
        clear the stash. Idempotent: a create the API refuses keeps the stash (raised: counted per rule,
        retried, never dropped); a stash it must not act on is dropped with a Warning Event saying why.
        Returns 'created', 'exists' (409 on create), 'waiting' or 'dropped'."""
        manifest = json.loads(rule.stash)
        ns, name = manifest["metadata"].get("namespace", rule.namespace), manifest["metadata"]["name"]
        key = (rule.namespace, rule.name, rule.stash_of)
        known = self._evictions.get(key) if rule.stash_of else None
        if known is False:
            step = RecreateStep(Recreate.DROP, RecreateReason.DELETED_BY_OTHERS)
        else:
            step = recreate_step(rule.stash_of, rule.stash_deleted or known is True, self.get_pod(ns, name))
        if step.action is Recreate.WAIT:
            return "waiting"
        outcome = "dropped"
        if step.action is Recreate.CREATE:
            outcome = self._create_once(ns, manifest)
        if step.reason is not RecreateReason.DELETED_BY_US and step.reason is not RecreateReason.NAME_TAKEN:
            log.warning("rule %s/%s: stashed pod %s/%s %s: %s", rule.namespace, rule.name, ns, name, outcome,
                        step.reason)
            self.event(ns, name, rule.stash_of, "MigRecreateSkipped" if outcome == "dropped" else "MigRecreated",
                       f"{'not created again' if outcome == 'dropped' else 'created again'}: {step.reason} "
                       f"(rule {rule.name})", warning=True)
        self._set_stash(rule.namespace, rule.name, None)
        self._evictions.pop(key, None)
        return outcome

    def _create_once(self, ns: str, manifest: JSON) -> str:
        try:
            raw(self._core.create_namespaced_pod, ns, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return "exists"
        return "created"

    def event(self, namespace: str, pod_name: str, pod_uid: str, reason: str, message: str,
              warning: bool = False, action: str = "Reconcile") -> None:
        """An events.k8s.io/v1 Event on the pod (``kubectl describe pod`` shows it). Never raises."""
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
        return self.write(node, reason, message, warning=True)

    def write(self, node: str, reason: str, message: str, warning: bool = False, action: str = "Inventory") -> str:
        """An Event on ``node``, Normal or Warning; returns as ``warn``."""
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
            "action": action, "reason": reason, "note": message[:1024], "type": "Warning" if warning else "Normal",
            "regarding": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid},
        }
        try:
            raw(self._events.create_namespaced_event, self.NAMESPACE, body, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 409:
                return "exists"
            raise
        return "created"


class NodeWrite(str, Enum):
    """How a write to a Node ended: the repartitioner retries CONFLICT and THROTTLED next pass."""

    DONE = "done"
    CONFLICT = "conflict"    # 409: the Node changed since it was read (resourceVersion precondition)
    THROTTLED = "throttled"  # 429
    GONE = "gone"            # 404


class NodeLabels:
    """Labels and annotations of Nodes (the repartitioner's writes: the MIG manager's
    ``nvidia.com/mig.config`` and our change record). One merge patch per call, so a label and the
    annotation that explains it are written together or not at all."""

    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)

    def read(self, node: str) -> dict[str, Any] | None:
        """The Node as the API server has it now (None when gone): fresher than any watch."""
        try:
            return raw(self._core.read_node, node, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        """The pods bound to ``node`` as the API server has them now (a field-selected list, not the
        watch): the repartitioner's last look before it asks the MIG manager to change the node."""
        found = raw(self._core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}",
                    _request_timeout=10)
        return list(found.get("items") or [])

    def patch(self, node: str, labels: Mapping[str, str | None] | None = None,
              annotations: Mapping[str, str | None] | None = None, resource_version: str = "") -> NodeWrite:
        """Set (or, for None, remove) these labels and annotations; with ``resource_version`` only if the
        Node has not changed since (a merge patch carrying metadata.resourceVersion is conditional)."""
        meta: dict[str, Any] = {}
        if labels:
            meta["labels"] = dict(labels)
        if annotations:
            meta["annotations"] = dict(annotations)
        if resource_version:
            meta["resourceVersion"] = resource_version
        try:
            raw(self._core.patch_node, node, {"metadata": meta}, _content_type=MERGE_PATCH, _request_timeout=10)
        except ApiException as exc:
            outcome = {409: NodeWrite.CONFLICT, 429: NodeWrite.THROTTLED, 404: NodeWrite.GONE}.get(exc.status)
            if outcome is None:
                raise
            return outcome
        return NodeWrite.DONE


def _status(exc: ApiException) -> dict[str, Any]:
    """The Status object an API error carries ({} when its body is not one)."""
    try:
        body = json.loads(exc.body or "{}")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _api_message(exc: ApiException) -> str:
    """The Status message of an API error (what a PDB refusal or a validation error says), else its reason."""
    return str(_status(exc).get("message") or exc.reason)


def _conflict_on(exc: ApiException) -> str:
    """The resource a 409 is about (Status details.kind: "pods" or "Pod" for a precondition on the pod,
    "poddisruptionbudgets" for the eviction's budget update); '' when the body says nothing."""
    return str((_status(exc).get("details") or {}).get("kind") or "")
