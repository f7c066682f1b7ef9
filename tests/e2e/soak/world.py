"""What the soak drives and what it knows it did: its nodes, its workloads, the pod shapes they ask for, and
which disruptions were its own (so an invariant blames the product only for what the product did).

One namespace, opted in to the webhook; pods name the stack's scheduler themselves. Nodes are fake
A100-40GB machines whose MIG layout the churn changes; a ``pool`` label gives nodeSelector pods a subset.

Must not: judge (invariants.py does) or choose what to do next (churn.py, faults.py, runner.py do).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from mig_extender.core.resources import ANN_SUBSTITUTE

from ..testenv.cluster import E2ECluster
from ..testenv.podresources import effective_requests
from ..testenv.stack import SCHEDULER, Stack
from ..testenv.workloads import IMAGE
from .history import History

if TYPE_CHECKING:
    from ..testenv.migmanager import FakeMigManager
    from .ledger import PodLedger

GPU = "A100-40GB"
P1, P2, P3 = "nvidia.com/mig-1g.5gb", "nvidia.com/mig-2g.10gb", "nvidia.com/mig-3g.20gb"
PROFILES = (P1, P2, P3)
# Per-GPU layouts an A100-40GB can be partitioned into (7 compute slices each); repartitioning moves a
# node between them, as mig-parted would after a drain.
LAYOUTS: tuple[Mapping[str, int], ...] = (
    {P1: 2, P2: 1, P3: 1},
    {P1: 3, P2: 2},
    {P1: 1, P3: 2},
    {P2: 2, P3: 1},
    {P1: 7},
)
POOLS = ("blue", "green")
POOL_LABEL = "mig-soak/pool"
# the opted-in nodes our repartitioner may change (soak/repartition.py): tainted, so only pods of that pool
# (tolerating it) land there, and their layouts (4g/7g only) are ones the other pods never ask for
BIG_POOL = "big"
BIG_TAINT = "mig-soak/big"
RUN_LABEL = "mig-soak/run"
GATE = "mig-soak.io/hold"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


@dataclass
class NodeState:
    name: str
    per_gpu: Mapping[str, int]
    gpus: int
    pool: str
    cordoned: bool = False
    # a node whose layout its MIG manager sets (soak/repartition.py): what it advertises now, read from
    # the fake kubelet, replaces the soak's own record (per_gpu is then only the starting layout)
    advertised: Callable[[], Mapping[str, int]] | None = None

    @property
    def managed(self) -> bool:
        return self.advertised is not None

    @property
    def allocatable(self) -> dict[str, int]:
        if self.advertised is not None:
            return dict(self.advertised())
        return {r: n * self.gpus for r, n in self.per_gpu.items()}


@dataclass(frozen=True)
class PodShape:
    """What each pod of a workload asks for, and the pod features that change how that is counted."""

    main: Mapping[str, int]
    second: Mapping[str, int] = field(default_factory=dict)   # a second container: a pod asking two profiles
    init: Mapping[str, int] = field(default_factory=dict)     # a regular init container (runs alone, first)
    sidecar: Mapping[str, int] = field(default_factory=dict)  # a restartable init container (runs throughout)
    opt_out: bool = False
    pool: str = ""

    def spec(self, restart_policy: str = "Always", gated: bool = False) -> dict[str, Any]:
        def container(name: str, mig: Mapping[str, int], **extra: Any) -> dict[str, Any]:
            # requests as the API server defaults them from limits, so the soak counts demand as it will be
            amounts = {r: str(n) for r, n in mig.items()}
            resources = {"limits": amounts, "requests": dict(amounts)} if amounts else {}
            return {"name": name, "image": IMAGE, "resources": resources, **extra}

        containers = [container("main", self.main)]
        if self.second:
            containers.append(container("second", self.second))
        inits = []
        if self.init:
            inits.append(container("init", self.init))
        if self.sidecar:
            inits.append(container("sidecar", self.sidecar, restartPolicy="Always"))
        spec: dict[str, Any] = {
            "schedulerName": SCHEDULER,
            "containers": containers,
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
        }
        if inits:
            spec["initContainers"] = inits
        if self.pool:
            spec["nodeSelector"] = {POOL_LABEL: self.pool}
        if self.pool == BIG_POOL:
            spec["tolerations"] = [{"key": BIG_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
        if gated:
            spec["schedulingGates"] = [{"name": GATE}]
        return spec

    def annotations(self) -> dict[str, str]:
        return {ANN_SUBSTITUTE: "false"} if self.opt_out else {}

    def demand(self) -> dict[str, int]:
        """MIG slices one pod holds, counted as the kubelet counts them (init containers, sidecars)."""
        return mig_demand({"spec": self.spec()})

    def describe(self) -> str:
        parts = [_short(self.main)]
        for label, mig in (("+", self.second), ("init:", self.init), ("sidecar:", self.sidecar)):
            if mig:
                parts.append(label + _short(mig))
        if self.opt_out:
            parts.append("opt-out")
        if self.pool:
            parts.append(f"pool={self.pool}")
        return ",".join(parts)


def _short(mig: Mapping[str, int]) -> str:
    return "+".join(f"{n}x{r.removeprefix('nvidia.com/mig-')}" for r, n in mig.items())


def mig_demand(pod: Mapping[str, Any]) -> dict[str, int]:
    """The MIG part of a pod's effective requests (the fake kubelet's arithmetic, not the product's)."""
    return {r: int(v) for r, v in effective_requests(pod).items() if r.startswith("nvidia.com/mig-") and v > 0}


