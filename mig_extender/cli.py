"""The ``mig-extender`` command: one subcommand per component or tool.

Parses flags into Settings (validated once, here) and hands over; no logic of its own. Exit codes:
0 success, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

from . import __version__
from .components.settings import Settings, SettingsError
from .core.planner import PlanSettings


def _add_cluster_flags(p: argparse.ArgumentParser, snapshot: bool = True) -> None:
    src = p.add_mutually_exclusive_group()
    if snapshot:
        src.add_argument("--snapshot", metavar="FILE", default="",
                         help="cluster state from `kubectl get nodes,pods -A -o json` (no cluster needed)")
    src.add_argument("--kubeconfig", metavar="PATH", default="", help="kubeconfig of the cluster to watch")
    src.add_argument("--in-cluster", action="store_true", help="use the pod's service account")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mig-extender", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"mig-extender {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the scheduler extender (gunicorn, one threaded worker)")
    s.add_argument("--bind", default=Settings.bind, metavar="HOST:PORT",
                   help="scheduler verbs, /debug/* and ops endpoints (keep it on loopback)")
    s.add_argument("--metrics-bind", default="", metavar="HOST:PORT",
                   help="a second address serving only /healthz, /readyz and /metrics (probes, Prometheus)")
    _add_cluster_flags(s)
    s.add_argument("--rule-store", choices=("memory", "kube"), default="",
                   help="where rules live (default: kube with a cluster, memory without)")
    s.add_argument("--rule-ttl", type=float, default=Settings.rule_ttl, metavar="SECONDS")
    s.add_argument("--policy", choices=("pack", "spread"), default=Settings.policy)
    s.add_argument("--no-substitution", action="store_true", help="exact MIG type only (stock behaviour)")
    s.add_argument("--restartable-owners", default=None, metavar="KIND,...",
                   help="owner kinds, besides ReplicaSet/StatefulSet/Job/ReplicationController, that recreate "
                        "a deleted pod: group/Kind (ray.io/RayCluster) or Kind; only their pods are substituted")
    s.add_argument("--no-debug-endpoints", action="store_true", help="do not serve /debug/*")
    s.add_argument("--tls-cert", default="", help="serve HTTPS with this certificate (reloaded on change); set "
                   "enableHTTPS and tlsConfig in the scheduler's extender entry to match")
    s.add_argument("--tls-key", default="", help="its private key")
    s.add_argument("--threads", type=int, default=Settings.threads)
    s.add_argument("--log-level", default=Settings.log_level)

    w = sub.add_parser("webhook", help="run the mutating admission webhook (HTTPS)")
    w.add_argument("--bind", default="0.0.0.0:8443", metavar="HOST:PORT")
    _add_cluster_flags(w, snapshot=False)
    w.add_argument("--tls-cert", default="", help="serving certificate (reloaded when the file changes)")
    w.add_argument("--tls-key", default="", help="its private key")
    w.add_argument("--plain-http", action="store_true", help="serve without TLS (local experiments only)")
    w.add_argument("--threads", type=int, default=Settings.threads)
    w.add_argument("--log-level", default=Settings.log_level)

    r = sub.add_parser("reconcile", help="run the reconciler (leader-elected): upgrade and restore pods")
    _add_cluster_flags(r, snapshot=False)
    r.add_argument("--metrics-bind", default="0.0.0.0:9090", metavar="HOST:PORT",
                   help="where /healthz, /readyz and /metrics are served")
    r.add_argument("--namespace", default=Settings.namespace, help="namespace of the leader-election Lease")
    r.add_argument("--lease-name", default="mig-extender-reconciler")
    r.add_argument("--identity", default="", help="leader-election identity (default: hostname_pid)")
    r.add_argument("--rule-ttl", type=float, default=Settings.rule_ttl, metavar="SECONDS")
    r.add_argument("--restore-ttl", type=float, default=Settings.restore_ttl, metavar="SECONDS")
    r.add_argument("--restores-per-pass", type=int, default=PlanSettings.restores_per_pass,
                   help="restores one pass may start (each restarts a pod)")
    r.add_argument("--restores-in-flight", type=int, default=PlanSettings.restores_in_flight,
                   help="restores under way at once")
    r.add_argument("--dry-run", action="store_true", help="log every write (restarts, rule updates, events) "
                                                          "instead of sending it; takes no Lease")
    r.add_argument("--restartable-owners", default=None, metavar="KIND,...",
                   help="owner kinds, besides ReplicaSet/StatefulSet/Job/ReplicationController, that recreate "
                        "a deleted pod: group/Kind (ray.io/RayCluster) or Kind; only their pods are substituted")
    r.add_argument("--log-level", default=Settings.log_level)

    k = sub.add_parser("certs", help="make a CA and a webhook serving certificate; print the caBundle")
    k.add_argument("--out", default="certs", help="directory for ca.crt, tls.crt, tls.key")
    k.add_argument("--service", default="mig-extender-webhook")
    k.add_argument("--namespace", default=Settings.namespace)
    k.add_argument("--days", type=int, default=365)

    p = sub.add_parser("profiles", help="print the MIG catalog and what each profile may be substituted by")
    p.add_argument("--gpu", metavar="MODEL", help="one model, e.g. A100-40GB (default: all)")

    c = sub.add_parser("scheduler-config", help="write the KubeSchedulerConfiguration for the extender")
    c.add_argument("--url", default="http://127.0.0.1:8888", help="extender URL as the scheduler reaches it")
    c.add_argument("--variant", choices=("second", "default"), default="second",
                   help="second: a separate mig-scheduler; default: extend the default scheduler")
    c.add_argument("--kubeconfig", default="", help="clientConnection.kubeconfig (empty: in-cluster)")
    c.add_argument("--no-leader-elect", action="store_true", help="single scheduler without a Lease")
    c.add_argument("--namespace", default=Settings.namespace, help="namespace of the leader-election Lease")
    c.add_argument("--qps", type=int, default=200, help="scheduler client qps (burst is twice this)")
    c.add_argument("--scheduler-name", default="", help="profile name (default: mig-scheduler, or "
                   "default-scheduler for --variant default)")
    c.add_argument("--out", default="-", help="file to write (default stdout)")

    from .sim.runner import add_arguments as simulate_arguments  # its flags live beside the simulator

    simulate_arguments(sub.add_parser("simulate", help="compare placement policies on a simulated MIG cluster "
                                                       "(synthetic or Alibaba trace workload)"))
    return ap


def _serve_settings(args: argparse.Namespace) -> Settings:
    base = Settings().with_env()
    return replace(
        base, bind=args.bind, ops_bind=args.metrics_bind, snapshot=args.snapshot, kubeconfig=args.kubeconfig,
        in_cluster=args.in_cluster,
        rule_store=args.rule_store or base.rule_store, rule_ttl=args.rule_ttl, policy=args.policy,
        substitution=base.substitution and not args.no_substitution,
        debug_endpoints=base.debug_endpoints and not args.no_debug_endpoints,
        threads=args.threads, log_level=args.log_level,
        restartable_owners=base.restartable_owners if args.restartable_owners is None else args.restartable_owners,
    ).validate()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from .process import Application, build_service
            from .web.app import create_app

            settings = _serve_settings(args)
            if bool(args.tls_cert) != bool(args.tls_key):
                raise SettingsError("give both --tls-cert and --tls-key, or neither")
            tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
            Application(settings, lambda: create_app(settings, build_service(settings)), tls).run()
        elif args.command == "webhook":
            from .process import Application, build_webhook
            from .web.app import create_webhook_app

            settings = replace(Settings().with_env(), bind=args.bind, kubeconfig=args.kubeconfig,
                               in_cluster=args.in_cluster, threads=args.threads, log_level=args.log_level).validate()
            if not args.plain_http and not (args.tls_cert and args.tls_key):
                raise SettingsError("webhook needs --tls-cert and --tls-key (the API server only calls HTTPS)")
            tls = None if args.plain_http else (args.tls_cert, args.tls_key)
            Application(settings, lambda: create_webhook_app(settings, build_webhook(settings)), tls).run()
        elif args.command == "reconcile":
            from .process import Application, build_reconciler, default_identity
            from .web.app import create_ops_app

            settings = replace(Settings().with_env(), bind=args.metrics_bind, kubeconfig=args.kubeconfig,
                               in_cluster=args.in_cluster, namespace=args.namespace, rule_ttl=args.rule_ttl,
                               restore_ttl=args.restore_ttl, threads=2, log_level=args.log_level).validate()
            if not settings.has_cluster:
                raise SettingsError("reconcile needs --kubeconfig or --in-cluster")
            identity = args.identity or default_identity()
            settings = replace(settings, restores_per_pass=args.restores_per_pass,
                               restores_in_flight=args.restores_in_flight,
                               restartable_owners=settings.restartable_owners if args.restartable_owners is None
                               else args.restartable_owners).validate()
            Application(settings, lambda: create_ops_app(
                settings, build_reconciler(settings, args.lease_name, identity, args.dry_run))).run()
        elif args.command == "certs":
            from pathlib import Path

            from .certs import generate

            bundle = generate(Path(args.out), args.service, args.namespace, args.days)
            print(f"# wrote {args.out}/ca.crt, tls.crt, tls.key (key mode 0600); caBundle:", file=sys.stderr)
            print(bundle)
        elif args.command == "profiles":
            from .catalogtable import render_catalog

            sys.stdout.write(render_catalog(args.gpu))
        elif args.command == "scheduler-config":
            from .core.schedconfig import render

            text = render(args.url, args.variant, args.kubeconfig, not args.no_leader_elect, args.namespace,
                          args.qps, scheduler_name=args.scheduler_name)
            if args.out == "-":
                sys.stdout.write(text)
            else:
                with open(args.out, "w", encoding="utf-8") as fh:
                    fh.write(text)
        elif args.command == "simulate":
            from .sim.runner import main as simulate

            return simulate(args)
    except (SettingsError, ValueError) as exc:
        print(f"mig-extender {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
