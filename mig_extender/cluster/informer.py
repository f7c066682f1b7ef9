"""Informers: list then watch a collection and feed a consumer, like client-go's reflector.

They list with the list's resourceVersion, resume from the last seen version after a dropped connection,
relist on 410 Gone and hand raw JSON dicts to callbacks. Readiness reads their contact times. Must not:
write to the API (that is actions.py and the rule stores).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from .client import JSON, raw

log = logging.getLogger(__name__)


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


class Informer:
    """List+watch one collection in a daemon thread, feeding ``on_event(type, obj)``.

    ``on_relist(items)`` receives the full list (initial and after 410 Gone) so the consumer can drop
    objects whose delete it missed; ``items`` is an iterator read once, fetching pages as it goes, so a
    consumer must not hold a lock a reader waits on while it iterates (a page is a request to the API).
    ``last_contact`` is when the API last answered; ``stale_after`` drives readiness (the extender keeps
    answering from its cache while the API is away).
    """

    BACKOFF_START = 0.5  # seconds after a failed list or watch, doubling
    BACKOFF_MAX = 10.0

    def __init__(self, name: str, list_call: Callable[..., Any], on_event: Callable[[str, JSON], None],
                 on_relist: Callable[[Iterator[JSON]], None], list_kwargs: Mapping[str, Any] | None = None,
                 watch_timeout: int = 300, page_size: int = 500) -> None:
        self.name = name
        self._list = list_call
        self._on_event = on_event
        self._on_relist = on_relist
        self._kwargs = dict(list_kwargs or {})
        self._watch_timeout = watch_timeout
        self._page = page_size
        self._stop = threading.Event()
        self._listing_rv = ""
        self.synced = threading.Event()
        self.resource_version = ""
        self.last_contact = 0.0
        self.disconnected_since: float | None = None  # set while list/watch fail, cleared on reconnect
        self.resumed_at = 0.0  # monotonic: when the last reconnect after a failure was made
        self.relists = 0
        self._thread: threading.Thread | None = None

    def start(self) -> Informer:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _relist(self) -> None:
        """List page by page, handing each page's items to ``on_relist`` as they arrive.

        Only one page (``page_size`` objects) is held as JSON at a time: a list of every pod first, then
        its conversion, made the initial list of 100k pods peak at several times the steady memory
        (bench/memory.py). A consumer that stops early still gets the list finished, so the watch starts
        from the list's resourceVersion."""
        self._listing_rv = ""
        items = self._pages()
        self._on_relist(items)
        for _ in items:  # what the consumer left unread
            pass
        self.resource_version = self._listing_rv
        self.last_contact = time.time()
        self.disconnected_since = None  # a relist has delivered everything: caught up at once
        self.relists += 1
        self.synced.set()

    def _pages(self) -> Iterator[JSON]:
        cont = None
        while True:
            page = raw(self._list, limit=self._page, _continue=cont, **self._kwargs)
            self.last_contact = time.time()
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                self._listing_rv = (page.get("metadata") or {}).get("resourceVersion", "")
            items = page.pop("items", None) or []
            del page
            yield from items
            if not cont:
                return

    def _watch(self) -> None:
        response = self._list(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                              timeout_seconds=self._watch_timeout, _preload_content=False, **self._kwargs)
        try:
            self.last_contact = time.time()
            self._connected()
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return
                event = orjson.loads(line)
                obj = event.get("object") or {}
                self.last_contact = time.time()
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(f"watch error: {obj.get('message')}")
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                self.resource_version = (obj.get("metadata") or {}).get("resourceVersion", self.resource_version)
                if event.get("type") != "BOOKMARK":
                    try:
                        self._on_event(event["type"], obj)
                    except Exception:
                        log.exception("%s: handling %s event failed", self.name, event.get("type"))
        finally:
            response.release_conn()

    def caught_up(self, settle: float = 1.0) -> bool:
        """Listed, connected, and past ``settle`` seconds since a reconnect after a failure: a watch resumed
        from our last version delivers what it missed first, and a relist has delivered it all already."""
        return (self.synced.is_set() and self.disconnected_since is None
                and time.monotonic() - self.resumed_at >= settle)

    def _connected(self) -> None:
        if self.disconnected_since is not None:
            self.resumed_at = time.monotonic()
        self.disconnected_since = None

    def _lost(self) -> None:
        if self.disconnected_since is None:
            self.disconnected_since = time.time()

    def _run(self) -> None:
        backoff = self.BACKOFF_START
        expired = False  # the last attempt ended in a 410
        while not self._stop.is_set():
            try:
                if not self.resource_version:
                    self._relist()
                began = time.monotonic()
                self._watch()
                backoff, expired = self.BACKOFF_START, False
                if time.monotonic() - began > 1.0:
                    continue  # a watch that ran its course (its timeout) is resumed at once, as client-go does
            except (Expired, ApiException) as exc:
                if isinstance(exc, Expired) or exc.status == 410:
                    # The API answered: our version is too old. Relist now (soak D12), not after the backoff
                    # its earlier refusals built up, during which the API (and kube-scheduler's binds) ran
                    # ahead of our books; as client-go's reflector relists after an expired watch
                    # (tools/cache/reflector.go). A second 410 in a row backs off as usual.
                    self.resource_version = ""
                    if not expired:
                        expired, backoff = True, self.BACKOFF_START
                        log.warning("%s: %s; relisting now", self.name, exc)
                        continue
                else:
                    self._lost()
                log.warning("%s: %s; retrying in %.1fs", self.name, getattr(exc, "reason", exc), backoff)
            except Exception as exc:
                expired = False
                self._lost()
                log.warning("%s: %s; retrying in %.1fs", self.name, exc, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.BACKOFF_MAX)


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


def watch_gaps(informers: Iterable[Informer]) -> Callable[[], list[str]]:
    """The names of ``informers`` not caught up (cut off, or just back from a cut): while any is, no MIG pod
    is bound and the reconciler waits (soak D12)."""
    informers = list(informers)
    return lambda: [i.name for i in informers if not i.caught_up()]


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

    def on_relist(items: Iterable[JSON]) -> None:
        fresh = {o["metadata"]["name"]: dict(o["metadata"].get("labels") or {}) for o in items}
        with lock:
            labels.clear()
            labels.update(fresh)

    informer = Informer(kind, core.list_namespace, on_event, on_relist).start()

    def lookup(name: str) -> dict[str, str]:
        with lock:
            return dict(labels.get(name, {}))

    return informer, lookup
