"""A throw-away Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager and
two kube-schedulers (the stock `default-scheduler` and a `mig-scheduler` loaded from a test's
KubeSchedulerConfiguration). There is no kubelet: see fakekubelet.py.

Why this shape:
- every port is picked free at start, so two clusters (or a developer's own) never clash;
- token auth for the built-in identities, client certificates for any user a test invents, and
  TokenRequest for ServiceAccounts, so RBAC is real and testable;
- each component runs in its own process group and is stopped by its recorded PID only (procs.py),
  from a fixture finalizer and from atexit; `die_with_parent` adds PR_SET_PDEATHSIG for pytest runs;
- everything a second Python process needs (ports, PIDs, credentials) is in `<state>/state.json`,
  so `python -m tests.e2e.testenv up` can leave a cluster running and `down` can stop it later.

Must not: fake nodes or pods (fakekubelet.py does), or know anything about mig-extender itself.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from . import components, probes, procs
from .binaries import Binaries, find_binaries
from .kubeconfig import write_kubeconfig
from .pki import LOOPBACK_SANS, CertificateAuthority, write_signing_keypair

log = logging.getLogger("testenv.controlplane")

READY_TIMEOUT_S = 120.0
STATE_FILE = "state.json"
MIG_SCHEDULER = "mig-scheduler"
KUBECONFIG_PLACEHOLDER = "@KUBECONFIG@"

# name -> (user, groups) with static bearer tokens; other users get client certificates on demand.
STATIC_IDENTITIES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("admin", ("system:masters",)),
    "kube-controller-manager": ("system:kube-controller-manager", ()),
    "kube-scheduler": ("system:kube-scheduler", ()),
}

_live: set[ControlPlane] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    """Last resort when a finalizer never ran (KeyboardInterrupt in a fixture, sys.exit in a test)."""
    with _live_lock:
        leftovers = list(_live)
    for plane in leftovers:
        with contextlib.suppress(Exception):
            plane.stop()


class NoClusterError(FileNotFoundError):
    """attach(): the directory holds no test cluster state."""


@dataclass
class Ports:
    etcd: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0


class ControlPlane:
    """Owns the control-plane processes and the state directory they use.

    Call start() from a thread that lives as long as the cluster when die_with_parent is set
    (PR_SET_PDEATHSIG fires when the forking *thread* exits): pytest's main thread, or a CLI.
    """

    def __init__(
        self,
        state_dir: Path,
        binaries: Binaries | None = None,
        *,
        verbosity: int = 2,
        die_with_parent: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.binaries = binaries
        self.verbosity = verbosity
        self.die_with_parent = die_with_parent
        self.ports = Ports()
        self.scheduler_ports: dict[str, int] = {}  # extra schedulers by name
        self.processes: dict[str, procs.ManagedProcess] = {}
        self.startup_seconds: float | None = None
        self.startup_phases: dict[str, float] = {}
        self._tokens: dict[str, str] = {}

    # ---- paths -------------------------------------------------------------------------------------
    @property
    def layout(self) -> components.Layout:
        return components.Layout(self.state_dir)

    @property
    def pki_dir(self) -> Path:
        return self.layout.pki

    @property
    def logs_dir(self) -> Path:
        return self.layout.logs

    @property
    def ca_file(self) -> Path:
        return self.layout.ca_file

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig."""
        return self.kubeconfig_for("admin")

    @property
    def scheduler_kubeconfig(self) -> Path:
        """The identity both kube-schedulers use (system:kube-scheduler)."""
        return self.kubeconfig_for("kube-scheduler")

    def kubeconfig_for(self, identity: str) -> Path:
        """Kubeconfig of a static identity: one of STATIC_IDENTITIES."""
        if identity not in STATIC_IDENTITIES:
            raise KeyError(f"{identity!r} is not a static identity; use user_kubeconfig()")
        return self.layout.kubeconfig(identity)

    def token(self, identity: str = "admin") -> str:
        return self._tokens[identity]

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start everything and return once a pod could be created and scheduled."""
        if self.binaries is None:
            self.binaries = find_binaries()
        t0 = time.monotonic()
        self._prepare_state_dir()
        with _live_lock:
            _live.add(self)
        try:
            self._launch(
                "etcd",
                lambda: components.etcd_argv(self._binaries(), self.layout, self.ports),
                lambda: probes.etcd_healthy(self.ports.etcd),
                timeout,
                ports=("etcd", "etcd_peer"),
            )
            self._mark("etcd", t0)
            self._write_credentials()
            self._mark("pki", t0)
            self._launch(
                "kube-apiserver",
                self._apiserver_argv,
                lambda: probes.https_ok(f"{self.server}/readyz", self.ca_file, self._tokens["admin"], body="ok"),
                timeout,
                ports=("apiserver",),
            )
            self._mark("kube-apiserver", t0)
            self._launch_parallel(timeout)
            self._mark("controllers+scheduler", t0)
            # ServiceAccount admission rejects pods until the namespace's "default" SA exists.
            default_sa = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
            procs.wait_ready(
                self.processes["kube-controller-manager"],
                lambda: probes.https_ok(default_sa, self.ca_file, self._tokens["admin"]),
                timeout,
            )
            self._mark("default-serviceaccount", t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        self.save_state()
        log.info(
            "control plane up in %.1f s (%s); KUBECONFIG=%s",
            self.startup_seconds,
            ", ".join(f"{k} {v:.1f}s" for k, v in self.startup_phases.items()),
            self.kubeconfig,
        )

    def stop(self, *, remove_state: bool = False) -> None:
        """Stop exactly the processes this control plane started; etcd last, so the others drain."""
        with _live_lock:
            _live.discard(self)
        ordered = list(self.processes.values())
        first = [p for p in ordered if p.name != "etcd"]
        if first:
            with ThreadPoolExecutor(max_workers=len(first)) as pool:
                list(pool.map(lambda p: p.stop(), first))
        for proc in ordered:
            if proc.name == "etcd":
                proc.stop()
        self.processes.clear()
        if (self.state_dir / STATE_FILE).exists():
            self.save_state()
        if remove_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def save_state(self) -> None:
        state = {
            "server": self.server,
            "ports": asdict(self.ports),
            "scheduler_ports": self.scheduler_ports,
            "tokens": self._tokens,
            "binaries": {
                "kube_bin": str(self.binaries.kube_bin),
                "etcd": str(self.binaries.etcd),
                "etcd_version": self.binaries.etcd_version,
            }
            if self.binaries
            else None,
            "startup_seconds": self.startup_seconds,
            "startup_phases": self.startup_phases,
            "processes": [p.record.to_json() for p in self.processes.values()],
        }
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    @classmethod
    def attach(cls, state_dir: Path) -> ControlPlane:
        """Reopen a control plane another process started (CLI `down`, benchmark scripts)."""
        path = Path(state_dir) / STATE_FILE
        if not path.exists():
            raise NoClusterError(f"no test cluster state in {state_dir} (start one with `up`)")
        state = json.loads(path.read_text())
        plane = cls(state_dir, die_with_parent=False)
        plane.ports = Ports(**state["ports"])
        plane.scheduler_ports = dict(state.get("scheduler_ports") or {})
        plane._tokens = dict(state["tokens"])
        if state.get("binaries"):
            bins = state["binaries"]
            plane.binaries = Binaries(Path(bins["kube_bin"]), Path(bins["etcd"]), bins["etcd_version"])
        plane.startup_seconds = state.get("startup_seconds")
        plane.startup_phases = state.get("startup_phases") or {}
        for data in state["processes"]:
            record = procs.ProcessRecord.from_json(data)
            plane.processes[record.name] = procs.ManagedProcess(record)
        return plane

    def status(self) -> dict[str, bool]:
        return {name: proc.alive() for name, proc in self.processes.items()}

    # ---- clients and identities ----------------------------------------------------------------------
    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A fresh kubernetes.client.ApiClient (admin unless another kubeconfig is given)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def user_kubeconfig(self, user: str, groups: Iterable[str] = ()) -> Path:
        """Kubeconfig for any user name and groups, via a client certificate signed by the cluster CA."""
        groups = tuple(groups)
        stem = "user-" + re.sub(r"[^A-Za-z0-9_.-]", "_", user)
        crt, key = CertificateAuthority.load(self.pki_dir).issue(stem, user, organizations=groups, client=True)
        return write_kubeconfig(
            self.state_dir / "kubeconfigs" / f"{stem}.kubeconfig",
            server=self.server,
            ca_file=self.ca_file,
            user=user,
            client_cert=crt,
            client_key=key,
        )

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, create: bool = True, expiration_seconds: int = 3600
    ) -> Path:
        """Kubeconfig holding a TokenRequest token for ServiceAccount namespace/name (created if asked)."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            if create:
                try:
                    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            body = {"spec": {"audiences": [components.ISSUER], "expirationSeconds": expiration_seconds}}
            response = core.create_namespaced_service_account_token(name, namespace, body, _preload_content=False)
            token = json.loads(response.data)["status"]["token"]
        user = f"system:serviceaccount:{namespace}:{name}"
        path = self.state_dir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(
            path, server=self.server, ca_file=self.ca_file, user=user, token=token, namespace=namespace
        )

    # ---- the second scheduler --------------------------------------------------------------------------
    def start_scheduler(self, name: str, config_path: Path, timeout: float = 60.0) -> procs.ManagedProcess:
        """(Re)start an extra kube-scheduler called `name` from a KubeSchedulerConfiguration file.

        `clientConnection.kubeconfig` is filled in when missing, empty or `@KUBECONFIG@`; leader election
        is forced off because every scheduler would otherwise compete for the same default lease and only
        one would ever schedule. Each extra scheduler gets its own free port and `logs/<name>.log`.
        """
        if name in ("kube-scheduler", *STATIC_IDENTITIES, "etcd", "kube-apiserver"):
            raise ValueError(f"{name!r} is taken by a core component")
        self.stop_scheduler(name)
        document = yaml.safe_load(Path(config_path).read_text()) or {}
        connection = document.get("clientConnection") or {}
        document["clientConnection"] = connection
        if connection.get("kubeconfig") in (None, "", KUBECONFIG_PLACEHOLDER):
            connection["kubeconfig"] = str(self.scheduler_kubeconfig)
        document["leaderElection"] = {**(document.get("leaderElection") or {}), "leaderElect": False}
        effective = self.state_dir / f"{name}-config.yaml"
        effective.write_text(yaml.safe_dump(document, sort_keys=False))

        def argv() -> list[str]:
            self.scheduler_ports[name] = procs.free_port()
            return components.scheduler_argv(
                self._binaries(), self.layout, effective, self.scheduler_ports[name], self.verbosity
            )

        self._launch(name, argv, lambda: self._secure_ready(self.scheduler_ports[name], "/readyz"), timeout)
        self.save_state()
        return self.processes[name]

    def stop_scheduler(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is not None:
            proc.stop()
        self.scheduler_ports.pop(name, None)

    def start_mig_scheduler(self, config_path: Path, timeout: float = 60.0) -> procs.ManagedProcess:
        """start_scheduler("mig-scheduler", ...): the second scheduler, whose profile the config names."""
        return self.start_scheduler(MIG_SCHEDULER, config_path, timeout)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only (fault tests): clients see connection refused until start_apiserver."""
        proc = self.processes.pop("kube-apiserver", None)
        if proc is not None:
            proc.stop()

    def start_apiserver(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start kube-apiserver again on the same port (every kubeconfig points there), state kept in etcd."""
        self._launch(
            "kube-apiserver",
            self._apiserver_argv,
            lambda: probes.https_ok(f"{self.server}/readyz", self.ca_file, self._tokens["admin"], body="ok"),
            timeout,
        )
        self.save_state()

    def stop_mig_scheduler(self) -> None:
        self.stop_scheduler(MIG_SCHEDULER)

    # ---- internals ---------------------------------------------------------------------------------
    def _mark(self, phase: str, t0: float) -> None:
        self.startup_phases[phase] = round(time.monotonic() - t0, 2)

    def _prepare_state_dir(self) -> None:
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            if not (self.state_dir / ".mig-e2e-state").exists():
                raise RuntimeError(f"{self.state_dir} is not empty and not a test cluster's; refusing to wipe it")
            if (self.state_dir / STATE_FILE).exists() and any(ControlPlane.attach(self.state_dir).status().values()):
                raise RuntimeError(f"a cluster is still running in {self.state_dir}; stop it first")
            shutil.rmtree(self.state_dir)
        for directory in (self.state_dir, self.layout.logs, self.layout.kubeconfigs):
            directory.mkdir(parents=True, exist_ok=True)
        (self.state_dir / ".mig-e2e-state").touch()

    def _write_credentials(self) -> None:
        ca = CertificateAuthority.create(self.pki_dir)
        ca.issue(
            "serving",
            "mig-e2e-control-plane",
            server_names=(
                *LOOPBACK_SANS,
                components.SERVICE_IP,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        write_signing_keypair(self.pki_dir, "sa")
        lines = []
        for identity, (user, groups) in STATIC_IDENTITIES.items():
            token = secrets.token_hex(16)
            self._tokens[identity] = token
            group_field = f',"{",".join(groups)}"' if groups else ""
            lines.append(f"{token},{user},{identity}-uid{group_field}")
            write_kubeconfig(
                self.kubeconfig_for(identity), server=self.server, ca_file=self.ca_file, user=user, token=token
            )
        tokens = self.layout.tokens_file
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("NO_PROXY", "no_proxy"):
            env[key] = ",".join(filter(None, ("127.0.0.1,localhost", env.get(key))))
        return env

    def _launch(
        self,
        name: str,
        argv: Callable[[], list[str]],
        ready: Callable[[], bool],
        timeout: float,
        *,
        ports: tuple[str, ...] = (),
        attempts: int = 3,
    ) -> None:
        """Start one component and wait for it; pick new ports and retry if one was taken meanwhile.

        `ports` names the Ports fields to (re)pick before each attempt; `argv` may pick its own instead.
        """
        for attempt in range(attempts):
            for port in ports:
                setattr(self.ports, port, procs.free_port())
            proc = self._spawn(name, argv())
            try:
                procs.wait_ready(proc, ready, timeout)
                return
            except procs.StartupError as exc:
                proc.stop()
                self.processes.pop(name, None)
                if not exc.port_clash or attempt == attempts - 1:
                    raise

    def _launch_parallel(self, timeout: float) -> None:
        """Start the controller-manager and the default scheduler together; both only need the apiserver."""
        self.ports.controller_manager = procs.free_port()
        self.ports.scheduler = procs.free_port()
        config = self.state_dir / "default-scheduler-config.yaml"
        config.write_text(yaml.safe_dump(components.default_scheduler_config(self.scheduler_kubeconfig)))
        kcm = self._spawn(
            "kube-controller-manager",
            components.controller_manager_argv(
                self._binaries(), self.layout, self.ports.controller_manager, self.verbosity
            ),
        )
        sched = self._spawn(
            "kube-scheduler",
            components.scheduler_argv(self._binaries(), self.layout, config, self.ports.scheduler, self.verbosity),
        )
        checks = {
            kcm: lambda: self._secure_ready(self.ports.controller_manager, "/healthz"),
            sched: lambda: self._secure_ready(self.ports.scheduler, "/readyz"),
        }
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(procs.wait_ready, proc, check, timeout) for proc, check in checks.items()]:
                future.result()

    def _spawn(self, name: str, argv: list[str]) -> procs.ManagedProcess:
        proc = procs.start(
            name, argv, self.logs_dir / f"{name}.log", env=self._env(), die_with_parent=self.die_with_parent
        )
        self.processes[name] = proc
        return proc

    def _binaries(self) -> Binaries:
        if self.binaries is None:
            raise RuntimeError("binaries not resolved; start() resolves them")
        return self.binaries

    def _apiserver_argv(self) -> list[str]:
        self._write_static_kubeconfigs()  # they embed the server URL, whose port was just (re)chosen
        return components.apiserver_argv(self._binaries(), self.layout, self.ports, self.verbosity)

    def _write_static_kubeconfigs(self) -> None:
        for identity, token in self._tokens.items():
            write_kubeconfig(
                self.kubeconfig_for(identity),
                server=self.server,
                ca_file=self.ca_file,
                user=STATIC_IDENTITIES[identity][0],
                token=token,
            )

    def _secure_ready(self, port: int, path: str) -> bool:
        return probes.https_ok(f"https://127.0.0.1:{port}{path}", self.ca_file)
