"""The ``mig-extender`` command: one subcommand per component or tool.

Parses flags into Settings (validated once, here), finds the cluster as kubectl would, checks what a
user can get wrong (files, listen addresses, credentials) before gunicorn starts, and hands over; no
decisions of its own. A mistake is one line on stderr, naming the flag. Exit codes: 0 success, 2 bad
usage or settings.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .components.settings import (
    ENV_PREFIX,
    LOG_LEVELS,
    REPARTITION_MODES,
    RESTORE_POLICIES,
    Settings,
    SettingsError,
    dns_label_problem,
)
from .core.planner import PlanSettings, Policy

ENV_NAMESPACE = ENV_PREFIX + "NAMESPACE"  # serve and webhook have no --namespace: only this can set it


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line, naming the flag (not the usage block)."""

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"^argument (--[\w-]+)(?:/[\w-]+)?: ", r"\1 ", message)
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text.lower()

    return parse


def _add_cluster_flags(p: argparse.ArgumentParser, snapshot: bool = True) -> None:
    src = p.add_mutually_exclusive_group()
    if snapshot:
        src.add_argument("--snapshot", metavar="FILE", default="",
                         help="serve the cluster saved in FILE by `kubectl get nodes,pods -A -o json` (add "
                              "migsubstitutions to serve its rules too; no API server: binds are recorded, not sent)")
    src.add_argument("--kubeconfig", metavar="PATH", default="",
                     help="kubeconfig of the cluster to watch (default, as kubectl: the pod's service account "
                          "in a pod, else $KUBECONFIG, else ~/.kube/config)")
    src.add_argument("--in-cluster", action="store_true", help="use the pod's service account")


def _add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", type=_one_of(*LOG_LEVELS), default=Settings.log_level, metavar="LEVEL",
                   help=f"one of {', '.join(LOG_LEVELS)} (default: %(default)s)")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_integer, default=Settings.threads, metavar="N",
                   help="request threads of the one gunicorn worker (default: %(default)s); never more "
                        "workers: the books live in one process")


AGING_HELP = ("a pod pending this long outranks younger pods queued for a larger type it could take as a "
              "substitute: shorter evens out the wait across types, longer keeps large slices for their own "
              f"queues (more useful utilisation, fewer restarts; inf: never) (default: {Settings.aging:g})")


# flags that default to None: given, they override the environment (MIG_EXTENDER_<FIELD>); not given, it stands
LOOP_GUARD_FLAGS = ("restart_limit", "restart_window")
RESTORE_REQUEUE_FLAGS = ("restore_policy", "restore_young", "requeue_after", "requeue_max_delay",
                         "requeues_per_pass", "requeue_schedulers")


def _add_loop_guard_flags(p: argparse.ArgumentParser) -> None:
    """On serve (its filter refuses a substitute past the limit) and reconcile (upgrades and restores)."""
    p.add_argument("--restart-limit", type=_integer, default=None, metavar="N",
                   help="restarts by mig-extender (upgrades and restores together) a pod and its replacements "
                        f"may have within --restart-window (default: {Settings.restart_limit}: an upgrade and "
                        "its restore; 1: an upgraded pod is never restored; more: a restored pod may be upgraded "
                        "again, more restarts for less waiting); give serve and "
                        "reconcile the same value")
    p.add_argument("--restart-window", type=_seconds, default=None, metavar="SECONDS",
                   help=f"the window of --restart-limit (default: {Settings.restart_window:g}; finished rules "
                        "are kept at least this long: the limit counts from them)")


