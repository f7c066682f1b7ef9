"""`python -m tests.e2e.testenv.slowevict reconcile ...`: mig-extender whose evictions arrive late.

A fault injector for the bare-pod restart race (soak D1): the reconciler writes a bare pod's stash, then
evicts it, milliseconds apart; a user's delete falls between the two only by luck. This wrapper makes
every Eviction wait ``MIG_E2E_EVICT_DELAY`` seconds before it is sent (logging when the wait starts),
then runs the real CLI, so a test can delete or replace the pod in that window on every run.

Must not: change anything but the timing of evictions.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from kubernetes import client

from mig_extender import cli

DELAY_ENV = "MIG_E2E_EVICT_DELAY"
log = logging.getLogger("e2e.slowevict")


def delay_evictions(seconds: float) -> None:
    original = client.CoreV1Api.create_namespaced_pod_eviction

    def slow(self: client.CoreV1Api, name: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
        log.warning("e2e fault: eviction of %s/%s delayed %.1f s", namespace, name, seconds)
        time.sleep(seconds)
        return original(self, name, namespace, *args, **kwargs)

    client.CoreV1Api.create_namespaced_pod_eviction = slow  # type: ignore[method-assign]


if __name__ == "__main__":
    delay_evictions(float(os.environ.get(DELAY_ENV, "0")))
    sys.exit(cli.main())
