"""Running the components under gunicorn, and building each one's parts from Settings.

gunicorn runs ONE worker process with threads (``gthread``) for every component: the extender's
inventory and reservations live in that process and gunicorn workers share no memory, so more workers
would keep separate books and promise the same slice twice. Scale by running one extender beside each
scheduler replica (only the leader is called), not by adding workers. Apps are built in the worker
(``preload_app`` off), so informer, lease and reconcile threads run where requests are served.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from gunicorn.app.base import BaseApplication

from .cluster.inventory import ClusterInventory, load_list
from .cluster.rulestore import MemoryRuleStore, RuleStore
from .components.extender import ExtenderService
from .components.metrics import Metrics
from .components.settings import Settings, SettingsError
from .core.rules import Rule, rule_from_object

log = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 5.0


# --------------------------------------------------------------------------------------------------
# Checks the CLI runs before gunicorn starts: a worker that fails to boot prints a 40-line traceback
# and gunicorn's own bind retries take 5 s, so every mistake a user can make is caught here first.


def read_snapshot(path: str) -> Mapping[str, Any]:
    """The v1 List in ``path``; SettingsError says what is wrong with the file in one line."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"--snapshot {path}: no such file") from None
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise SettingsError(f"--snapshot {path}: not JSON ({where})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"--snapshot {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise SettingsError(f"--snapshot {path}: not a v1 List with an 'items' array "
                            "(write one with kubectl get nodes,pods -A -o json)")
    return doc


def check_address(flag: str, address: str) -> None:
    """SettingsError unless this process could listen on ``address`` now (gunicorn would retry 5 s)."""
    host, _, port = address.rpartition(":")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SettingsError(f"{flag} {address}: cannot resolve {host!r} ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            hint = {errno.EADDRINUSE: "address already in use",
                    errno.EADDRNOTAVAIL: "not an address of this machine",
                    errno.EACCES: "permission denied (ports below 1024 need privileges)"}
            raise SettingsError(f"{flag} {address}: {hint.get(exc.errno, exc.strerror)}") from None


def check_tls(cert: str, key: str) -> None:
    """SettingsError unless ``cert`` and ``key`` load as a server certificate and its key."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not os.path.isfile(path):
            raise SettingsError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError):
        raise SettingsError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its key") from None


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # urllib3 logs each of its three retries of every call while the API server is away; the informer's
    # own warning says it once per attempt. Other urllib3 warnings (a full connection pool) stay.
    logging.getLogger("urllib3.connectionpool").addFilter(lambda record: not record.getMessage().startswith("Retrying"))


def build_store(settings: Settings, api: Any = None) -> RuleStore:
    if settings.store_kind == "kube":
        from .cluster.rulestore_kube import KubeRuleStore

        return KubeRuleStore(api, retention=settings.rule_retention).start()
    return MemoryRuleStore(retention=settings.rule_retention)


def snapshot_rules(doc: Mapping[str, Any]) -> list[Rule]:
    """The MigSubstitutions in a snapshot file (``kubectl get nodes,pods,migsubstitutions -A -o json``):
    served with the nodes and pods, their reservations count as they did in the cluster. One that cannot
    be read is logged and skipped, as the watch does."""
    rules = []
    for obj in doc.get("items") or []:
        if isinstance(obj, Mapping) and obj.get("kind") == "MigSubstitution":
            try:
                rules.append(rule_from_object(obj))
            except ValueError as exc:
                log.warning("--snapshot: %s", exc)
    return rules


def _cluster(settings: Settings, inventory: ClusterInventory) -> tuple[Any, list[Any], list[Rule]]:
    """Fill ``inventory`` from the snapshot file or live informers; returns (api client or None, informers,
    the snapshot's rules)."""
    if settings.snapshot:
        doc = read_snapshot(settings.snapshot)
        load_list(inventory, doc)
        rules = snapshot_rules(doc)
        snap = inventory.snapshot()
        log.info("serving the cluster saved in %s: %d nodes, %d MIG pods, %d MigSubstitutions read; no API "
                 "server, so binds are recorded here and not sent", settings.snapshot, len(snap.nodes),
                 len(inventory.pods()), len(rules))
        return None, [], rules
    if settings.has_cluster:
        from .cluster.client import api_client, describe_client_config
        from .cluster.informer import start_inventory_informers

        log.info("watching the cluster through %s", describe_client_config(settings.kubeconfig, settings.in_cluster))
        api = api_client(settings.kubeconfig, settings.in_cluster)
        return api, start_inventory_informers(api, inventory), []
    inventory.synced = True  # tests and simulations only: the CLI refuses to start without a source
    return None, [], []


def _disconnected(informers: list[Any]) -> Callable[[], dict[str, float]]:
    """Per watch, seconds since it lost the API server (0 while connected), for the metrics."""
    def seconds() -> dict[str, float]:
        now = time.time()
        return {i.name: (now - i.disconnected_since) if i.disconnected_since is not None else 0.0
                for i in informers}

    return seconds


def _staleness(informers: list[Any], settings: Settings) -> Callable[[], str] | None:
    if not informers:
        return None
    from .cluster.informer import staleness_check

    return staleness_check(informers, settings.stale_after)


def build_service(settings: Settings) -> ExtenderService:
    """The extender: inventory, rule store, binder."""
    inventory = ClusterInventory()
    api, informers, saved = _cluster(settings, inventory)
    binder = None
    if api is not None:
        from .cluster.actions import KubeBinder

        binder = KubeBinder(api)
    metrics = Metrics()
    store = build_store(settings, api)
    for rule in saved:  # only with --snapshot, whose store is the memory one
        store.record(rule)
    service = ExtenderService(inventory, store, settings.plan, metrics, binder)
    service.expire_rules = settings.store_kind == "memory"  # with rules in the API the reconciler does it
    metrics.watch(service.snapshot)
    informers = [*informers, *([service.store.informer] if getattr(service.store, "informer", None) else [])]
    if (check := _staleness(informers, settings)) is not None:
        service.checks.append(check)
    from .cluster.informer import watch_gaps

    service.watch_gaps = watch_gaps(informers)
    if api is not None:  # not in readiness: the device plugin route does not need DRA's objects
        service.dra = watch_dra(api, metrics)
    metrics.watch_health(service.readiness_problems, _disconnected(informers))
    _every(HOUSEKEEPING_SECONDS, service.housekeeping, "housekeeping")
    _report_gpu_problems(inventory, api)
    _freeze_heap_when_synced(inventory)
    return service


def watch_dra(api: Any, metrics: Metrics) -> Any:
    """The DRA book, watched when the API server serves resource.k8s.io; its metrics only then (a cluster
    without DRA shows no mig_extender_dra_* series, not zeros)."""
    from .cluster import drainventory

    book = drainventory.DraInventory()
    if drainventory.start_dra_informers(api, book):
        metrics.watch_dra(book.usage)
    return book


def _report_gpu_problems(inventory: ClusterInventory, api: Any) -> None:
    """Nodes whose GPU is not recognised: once each in the log and, with a cluster, as a node Event.
    Its own thread, so a slow API server delays neither scheduling calls nor housekeeping."""
    from .components.gpureport import GpuProblemReporter

    write = None
    if api is not None:
        from .cluster.actions import NodeEvents

        write = NodeEvents(api, component="extender").warn
    reporter = GpuProblemReporter(inventory.gpu_problems, write)

    def report() -> None:
        if inventory.synced:  # a half-listed cluster would report nodes whose labels are still coming
            reporter.run_once()

    _every(HOUSEKEEPING_SECONDS, report, "gpu-problems")


def build_webhook(settings: Settings) -> Any:
    from .components.webhook import WebhookService

    if not settings.has_cluster:
        service = WebhookService(MemoryRuleStore(retention=settings.rule_retention))
        service.metrics.watch_health(service.readiness_problems, dict)
        return service
    from .cluster.client import api_client
    from .cluster.informer import start_label_informer

    api = api_client(settings.kubeconfig, settings.in_cluster)
    namespaces, lookup = start_label_informer(api)
    from .cluster.draobjects import KubeDraObjects

    service = WebhookService(build_store(settings, api), lookup, dra_templates=KubeDraObjects(api).template_names)
    service.checks.append(lambda: "" if namespaces.synced.is_set() else "namespace labels not synced")
    informers = [namespaces, *([service.store.informer] if getattr(service.store, "informer", None) else [])]
    service.metrics.watch_health(service.readiness_problems, _disconnected(informers))
    return service


def build_reconciler(settings: Settings, lease_name: str, identity: str, dry_run: bool) -> Any:
    """The leader-elected reconciler. ``dry_run``: every write of its API client is logged and held back
    (cluster/dryrun.py), and it takes no Lease (it must never keep the real reconciler from leading)."""
    from .cluster.actions import KubeActions
    from .cluster.leases import LeaseElector

    if not settings.has_cluster:
        raise ValueError("reconcile needs a cluster (--kubeconfig or --in-cluster)")
    inventory = ClusterInventory()
    api, informers, _ = _cluster(settings, inventory)
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
    from .cluster.draobjects import KubeDraObjects
    from .components.drarestore import DraRestorer
    from .components.dratemplates import DraTemplateSync

    actions, dra_objects = KubeActions(api), KubeDraObjects(api)
    dra = DraTemplateSync(dra_objects, restorer=DraRestorer(
        dra_objects, actions, settings.plan.restartable_owners, backoff=settings.plan.restore_backoff_after,
        restart_limit=settings.plan.restart_limit, restart_window=settings.plan.restart_window))
    reconciler = new_reconciler(settings, inventory, build_store(settings, api), actions, metrics, is_leader, dra)
    metrics.watch(lambda: inventory.snapshot(reconciler.store.book()))
    reconciler.repartitioner = _repartitioner(settings, api, metrics)
    if (check := _staleness(informers, settings)) is not None:
        reconciler.checks.append(check)
    if (subscribe := getattr(reconciler.store, "subscribe", None)) is not None:
        subscribe(reconciler.wake)  # act on a rule's creation by watch, not at the next pass (issue 19)
    store_informer = getattr(reconciler.store, "informer", None)
    watched = [*informers, *([store_informer] if store_informer else [])]
    from .cluster.informer import watch_gaps

    reconciler.watch_gaps = watch_gaps(watched)
    metrics.watch_health(reconciler.readiness_problems, _disconnected(watched))
    threading.Thread(target=reconciler.run, args=(threading.Event(),), name="reconcile", daemon=True).start()
    log.info("reconciler %s started; acting only while holding Lease %s/%s", identity, settings.namespace, lease_name)
    return reconciler


def new_reconciler(settings: Settings, inventory: ClusterInventory, store: RuleStore, actions: Any,
                   metrics: Metrics, is_leader: Callable[[], bool], dra: Any) -> Any:
    """The Reconciler with every knob from ``settings``; apart from the wiring so a test can see them."""
    from .components.reconciler import Reconciler

    return Reconciler(inventory, store, actions, settings.plan, metrics, is_leader=is_leader,
                      retention=settings.rule_retention, preemption=settings.preemption_settings, dra=dra,
                      requeue=settings.requeue_settings)


def _repartitioner(settings: Settings, api: Any, metrics: Metrics) -> Any:
    """The repartition actuator. Built in every mode: with ``off`` it only finishes changes recorded on
    nodes (a reservation left behind would hold its node for good) and starts none."""
    from .cluster.actions import NodeEvents, NodeLabels
    from .components.repartitioner import Repartitioner, load_mig_configs

    configs = load_mig_configs(settings.mig_configs) if settings.mig_configs else ()
    log.info("repartition %s; %d named MIG configs", settings.repartition, len(configs))
    return Repartitioner(settings.repartition, settings.repartition_settings, configs, NodeLabels(api),
                         NodeEvents(api, component="reconciler"), metrics)


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
    """Once the first full list is in, say what the inventory holds, and move every object alive to the
    GC's permanent generation.

    The initial list leaves a large, long-lived heap (about 300 MB at 5,000 nodes); a full collection
    walks all of it, 250-300 ms measured at that size, and one would land on some scheduling call.
    Frozen objects are never scanned; what is allocated later is collected as usual.
    """
    def freeze() -> None:
        while not inventory.synced:
            time.sleep(0.5)
        nodes = inventory.snapshot().nodes
        log.info("inventory synced: %d nodes (%d with MIG slices, %d with an unrecognised GPU), %d MIG pods",
                 len(nodes), sum(1 for n in nodes.values() if n.allocatable), len(inventory.gpu_problems()),
                 len(inventory.pods()))
        gc.collect()
        gc.freeze()
        log.debug("froze %d long-lived objects: full garbage collections no longer scan them",
                  gc.get_freeze_count())

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
