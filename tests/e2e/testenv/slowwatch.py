"""`python -m tests.e2e.testenv.slowwatch serve ...`: mig-extender whose node watch comes back late.

A fault injector for soak D12. After an API server restart each of our informers reconnects after its
own backoff, while kube-scheduler's may be binding already; which comes back first is luck in a test.
This wrapper makes every node watch request after the first wait ``MIG_E2E_NODE_REWATCH_DELAY`` seconds
before it is sent (logging when the wait starts), then runs the real CLI, so the window in which the API
is back and our node watch is not is there on every run.

Must not: change anything but the timing of node watches after the first.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from kubernetes import client

from mig_extender import cli

DELAY_ENV = "MIG_E2E_NODE_REWATCH_DELAY"
log = logging.getLogger("e2e.slowwatch")


def delay_node_rewatches(seconds: float) -> None:
    original = client.CoreV1Api.list_node
    watches = [0]
    lock = threading.Lock()

    def slow(self: client.CoreV1Api, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            with lock:
                watches[0] += 1
                late = watches[0] > 1
            if late:
                log.warning("e2e fault: node watch delayed %.1f s", seconds)
                time.sleep(seconds)
        return original(self, *args, **kwargs)

    client.CoreV1Api.list_node = slow  # type: ignore[method-assign]


if __name__ == "__main__":
    delay_node_rewatches(float(os.environ.get(DELAY_ENV, "0")))
    sys.exit(cli.main())
