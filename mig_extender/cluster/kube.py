"""The only module that talks to the Kubernetes API: clients, informers and side effects.

Informers list then watch with the list's resourceVersion, resume from the last seen version after a
dropped connection, and relist on 410 Gone, like client-go's reflector; they hand raw JSON dicts to
callbacks (no model classes: cheaper, and the pure core reads plain dicts). Every mutating call can run
dry (``dry_run=True`` logs what it would do), and none is made on the extender's filter path.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import orjson
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from ..core.podspec import selector_matches
from ..core.rules import ANN_RECREATE

log = logging.getLogger(__name__)

JSON = Mapping[str, Any]
MERGE_PATCH = "application/merge-patch+json"


def api_client(kubeconfig: str = "", in_cluster: bool = False) -> client.ApiClient:
    """An ApiClient for a kubeconfig file or the pod's service account."""
    if in_cluster:
        config.load_incluster_config()
        return _pooled(client.ApiClient())
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig or None, client_configuration=cfg)
    return _pooled(client.ApiClient(cfg))


POOL_SIZE = 32  # concurrent API calls kept alive: kube-scheduler sends binds in bursts (async binding)


def _pooled(api: client.ApiClient) -> client.ApiClient:
    """Size the connection pool for bursts of binds, so each reuses a warm TLS connection (the default,
    5 x CPUs, is 10 here and made every further concurrent bind open a new connection)."""
    api.configuration.connection_pool_maxsize = POOL_SIZE
    api.rest_client = type(api.rest_client)(api.configuration)
    return api


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a generated API method and return the JSON body as a dict (no model deserialization).

    Every generated-client call that is not a watch goes through here (Bindings go through JsonPoster):
    the body is read and the connection handed back to the pool. (A response left unread keeps its
    connection, so the next call pays a new TLS handshake: that made each Binding ~2x slower and capped
    the extender's binds near 50/s.)
    """
    response = call(*args, _preload_content=False, **kwargs)
    try:
        return orjson.loads(response.data or b"{}")
    finally:
        response.release_conn()


class Informer:
    """List+watch one collection in a daemon thread, feeding ``on_event(type, obj)``.

    ``on_relist(items)`` receives the full list (initial and after 410 Gone) so the consumer can drop
    objects whose delete it missed. ``last_contact`` is when the API last answered; ``stale_after``
    drives readiness (the extender keeps answering from its cache while the API is away).
    """

    def __init__(self, name: str, list_call: Callable[..., Any], on_event: Callable[[str, JSON], None],
                 on_relist: Callable[[list[JSON]], None], list_kwargs: Mapping[str, Any] | None = None,
                 watch_timeout: int = 300, page_size: int = 500) -> None:
        self.name = name
        self._list = list_call
        self._on_event = on_event
        self._on_relist = on_relist
        self._kwargs = dict(list_kwargs or {})
        self._watch_timeout = watch_timeout
        self._page = page_size
        self._stop = threading.Event()
        self.synced = threading.Event()
        self.resource_version = ""
        self.last_contact = 0.0
        self.disconnected_since: float | None = None  # set while list/watch fail, cleared on reconnect
        self.relists = 0
        self._thread: threading.Thread | None = None

    def start(self) -> Informer:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _relist(self) -> None:
        items: list[JSON] = []
        cont = None
        while True:
            page = raw(self._list, limit=self._page, _continue=cont, **self._kwargs)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                self.resource_version = (page.get("metadata") or {}).get("resourceVersion", "")
                break
        self.last_contact = time.time()
        self.disconnected_since = None
        self.relists += 1
        self._on_relist(items)
        self.synced.set()

    def _watch(self) -> None:
        response = self._list(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                              timeout_seconds=self._watch_timeout, _preload_content=False, **self._kwargs)
        try:
            self.last_contact = time.time()
            self.disconnected_since = None
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return
                event = orjson.loads(line)
                obj = event.get("object") or {}
                self.last_contact = time.time()
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        self.resource_version = ""  # too old: relist
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                self.resource_version = (obj.get("metadata") or {}).get("resourceVersion", self.resource_version)
                if event.get("type") != "BOOKMARK":
                    try:
                        self._on_event(event["type"], obj)
                    except Exception:
                        log.exception("%s: handling %s event failed", self.name, event.get("type"))
        finally:
            response.release_conn()

    def _lost(self) -> None:
        if self.disconnected_since is None:
            self.disconnected_since = time.time()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if not self.resource_version:
                    self._relist()
                self._watch()
                backoff = 0.5
            except ApiException as exc:
                if exc.status == 410:
                    self.resource_version = ""
                else:
                    self._lost()
                log.warning("%s: %s; retrying in %.1fs", self.name, exc.reason, backoff)
            except Exception as exc:
                self._lost()
                log.warning("%s: %s; retrying in %.1fs", self.name, exc, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


def start_inventory_informers(api: client.ApiClient, inventory: Any) -> list[Informer]:
    """Keep ``inventory`` (a ClusterInventory) current with all nodes and all unfinished pods."""
    core = client.CoreV1Api(api)

    def node_event(kind: str, obj: JSON) -> None:
        if kind == "DELETED":
            inventory.delete_node(obj["metadata"]["name"])
        else:
            inventory.upsert_node(obj)

    def pod_event(kind: str, obj: JSON) -> None:
        if kind == "DELETED":
            inventory.delete_pod(obj["metadata"].get("uid", ""))
        else:
            inventory.upsert_pod(obj)

    nodes = Informer("nodes", core.list_node, node_event, inventory.replace_nodes).start()
    # Finished pods hold no slices; with this selector they arrive as DELETED when they finish.
    pods = Informer("pods", core.list_pod_for_all_namespaces, pod_event, inventory.replace_pods,
                    {"field_selector": "status.phase!=Succeeded,status.phase!=Failed"}).start()

    def sync_watcher() -> None:
        while not (nodes.synced.is_set() and pods.synced.is_set()):
            time.sleep(0.05)
        inventory.synced = True
        log.info("inventory synced: %d nodes", len(inventory.snapshot().nodes))

    threading.Thread(target=sync_watcher, name="inventory-sync", daemon=True).start()
    return [nodes, pods]


def staleness_check(informers: Iterable[Informer], limit: float) -> Callable[[], str]:
    """A readiness check: '' unless some informer has been cut off from the API for over ``limit`` s.

    A quiet but connected watch is fresh (no events simply means no changes); what makes the cache
    stale is a watch that keeps failing. The extender keeps answering from its cache meanwhile.
    """
    informers = list(informers)

    def check() -> str:
        now = time.time()
        stale = [f"{i.name}: API unreachable for {now - i.disconnected_since:.0f}s, answers come from a cache "
                 f"last updated {now - i.last_contact:.0f}s ago" for i in informers
                 if i.disconnected_since is not None and now - i.disconnected_since > limit]
        return "; ".join(stale)

    return check


class JsonPoster:
    """POSTs JSON through an ApiClient's own urllib3 pool, TLS settings and credentials.

    For the one write on kube-scheduler's critical path (a Binding per pod): the generated method spent
    about as much Python on pydantic argument validation and parameter serialisation as on the HTTP
    exchange itself, and the client's ``configuration.host`` scans the whole environment for proxy
    variables on every read (~0.3 ms a call): the host is read once here. Credentials are read per
    call, so a rotated service-account token is picked up as the generated client would.
    """

    def __init__(self, api: client.ApiClient, timeout: float = 4.0) -> None:
        # below kube-scheduler's extender httpTimeout (5 s in the generated configuration), so the
        # scheduler hears how the bind ended rather than giving up on a Binding that may still land
        self._api = api
        self._host = api.configuration.host
        self._timeout = timeout

    def post(self, path: str, body: JSON) -> None:
        """Raises ApiException on an error status."""
        api = self._api
        headers = {**api.default_headers, "Content-Type": "application/json", "Accept": "application/json"}
        for auth in api.configuration.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        response = api.rest_client.pool_manager.request("POST", self._host + path, body=orjson.dumps(body),
                                                        headers=headers, timeout=self._timeout)
        if response.status >= 400:
            exc = ApiException(status=response.status, reason=response.reason)
            exc.body = response.data.decode("utf-8", "replace")
            raise exc


class KubeBinder:
    """Creates pods' Bindings (the extender's bind verb)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._poster = JsonPoster(api)

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self._poster.post(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}/binding", body)


