"""The only module that talks to the Kubernetes API: clients, informers and side effects.

Informers list then watch with the list's resourceVersion, resume from the last seen version after a
dropped connection, and relist on 410 Gone, like client-go's reflector; they hand raw JSON dicts to
callbacks (no model classes: cheaper, and the pure core reads plain dicts). Every mutating call can run
dry (``dry_run=True`` logs what it would do), and none is made on the extender's filter path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

JSON = Mapping[str, Any]
MERGE_PATCH = "application/merge-patch+json"


def api_client(kubeconfig: str = "", in_cluster: bool = False) -> client.ApiClient:
    """An ApiClient for a kubeconfig file or the pod's service account."""
    if in_cluster:
        config.load_incluster_config()
        return client.ApiClient()
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig or None, client_configuration=cfg)
    return client.ApiClient(cfg)


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a generated API method and return the JSON body as a dict (no model deserialization)."""
    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data or b"{}")


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
        self.relists += 1
        self._on_relist(items)
        self.synced.set()

    def _watch(self) -> None:
        response = self._list(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                              timeout_seconds=self._watch_timeout, _preload_content=False, **self._kwargs)
        try:
            self.last_contact = time.time()
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return
                event = json.loads(line)
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
                log.warning("%s: %s; retrying in %.1fs", self.name, exc.reason, backoff)
            except Exception as exc:
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
    """A readiness check: '' while every informer heard from the API within ``limit`` seconds."""
    informers = list(informers)

    def check() -> str:
        now = time.time()
        stale = [f"{i.name} watch silent for {now - i.last_contact:.0f}s" for i in informers
                 if i.synced.is_set() and now - i.last_contact > limit]
        return "; ".join(stale)

    return check


class KubeBinder:
    """Creates pods' Bindings (the extender's bind verb)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        # _preload_content=False: the generated client fails to deserialize the (empty) Binding reply
        self._core.create_namespaced_binding(namespace, body, _preload_content=False)
