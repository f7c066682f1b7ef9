"""Running the components under gunicorn, and building each one's parts from Settings.

gunicorn runs ONE worker process with threads (``gthread``) for every component: the extender's
inventory and reservations live in that process and gunicorn workers share no memory, so more workers
would keep separate books and promise the same slice twice. Scale by running one extender beside each
scheduler replica (only the leader is called), not by adding workers. Apps are built in the worker
(``preload_app`` off), so informer, lease and reconcile threads run where requests are served.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from .cluster.inventory import ClusterInventory, load_list
from .cluster.rulestore import MemoryRuleStore, RuleStore
from .components.extender import ExtenderService
from .components.metrics import Metrics
from .components.settings import Settings

log = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 5.0


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_store(settings: Settings, api: Any = None) -> RuleStore:
    if settings.store_kind == "kube":
        from .cluster.rulestore_kube import KubeRuleStore

        return KubeRuleStore(api, retention=settings.retention).start()
    return MemoryRuleStore(retention=settings.retention)


def _cluster(settings: Settings, inventory: ClusterInventory) -> tuple[Any, list[Any]]:
    """Fill ``inventory`` from the snapshot file or live informers; returns (api client or None, informers)."""
    if settings.snapshot:
        with open(settings.snapshot, encoding="utf-8") as fh:
            count = load_list(inventory, json.load(fh))
        log.info("loaded %d objects from %s (no cluster: binds are recorded, not sent)", count, settings.snapshot)
        return None, []
    if settings.has_cluster:
        from .cluster.client import api_client
        from .cluster.informer import start_inventory_informers

        api = api_client(settings.kubeconfig, settings.in_cluster)
        return api, start_inventory_informers(api, inventory)
    inventory.synced = True  # no cluster at all: ready, and every MIG pod fails with a clear reason
    return None, []


def _staleness(informers: list[Any], settings: Settings) -> Callable[[], str] | None:
    if not informers:
        return None
    from .cluster.informer import staleness_check

    return staleness_check(informers, settings.stale_after)


def build_service(settings: Settings) -> ExtenderService:
    """The extender: inventory, rule store, binder."""
    inventory = ClusterInventory()
    api, informers = _cluster(settings, inventory)
    binder = None
    if api is not None:
        from .cluster.actions import KubeBinder

        binder = KubeBinder(api)
    metrics = Metrics()
    service = ExtenderService(inventory, build_store(settings, api), settings.plan, metrics, binder)
    service.expire_rules = settings.store_kind == "memory"  # with rules in the API the reconciler does it
    metrics.watch(service.snapshot)
    informers = [*informers, *([service.store.informer] if getattr(service.store, "informer", None) else [])]
    if (check := _staleness(informers, settings)) is not None:
        service.checks.append(check)
    _every(HOUSEKEEPING_SECONDS, service.housekeeping, "housekeeping")
    _freeze_heap_when_synced(inventory)
    return service


def build_webhook(settings: Settings) -> Any:
    from .components.webhook import WebhookService

    if not settings.has_cluster:
        return WebhookService(MemoryRuleStore(retention=settings.retention))
    from .cluster.client import api_client
    from .cluster.informer import start_label_informer

    api = api_client(settings.kubeconfig, settings.in_cluster)
    namespaces, lookup = start_label_informer(api)
    service = WebhookService(build_store(settings, api), lookup)
    service.checks.append(lambda: "" if namespaces.synced.is_set() else "namespace labels not synced")
    return service


def build_reconciler(settings: Settings, lease_name: str, identity: str, dry_run: bool) -> Any:
    """The leader-elected reconciler. ``dry_run``: every write of its API client is logged and held back
    (cluster/dryrun.py), and it takes no Lease (it must never keep the real reconciler from leading)."""
    from .cluster.actions import KubeActions
    from .cluster.leases import LeaseElector
    from .components.reconciler import Reconciler

    if not settings.has_cluster:
        raise ValueError("reconcile needs a cluster (--kubeconfig or --in-cluster)")
    inventory = ClusterInventory()
    api, informers = _cluster(settings, inventory)
    is_leader: Callable[[], bool] = lambda: True  # noqa: E731 - a dry run logs what a leader would do
    if dry_run:
        from .cluster.dryrun import sandbox

        sandbox(api)
        log.warning("dry run: no write reaches the API server (each is logged as 'dry-run: would ...')")
    else:
        elector = LeaseElector(api, settings.namespace, lease_name, identity).run()
        _ON_EXIT.append(elector.stop)  # release the Lease on a graceful stop: the standby takes over at once
        is_leader = elector.is_leader
    metrics = Metrics()
    reconciler = Reconciler(inventory, build_store(settings, api), KubeActions(api), settings.plan, metrics,
                            is_leader=is_leader, retention=settings.retention)
    metrics.watch(lambda: inventory.snapshot(reconciler.store.list()))
    if (check := _staleness(informers, settings)) is not None:
        reconciler.checks.append(check)
    threading.Thread(target=reconciler.run, args=(threading.Event(),), name="reconcile", daemon=True).start()
    log.info("reconciler %s started; acting only while holding Lease %s/%s", identity, settings.namespace, lease_name)
    return reconciler


_ON_EXIT: list[Callable[[], None]] = []


def _worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's worker_exit hook: runs the components' shutdown steps (e.g. hand the Lease over)."""
    for step in _ON_EXIT:
        try:
            step()
        except Exception:
            log.exception("shutdown step failed")


