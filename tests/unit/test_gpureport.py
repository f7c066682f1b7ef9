"""Nodes whose GPU is not recognised are reported once each: in the log and as a Warning Event (issue 16)."""

from __future__ import annotations

import logging

import pytest

from mig_extender.components.gpureport import GpuProblemReporter
from mig_extender.core.snapshot import ForeignMigResources, UnknownGpu

X1 = UnknownGpu("NVIDIA-Future-X1", None, None)
X1_SIZED = UnknownGpu("NVIDIA-Future-X1", 48, None)
FOREIGN = ForeignMigResources("A100-40GB", ("nvidia.com/mig-1g.18gb",))


class Events:
    def __init__(self) -> None:
        self.written: list[tuple[str, str, str]] = []
        self.fail = False

    def warn(self, node: str, reason: str, message: str) -> str:
        if self.fail:
            raise ConnectionError("API server unreachable")
        self.written.append((node, reason, message))
        return "created"


@pytest.fixture
def events() -> Events:
    return Events()


def test_each_node_is_reported_once_until_its_problem_changes(events: Events, caplog) -> None:
    problems = {"x1": X1, "a1": FOREIGN}
    reporter = GpuProblemReporter(lambda: dict(problems), events.warn)
    with caplog.at_level(logging.WARNING):
        assert reporter.run_once() == 2
        assert reporter.run_once() == 0
    assert events.written == [("a1", "MigProfilesNotOfModel", str(FOREIGN)), ("x1", "MigGpuUnknown", str(X1))]
    assert [r.getMessage() for r in caplog.records] == [f"node a1: {FOREIGN}", f"node x1: {X1}"]
    problems["x1"] = X1_SIZED                  # a new problem: reported again
    del problems["a1"]                         # fixed: forgotten, so a relapse is reported
    assert reporter.run_once() == 1 and events.written[-1] == ("x1", "MigGpuUnknown", str(X1_SIZED))
    problems["a1"] = FOREIGN
    assert reporter.run_once() == 1 and events.written[-1][0] == "a1"


def test_an_event_that_could_not_be_written_is_retried_without_logging_twice(events: Events, caplog) -> None:
    reporter = GpuProblemReporter(lambda: {"x1": X1}, events.warn)
    events.fail = True
    with caplog.at_level(logging.WARNING):
        reporter.run_once()
        reporter.run_once()
    assert [r.getMessage() for r in caplog.records].count(f"node x1: {X1}") == 1
    events.fail = False
    assert reporter.run_once() == 1 and events.written == [("x1", "MigGpuUnknown", str(X1))]


def test_without_a_cluster_problems_are_only_logged(caplog) -> None:
    reporter = GpuProblemReporter(lambda: {"x1": X1}, None)
    with caplog.at_level(logging.WARNING):
        assert reporter.run_once() == 1 and reporter.run_once() == 0
    assert [r.getMessage() for r in caplog.records] == [f"node x1: {X1}"]


def test_a_burst_of_unknown_nodes_is_spread_over_passes(events: Events) -> None:
    reporter = GpuProblemReporter(lambda: {f"n{i:03d}": X1 for i in range(45)}, events.warn, per_pass=20)
    assert [reporter.run_once() for _ in range(4)] == [20, 20, 5, 0]
    assert len({node for node, _, _ in events.written}) == 45
