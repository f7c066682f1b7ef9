"""Run `mig-extender serve` as a subprocess against the test cluster and read what it exposes.

A subprocess, not an in-process Flask app: the e2e suite tests the shipped entry point (gunicorn,
its worker, the real flags), and stopping its process group kills master and worker together.

Must not: decide anything about scheduling; it only starts, probes and reads the extender.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from . import procs
from .binaries import REPO_ROOT

NO_PROXY = {"http": "", "https": ""}


def cli_argv(*args: str, module: str = "mig_extender.cli") -> list[str]:
    """`mig-extender ARGS` from this checkout, installed (`pip install -e .`) or not; ``module`` may name a
    wrapper that runs the same CLI (e.g. testenv.slowlist, a fault injector)."""
    return [sys.executable, "-m", module, *args]


def write_scheduler_config(url: str, scheduler_name: str, out: Path) -> Path:
    """`mig-extender scheduler-config` for a kube-scheduler of its own (``scheduler_name``, no leader
    election) whose extender is ``url``; the file's path."""
    argv = cli_argv("scheduler-config", "--url", url, "--no-leader-elect", "--scheduler-name", scheduler_name,
                    "--out", str(out))
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mig-extender scheduler-config failed: {done.stderr}")
    return out


class ExtenderProcess:
    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        die_with_parent: bool = True,
        module: str = "mig_extender.cli",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.module = module
        self.log = log
        self.args = tuple(args)
        self.env = env
        self.die_with_parent = die_with_parent
        self.port = 0
        self.process: procs.ManagedProcess | None = None
        self._http = requests.Session()
        self._http.trust_env = False  # never through a proxy: everything is on loopback

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, attempts: int = 3, port: int = 0) -> None:
        """Start and wait for /readyz (its caches synced); retry on a port taken meanwhile.

        ``port``: listen there (a restart after a crash keeps the address the scheduler was configured
        with); a clash is then retried on the same port, after a pause, instead of on a new one.
        """
        for attempt in range(attempts):
            if attempt and port:
                time.sleep(1.0)
            self.port = port or procs.free_port()
            argv = cli_argv(
                "serve", "--bind", f"127.0.0.1:{self.port}", "--kubeconfig", str(self.kubeconfig), *self.args,
                module=self.module,
            )
            self.process = procs.start(
                "mig-extender", argv, self.log, env=self.env, cwd=REPO_ROOT, die_with_parent=self.die_with_parent
            )
            try:
                procs.wait_ready(self.process, self.ready, timeout)
                return
            except procs.StartupError as exc:
                self.process.stop()
                if not exc.port_clash or attempt == attempts - 1:
                    raise

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        self._http.close()

    def crash(self) -> None:
        """SIGKILL master and worker (an OOM kill, a node failure): nothing gets to clean up."""
        if self.process is not None:
            self.process.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: children of the master (the process started), from /proc."""
        if self.process is None:
            return []
        master, out = self.process.pid, []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited meanwhile
            if int(fields[1]) == master:  # field 4 of stat, after "pid (comm) state"
                out.append(int(stat.parent.name))
        return out

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def get(self, path: str, **params: str) -> Any:
        response = self._http.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any) -> requests.Response:
        """POST a JSON body; the response whatever its status."""
        return self._http.post(f"{self.url}{path}", json=body, timeout=30)

    def rules(self) -> list[dict[str, Any]]:
        """GET /debug/rules."""
        return self.get("/debug/rules")

    def inventory(self, node: str | None = None) -> dict[str, Any]:
        """GET /debug/inventory[?node=NAME]."""
        return self.get("/debug/inventory", **({"node": node} if node else {}))

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when there are none).

        `name` is the sample name as exposed, e.g. `mig_extender_requests_total`.
        """
        text = self._http.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


@contextlib.contextmanager
def injected_extender(kubeconfig: Path, log: Path, module: str, env: dict[str, str],
                      timeout: float = 60.0) -> Iterator[ExtenderProcess]:
    """`serve` with rules in memory under a fault injector ``module`` (testenv.slowlist, testenv.slowwatch)
    configured by ``env`` (added to ours), started, stopped when the block ends."""
    process = ExtenderProcess(kubeconfig, log, args=("--rule-store", "memory", "--log-level", "debug"),
                              env={**os.environ, **env}, module=module)
    process.start(timeout=timeout)
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def own_scheduler(cluster: Any, url: str, scheduler_name: str, directory: Path) -> Iterator[str]:
    """A kube-scheduler of its own (``scheduler_name``) whose extender is ``url``, running for the block;
    yields its schedulerName. ``cluster``: the E2ECluster."""
    config = write_scheduler_config(url, scheduler_name, directory / "scheduler.yaml")
    process = f"{scheduler_name}-scheduler"
    cluster.start_scheduler(process, config)
    try:
        yield scheduler_name
    finally:
        cluster.stop_scheduler(process)
