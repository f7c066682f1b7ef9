"""`python -m tests.e2e.testenv.slowlist serve ...`: mig-extender whose pod LISTs answer late.

A fault injector for restart tests. On a large cluster the first, paginated pod list of a restarted
extender takes seconds while the node list is long done; in a test cluster both take milliseconds, so
the window in which nodes are known and pods are not is too short to hit. This wrapper makes every pod
list (never a watch) of the process wait ``MIG_E2E_POD_LIST_DELAY`` seconds before asking the API
server, then runs the real CLI. gunicorn forks its workers from this process, so a worker it replaces
is slow in the same way.

Must not: change anything but the timing of pod lists.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from mig_extender import cli

DELAY_ENV = "MIG_E2E_POD_LIST_DELAY"
log = logging.getLogger("e2e.slowlist")


def delay_calls(method: str, seconds: float, what: str, delayed: Callable[[dict[str, Any]], bool]) -> None:
    """Make ``CoreV1Api.<method>`` wait ``seconds`` before it asks the API server whenever
    ``delayed(its keyword arguments)``, logging ``what`` when the wait starts (testenv/slowwatch.py too)."""
    original = getattr(client.CoreV1Api, method)

    def slow(self: client.CoreV1Api, *args: Any, **kwargs: Any) -> Any:
        if delayed(kwargs):
            log.warning("e2e fault: %s delayed %.1f s", what, seconds)
            time.sleep(seconds)
        return original(self, *args, **kwargs)

    setattr(client.CoreV1Api, method, slow)


def delay_pod_lists(seconds: float) -> None:
    delay_calls("list_pod_for_all_namespaces", seconds, "pod list", lambda kwargs: not kwargs.get("watch"))


if __name__ == "__main__":
    delay_pod_lists(float(os.environ.get(DELAY_ENV, "0")))
    sys.exit(cli.main())
