"""Running the extender under gunicorn, and building its parts from Settings.

gunicorn runs ONE worker process with threads (``gthread``): the inventory, the reservations and the
rule cache live in that process, and gunicorn workers share no memory, so more workers would each keep
their own books and promise the same slice twice. Scale by running one extender beside each scheduler
replica (only the leader is called), not by adding workers. The app is built in the worker (not the
master, ``preload_app`` is off), so the informer threads run where requests are served.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from gunicorn.app.base import BaseApplication

from .inventory import ClusterInventory, load_list
from .metrics import Metrics
from .rulestore import MemoryRuleStore, RuleStore
from .service import ExtenderService
from .settings import Settings

log = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 5.0
STALE_AFTER_SECONDS = 120.0


def build_store(settings: Settings, api: Any = None) -> RuleStore:
    if settings.store_kind == "kube":
        from .kuberules import KubeRuleStore

        return KubeRuleStore(api, retention=settings.retention).start()
    return MemoryRuleStore(retention=settings.retention)


def build_service(settings: Settings) -> ExtenderService:
    """Inventory (from a snapshot file or live informers), rule store and binder, per ``settings``."""
    inventory = ClusterInventory()
    api = binder = None
    informers: list[Any] = []
    if settings.snapshot:
        with open(settings.snapshot, encoding="utf-8") as fh:
            count = load_list(inventory, json.load(fh))
        log.info("loaded %d objects from %s (no cluster: binds are recorded, not sent)", count, settings.snapshot)
    elif settings.has_cluster:
        from . import kube

        api = kube.api_client(settings.kubeconfig, settings.in_cluster)
        informers = kube.start_inventory_informers(api, inventory)
        binder = kube.KubeBinder(api)
    else:
        inventory.synced = True  # empty cluster: ready, every MIG pod fails with a clear reason
    metrics = Metrics()
    service = ExtenderService(inventory, build_store(settings, api), settings.plan, metrics, binder)
    metrics.watch(service.snapshot)
    if informers:
        from .kube import staleness_check

        service.checks.append(staleness_check(informers, STALE_AFTER_SECONDS))
    _start_housekeeping(service)
    return service


def _start_housekeeping(service: ExtenderService) -> None:
    """Drop binds the API never confirmed, and close expired rules (releasing their reservation)."""

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(HOUSEKEEPING_SECONDS):
            try:
                service.housekeeping()
            except Exception:
                log.exception("housekeeping failed")

    threading.Thread(target=loop, name="housekeeping", daemon=True).start()


class ExtenderApplication(BaseApplication):
    """A gunicorn application serving ``create_app`` with one threaded worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        for key, value in {
            "bind": s.bind, "workers": 1, "worker_class": "gthread", "threads": s.threads,
            # a verb answers in milliseconds; a worker silent this long is stuck and is replaced
            "timeout": 30, "graceful_timeout": 10, "keepalive": 75,
            "loglevel": s.log_level, "accesslog": None, "errorlog": "-", "preload_app": False,
        }.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25 opens a control socket under $HOME: nothing here uses it, and the
            # container runs non-root with a read-only root filesystem
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Any:
        from .app import create_app

        logging.basicConfig(level=self.settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return create_app(self.settings, build_service(self.settings))
