"""`python -m tests.e2e.testenv COMMAND`: the e2e cluster from a shell, for humans and benchmark scripts.

  up [--node NAME:gpu=A100-40GB,nvidia.com/mig-1g.5gb=2 ...] [--mig-scheduler-config FILE] [--no-kubelet]
      start the control plane (and a fake kubelet process) in the background; print the admin
      KUBECONFIG path on stdout, so `export KUBECONFIG=$(python -m tests.e2e.testenv up)` works
  down [--keep]              stop exactly the processes `up` recorded; remove the state dir unless --keep
  status | env               show the processes / print `export KUBECONFIG=...`
  node add NAME [SPEC] | node set NAME SPEC [--replace] | node remove NAME
      SPEC is `gpu=A100-40GB,gpus=1,RESOURCE=QTY,...` (gpu=none: no GPU; QTY `-` removes RESOURCE)
  mig-scheduler CONFIG [--name NAME]
                             (re)start a further scheduler from a KubeSchedulerConfiguration
  kubelet                    run the fake kubelet in the foreground (what `up` starts)

The state dir is --state-dir, else $MIG_E2E_STATE, else /tmp/mig-e2e. Run from the repository root.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import procs
from .binaries import REPO_ROOT, BinariesUnavailable
from .controlplane import ControlPlane, NoClusterError

DEFAULT_STATE = Path(os.environ.get("MIG_E2E_STATE", "/tmp/mig-e2e"))
KUBELET = "fake-kubelet"
KUBELET_READY = "fake-kubelet.ready"


def parse_spec(text: str) -> dict[str, Any]:
    """`gpu=A100-40GB,gpus=2,nvidia.com/mig-1g.5gb=3` -> NodeRegistry.apply keyword arguments."""
    options: dict[str, Any] = {"resources": {}}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bad node spec item {item!r}: expected KEY=VALUE")
        if key == "gpu":
            options["gpu"] = None if value.lower() == "none" else value
        elif key == "gpus":
            options["gpu_count"] = int(value)
        else:
            options["resources"][key] = value
    return options


def cmd_up(args: argparse.Namespace) -> int:
    plane = ControlPlane(args.state_dir, verbosity=args.verbosity, die_with_parent=False)
    try:
        plane.start()
    except BinariesUnavailable as exc:
        print(f"testenv up: {exc}", file=sys.stderr)
        return 1
    if not args.no_kubelet:
        kubelet = procs.start(
            KUBELET,
            [sys.executable, "-m", "tests.e2e.testenv", "kubelet", "--state-dir", str(plane.state_dir)],
            plane.logs_dir / f"{KUBELET}.log",
            cwd=REPO_ROOT,
        )
        plane.processes[KUBELET] = kubelet
        plane.save_state()
        try:
            procs.wait_ready(kubelet, (plane.state_dir / KUBELET_READY).exists, 30)
        except procs.StartupError:
            plane.stop()
            raise
    if args.node:
        with plane.api_client() as api:
            from .nodes import NodeRegistry

            registry = NodeRegistry(api)
            for item in args.node:
                name, _, spec = item.partition(":")
                options = parse_spec(spec)
                options.setdefault("gpu", "A100-40GB")
                registry.apply(name, timestamp=_ts(), replace=True, **options)
    if args.mig_scheduler_config:
        plane.start_mig_scheduler(args.mig_scheduler_config)
    print(f"cluster up in {plane.startup_seconds:.1f} s; state {plane.state_dir}", file=sys.stderr)
    print(plane.kubeconfig)
    return 0


def _ts() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cmd_down(args: argparse.Namespace) -> int:
    try:
        plane = ControlPlane.attach(args.state_dir)
    except NoClusterError as exc:
        print(f"testenv down: {exc}; nothing to stop", file=sys.stderr)
        return 0
    plane.stop(remove_state=not args.keep)
    print(f"down ({args.state_dir}{', kept' if args.keep else ', removed'})", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    plane = ControlPlane.attach(args.state_dir)
    for name, proc in plane.processes.items():
        print(f"{name:26} pid {proc.pid:<8} {'running' if proc.alive() else 'DEAD, see ' + str(proc.log)}")
    print(f"KUBECONFIG={plane.kubeconfig}")
    return 0 if all(plane.status().values()) else 1


def cmd_env(args: argparse.Namespace) -> int:
    print(f"export KUBECONFIG={ControlPlane.attach(args.state_dir).kubeconfig}")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from .nodes import KEEP, NodeRegistry

    plane = ControlPlane.attach(args.state_dir)
    with plane.api_client() as api:
        registry = NodeRegistry(api)
        if args.action == "remove":
            registry.delete(args.name)
            return 0
        options = parse_spec(args.spec)
        if args.action == "add":
            options.setdefault("gpu", "A100-40GB")
            options["replace"] = True
        else:
            options.setdefault("gpu", KEEP)
            options["replace"] = args.replace
        registry.apply(args.name, timestamp=_ts(), **options)
    return 0


def cmd_mig_scheduler(args: argparse.Namespace) -> int:
    plane = ControlPlane.attach(args.state_dir)
    proc = plane.start_scheduler(args.name, args.config)
    print(f"{args.name} pid {proc.pid}, log {proc.log}", file=sys.stderr)
    return 0


def cmd_kubelet(args: argparse.Namespace) -> int:
    from .fakekubelet import FakeKubelet

    plane = ControlPlane.attach(args.state_dir)
    kubelet = FakeKubelet(plane.kubeconfig, lease_interval=args.lease_interval)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    kubelet.start()
    (args.state_dir / KUBELET_READY).touch()
    logging.getLogger("testenv").info("fake kubelet serving (pid %d)", os.getpid())
    done.wait()
    kubelet.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.testenv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    # also accepted after the command; SUPPRESS keeps the subparser from overwriting the global value
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    up = command("up", help="start a cluster in the background")
    up.add_argument("--node", action="append", default=[], metavar="NAME[:SPEC]")
    up.add_argument("--mig-scheduler-config", type=Path)
    up.add_argument("--no-kubelet", action="store_true")
    up.add_argument("--verbosity", type=int, default=2, help="klog -v of the components")
    down = command("down", help="stop the cluster")
    down.add_argument("--keep", action="store_true", help="keep the state dir (logs)")
    command("status")
    command("env")
    node = command("node", help="add, change or remove a fake node")
    node.add_argument("action", choices=("add", "set", "remove"))
    node.add_argument("name")
    node.add_argument("spec", nargs="?", default="")
    node.add_argument("--replace", action="store_true", help="set: drop extended resources not listed")
    sched = command("mig-scheduler")
    sched.add_argument("config", type=Path)
    sched.add_argument("--name", default="mig-scheduler", help="process/log name (several can run)")
    kubelet = command("kubelet")
    kubelet.add_argument("--lease-interval", type=float, default=10.0)
    args = parser.parse_args(argv)
    args.state_dir = args.state_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    handlers = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "env": cmd_env,
        "node": cmd_node,
        "mig-scheduler": cmd_mig_scheduler,
        "kubelet": cmd_kubelet,
    }
    try:
        return handlers[args.command](args)
    except NoClusterError as exc:
        print(f"testenv {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