# --------------------------------------------------------------------------------------------------
# Leader election (coordination.k8s.io Lease), as client-go's leaderelection does it


def _micro(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_micro(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class LeaseElector:
    """Holds a Lease while alive. ``is_leader()`` is true only while the last renewal is younger than
    ``renew_deadline``, so a partitioned leader stops acting before anyone else may take over
    (``lease_duration`` > ``renew_deadline``)."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self._clock = clock
        self._renewed = 0.0
        self.transitions = 0
        self._stop = threading.Event()

    def is_leader(self) -> bool:
        return self._renewed > 0 and self._clock() - self._renewed < self.renew_deadline

    def try_acquire_or_renew(self) -> bool:
        now = self._clock()
        try:
            lease = raw(self._coord.read_namespaced_lease, self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                             "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}}
            try:
                raw(self._coord.create_namespaced_lease, self.namespace, body)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
            self._renewed = now
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        expires = _parse_micro(spec.get("renewTime")) + float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder != self.identity and holder and now < expires:
            self._renewed = 0.0
            return False
        if holder != self.identity:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = _micro(now)
            self.transitions += 1
        spec.update(holderIdentity=self.identity, renewTime=_micro(now),
                    leaseDurationSeconds=int(self.lease_duration))
        lease["spec"] = spec
        try:  # the resourceVersion we read makes this a compare-and-swap
            raw(self._coord.replace_namespaced_lease, self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._renewed = now
        return True

    def run(self) -> LeaseElector:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.try_acquire_or_renew()
                except Exception as exc:
                    log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                self._stop.wait(self.retry_period)

        threading.Thread(target=loop, name="leader-election", daemon=True).start()
        return self

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if release and self.is_leader():
            try:  # hand over at once rather than after lease_duration
                lease = raw(self._coord.read_namespaced_lease, self.name, self.namespace)
                lease["spec"]["holderIdentity"] = ""
                raw(self._coord.replace_namespaced_lease, self.name, self.namespace, lease)
            except Exception as exc:
                log.warning("releasing lease: %s", exc)
        self._renewed = 0.0


# --------------------------------------------------------------------------------------------------
# The reconciler's side effects: restarts, bare-pod recreation, events, rule annotations




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


def start_label_informer(api: client.ApiClient, kind: str = "namespaces") -> tuple[Informer, Callable[[str], dict]]:
    """Namespace labels kept current (the webhook's scheduler opt-in); returns (informer, lookup)."""
    core = client.CoreV1Api(api)
    labels: dict[str, dict[str, str]] = {}
    lock = threading.Lock()

    def on_event(kind_: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        with lock:
            if kind_ == "DELETED":
                labels.pop(name, None)
            else:
                labels[name] = dict(obj["metadata"].get("labels") or {})

    def on_relist(items: list[JSON]) -> None:
        with lock:
            labels.clear()
            labels.update({o["metadata"]["name"]: dict(o["metadata"].get("labels") or {}) for o in items})

    informer = Informer(kind, core.list_namespace, on_event, on_relist).start()

    def lookup(name: str) -> dict[str, str]:
        with lock:
            return dict(labels.get(name, {}))

    return informer, lookup
