"""A fake kubelet for every fake node, running in the test process as a few background threads.

Why threads in the pytest process rather than a subprocess: tests call `add_node()` and read the
admission record directly (no IPC, no polling a file), a node is registered and served before
`add_node()` returns, and a crash shows up in the test's own log. `python -m tests.e2e.testenv
kubelet` runs the same class in the foreground for clusters started with `up`.

What it does, like the real kubelet as far as scheduling tests can tell:
- registers Nodes with GPU feature-discovery labels and MIG extended resources (nodes.py) and keeps
  their Leases (and, less often, their Ready condition) fresh;
- admits each pod bound to one of its nodes against allocatable, charging the effective request
  (podresources.py) and counting only admitted pods that are not terminal; a pod that does not fit
  fails with reason `OutOf<resource>` (what a kubelet does after an over-commit), one that fits is
  marked Running and Ready; every decision is recorded (`decisions()`, `rejections()`);
- admits a pod with ResourceClaims only once each claim is allocated and reserved for it (as the
  kubelet's DRA manager requires before it prepares the devices; until then the pod stays Pending and
  admission is retried), does not charge extended resources DRA serves (KEP-5004), and rejects a pod
  one of whose devices an admitted pod already holds through another claim (`OutOfDRADevice`): no
  device may be in two claims;
- finalizes deletions at once (grace period 0); a pod a finalizer keeps is first reported Failed, as the
  kubelet reports a deleted pod whose containers it killed (the Job controller waits for that);
- list+watch with resourceVersion resume and relist on 410 (reflector.py).

Decisions are made in watch order on one thread, so admission on a node is serialized exactly as in
the kubelet; the resulting status writes go through a small pool so the watch never waits on them.

Must not: schedule (that is the scheduler's and the extender's job) or run anything.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from .nodes import KEEP, MANAGED_LABEL, NODE_IP, GpuModel, NodeRegistry, raw, ready_conditions
from .podresources import Resources, claim_devices, claim_names, claim_problem, effective_requests, first_shortfall
from .reflector import Reflector

log = logging.getLogger("testenv.fakekubelet")

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
TERMINAL = ("Succeeded", "Failed")
WRITE_ATTEMPTS = 3
CLAIM_RETRY_S = 0.5  # the kubelet retries a pod whose claims it could not prepare; so do we, this often
DEVICE_REASON = "OutOfDRADevice"
Device = tuple[str, str, str]  # (driver, pool, device)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ts(moment: dt.datetime | None = None) -> str:
    return (moment or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_ts(moment: dt.datetime | None = None) -> str:
    return (moment or _now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Admission:
    """One admission decision, as a test asserts on it."""

    seq: int
    at: float  # time.time()
    node: str
    namespace: str
    name: str
    uid: str
    admitted: bool
    requests: Mapping[str, str]
    reason: str = ""  # e.g. "OutOfnvidia.com/mig-1g.5gb" when rejected
    message: str = ""

    def __str__(self) -> str:
        verdict = "admitted" if self.admitted else f"REJECTED {self.reason}: {self.message}"
        return f"#{self.seq} {self.namespace}/{self.name} on {self.node}: {verdict}"


@dataclass
class _NodeState:
    allocatable: Resources
    resource_version: int = 0
    admitted: dict[str, Resources] = field(default_factory=dict)  # pod uid -> charged requests
    devices: dict[str, dict[Device, str]] = field(default_factory=dict)  # pod uid -> DRA device -> claim uid

    def release(self, uid: str) -> None:
        self.admitted.pop(uid, None)
        self.devices.pop(uid, None)


def _quantities(raw: Mapping[str, str]) -> Resources:
    return {name: Decimal(parse_quantity(value)) for name, value in raw.items()}


def _rv(obj: Mapping[str, Any]) -> int:
    # Opaque by contract, but etcd revisions are integers; used only to drop stale node events.
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return 0


class FakeKubelet:
    """Serves every node labelled `fakekubelet.mig-e2e/managed=true`. Thread-safe public methods."""

    def __init__(
        self,
        kubeconfig: Path,
        *,
        lease_interval: float = 10.0,
        status_interval: float = 60.0,
        writers: int = 4,
    ) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        # the default pool (4) would make writers queue for connections under load
        self.api.rest_client.pool_manager.connection_pool_kw["maxsize"] = writers + 4
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.resource = client.ResourceV1Api(self.api)
        self.registry = NodeRegistry(self.api)
        self.lease_interval = lease_interval
        self.status_interval = status_interval
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._nodes: dict[str, _NodeState] = {}
        self._parked: dict[str, dict[str, dict[str, Any]]] = {}  # node -> uid -> pod bound before node known
        self._decided: set[str] = set()  # uids already admitted or rejected (our status write may lag)
        self._finalizing: set[str] = set()
        self._decisions: list[Admission] = []
        self._pending_writes: set[Future[None]] = set()
        self._held: list[tuple[str, dict[str, Any]]] | None = None  # pod events deferred by holding_pods()
        self._node_observers: list[Callable[[dict[str, Any]], None]] = []
        self._writers = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="fakekubelet-write")
        self._node_reflector = Reflector(
            "nodes",
            self.core.list_node,
            self._on_node_list,
            self._on_node_event,
            self._stop,
            label_selector=f"{MANAGED_LABEL}=true",
        )
        self._pod_reflector = Reflector(
            "pods",
            self.core.list_pod_for_all_namespaces,
            self._on_pod_list,
            self._on_pod_event,
            self._stop,
            field_selector="spec.nodeName!=",
        )
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="fakekubelet-lease", daemon=True)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start watching; return once nodes and pods are listed (so decisions start from the truth)."""
        self._node_reflector.start()
        if not self._node_reflector.synced.wait(timeout):
            raise TimeoutError("fake kubelet: nodes not listed")
        self._pod_reflector.start()
        if not self._pod_reflector.synced.wait(timeout):
            raise TimeoutError("fake kubelet: pods not listed")
        self._heartbeat.start()

    def stop(self) -> None:
        self._stop.set()
        for reflector in (self._node_reflector, self._pod_reflector):
            reflector.interrupt()
        for thread in (self._node_reflector.thread, self._pod_reflector.thread, self._heartbeat):
            if thread.is_alive():
                thread.join(timeout=5)
        self._writers.shutdown(wait=True, cancel_futures=True)
        self.api.close()

    # ---- nodes -------------------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        gpu: str | GpuModel | None = "A100-40GB",
        resources: Mapping[str, int | str] | None = None,
        *,
        gpu_count: int = 1,
        labels: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        cpu: str | None = None,
        memory: str | None = None,
        pods: int | None = None,
    ) -> dict[str, Any]:
        """Register (or re-register) a Ready node and serve it; returns the stored Node.

        resources: extended resources, e.g. {"nvidia.com/mig-1g.5gb": 2}; anything not given that an
        earlier registration set is dropped, so add_node() always yields exactly what it says.
        """
        base = {"cpu": cpu, "memory": memory, "pods": None if pods is None else str(pods)}
        all_resources = {**{k: v for k, v in base.items() if v is not None}, **dict(resources or {})}
        return self._apply(
            name, gpu=gpu, gpu_count=gpu_count, resources=all_resources, labels=labels, taints=taints, replace=True
        )

    def set_node(
        self,
        name: str,
        resources: Mapping[str, int | str] | None = None,
        *,
        gpu: str | GpuModel | None = KEEP,
        gpu_count: int = 1,
        labels: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Change a node: resources {name: qty or "-" to remove}; replace=True drops unlisted extended ones.

        Lowering capacity below what admitted pods use does not evict them (nor does a real kubelet).
        """
        return self._apply(
            name, gpu=gpu, gpu_count=gpu_count, resources=resources, labels=labels, taints=taints, replace=replace
        )

    def remove_node(self, name: str, *, delete_pods: bool = True) -> None:
        """Delete the node and its Lease; with delete_pods also its pods (grace 0), as a drained and
        removed machine would leave it, instead of waiting for PodGC's orphan sweep."""
        self.registry.delete(name, LEASE_NAMESPACE)
        with self._lock:
            self._nodes.pop(name, None)
            self._parked.pop(name, None)
        if delete_pods:
            pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}")
            for pod in pods.items:
                self._delete_pod(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)

    def node_names(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def allocatable(self, node: str) -> Resources:
        with self._lock:
            return dict(self._nodes[node].allocatable)

    def usage(self, node: str) -> Resources:
        """What admitted, non-terminal pods on `node` are charged, per resource."""
        total: Resources = {}
        with self._lock:
            for request in self._nodes[node].admitted.values():
                for name, value in request.items():
                    total[name] = total.get(name, Decimal(0)) + value
        return total

    # ---- the record --------------------------------------------------------------------------------
    def checkpoint(self) -> int:
        """A mark to pass as `since=` so a test sees only its own decisions."""
        with self._lock:
            return len(self._decisions)

    def decisions(self, since: int = 0) -> list[Admission]:
        with self._lock:
            return self._decisions[since:]

    def rejections(self, since: int = 0) -> list[Admission]:
        return [d for d in self.decisions(since) if not d.admitted]

    def assert_no_overcommit(self, since: int = 0) -> None:
        """Fail if any pod was rejected for lack of a resource, i.e. something was over-committed."""
        rejected = [d for d in self.rejections(since) if d.reason.startswith("OutOf")]
        assert not rejected, "over-commit: the fake kubelet rejected\n" + "\n".join(map(str, rejected))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every status write decided so far reached the API server."""
        with self._lock:
            pending = set(self._pending_writes)
        wait(pending, timeout=timeout)

    # ---- pods a test controls ------------------------------------------------------------------------
    def finish_pod(self, namespace: str, name: str, *, succeeded: bool = True) -> None:
        """Make a running pod's containers exit (0 or 1), as a finished Job pod would."""
        pod = self.core.read_namespaced_pod(name, namespace)
        moment = _ts()
        code = 0 if succeeded else 1

        def terminated(container: Any) -> dict[str, Any]:
            return {
                "name": container.name,
                "image": container.image or "",
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if succeeded else "Error",
                        "startedAt": moment,
                        "finishedAt": moment,
                    }
                },
            }

        status = {
            "phase": "Succeeded" if succeeded else "Failed",
            "conditions": [
                {"type": kind, "status": "False", "reason": "PodCompleted", "lastTransitionTime": moment}
                for kind in ("Ready", "ContainersReady")
            ],
            "containerStatuses": [terminated(c) for c in pod.spec.containers],
        }
        self._write_status(namespace, name, pod.metadata.uid, status)

    # ---- internals: nodes ----------------------------------------------------------------------------
    def _apply(self, name: str, **kwargs: Any) -> dict[str, Any]:
        node = self.registry.apply(name, timestamp=_ts(), **kwargs)
        self._learn_node(node)
        return node

    def _learn_node(self, node: Mapping[str, Any]) -> None:
        name = node["metadata"]["name"]
        allocatable = _quantities((node.get("status") or {}).get("allocatable") or {})
        with self._lock:
            state = self._nodes.get(name)
            if state is None:
                self._nodes[name] = _NodeState(allocatable, _rv(node))
                for pod in self._parked.pop(name, {}).values():
                    self._handle_pod("ADDED", pod)
            elif _rv(node) >= state.resource_version:
                state.allocatable, state.resource_version = allocatable, _rv(node)

    def observe_nodes(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(node)`` for every node the watch lists or changes (not deletions), on the
        watch thread and without the lock: node agents (the fake MIG manager) hook in here. It must
        return quickly."""
        self._node_observers.append(callback)

    def unobserve_nodes(self, callback: Callable[[dict[str, Any]], None]) -> None:
        if callback in self._node_observers:
            self._node_observers.remove(callback)

    def _tell_observers(self, nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            for callback in list(self._node_observers):
                try:
                    callback(node)
                except Exception:
                    log.exception("node observer failed on %s", node["metadata"]["name"])

    def _on_node_list(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            for gone in set(self._nodes) - {n["metadata"]["name"] for n in items}:
                self._nodes.pop(gone)
            for node in items:
                self._learn_node(node)
        self._tell_observers(items)

    def _on_node_event(self, kind: str, node: dict[str, Any]) -> None:
        if kind == "DELETED":
            with self._lock:
                self._nodes.pop(node["metadata"]["name"], None)
        else:
            self._learn_node(node)
            self._tell_observers([node])

    def _heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(self.lease_interval):
            refresh_status = time.monotonic() - last_status >= self.status_interval
            for name in self.node_names():
                try:
                    self._renew_lease(name)
                    if refresh_status:
                        self.core.patch_node_status(
                            name, {"status": {"conditions": ready_conditions(_ts())}}, _content_type=STRATEGIC
                        )
                except ApiException as exc:
                    if exc.status != 404:  # a node removed meanwhile is fine
                        log.warning("heartbeat %s: %s", name, exc.reason)
                except Exception as exc:
                    log.warning("heartbeat %s: %s", name, exc)
            if refresh_status:
                last_status = time.monotonic()

    def _renew_lease(self, name: str) -> None:
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": _micro_ts()}
        try:
            self.coordination.patch_namespaced_lease(name, LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE)
        except ApiException as exc:
            if exc.status != 404:
                raise
            node = self.core.read_node(name)
            owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node.metadata.uid}
            self.coordination.create_namespaced_lease(
                LEASE_NAMESPACE,
                {
                    "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "ownerReferences": [owner]},
                    "spec": spec,
                },
            )

    # ---- internals: pods -----------------------------------------------------------------------------
    def _on_pod_list(self, items: list[dict[str, Any]]) -> None:
        present = {pod["metadata"]["uid"] for pod in items}
        with self._lock:
            # pods deleted while we were not watching: release what they were charged
            for state in self._nodes.values():
                for uid in (set(state.admitted) | set(state.devices)) - present:
                    state.release(uid)
            for parked in self._parked.values():
                for uid in set(parked) - present:
                    del parked[uid]
            for pod in items:
                self._handle_pod("ADDED", pod)

    @contextmanager
    def holding_pods(self) -> Iterator[None]:
        """Admit no pod while the block runs: pod events queue up and are handled, in watch order, when it
        ends. For measurements of scheduling alone (bench/e2e_throughput.py): a real kubelet starts pods on
        its own machine, while this one would spend the benchmark's shared cores, and the API server's,
        on status writes inside the measured window."""
        with self._lock:
            self._held = []
        try:
            yield
        finally:
            with self._lock:
                held, self._held = self._held or [], None
                for kind, pod in held:
                    self._handle_pod(kind, pod)

    @property
    def holding(self) -> bool:
        """Inside holding_pods(): pod events wait, so admissions and deletions lag the API."""
        with self._lock:
            return self._held is not None

    def _on_pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append((kind, pod))
                return
            self._handle_pod(kind, pod)

    def _handle_pod(self, kind: str, pod: dict[str, Any]) -> None:
        """Called with the lock held, in watch order."""
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        node_name, uid = spec.get("nodeName"), meta["uid"]
        phase = status.get("phase", "Pending")
        state = self._nodes.get(node_name)
        if kind == "DELETED" or phase in TERMINAL:
            if state is not None:
                state.release(uid)
            if kind == "DELETED":
                self._finalizing.discard(uid)
                self._decided.discard(uid)
                self._parked.get(node_name, {}).pop(uid, None)
                return
        if state is None:
            self._parked.setdefault(node_name, {})[uid] = pod
            return
        if meta.get("deletionTimestamp"):
            if uid not in self._finalizing:
                self._finalizing.add(uid)
                if meta.get("finalizers") and phase not in TERMINAL:
                    self._submit(self._terminate_and_delete, pod)
                else:
                    self._submit(self._delete_pod, meta["namespace"], meta["name"], uid)
            return
        if phase == "Running" and uid not in self._decided:
            # running before we started (a restarted harness): it already holds its resources
            state.admitted.setdefault(uid, effective_requests(pod))
            self._decided.add(uid)
            return
        if phase != "Pending" or uid in self._decided:
            return
        self._decided.add(uid)
        self._admit(node_name, state, pod)

    def _admit(self, node_name: str, state: _NodeState, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        devices = self._prepared_devices(pod)
        if devices is None:
            self._decided.discard(meta["uid"])
            self._retry_later(meta["namespace"], meta["name"], meta["uid"])
            return
        request = effective_requests(pod)
        used: Resources = {}
        for charged in state.admitted.values():
            for name, value in charged.items():
                used[name] = used.get(name, Decimal(0)) + value
        shortfall = self._device_conflict(state, devices) or first_shortfall(request, used, state.allocatable)
        decision = Admission(
            seq=len(self._decisions),
            at=time.time(),
            node=node_name,
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            admitted=shortfall is None,
            requests={name: str(value) for name, value in request.items()},
            reason=shortfall[0] if shortfall else "",
            message=shortfall[1] if shortfall else "",
        )
        self._decisions.append(decision)
        log.info("%s", decision)
        if shortfall is None:
            state.admitted[meta["uid"]] = request
            state.devices[meta["uid"]] = devices
            status = self._running_status(pod)
        else:
            status = {"phase": "Failed", "reason": shortfall[0], "message": shortfall[1], "startTime": _ts()}
        self._submit(self._write_status, meta["namespace"], meta["name"], meta["uid"], status)

    def _prepared_devices(self, pod: Mapping[str, Any]) -> dict[Device, str] | None:
        """The DRA devices `pod` holds (device -> claim uid); None while a claim is not generated,
        allocated or reserved for it (the kubelet then keeps the pod Pending and retries)."""
        names, missing = claim_names(pod)
        meta = pod["metadata"]
        if missing:
            log.info("%s/%s: claims %s not generated yet", meta["namespace"], meta["name"], missing)
            return None
        devices: dict[Device, str] = {}
        for name in names:
            try:
                claim = raw(self.resource.read_namespaced_resource_claim, name, meta["namespace"])
            except ApiException as exc:
                log.info("%s/%s: ResourceClaim %s: %s", meta["namespace"], meta["name"], name, exc.reason)
                return None
            problem = claim_problem(pod, claim)
            if problem:
                log.info("%s/%s: %s", meta["namespace"], meta["name"], problem)
                return None
            devices.update(dict.fromkeys(claim_devices(claim), claim["metadata"]["uid"]))
        return devices

    @staticmethod
    def _device_conflict(state: _NodeState, devices: Mapping[Device, str]) -> tuple[str, str] | None:
        for holder, held in state.devices.items():
            for device, claim_uid in devices.items():
                if device in held and held[device] != claim_uid:
                    return (DEVICE_REASON, f"device {'/'.join(device)} is already allocated to pod {holder} "
                                           f"through another claim")
        return None

    def _retry_later(self, namespace: str, name: str, uid: str) -> None:
        def retry() -> None:
            if self._stop.is_set():
                return
            try:
                pod = raw(self.core.read_namespaced_pod, name, namespace)
            except ApiException:
                return  # gone: its DELETED event settles everything
            if pod["metadata"]["uid"] == uid:
                with self._lock:
                    self._handle_pod("MODIFIED", pod)

        timer = threading.Timer(CLAIM_RETRY_S, retry)
        timer.daemon = True
        timer.start()

    @staticmethod
    def _running_status(pod: Mapping[str, Any]) -> dict[str, Any]:
        moment = _ts()
        spec, uid = pod.get("spec") or {}, pod["metadata"]["uid"]

        def container_status(container: Mapping[str, Any], state: dict[str, Any], ready: bool) -> dict[str, Any]:
            return {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "containerID": f"fake://{uid}/{container['name']}",
                "ready": ready,
                "started": ready,
                "restartCount": 0,
                "state": state,
            }

        return {
            "phase": "Running",
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "startTime": moment,
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": moment, "lastProbeTime": None}
                for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")
            ],
            "containerStatuses": [
                container_status(c, {"running": {"startedAt": moment}}, True) for c in spec.get("containers") or ()
            ],
            "initContainerStatuses": [
                container_status(
                    c,
                    {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": moment, "finishedAt": moment}},
                    False,
                )
                for c in spec.get("initContainers") or ()
            ],
        }

    def _submit(self, call: Any, *args: Any) -> None:
        if self._stop.is_set():
            return
        future = self._writers.submit(call, *args)
        with self._lock:
            self._pending_writes.add(future)
        future.add_done_callback(self._write_done)

    def _write_done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending_writes.discard(future)

    def _write_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        # metadata.uid in the patch is a precondition: a same-named successor pod is left alone (409).
        body = {"metadata": {"uid": uid}, "status": status}
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self.core.patch_namespaced_pod_status(
                    name, namespace, body, _content_type=STRATEGIC, _preload_content=False
                )
                return
            except ApiException as exc:
                if exc.status in (404, 409, 422):
                    log.info("status of %s/%s not written: %s", namespace, name, exc.reason)
                    return
                if attempt == WRITE_ATTEMPTS - 1:
                    log.error("status of %s/%s not written: %s", namespace, name, exc)
                    return
            except Exception as exc:
                if attempt == WRITE_ATTEMPTS - 1 or self._stop.is_set():
                    log.error("status of %s/%s not written: %s", namespace, name, exc)
                    return
            time.sleep(0.2 * (attempt + 1))

    def _terminate_and_delete(self, pod: Mapping[str, Any]) -> None:
        """A deleted pod that a finalizer keeps (a Job's tracking finalizer) first reaches a terminal phase,
        as the kubelet reports it: its killed containers make it Failed (pkg/kubelet/kubelet_pods.go
        getPhase, `podIsTerminal`). The Job controller waits for that phase before it counts the pod when
        the Job has a podFailurePolicy (job_controller.go isPodFailed / onlyReplaceFailedPods); without it
        such a Job would wait forever for a pod that stays Running."""
        meta = pod["metadata"]
        moment = _ts()
        killed = {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": moment, "finishedAt": moment}}
        status = {
            "phase": "Failed",
            "containerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "started": False,
                 "restartCount": 0, "state": killed}
                for c in (pod.get("spec") or {}).get("containers") or ()
            ],
        }
        self._write_status(meta["namespace"], meta["name"], meta["uid"], status)
        self._delete_pod(meta["namespace"], meta["name"], meta["uid"])

    def _delete_pod(self, namespace: str, name: str, uid: str) -> None:
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0, body=body, _preload_content=False)
        except Exception as exc:
            if isinstance(exc, ApiException) and exc.status in (404, 409):
                return
            # The API may be restarting (a refused connection is no ApiException). Try again ourselves: a
            # terminating pod nobody touches sends no next event (soak seed 34: a pod stayed terminating
            # for 860 s after a delete refused at connect, and the run did not settle)
            log.warning("finalizing %s/%s failed: %s; retrying in 1 s", namespace, name,
                        getattr(exc, "reason", None) or exc)
            if not self._stop.is_set():
                retry = threading.Timer(1.0, self._submit, (self._delete_pod, namespace, name, uid))
                retry.daemon = True
                retry.start()
