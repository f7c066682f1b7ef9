"""Pure transforms of pod manifests for the reconciler's restarts of bare pods. No API calls.

A bare pod has no controller to recreate it, so the reconciler deletes it and creates it again under
the same name. ``replacement_pod`` strips what the API server owns (uid, resourceVersion, status, the
binding) and, for a restore, puts the original MIG demand back and drops our upgrade annotations.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .resources import ANN_ORIGINAL, ANN_RESTORED_AT, ANN_RULE, ANN_SUBSTITUTED
from .rules import Rule

_SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                "managedFields", "generation", "selfLink")


def replacement_pod(pod: Mapping[str, Any], restore: Rule | None = None, restored_at: str = "") -> dict[str, Any]:
    """A manifest to create in place of ``pod``; with ``restore``, back on the rule's original type."""
    out = copy.deepcopy(dict(pod))
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for key in _SERVER_META:
        meta.pop(key, None)
    spec = out.setdefault("spec", {})
    spec.pop("nodeName", None)
    if restore is not None:
        new, old = restore.original.resource, restore.substitute.resource
        for section in ("initContainers", "containers"):
            for container in spec.get(section) or []:
                for kind in ("requests", "limits"):
                    values = (container.get("resources") or {}).get(kind) or {}
                    if old in values:
                        values[new] = values.pop(old)
        annotations = meta.get("annotations") or {}
        for key in (ANN_ORIGINAL, ANN_SUBSTITUTED, ANN_RULE):
            annotations.pop(key, None)
        if restored_at:
            annotations[ANN_RESTORED_AT] = restored_at
        meta["annotations"] = annotations
    return out


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector against ``labels`` (an empty selector matches everything, as for PDBs)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and (not present or labels[key] not in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True
