"""Fixtures for the end-to-end suite: one real control plane per session, fresh namespaces and nodes
per test, and the extender plus the mig-scheduler on demand.

Every test under tests/e2e is marked `e2e`. When the control plane cannot be built or found, the
session fails loudly with the command that failed when CI is set (a skipped e2e suite must never
look green in CI); on a developer machine it is skipped with that reason instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .testenv.binaries import BinariesUnavailable, find_binaries
from .testenv.cluster import E2ECluster
from .testenv.extender import ExtenderProcess, cli_argv
from .testenv.fakekubelet import FakeKubelet
from .testenv.procs import ManagedProcess

HERE = Path(__file__).resolve().parent
KEEP_STATE = os.environ.get("MIG_E2E_KEEP", "") not in ("", "0", "false")
LOG_TAIL_LINES = 30
log = logging.getLogger("e2e")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed e2e test, attach the tails of the component logs that usually explain it."""
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and report.when == "call" and isinstance(cluster, E2ECluster):
        for component in ("mig-extender", "mig-scheduler"):
            path = cluster.log_path(component)
            if path.exists():
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
                report.sections.append((f"{component} log, last {LOG_TAIL_LINES} lines ({path})", tail))


REPORT: list[str] = []


@pytest.fixture
def e2e_report() -> Any:
    """``e2e_report("scaled -> Running: 3.1 s")``: a line shown in the session's terminal summary."""
    return REPORT.append


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in REPORT:
        terminalreporter.write_line(f"[e2e] {line}")


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"e2e control plane unavailable (CI is set, so this fails): {reason}", pytrace=False)
    pytest.skip(f"e2e control plane unavailable: {reason}")


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """A SIGTERM (CI timeout, `kill`) raises KeyboardInterrupt, so finalizers stop the cluster."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _report(config: pytest.Config, message: str) -> None:
    """A line on the terminal even under output capture (and with -q): timings belong in CI logs."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line("")
        reporter.write_line(message)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[E2ECluster]:
    """The session's control plane and fake kubelet (started once, ~5 s when the binaries are cached)."""
    try:
        binaries = find_binaries()
    except BinariesUnavailable as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:  # outside the except block, so the report shows the reason and not a chained traceback
        _unavailable(reason)
    with _sigterm_unwinds():
        env = E2ECluster.start(binaries=binaries)
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in env.control_plane.startup_phases.items())
        message = f"e2e cluster started in {env.startup_seconds:.1f} s ({phases}); state {env.state_dir}"
        log.info(message)
        _report(request.config, message)
        try:
            yield env
        finally:
            keep = KEEP_STATE or request.session.testsfailed > 0
            env.stop(remove_state=not keep)
            if keep:
                _report(request.config, f"e2e cluster state and logs kept in {env.state_dir}")


def _dns_label(text: str, limit: int) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].rstrip("-") or "t"


@pytest.fixture
def namespace(cluster: E2ECluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for this test; its pods are force-deleted afterwards."""
    name = cluster.create_namespace(prefix=_dns_label(request.node.name.removeprefix("test_"), 30))
    yield name
    cluster.delete_namespace(name)


class Fleet:
    """The nodes of one test: unique names, removed (with their pods) when the test ends, so the
    next test's pods cannot land on them."""

    def __init__(self, kubelet: FakeKubelet, prefix: str) -> None:
        self.kubelet = kubelet
        self.prefix = prefix
        self.names: list[str] = []

    def add(
        self, name: str, gpu: str | None = "A100-40GB", resources: dict[str, Any] | None = None, **kwargs: Any
    ) -> str:
        """Register node `<prefix>-<name>`; returns the full node name."""
        full = f"{self.prefix}-{name}"
        self.kubelet.add_node(full, gpu, resources, **kwargs)
        if full not in self.names:
            self.names.append(full)
        return full

    def set(self, name: str, resources: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.kubelet.set_node(self._full(name), resources, **kwargs)

    def remove(self, name: str) -> None:
        full = self._full(name)
        self.kubelet.remove_node(full)
        self.names.remove(full)

    def cleanup(self) -> None:
        for full in list(self.names):
            with contextlib.suppress(Exception):
                self.kubelet.remove_node(full)
        self.names.clear()

    def _full(self, name: str) -> str:
        return name if name in self.names else f"{self.prefix}-{name}"


@pytest.fixture
def fleet(cluster: E2ECluster, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Fake nodes for this test: `fleet.add("a", gpu="A100-40GB", resources={"nvidia.com/mig-1g.5gb": 2})`."""
    prefix = f"{_dns_label(request.node.name.removeprefix('test_'), 24)}-{uuid.uuid4().hex[:4]}"
    nodes = Fleet(cluster.fake_kubelet, prefix)
    yield nodes
    nodes.cleanup()


# ---- mig-extender ----------------------------------------------------------------------------------


def _require_mig_extender() -> None:
    command = cli_argv("--help")
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parents[1], check=False)
    if result.returncode != 0:
        _unavailable(f"`{shlex.join(command)}` exited {result.returncode}: {result.stderr.strip()[-800:]}")


@pytest.fixture(scope="session")
def extender(cluster: E2ECluster) -> Iterator[ExtenderProcess]:
    """`mig-extender serve` on a free loopback port against the cluster, ready (caches synced).

    Rules are kept in memory unless MIG_E2E_RULE_STORE says otherwise (`kube` needs the rule CRD).
    """
    _require_mig_extender()
    store = os.environ.get("MIG_E2E_RULE_STORE", "memory")
    process = ExtenderProcess(
        cluster.kubeconfig, cluster.log_path("mig-extender"), args=("--rule-store", store, "--log-level", "debug")
    )
    process.start()
    yield process
    process.stop()


@dataclass
class MigScheduler:
    config: Path
    process: ManagedProcess


@pytest.fixture(scope="session")
def mig_scheduler(cluster: E2ECluster, extender: ExtenderProcess) -> Iterator[MigScheduler]:
    """A second kube-scheduler (`schedulerName: mig-scheduler`) whose extender is `extender`, with the
    KubeSchedulerConfiguration written by `mig-extender scheduler-config`."""
    out = cluster.state_dir / "mig-scheduler-generated.yaml"
    command = cli_argv(
        "scheduler-config",
        "--url",
        extender.url,
        "--kubeconfig",
        str(cluster.scheduler_kubeconfig),
        "--no-leader-elect",
        "--out",
        str(out),
    )
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parents[1], check=False)
    if result.returncode != 0:
        pytest.fail(f"`{shlex.join(command)}` exited {result.returncode}: {result.stderr}", pytrace=False)
    process = cluster.start_mig_scheduler(out)
    yield MigScheduler(out, process)
    cluster.stop_mig_scheduler()
