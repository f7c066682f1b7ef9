"""Pure decisions and transforms for the reconciler's pod restarts. No API calls.

Who may be restarted: a pod comes back after a restart only if something recreates it. ReplicaSets,
ReplicationControllers, StatefulSets and Jobs do; a bare pod is recreated by the reconciler itself from a
stashed manifest; any other owner (RayCluster, PyTorchJob, JobSet, Argo Workflow, LeaderWorkerSet...) is
unknown: recreating it ourselves would duplicate it (its controller recreates it too) and deleting it may
fail a workflow step, so such pods are never restarted unless the operator names their kind in
``--restartable-owners`` (``restart_blocker``). Job pods have one more condition (``job_restart_problem``).

A bare pod has no controller to recreate it, so the reconciler deletes it and creates it again under
the same name. ``replacement_pod`` strips what the API server owns or refuses on create (uid,
resourceVersion, status, the binding, ephemeral containers) and, for a restore, puts the original MIG
demand back and drops our upgrade annotations.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .resources import ANN_ORIGINAL, ANN_RESTORED_AT, ANN_RULE, ANN_SUBSTITUTED, Owner
from .rules import Rule

# Set by the API server (metadata) or refused on create: ``spec.ephemeralContainers`` may only be added
# through the pods/ephemeralcontainers subresource of an existing pod ("Forbidden: cannot be set on create").
_SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                "managedFields", "generation", "selfLink")
_REFUSED_SPEC = ("nodeName", "ephemeralContainers")

# Owners known to recreate a deleted pod: (API group, kind). Anything else must be listed by the operator.
RECREATING_OWNERS = frozenset({("apps", "ReplicaSet"), ("apps", "StatefulSet"), ("batch", "Job"),
                               ("", "ReplicationController")})


class Restart(str, Enum):
    """What became of one restart request (the reconciler counts these and reacts to REFUSED/INVALID)."""

    EVICTED = "evicted"      # the Eviction API accepted it (DisruptionTarget set, pod deleted)
    GONE = "gone"            # the pod had already gone or been replaced (uid precondition): nothing to do
    REFUSED = "refused"      # 429: a PodDisruptionBudget (or API throttling) refused the eviction; or a
                             # bare pod's exact eviction could not be settled after a 409: tried again later
    INVALID = "invalid"      # a bare pod's replacement would be refused on create: the pod was left alone
    BLOCKED = "blocked"      # nothing recreates this pod (unknown owner): not restarted
    PLACED = "placed"        # an upgrade's pending pod that the API shows bound meanwhile: not restarted

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RestartOutcome:
    kind: Restart
    detail: str = ""         # the API's message for REFUSED/INVALID, for the Event


def owner_group(owner: Owner) -> str:
    """The API group of an ownerReference's apiVersion ('' for the core group, ``apps`` for apps/v1)."""
    group, sep, _ = owner.api_version.rpartition("/")
    return group if sep else ""


def owner_label(owner: Owner) -> str:
    group = owner_group(owner)
    return f"{group}/{owner.kind}" if group else owner.kind


@dataclass(frozen=True)
class UnknownOwner:
    """Nothing known recreates a deleted pod of this owner, so the pod must not be restarted."""

    owner: str   # group/Kind (Kind for the core group)
    name: str

    def __str__(self) -> str:
        return (f"its owner {self.owner} {self.name} is not known to recreate deleted pods "
                "(list the kind in --restartable-owners if it does)")


def restart_blocker(owner: Owner | None, restartable: Collection[str] = ()) -> UnknownOwner | None:
    """Why a pod with ``owner`` must not be restarted (None when it may): nothing known recreates it.

    ``restartable`` are the operator's extra owners, each ``group/Kind`` (``ray.io/RayCluster``) or a bare
    ``Kind`` (any group). Built-ins match on group and kind, so e.g. Volcano's ``batch.volcano.sh/Job`` is
    not taken for a Kubernetes Job.
    """
    if owner is None:
        return None  # a bare pod: the reconciler recreates it itself
    group = owner_group(owner)
    if (group, owner.kind) in RECREATING_OWNERS or owner.kind in restartable or f"{group}/{owner.kind}" in restartable:
        return None
    return UnknownOwner(owner_label(owner), owner.name)


