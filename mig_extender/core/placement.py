"""Where a pod may run apart from MIG: node selectors, required node affinity, taints, CPU and memory. Pure.

Why we need it although kube-scheduler checks all of this: the scheduler only checks the node it is about
to bind. Decisions we take on our own (where to reserve a restore's original slice, which node a preemptor's
victims are on) must pick a node the pod can actually land on, or the reservation strands and the pod loops.
The semantics are kube-scheduler's plugins, simplified where noted:

- ``NodeAffinity`` (pkg/scheduler/framework/plugins/nodeaffinity): ``spec.nodeSelector`` must match the node's
  labels, and one of the ``requiredDuringSchedulingIgnoredDuringExecution`` node selector terms must match
  (terms are ORed, expressions in a term ANDed; ``matchFields`` supports ``metadata.name`` only, as upstream).
- ``TaintToleration``: every ``NoSchedule``/``NoExecute`` taint must be tolerated
  (k8s.io/api/core/v1 ``Toleration.ToleratesTaint``); ``PreferNoSchedule`` never blocks.
- ``NodeUnschedulable``: a cordoned node takes only pods tolerating ``node.kubernetes.io/unschedulable``.
- ``NodeResourcesFit`` for cpu and memory only: requests against allocatable minus what bound pods request.

Must not: read anything but plain dicts and the values passed in, or know about HTTP or the API client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Does one toleration tolerate one taint? As ``Toleration.ToleratesTaint`` in k8s.io/api/core/v1."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True  # an empty key with Exists tolerates every taint
    if operator == "Equal":
        return bool(key) and (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def untolerated_taint(tolerations: Sequence[Mapping[str, Any]],
                      taints: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first NoSchedule/NoExecute taint no toleration covers, or None."""
    for taint in taints:
        if taint.get("effect") in _BLOCKING_EFFECTS and not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


def tolerates_unschedulable(tolerations: Sequence[Mapping[str, Any]]) -> bool:
    return any(tolerates(t, {"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}) for t in tolerations)


def _number(text: str) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def requirement_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """One NodeSelectorRequirement (In, NotIn, Exists, DoesNotExist, Gt, Lt) against ``labels``."""
    key, op, values = expr.get("key"), expr.get("operator"), list(expr.get("values") or [])
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(values) == 1:
        have, bound = _number(labels[key]), _number(values[0])
        if have is None or bound is None:
            return False
        return have > bound if op == "Gt" else have < bound
    return False  # unknown operator: the API server rejects it, so never seen; never match on it


def _term_matches(term: Mapping[str, Any], labels: Mapping[str, str], node_name: str) -> bool:
    exprs = list(term.get("matchExpressions") or [])
    fields = list(term.get("matchFields") or [])
    if not exprs and not fields:
        return False  # an empty term matches no node (nodeaffinity: "a null or empty term matches no objects")
    if not all(requirement_matches(e, labels) for e in exprs):
        return False
    return all(f.get("key") == "metadata.name" and requirement_matches(f, {"metadata.name": node_name})
               for f in fields)


@dataclass(frozen=True, slots=True)
class Placement:
    """A pod's placement constraints, read once from its spec (only what our own decisions check)."""

    node_selector: Mapping[str, str]
    required_terms: tuple[Mapping[str, Any], ...] | None  # None: no required node affinity at all
    tolerations: tuple[Mapping[str, Any], ...]
    cpu_milli: int
    memory_bytes: int


NO_CONSTRAINTS = Placement({}, None, (), 0, 0)


@dataclass(frozen=True)
class NodeFacts:
    """What placement checks read about a node: labels, taints, cordon, cpu/memory allocatable and in use."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...] = ()
    unschedulable: bool = False
    cpu_milli: int = 0          # allocatable; 0 means "not reported" and is not checked
    memory_bytes: int = 0
    used_cpu_milli: int = 0     # requested by pods bound to the node
    used_memory_bytes: int = 0


def placement_problem(pod: Placement, node: NodeFacts) -> str:
    """Why ``pod`` cannot run on ``node`` apart from MIG ('' when it can). Reasons read like the scheduler's."""
    if node.unschedulable and not tolerates_unschedulable(pod.tolerations):
        return "node is unschedulable (cordoned)"
    if any(node.labels.get(k) != v for k, v in pod.node_selector.items()):
        return "node does not match the pod's nodeSelector"
    if pod.required_terms is not None and not any(_term_matches(t, node.labels, node.name)
                                                  for t in pod.required_terms):
        return "node does not match the pod's required node affinity"
    taint = untolerated_taint(pod.tolerations, node.taints)
    if taint is not None:
        spelled = f"{taint.get('key')}={taint.get('value', '')}:{taint.get('effect')}"
        return f"node has taint {spelled} that the pod does not tolerate"
    if node.cpu_milli and pod.cpu_milli > node.cpu_milli - node.used_cpu_milli:
        return f"insufficient cpu ({pod.cpu_milli}m requested, {node.cpu_milli - node.used_cpu_milli}m free)"
    if node.memory_bytes and pod.memory_bytes > node.memory_bytes - node.used_memory_bytes:
        return "insufficient memory"
    return ""