@dataclass
class Workload:
    """One thing the churn created. ``replicas``: desired pods (parallelism for a Job, 1 for a bare pod)."""

    kind: str  # Deployment, StatefulSet, Job, Pod
    name: str
    shape: PodShape
    replicas: int
    created: float
    gated: bool = False
    completions: int = 0
    backoff_limit: int = 6
    failure_policy: bool = False
    protected: bool = False  # a PodDisruptionBudget covers its pods
    deleted: bool = False

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"


class SoakWorld:
    """The soak's handle on the cluster and its own bookkeeping. Thread-safe where threads meet (the pod
    watch reads the attribution sets while the driver writes them)."""

    def __init__(self, cluster: E2ECluster, stack: Stack, namespace: str, history: History, run_id: str) -> None:
        self.cluster, self.stack, self.namespace, self.history, self.run_id = cluster, stack, namespace, history, run_id
        self.api = cluster.api_client()
        self.api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 8
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.policy = client.PolicyV1Api(self.api)
        # deletes and evictions go out once, never retried by urllib3: a retry of a DELETE that reached the
        # server answers 404, and "was it us?" (the ledger's attribution) would have no answer (soak D10)
        self._api_once = cluster.api_client()
        self._api_once.rest_client.pool_manager.connection_pool_kw["retries"] = False
        self._core_once = client.CoreV1Api(self._api_once)
        self.nodes: dict[str, NodeState] = {}
        self.removed_nodes: set[str] = set()
        self.workloads: dict[str, Workload] = {}
        self._lock = threading.Lock()
        self._harness_deleted: set[str] = set()       # pod uids the soak itself deleted or evicted
        self.harness_disrupted_jobs: set[str] = set()  # Jobs one of whose pods the soak deleted
        self.uncertain: set[str] = set()              # bare pods whose create failed in an unknown way
        self.bare_creates: dict[str, int] = {}        # bare pod name -> creations made by the soak
        self._impaired: dict[str, float] = {}         # what -> monotonic time its fault (and recovery) ends
        self._reconcilers = 0
        self._seq = 0
        self.mig_manager: FakeMigManager | None = None  # set by the runner when the soak repartitions
        self.ledger: PodLedger = None  # type: ignore[assignment]  # set by the runner once the watch runs

    # ---- names and time --------------------------------------------------------------------------------
    def new_name(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:04d}"

    def new_reconciler_identity(self) -> str:
        """A fresh identity (never one a killed leader held: the Lease would count it as the holder)."""
        self._reconcilers += 1
        return f"reconciler-{self.run_id}-{self._reconcilers}"

    def impair(self, seconds: float, *what: str) -> None:
        """``what`` ("scheduling", "reconciler") is down or just came back: until ``seconds`` from now a
        pod may wait, or a rule may outlive its expiry, for that reason and not because of a defect."""
        until = time.monotonic() + seconds
        with self._lock:
            for kind in what:
                self._impaired[kind] = max(self._impaired.get(kind, 0.0), until)

    def impaired(self, what: str, since: float | None = None) -> bool:
        """Is ``what`` impaired now, or was it at any moment after monotonic time ``since``?"""
        with self._lock:
            until = self._impaired.get(what, 0.0)
        return until > (time.monotonic() if since is None else since)

    # ---- attribution -----------------------------------------------------------------------------------
    def mark_harness_deleted(self, uid: str, job: str = "") -> None:
        with self._lock:
            self._harness_deleted.add(uid)
            if job:
                self.harness_disrupted_jobs.add(job)

    def unmark_harness_deleted(self, uid: str) -> None:
        with self._lock:
            self._harness_deleted.discard(uid)

    def deleted_by_harness(self, uid: str, node: str) -> bool:
        with self._lock:
            return uid in self._harness_deleted or (bool(node) and node in self.removed_nodes)

    # ---- capacity ----------------------------------------------------------------------------------------
    def schedulable_nodes(self) -> list[NodeState]:
        return [n for n in self.nodes.values() if not n.cordoned]

    def capacity(self, pool: str = "") -> dict[str, int]:
        total: dict[str, int] = {}
        for node in self.schedulable_nodes():
            if pool and node.pool != pool:
                continue
            for r, n in node.allocatable.items():
                total[r] = total.get(r, 0) + n
        return total

    def demand(self, pool: str | None = None) -> dict[str, int]:
        """Slices the live workloads want at full strength (pool None: all; "": pods without a selector)."""
        total: dict[str, int] = {}
        for w in self.workloads.values():
            if w.deleted or (pool is not None and w.shape.pool != pool):
                continue
            for r, n in w.shape.demand().items():
                total[r] = total.get(r, 0) + n * w.replicas
        return total

    def live_workloads(self, *kinds: str) -> list[Workload]:
        return [w for w in self.workloads.values() if not w.deleted and (not kinds or w.kind in kinds)]

    # ---- manifests ---------------------------------------------------------------------------------------
    def labels(self, workload: str) -> dict[str, str]:
        return {RUN_LABEL: self.run_id, "app": workload}

    def pod_manifest(self, name: str, shape: PodShape, gated: bool = False) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": self.labels(name), "annotations": shape.annotations()},
                "spec": shape.spec(gated=gated)}

    def _template(self, name: str, shape: PodShape, restart_policy: str = "Always") -> dict[str, Any]:
        return {"metadata": {"labels": self.labels(name), "annotations": shape.annotations()},
                "spec": shape.spec(restart_policy)}

    def deployment_manifest(self, name: str, shape: PodShape, replicas: int) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                "spec": {"replicas": replicas, "selector": {"matchLabels": self.labels(name)},
                         "template": self._template(name, shape)}}

    def statefulset_manifest(self, name: str, shape: PodShape, replicas: int) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
                "spec": {"replicas": replicas, "serviceName": name, "podManagementPolicy": "Parallel",
                         "selector": {"matchLabels": self.labels(name)}, "template": self._template(name, shape)}}

    def job_manifest(self, w: Workload) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "completions": w.completions, "parallelism": w.replicas, "completionMode": "Indexed",
            "backoffLimit": w.backoff_limit, "template": self._template(w.name, w.shape, "Never"),
        }
        if w.failure_policy:
            # the rule docs/install.md asks for: a disruption (eviction) is not a failure of the Job
            spec["podFailurePolicy"] = {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]}
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": w.name}, "spec": spec}

    # ---- harness-side changes the churn and faults share -------------------------------------------------
    def delete_pod(self, name: str, uid: str, grace: int = 0, job: str = "") -> bool:
        """Delete one pod (uid precondition) and remember it was us; False if it was already gone."""
        self.mark_harness_deleted(uid, job)  # before the call: the watch may report the deletion first
        self._bare_gone(name)
        body = {"gracePeriodSeconds": grace, "preconditions": {"uid": uid}}
        try:
            self._core_once.delete_namespaced_pod(name, self.namespace, body=body, grace_period_seconds=grace,
                                                  _preload_content=False)
            return True
        except Exception as exc:
            if self._not_ours(name, uid, exc):
                return False
            raise

    def evict_pod(self, name: str, uid: str, job: str = "") -> str:
        """What ``kubectl drain`` does: the Eviction API (PDBs apply, DisruptionTarget is set); a pod a PDB
        protects is deleted after all, as a drain with --disable-eviction would, and that is recorded."""
        self.mark_harness_deleted(uid, job)
        self._bare_gone(name)
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": self.namespace},
                "deleteOptions": {"preconditions": {"uid": uid}, "gracePeriodSeconds": 0}}
        try:
            self._core_once.create_namespaced_pod_eviction(name, self.namespace, body, _preload_content=False)
            return "evicted"
        except Exception as exc:
            if isinstance(exc, ApiException) and exc.status == 429:
                return "deleted" if self.delete_pod(name, uid, job=job) else "gone"
            if self._not_ours(name, uid, exc):
                return "gone"
            raise

    def _not_ours(self, name: str, uid: str, exc: Exception) -> bool:
        """Settle who removes pod ``uid`` after our DELETE or Eviction (sent once) failed with ``exc``; True
        when the pod was already gone. Soak D10: a DELETE refused at connect (API server restarting) left
        the uid marked as ours, and the product's restore of that pod 20 s later was booked as the
        harness's delete, so the product's recreate looked like a duplicate.
        - 404 (no such pod) or 409 (the uid precondition: a namesake holds the name): gone before our call,
          not ours; False is returned after unmarking.
        - another 4xx, or the connection refused or timed out at connect (the request never left): nothing
          was deleted; unmarked, and the caller re-raises.
        - anything else (a 5xx, a read timeout, a reset after the request left): it may have deleted the pod or
          not. The uid stays marked (a restart loop is never charged to the product for it) and a bare pod
          of that name is never judged for recreates (``uncertain``)."""
        if isinstance(exc, ApiException) and exc.status in (404, 409):
            self.unmark_harness_deleted(uid)
            if self.ledger is not None:  # the watch may have booked the end as ours while the call was in flight
                self.ledger.not_the_harness(uid)
            return True
        cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        refused = isinstance(exc, ApiException) and 400 <= (exc.status or 0) < 500  # 4xx: nothing was done
        if refused or isinstance(cause, urllib3.exceptions.ConnectTimeoutError):  # includes NewConnectionError
            self.unmark_harness_deleted(uid)
        else:
            with self._lock:
                self.uncertain.add(name)
        self.history.record("error", "delete-outcome", pod=name, uid=uid[:8],
                            marked=self.deleted_by_harness(uid, ""), error=type(cause).__name__)
        return False

    def _bare_gone(self, name: str) -> None:
        """A bare pod the soak deletes or evicts is gone for good: nobody recreates it (but the product
        must not either)."""
        if (w := self.workloads.get(f"Pod/{name}")) is not None:
            w.deleted = True

    def pods_on(self, node: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, field_selector=f"spec.nodeName={node}").items)

    @contextlib.contextmanager
    def api_errors_are_skips(self) -> Iterator[None]:
        """An action that meets a fault (API down, 409) is a skipped action, not a crashed run."""
        try:
            yield
        except Skip:
            raise
        except ApiException as exc:
            raise ActionFailed(f"API {exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # the API server restarting, timeouts
            raise ActionFailed(f"{type(exc).__name__}: {str(exc)[:160]}") from exc

    def close(self) -> None:
        self.api.close()
        self._api_once.close()


class ActionFailed(Exception):
    """An action or fault step did not go through (the API refused or was away); recorded, never fatal."""


class Skip(Exception):
    """The action does not apply to the world as it is (no node to remove, budget full...)."""