def is_job_owner(owner: Owner | None) -> bool:
    return owner is not None and owner.kind == "Job" and owner_group(owner) == "batch"


def ignores_disruptions(policy: Mapping[str, Any] | None) -> bool:
    """Does a Job's podFailurePolicy ignore pods with the DisruptionTarget condition, so an eviction does not
    count against backoffLimit?

    The Job controller takes the first rule that matches a failed pod (pkg/controller/job
    pod_failure_policy.go, matchPodFailurePolicy). An ``onPodConditions: [{type: DisruptionTarget}]`` rule
    with ``action: Ignore`` does it, unless an ``onExitCodes`` rule comes first: the evicted container's
    exit code (e.g. 137) might match that one instead, so we then assume the restart counts.
    """
    for rule in (policy or {}).get("rules") or []:
        if not isinstance(rule, Mapping):
            continue
        if rule.get("onExitCodes"):
            return False
        for condition in rule.get("onPodConditions") or []:
            if (isinstance(condition, Mapping) and condition.get("type") == "DisruptionTarget"
                    and condition.get("status", "True") == "True"):
                return rule.get("action") == "Ignore"
    return False


@dataclass(frozen=True)
class JobRestartCounts:
    """Restarting a pod of this Job would count against its ``backoffLimit`` (no podFailurePolicy rule
    ignores DisruptionTarget) and is not worth it, or could fail the Job."""

    job: str
    restore: bool            # a restore is never worth a failure: the pod runs fine where it is
    failed: int = 0          # status.failed + uncounted failures + our restarts under way
    limit: int | None = None  # backoffLimit; None with backoffLimitPerIndex (not tracked per index here)

    def __str__(self) -> str:
        rule = "no podFailurePolicy rule ignoring DisruptionTarget"
        if self.restore:
            return f"Job {self.job} has {rule}: a restart would count against its backoffLimit"
        if self.limit is None:
            return f"Job {self.job} uses backoffLimitPerIndex with {rule}"
        return (f"Job {self.job} has {rule} and {self.failed} failed or restarting pods of backoffLimit "
                f"{self.limit}: one more restart could fail the Job")


def job_restart_problem(job: Mapping[str, Any], restore: bool, restarts_under_way: int = 0) -> JobRestartCounts | None:
    """Why restarting a pod of ``job`` could harm it (None when it cannot).

    The Job controller counts a deleted, unfinished pod as failed (pkg/controller/job/job_controller.go,
    isPodFailed: ``DeletionTimestamp != nil && Phase != Succeeded``) and fails the Job once more pods
    failed than ``backoffLimit`` allows; an eviction is a delete too. With a podFailurePolicy that ignores
    DisruptionTarget (the Eviction API sets it) the restart is free. Without one: never for a restore (the
    pod runs fine where it is), and an upgrade only while ``status.failed`` (plus failures not yet counted
    and our restarts under way) stays below ``backoffLimit``.
    """
    spec = job.get("spec") if isinstance(job.get("spec"), Mapping) else {}
    status = job.get("status") if isinstance(job.get("status"), Mapping) else {}
    if ignores_disruptions(spec.get("podFailurePolicy")):
        return None
    name = str((job.get("metadata") or {}).get("name", ""))
    if restore:
        return JobRestartCounts(name, restore=True)
    if spec.get("backoffLimitPerIndex") is not None:
        return JobRestartCounts(name, restore=False)
    limit = spec.get("backoffLimit", 6)
    uncounted = (status.get("uncountedTerminatedPods") or {}).get("failed") or []
    failed = int(status.get("failed") or 0) + len(uncounted) + restarts_under_way
    if not isinstance(limit, int) or failed >= limit:
        return JobRestartCounts(name, restore=False, failed=failed, limit=limit if isinstance(limit, int) else 0)
    return None