def _every(seconds: float, task: Callable[[], None], name: str) -> None:
    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(seconds):
            try:
                task()
            except Exception:
                log.exception("%s failed", name)

    threading.Thread(target=loop, name=name, daemon=True).start()


def _freeze_heap_when_synced(inventory: ClusterInventory) -> None:
    """Once the first full list is in, move every object alive to the GC's permanent generation.

    The initial list leaves a large, long-lived heap (about 300 MB at 5,000 nodes); a full collection
    walks all of it, 250-300 ms measured at that size, and one would land on some scheduling call.
    Frozen objects are never scanned; what is allocated later is collected as usual.
    """
    def freeze() -> None:
        while not inventory.synced:
            time.sleep(0.5)
        gc.collect()
        gc.freeze()
        log.info("inventory synced: %d objects moved out of the collector's reach", gc.get_freeze_count())

    threading.Thread(target=freeze, name="gc-freeze", daemon=True).start()


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}"


# --------------------------------------------------------------------------------------------------
# gunicorn


_TLS: dict[tuple[str, str], Any] = {}


def _tls_context(conf: Any, default_factory: Callable[[], Any]) -> Any:
    """gunicorn asks for a context per connection: hand out one per process that reloads its files."""
    from .web.tls import ReloadingContext

    key = (conf.certfile, conf.keyfile)
    if key not in _TLS:
        _TLS[key] = ReloadingContext(conf.certfile, conf.keyfile).start()
    return _TLS[key].context


class Application(BaseApplication):
    """A gunicorn application serving ``build()`` (a Flask app) with one threaded worker."""

    def __init__(self, settings: Settings, build: Callable[[], Any], tls: tuple[str, str] | None = None) -> None:
        self.settings, self.build, self.tls = settings, build, tls
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        for key, value in {
            "bind": [s.bind, *([s.ops_bind] if s.ops_bind else [])],
            "workers": 1, "worker_class": "gthread", "threads": s.threads,
            # a request answers in milliseconds; a worker silent this long is stuck and is replaced
            "timeout": 30, "graceful_timeout": 10, "keepalive": 75,
            "loglevel": s.log_level, "accesslog": None, "errorlog": "-", "preload_app": False,
        }.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25 opens a control socket under $HOME: nothing here uses it, and the
            # container runs non-root with a read-only root filesystem
            self.cfg.set("control_socket_disable", True)
        self.cfg.set("worker_exit", _worker_exit)
        if self.tls:
            self.cfg.set("certfile", self.tls[0])
            self.cfg.set("keyfile", self.tls[1])
            self.cfg.set("ssl_context", _tls_context)

    def load(self) -> Any:
        _logging(self.settings)
        return self.build()
