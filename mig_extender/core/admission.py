"""The admission decision: on pod CREATE, rewrite a pod that a recorded rule is waiting for. Pure.

``mutate()`` is pure (AdmissionReview in, response + chosen rule out) and has no side effects: it only
rewrites the pod (requests and limits of the original MIG resource -> the substitute, in every container
and init container) and stamps the rule's name and the original demand in annotations. The one write,
claiming the chosen rule in the API so that no other webhook replica hands it to a second pod, is
components/webhook.py's (never on a dryRun request: ``sideEffects: NoneOnDryRun``); rules claimed there
come in already claimed, and names a replica just lost are passed in (``skip``). The extender and the
reconciler mark the rule Applied when they see the pod. Pods without MIG requests pass untouched; the
opt-out annotation disables substitution only (an opted-in namespace's MIG pods still get
``schedulerName``). Every failure answers ``allowed: true`` without a patch: the webhook must never block
pod creation.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .resources import (
    ANN_ORIGINAL,
    ANN_RULE,
    ANN_SUBSTITUTED,
    LABEL_SCHEDULER_OPT_IN,
    DemandError,
    PodInfo,
    pod_info,
)
from .rules import Rule, rule_for_new_pod
from .schedconfig import SCHEDULER_NAME


class ReviewError(ValueError):
    """Not an AdmissionReview we can answer (no request uid): a 400."""


@dataclass(frozen=True)
class Mutation:
    uid: str
    patch: list[dict[str, Any]] = field(default_factory=list)
    rule: Rule | None = None
    result: str = "untouched"   # metric label: untouched, substituted, scheduler, skipped, error, dra, dra_skipped
    message: str = ""
    warnings: tuple[str, ...] = ()  # shown to the client (kubectl prints them), the pod admitted as patched

    def response(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"uid": self.uid, "allowed": True}
        if self.patch:
            answer["patchType"] = "JSONPatch"
            answer["patch"] = base64.b64encode(json.dumps(self.patch).encode()).decode()
        if self.result == "error" and self.message:
            answer["warnings"] = [self.message]  # shown to the client; the pod is admitted unchanged
        elif self.warnings:
            answer["warnings"] = list(self.warnings)
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer}


def escape(token: str) -> str:
    """RFC 6901 JSON-pointer token: ``~`` -> ``~0``, ``/`` -> ``~1`` (so nvidia.com/mig-1g.5gb is safe)."""
    return token.replace("~", "~0").replace("/", "~1")


def review_uid(review: Any) -> str:
    if not isinstance(review, Mapping):
        raise ReviewError("body must be a JSON object (AdmissionReview)")
    req = review.get("request")
    if not isinstance(req, Mapping) or not isinstance(req.get("uid"), str) or not req["uid"]:
        raise ReviewError("AdmissionReview.request.uid is missing")
    return req["uid"]


def _rewrite(spec: Mapping[str, Any], rule: Rule) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    old, new = rule.original.resource, rule.substitute.resource
    for section in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(section) or []):
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                values = resources.get(kind) or {}
                if old in values:
                    base = f"/spec/{section}/{i}/resources/{kind}/"
                    ops.append({"op": "remove", "path": base + escape(old)})
                    ops.append({"op": "add", "path": base + escape(new), "value": values[old]})
    return ops


def _annotate(meta: Mapping[str, Any], values: Mapping[str, str]) -> list[dict[str, Any]]:
    if not isinstance(meta.get("annotations"), Mapping):
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(values)}]
    return [{"op": "add", "path": "/metadata/annotations/" + escape(k), "value": v} for k, v in values.items()]


def _created_pod(review: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, PodInfo | None, str]:
    """(object, pod, error) of a Pod CREATE review; (None, None, "") for any other request."""
    req = review["request"]
    if req.get("operation") != "CREATE" or (req.get("kind") or {}).get("kind") != "Pod":
        return None, None, ""
    obj = req.get("object")
    if not isinstance(obj, Mapping):
        return None, None, "request.object is not a Pod"
    try:
        pod = pod_info(obj)
    except DemandError as exc:
        return None, None, str(exc)
    if not obj.get("metadata", {}).get("namespace") and req.get("namespace"):
        pod = replace(pod, namespace=str(req["namespace"]))
    return obj, pod, ""


def substitution_candidate(review: Mapping[str, Any]) -> PodInfo | None:
    """The pod of a CREATE review that a rule could be handed to (it asks for MIG and has not opted out);
    None for every other request. Raises ReviewError when there is no uid to answer."""
    review_uid(review)
    _, pod, _ = _created_pod(review)
    return pod if pod is not None and pod.wants_mig and pod.may_substitute else None


def mutate(review: Mapping[str, Any], rules: Iterable[Rule], skip: Collection[str] = (),
           namespace_labels: Mapping[str, str] | None = None, now: float | None = None) -> Mutation:
    """Decide the patch for one AdmissionReview. Raises ReviewError only when there is no uid to answer."""
    uid = review_uid(review)
    obj, pod, error = _created_pod(review)
    if error:
        return Mutation(uid, result="error", message=error)
    if obj is None or pod is None or not pod.wants_mig:
        return Mutation(uid)
    patch: list[dict[str, Any]] = []
    result = "untouched"
    # every MIG pod of an opted-in namespace goes to our scheduler, opted out of substitution or not: two
    # schedulers placing pods on the same slices would count them differently
    if (namespace_labels or {}).get(LABEL_SCHEDULER_OPT_IN) == "true" and pod.scheduler == "default-scheduler":
        patch.append({"op": "add", "path": "/spec/schedulerName", "value": SCHEDULER_NAME})
        result = "scheduler"
    if not pod.may_substitute:
        return Mutation(uid, patch, result=result)
    rule = rule_for_new_pod(pod, rules, time.time() if now is None else now, skip)
    if rule is None:
        return Mutation(uid, patch, result=result)
    ops = _rewrite(obj["spec"], rule)
    if not ops:
        return Mutation(uid, patch, result=result)
    patch += ops + _annotate(obj["metadata"], {ANN_ORIGINAL: str(rule.original), ANN_SUBSTITUTED: str(rule.substitute),
                                               ANN_RULE: rule.name})
    return Mutation(uid, patch, rule, "substituted", f"{rule.original} -> {rule.substitute} (rule {rule.name})")