def replacement_pod(pod: Mapping[str, Any], restore: Rule | None = None, restored_at: str = "") -> dict[str, Any]:
    """A manifest to create in place of ``pod``; with ``restore``, back on the rule's original type."""
    out = copy.deepcopy(dict(pod))
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for key in _SERVER_META:
        meta.pop(key, None)
    spec = out.setdefault("spec", {})
    for key in _REFUSED_SPEC:
        spec.pop(key, None)
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


class Recreate(str, Enum):
    """What to do with a bare pod's stashed manifest now."""

    CREATE = "create"   # create the pod from the stash, then clear it
    WAIT = "wait"       # the pod it replaces is still terminating: the name is not free yet
    DROP = "drop"       # clear the stash without creating anything

    def __str__(self) -> str:
        return self.value


class RecreateReason(str, Enum):
    DELETED_BY_US = "our eviction removed the pod the stash replaces"
    UNPROVEN = ("the pod is gone and its eviction's outcome was never recorded (the leader died between the "
                "eviction and that record, or the stash predates the record): created, as a lost pod is "
                "worse than one that comes back")
    TERMINATING = "the pod the stash replaces is still terminating"
    NOT_EVICTED = "the pod the stash replaces is still there: the eviction never happened"
    DELETED_BY_OTHERS = "the pod was deleted by someone else, not by our eviction"
    NAME_TAKEN = "another pod holds the name (ours, created already, or the user's)"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RecreateStep:
    action: Recreate
    reason: RecreateReason


EVICTION_REASON = "EvictionByEvictionAPI"  # the DisruptionTarget reason the Eviction API sets (registry/core/pod)


def recreate_step(predecessor: str, deleted: bool, current: Mapping[str, Any] | None) -> RecreateStep:
    """Whether to create a bare pod from its stash (soak defect D1: never a pod someone else deleted).

    ``predecessor``: uid of the pod the stash replaces ('' for a stash written before uids were kept);
    ``deleted``: our eviction of it succeeded (recorded right after the eviction answered); ``current``:
    the pod now holding the name, or None. The stash is written before the eviction, so a leader that dies
    in between leaves a stash whose pod is still there (NOT_EVICTED: the upgrade decides again). An
    eviction answered 404/409 clears the stash at once; only a leader dying between the eviction and its
    record leaves a gone pod without proof (UNPROVEN). A terminating pod tells whose delete it was: the
    Eviction API sets DisruptionTarget/EvictionByEvictionAPI before it deletes
    (pkg/registry/core/pod/storage/eviction.go, addConditionAndDeletePod); a pending pod has no grace
    period and is gone at once.
    """
    if current is None:
        return RecreateStep(Recreate.CREATE, RecreateReason.DELETED_BY_US if deleted else RecreateReason.UNPROVEN)
    meta = current.get("metadata") or {}
    if predecessor and meta.get("uid") != predecessor:
        return RecreateStep(Recreate.DROP, RecreateReason.NAME_TAKEN)
    if not meta.get("deletionTimestamp"):
        if not predecessor:
            return RecreateStep(Recreate.DROP, RecreateReason.NAME_TAKEN)
        return RecreateStep(Recreate.WAIT if deleted else Recreate.DROP,
                            RecreateReason.TERMINATING if deleted else RecreateReason.NOT_EVICTED)
    if deleted or not predecessor or _evicted(current):
        return RecreateStep(Recreate.WAIT, RecreateReason.TERMINATING)
    return RecreateStep(Recreate.DROP, RecreateReason.DELETED_BY_OTHERS)


def _evicted(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "DisruptionTarget" and c.get("reason") == EVICTION_REASON
               for c in conditions if isinstance(c, Mapping))


def dry_run_copy(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` under a generated name, for a server-side dry-run create while the original name is
    still taken by the pod it replaces (the API server validates and admits it exactly as the real create,
    apart from the name)."""
    out = copy.deepcopy(dict(manifest))
    meta = out.setdefault("metadata", {})
    name = str(meta.pop("name", "") or meta.get("generateName", "") or "pod")
    meta["generateName"] = name[:40].rstrip("-") + "-"
    return out
