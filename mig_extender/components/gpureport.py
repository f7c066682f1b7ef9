"""Telling operators about nodes whose GPU the catalog does not recognise, once per node.

A MIG node whose ``nvidia.com/gpu.product`` is unknown, or whose MIG resources are not profiles of its
model, still gets decisions (read from the resource names), but a wrong or missing table quietly changes
them; so each such node is reported once in the log and, with a cluster, as a Warning Event on the Node
(``kubectl describe node`` shows it). Runs in its own thread, never on a scheduling call. Must not: read
the API itself (the inventory keeps the problems) or decide anything about pods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from ..core.snapshot import GpuProblem

log = logging.getLogger(__name__)

# (node, reason, message) -> outcome; raises when the Event could not be written (retried next pass)
EventWriter = Callable[[str, str, str], str]


class GpuProblemReporter:
    """``run_once`` reports what is new since the last pass; a fixed node is forgotten, so a relapse is
    reported again. At most ``per_pass`` Events a pass: a fleet of unknown nodes must not flood the API."""

    def __init__(self, problems: Callable[[], Mapping[str, GpuProblem]], write_event: EventWriter | None,
                 per_pass: int = 20) -> None:
        self._problems = problems
        self._write_event = write_event
        self.per_pass = per_pass
        self._logged: dict[str, GpuProblem] = {}
        self._recorded: dict[str, GpuProblem] = {}

    def run_once(self) -> int:
        """Log and record the new problems; returns how many were newly reported."""
        current = self._problems()
        for seen in (self._logged, self._recorded):
            for node in [n for n, p in seen.items() if current.get(n) != p]:
                del seen[node]
        pending = [(n, p) for n, p in sorted(current.items())
                   if n not in self._logged or (self._write_event is not None and n not in self._recorded)]
        reported = 0
        for node, problem in pending[:self.per_pass]:  # attempts, not successes: a failing API costs no more
            if node not in self._logged:
                log.warning("node %s: %s", node, problem)
                self._logged[node] = problem
            reported += self._record(node, problem)
        return reported

    def _record(self, node: str, problem: GpuProblem) -> int:
        if self._write_event is None:
            return 1
        try:
            self._write_event(node, problem.reason, str(problem))
        except Exception as exc:
            log.info("node %s: Event %s not written yet (%s); retrying", node, problem.reason, exc)
            return 0
        self._recorded[node] = problem
        return 1
