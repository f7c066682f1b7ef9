"""Fixtures for driving the real Flask app: ``app`` / ``client`` over a small in-memory cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.extender import ExtenderService
from mig_extender.components.metrics import Metrics
from mig_extender.components.settings import Settings
from mig_extender.web.app import create_app
from tests.builders import inventory_of, make_node, make_pod

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


class Refused(RuntimeError):
    """Like kubernetes' ApiException: the API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RecordingBinder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []
        self.fail = False
        self.time_out = False

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        if self.fail:
            raise Refused(404, "pods \"x\" not found")
        if self.time_out:
            raise TimeoutError("read timed out")
        self.calls.append((namespace, name, uid, node))


@pytest.fixture
def cluster_objects() -> list[dict]:
    """Like the recorded cluster: gpu-a (A100-80GB) 2 x 1g.10gb + 1 x 2g.20gb, gpu-b 1g.10gb + 3 x 2g.20gb."""
    return [
        make_node("gpu-a", "A100-80GB", {"1g.10gb": 2, "2g.20gb": 1}),
        make_node("gpu-b", "A100-80GB", {"1g.10gb": 1, "2g.20gb": 3}),
        make_node("cpu-c", None),
    ]


@pytest.fixture
def service(cluster_objects: list[dict]) -> ExtenderService:
    metrics = Metrics()
    svc = ExtenderService(inventory_of(*cluster_objects), MemoryRuleStore(), Settings().plan, metrics,
                          RecordingBinder())
    metrics.watch(svc.snapshot)
    return svc


@pytest.fixture
def app(service: ExtenderService):
    return create_app(Settings(max_body_bytes=256 * 1024), service)


@pytest.fixture
def client(app):
    return app.test_client()


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many hostile inputs were tried (docs/reliability.md quotes this line)."""
    from tests.api.test_hostile_input import CASES

    if CASES:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(CASES.items()))
        terminalreporter.write_line(f"[hostile input] {sum(CASES.values())} cases tried: {detail}")


def pending(mig: dict, **kw) -> dict:
    return make_pod(mig=mig, **kw)