def _add_restore_requeue_flags(r: argparse.ArgumentParser) -> None:
    r.add_argument("--restore-policy", type=_one_of(*RESTORE_POLICIES), default=None,
                   metavar="{" + ",".join(RESTORE_POLICIES) + "}",
                   help="taker: restore a substituted pod only when a queued pod wants the larger slice it "
                        "frees, or the pod is younger than --restore-young; always: whenever its own type "
                        f"frees (more restarts, less waste) (default: {Settings.restore_policy})")
    r.add_argument("--restore-young", type=_seconds, default=None, metavar="SECONDS",
                   help="with --restore-policy taker, a pod started on a substitute of at least twice its "
                        "compute less than this ago is restored without a taker: it loses little work "
                        f"(default: {Settings.restore_young:g})")
    r.add_argument("--requeue-after", type=_seconds, default=None, metavar="SECONDS",
                   help="a pod kube-scheduler parked as unschedulable that fits in mig-extender's view this "
                        "long is requeued (one pod status write), then again after doubling delays "
                        f"(default: {Settings.requeue_after:g}: the scheduler's own backoff comes first)")
    r.add_argument("--requeue-max-delay", type=_seconds, default=None, metavar="SECONDS",
                   help=f"longest delay between requeues of one pod (default: {Settings.requeue_max_delay:g})")
    r.add_argument("--requeues-per-pass", type=_integer, default=None, metavar="N",
                   help=f"requeues one pass may write (default: {Settings.requeues_per_pass}; 0: no requeues)")
    r.add_argument("--requeue-schedulers", default=None, metavar="NAME,...",
                   help="schedulerNames whose parked pods may be requeued: the schedulers configured with the "
                        f"extender (default: {Settings.requeue_schedulers}); pods of others are never written")


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The flags among ``names`` given on the command line (the others are None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


RULE_TTL_HELP = ("seconds a recorded substitution keeps its slice reserved for the pod's replacement "
                 "(default: %(default)g); give serve and reconcile the same value")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="mig-extender", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"mig-extender {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub.add_parser("serve", help="run the scheduler extender (gunicorn, one threaded worker)"))
    _webhook_parser(sub.add_parser("webhook", help="run the mutating admission webhook (HTTPS)"))
    _reconcile_parser(sub.add_parser("reconcile", help="run the reconciler (leader-elected): upgrade and "
                                                       "restore pods"))
    _certs_parser(sub.add_parser("certs", help="make a CA and a webhook serving certificate; print the caBundle"))
    p = sub.add_parser("profiles", help="print the MIG catalog and what each profile may be substituted by")
    p.add_argument("--gpu", metavar="NAME", help="a model (A100-40GB), a family (A100: all its models) or a "
                   "GPU feature discovery product (NVIDIA-A100-SXM4-40GB) (default: every model)")
    _scheduler_config_parser(sub.add_parser("scheduler-config",
                                            help="write the KubeSchedulerConfiguration for the extender"))
    e = sub.add_parser("explain", help="why a pod is (not) placed or substituted: each node's verdict and the "
                                       "pod's rules, from a running extender's /debug/pods")
    e.add_argument("pod", metavar="NAMESPACE/NAME")
    e.add_argument("--url", default=f"http://{Settings.bind}", metavar="URL",
                   help="the extender's address (default: %(default)s; kubectl port-forward to reach one in "
                        "a cluster)")
    e.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS", help="default: %(default)s")

    from .sim.runner import add_arguments as simulate_arguments  # its flags live beside the simulator

    simulate_arguments(sub.add_parser("simulate", help="compare placement policies on a simulated MIG cluster "
                                                       "(synthetic or Alibaba trace workload)"))
    return ap


RESTARTABLE_HELP = ("owner kinds, besides ReplicaSet/StatefulSet/Job/ReplicationController, whose controller "
                    "recreates a deleted pod: group/Kind (ray.io/RayCluster) or Kind; pods of other owners are "
                    "never substituted or restarted (default: none; the same list on serve and reconcile)")


def _serve_parser(s: argparse.ArgumentParser) -> None:
    s.add_argument("--bind", default=Settings.bind, metavar="HOST:PORT",
                   help="scheduler verbs, /debug/* and ops endpoints (default: %(default)s; keep it on loopback: "
                        "/bind binds any pod for whoever reaches it)")
    s.add_argument("--metrics-bind", default="", metavar="HOST:PORT",
                   help="a second address serving only /healthz, /readyz and /metrics (default: none)")
    _add_cluster_flags(s)
    s.add_argument("--rule-store", type=_one_of("memory", "kube"), default=None, metavar="{memory,kube}",
                   help="where substitution rules live (default: kube, as MigSubstitution objects, with a "
                        "cluster; memory with --snapshot)")
    s.add_argument("--rule-ttl", type=_seconds, default=Settings.rule_ttl, metavar="SECONDS", help=RULE_TTL_HELP)
    s.add_argument("--policy", type=_one_of(*(p.value for p in Policy)), default=Settings.policy,
                   metavar="{pack,spread}", help="pack: prefer nodes whose slices are already in use (best "
                                                 "fit), keeping whole nodes free; spread: the opposite "
                                                 "(default: %(default)s)")
    s.add_argument("--no-substitution", action="store_true", help="exact MIG type only (stock behaviour)")
    s.add_argument("--restartable-owners", default=None, metavar="KIND,...", help=RESTARTABLE_HELP)
    s.add_argument("--aging", type=_seconds, default=None, metavar="SECONDS", help=AGING_HELP)
    _add_loop_guard_flags(s)
    s.add_argument("--no-debug-endpoints", action="store_true", help="do not serve /debug/*")
    s.add_argument("--tls-cert", default="", metavar="FILE", help="serve HTTPS with this certificate (reloaded "
                   "on change); set enableHTTPS and tlsConfig in the scheduler's extender entry to match "
                   "(default: plain HTTP)")
    s.add_argument("--tls-key", default="", metavar="FILE", help="its private key")
    _add_threads(s)
    _add_log_level(s)


def _webhook_parser(w: argparse.ArgumentParser) -> None:
    w.add_argument("--bind", default="0.0.0.0:8443", metavar="HOST:PORT", help="default: %(default)s")
    _add_cluster_flags(w, snapshot=False)
    w.add_argument("--no-cluster", action="store_true",
                   help="watch no cluster: no rules, so no pod is rewritten (local experiments, benchmarks)")
    w.add_argument("--tls-cert", default="", metavar="FILE", help="serving certificate (reloaded when the file "
                                                                  "changes)")
    w.add_argument("--tls-key", default="", metavar="FILE", help="its private key")
    w.add_argument("--plain-http", action="store_true", help="serve without TLS (local experiments only)")
    _add_threads(w)
    _add_log_level(w)


def _reconcile_parser(r: argparse.ArgumentParser) -> None:
    _add_cluster_flags(r, snapshot=False)
    r.add_argument("--metrics-bind", default="0.0.0.0:9090", metavar="HOST:PORT",
                   help="where /healthz, /readyz and /metrics are served (default: %(default)s)")
    r.add_argument("--namespace", default=None,
                   help=f"namespace of the leader-election Lease (default: $MIG_EXTENDER_NAMESPACE, else "
                        f"{Settings.namespace})")
    r.add_argument("--lease-name", default="mig-extender-reconciler", help="default: %(default)s")
    r.add_argument("--identity", default="", help="leader-election identity (default: hostname_pid)")
    r.add_argument("--rule-ttl", type=_seconds, default=Settings.rule_ttl, metavar="SECONDS", help=RULE_TTL_HELP)
    r.add_argument("--restore-ttl", type=_seconds, default=Settings.restore_ttl, metavar="SECONDS",
                   help="seconds a restore keeps the original slice reserved for the restarted pod "
                        "(default: %(default)g)")
    r.add_argument("--restores-per-pass", type=_integer, default=PlanSettings.restores_per_pass, metavar="N",
                   help="restores one pass may start, each restarts a pod (default: %(default)s; 0: no restores)")
    r.add_argument("--restores-in-flight", type=_integer, default=PlanSettings.restores_in_flight, metavar="N",
                   help="restores under way at once (default: %(default)s)")
    _add_loop_guard_flags(r)
    _add_restore_requeue_flags(r)
    r.add_argument("--aging", type=_seconds, default=None, metavar="SECONDS",
                   help=AGING_HELP + "; its explain step reads it: give serve the same value")
    r.add_argument("--no-preemption", action="store_true",
                   help="never preempt lower-priority pods for a pending MIG pod (docs/preemption.md)")
    r.add_argument("--preemptions-per-pass", type=_integer, default=Settings.preemptions_per_pass, metavar="N",
                   help="preemptions one pass may start (default: %(default)s)")
    r.add_argument("--preemption-margin", type=_seconds, default=Settings.preemption_margin, metavar="SECONDS",
                   help="a preemption keeps the freed slices for its pod for the victims' grace period plus "
                        "this (default: %(default)g)")
    r.add_argument("--dry-run", action="store_true", help="log every write (restarts, rule updates, events) "
                                                          "instead of sending it; takes no Lease")
    r.add_argument("--restartable-owners", default=None, metavar="KIND,...", help=RESTARTABLE_HELP)
    _add_repartition_flags(r)
    _add_log_level(r)


def _add_repartition_flags(r: argparse.ArgumentParser) -> None:
    r.add_argument("--repartition", type=_one_of(*REPARTITION_MODES), default=None, metavar="{off,advise,on}",
                   help="change the MIG layout of idle GPUs on nodes labelled mig-extender.io/repartition=true "
                        "through the MIG manager: advise = Events and /debug/repartition only "
                        f"(default: {Settings.repartition}; docs/repartition.md)")
    r.add_argument("--mig-configs", default=None, metavar="FILE",
                   help="the MIG manager's config.yaml (or its ConfigMap): the config names it may set")
    for flag, name, kind, what in (
            ("--repartition-window", "repartition_window", _seconds, "seconds demand must persist"),
            ("--repartition-cooldown", "repartition_cooldown", _seconds, "seconds a changed node is left alone"),
            ("--repartition-in-flight", "repartition_in_flight", _integer, "GPUs being changed at once"),
            ("--repartition-timeout", "repartition_timeout", _seconds, "seconds before a change is rolled back"),
            ("--repartition-settle", "repartition_settle", _seconds,
             "seconds between reserving a node and writing its label")):
        r.add_argument(flag, dest=name, type=kind, default=None, metavar="N",
                       help=f"{what} (default: {getattr(Settings, name):g})")


def _certs_parser(k: argparse.ArgumentParser) -> None:
    k.add_argument("--out", default="certs", metavar="DIR",
                   help="directory for ca.crt, tls.crt and tls.key (default: %(default)s)")
    k.add_argument("--service", default="mig-extender-webhook",
                   help="the webhook Service the certificate names (default: %(default)s)")
    k.add_argument("--namespace", default=Settings.namespace, help="its namespace (default: %(default)s)")
    k.add_argument("--days", type=_integer, default=365, metavar="DAYS",
                   help="validity of the CA and the certificate, in days (default: %(default)s)")


def _scheduler_config_parser(c: argparse.ArgumentParser) -> None:
    c.add_argument("--url", default="http://127.0.0.1:8888",
                   help="extender URL as the scheduler reaches it (default: %(default)s)")
    c.add_argument("--variant", type=_one_of("second", "default"), default="second", metavar="{second,default}",
                   help="second: a separate mig-scheduler; default: extend the default scheduler "
                        "(default: %(default)s)")
    c.add_argument("--kubeconfig", default="", help="clientConnection.kubeconfig (default: in-cluster)")
    c.add_argument("--no-leader-elect", action="store_true", help="single scheduler without a Lease")
    c.add_argument("--namespace", default=Settings.namespace,
                   help="namespace of the leader-election Lease (default: %(default)s)")
    c.add_argument("--qps", type=_integer, default=200,
                   help="scheduler client queries per second; burst is twice this (default: %(default)s)")
    c.add_argument("--scheduler-name", default="", help="profile name (default: mig-scheduler, or "
                   "default-scheduler for --variant default)")
    c.add_argument("--out", default="-", help="file to write (default: stdout)")


# --------------------------------------------------------------------------------------------------
# Settings and the checks that run before gunicorn


def _with_cluster(settings: Settings, command: str, otherwise: str = "") -> Settings:
    """Where ``command`` finds its cluster: the flags, else as kubectl does (in a pod: its service account;
    else $KUBECONFIG; else ~/.kube/config); checked before gunicorn starts. Never none: without a source
    the extender used to start empty, report ready and fail every pod."""
    from .cluster.client import default_kubeconfig, in_a_pod

    if settings.snapshot or settings.has_cluster:
        _check_cluster(settings, "--in-cluster" if settings.in_cluster else "--kubeconfig")
        return settings
    if not in_a_pod():
        settings = replace(settings, in_cluster=True)
        _check_cluster(settings, "the pod's service account")
        return settings
    path, origin = default_kubeconfig()
    if not path:
        why = f"no cluster to watch: not in a pod, {origin}; give --kubeconfig PATH"
        raise SettingsError(why + (f", or {otherwise}" if otherwise else ""))
    settings = replace(settings, kubeconfig=path)
    _check_cluster(settings, origin)
    print(f"mig-extender {command}: watching the cluster of kubeconfig {path} ({origin}), as kubectl would",
          file=sys.stderr)
    return settings


def _check_cluster(settings: Settings, given_by: str) -> None:
    """The snapshot or client configuration loads (no API call): a bad one fails here, in one line."""
    from .cluster.client import ClientConfigError, describe_client_config
    from .process import read_snapshot

    if settings.snapshot:
        read_snapshot(settings.snapshot)
        return
    try:
        describe_client_config(settings.kubeconfig, settings.in_cluster)
    except ClientConfigError as exc:
        if settings.in_cluster:
            raise SettingsError(f"{given_by}: {exc}; outside a cluster give --kubeconfig PATH") from None
        raise SettingsError(f"{given_by} {settings.kubeconfig}: {exc}") from None


def _check_serving(settings: Settings, tls: tuple[str, str] | None, bind_flag: str = "--bind") -> None:
    from .process import check_address, check_tls

    if tls is not None:
        check_tls(*tls)
    check_address(bind_flag, settings.bind)
    if settings.ops_bind:
        check_address("--metrics-bind", settings.ops_bind)


def _tls(args: argparse.Namespace) -> tuple[str, str] | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SettingsError("give both --tls-cert and --tls-key, or neither")
    return (args.tls_cert, args.tls_key) if args.tls_cert else None


def _serve_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    base = Settings().with_env(environ)
    return replace(
        base, bind=args.bind, ops_bind=args.metrics_bind, snapshot=args.snapshot, kubeconfig=args.kubeconfig,
        in_cluster=args.in_cluster,
        rule_store=args.rule_store or base.rule_store, rule_ttl=args.rule_ttl, policy=args.policy,
        substitution=base.substitution and not args.no_substitution,
        debug_endpoints=base.debug_endpoints and not args.no_debug_endpoints,
        threads=args.threads, log_level=args.log_level,
        restartable_owners=base.restartable_owners if args.restartable_owners is None else args.restartable_owners,
        **_given(args, (*LOOP_GUARD_FLAGS, "aging")),
    ).validate(namespace_from=ENV_NAMESPACE)


def _serve(args: argparse.Namespace) -> None:
    from .process import Application, build_service
    from .web.app import create_app

    settings = _with_cluster(_serve_settings(args), "serve", "--snapshot FILE to serve a saved "
                                                             "`kubectl get nodes,pods -A -o json`")
    tls = _tls(args)
    _check_serving(settings, tls)
    Application(settings, lambda: create_app(settings, build_service(settings)), tls).run()


def _webhook(args: argparse.Namespace) -> None:
    from .process import Application, build_webhook
    from .web.app import create_webhook_app

    settings = replace(Settings().with_env(), bind=args.bind, kubeconfig=args.kubeconfig,
                       in_cluster=args.in_cluster, threads=args.threads,
                       log_level=args.log_level).validate(namespace_from=ENV_NAMESPACE)
    if args.no_cluster and settings.has_cluster:
        raise SettingsError("--no-cluster contradicts --kubeconfig and --in-cluster")
    if not args.no_cluster:
        settings = _with_cluster(settings, "webhook", "--no-cluster to serve with no rules (local experiments)")
    if not args.plain_http and not (args.tls_cert and args.tls_key):
        raise SettingsError("webhook needs --tls-cert and --tls-key (the API server only calls HTTPS), "
                            "or --plain-http for a local experiment")
    tls = None if args.plain_http else (args.tls_cert, args.tls_key)
    _check_serving(settings, tls)
    Application(settings, lambda: create_webhook_app(settings, build_webhook(settings)), tls).run()


def _reconcile(args: argparse.Namespace) -> None:
    from .process import Application, build_reconciler, default_identity
    from .web.app import create_ops_app

    settings = _with_cluster(_reconcile_settings(args), "reconcile")
    identity = args.identity or default_identity()
    _check_serving(settings, None, bind_flag="--metrics-bind")
    Application(settings, lambda: create_ops_app(
        settings, build_reconciler(settings, args.lease_name, identity, args.dry_run))).run()


def _reconcile_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    settings = replace(Settings().with_env(environ), bind=args.metrics_bind, kubeconfig=args.kubeconfig,
                       in_cluster=args.in_cluster, rule_ttl=args.rule_ttl,
                       restore_ttl=args.restore_ttl, restores_per_pass=args.restores_per_pass,
                       restores_in_flight=args.restores_in_flight, threads=2,
                       log_level=args.log_level, preemptions_per_pass=args.preemptions_per_pass,
                       preemption_margin=args.preemption_margin,
                       **_given(args, ("namespace", *LOOP_GUARD_FLAGS, *RESTORE_REQUEUE_FLAGS, "aging")),
                       ).validate("--metrics-bind")
    if args.no_preemption:
        settings = replace(settings, preemption=False)
    if args.restartable_owners is not None:
        settings = replace(settings, restartable_owners=args.restartable_owners).validate()
    return _repartition_settings(settings, args)


def _repartition_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """Flags given override the environment; the name map is read now, so a bad file is one line here."""
    given = {name: getattr(args, name) for name in ("repartition", "mig_configs", "repartition_window",
                                                     "repartition_cooldown", "repartition_in_flight",
                                                     "repartition_timeout", "repartition_settle")
             if getattr(args, name) is not None}
    settings = replace(settings, **given).validate()
    if settings.mig_configs:
        from .components.repartitioner import ConfigError, load_mig_configs

        try:
            load_mig_configs(settings.mig_configs)
        except ConfigError as exc:
            raise SettingsError(str(exc)) from None
    return settings


def _certs(args: argparse.Namespace) -> None:
    from .certs import generate

    if args.days < 1:
        raise SettingsError(f"--days must be >= 1, got {args.days}")
    if problem := dns_label_problem("--service", args.service) or dns_label_problem("--namespace", args.namespace):
        raise SettingsError(problem)
    try:
        bundle = generate(Path(args.out), args.service, args.namespace, args.days)
    except OSError as exc:
        raise SettingsError(f"cannot write to --out {args.out}: {exc.strerror or exc}") from None
    print(f"# wrote {args.out}/ca.crt, tls.crt, tls.key (key mode 0600); caBundle:", file=sys.stderr)
    print(bundle)


def _scheduler_config(args: argparse.Namespace) -> None:
    """Write kube-scheduler's configuration; refuse one it could not use: a URL with no scheme or host
    makes every extender call fail at run time, a qps of 0 falls back to client-go's 5 per second, a
    negative one fails kube-scheduler's validation (burst = 2 x qps must not be negative)."""
    from urllib.parse import urlsplit

    from .core.schedconfig import render

    try:  # an unclosed '[' and (on .port) a port out of range or not a number raise ValueError: no address either
        url = urlsplit(args.url)
        usable = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:
        usable = False
    if not usable:
        raise SettingsError(f"--url must be http(s)://HOST[:PORT][/PATH], got {args.url!r}")
    if args.qps < 1:
        raise SettingsError(f"--qps must be at least 1, got {args.qps}")
    if problem := dns_label_problem("--namespace", args.namespace):
        raise SettingsError(problem)
    text = render(args.url, args.variant, args.kubeconfig, not args.no_leader_elect, args.namespace,
                  args.qps, scheduler_name=args.scheduler_name)
    if args.out == "-":
        sys.stdout.write(text)
        return
    try:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise SettingsError(f"cannot write --out {args.out}: {exc.strerror or exc}") from None


def _fetch_explanation(args: argparse.Namespace) -> dict[str, Any]:
    """GET /debug/pods/<ns>/<name> from the extender at --url; a SettingsError (one line) for every user
    mistake: a malformed pod name, an address nobody answers on, an unknown pod, no debug endpoints."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    namespace, _, name = args.pod.partition("/")
    if not namespace or not name or "/" in name:
        raise SettingsError(f"give the pod as NAMESPACE/NAME, got {args.pod!r}")
    if not args.url.startswith(("http://", "https://")):
        raise SettingsError(f"--url must start with http:// or https://, got {args.url!r}")
    if args.timeout <= 0:
        raise SettingsError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    url = args.url.rstrip("/")
    path = f"/debug/pods/{urllib.parse.quote(namespace, safe='')}/{urllib.parse.quote(name, safe='')}"
    try:
        with urllib.request.urlopen(url + path, timeout=args.timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise SettingsError(_http_error(exc, args.url, namespace, name)) from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise SettingsError(f"--url {args.url}: cannot reach the extender "
                            f"({getattr(why, 'strerror', None) or why})") from None
    except ValueError as exc:  # urllib's word for a URL it cannot use ("no host given")
        raise SettingsError(f"--url {args.url}: {exc}") from None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise SettingsError(f"--url {args.url}: the answer is not JSON ({exc})") from None


def _http_error(exc: Any, url: str, namespace: str, name: str) -> str:
    """The one line for an HTTP error answer: the extender's own words for an unknown pod."""
    import json

    try:
        said = str(json.loads(exc.read()).get("Error", ""))
    except (ValueError, AttributeError):
        said = ""
    if exc.code == 404 and said.startswith(f"pod {namespace}/{name} "):
        return said
    if exc.code == 404:
        return f"--url {url}: no /debug/pods there (not mig-extender serve, or started with --no-debug-endpoints)"
    return f"--url {url}: HTTP {exc.code} {said or exc.reason}"


def render_explanation(doc: dict[str, Any]) -> str:
    """The /debug/pods answer as text: the pod, the decision, a node | verdict | reason table, its rules."""
    pod, decision = doc["pod"], doc["decision"]
    demand = ", ".join(f"{n} x {r}" for r, n in sorted(pod["demand"].items())) or "no MIG"
    where = f"bound to {pod['node']}" if pod["node"] else "not bound"
    out = [f"pod {pod['namespace']}/{pod['name']} (uid {pod['uid']}): {demand}; {pod['phase']}, {where} "
           f"[seen by: {pod['source']}]"]
    if decision["error"]:
        out.append(f"cannot be evaluated: {decision['error']}")
    chosen = decision["would_record"]
    if chosen is not None:
        out.append(f"decision: no node fits; would record substitute {chosen['substitute']['count']} x "
                   f"{chosen['substitute']['resource']} on {chosen['node']}")
    if decision["note"]:
        out.append(f"note: {decision['note']['text']}")
    rows = [("NODE", "VERDICT", "REASON")]
    for v in decision["nodes"]:
        reason = v["reason"]["text"] if v["reason"] else ""
        if v["substitute"]:
            reason += f"; not substituted here: {v['substitute']['text']}"
        rows.append((v["node"], v["verdict"], reason))
    out.extend(_table(rows))
    out.append("")
    rules = [("RULE", "PHASE", "ORIGINAL", "SUBSTITUTE", "NODE", "MESSAGE")]
    rules += [(r["name"], r["phase"], r["original"]["resource"], r["substitute"]["resource"], r["node"],
               r["message"]) for r in doc["rules"]]
    out.extend(_table(rules) if len(rules) > 1 else ["rules: none"])
    return "\n".join(out) + "\n"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            _serve(args)
        elif args.command == "webhook":
            _webhook(args)
        elif args.command == "reconcile":
            _reconcile(args)
        elif args.command == "certs":
            _certs(args)
        elif args.command == "profiles":
            from .catalogtable import render_catalog

            sys.stdout.write(render_catalog(args.gpu))
        elif args.command == "scheduler-config":
            _scheduler_config(args)
        elif args.command == "explain":
            sys.stdout.write(render_explanation(_fetch_explanation(args)))
        elif args.command == "simulate":
            from .sim.runner import main as simulate

            return simulate(args)
    except (SettingsError, ValueError) as exc:
        print(f"mig-extender {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
