"""`python -m tests.e2e.testenv.slowwatch serve ...`: mig-extender whose node watch comes back late.

A fault injector for soak D12. After an API server restart each of our informers reconnects after its
own backoff, while kube-scheduler's may be binding already; which comes back first is luck in a test.
This wrapper makes every node watch request after the first wait ``MIG_E2E_NODE_REWATCH_DELAY`` seconds
before it is sent (logging when the wait starts), then runs the real CLI, so the window in which the API
is back and our node watch is not is there on every run.

Must not: change anything but the timing of node watches after the first.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

from mig_extender import cli

from .slowlist import delay_calls

DELAY_ENV = "MIG_E2E_NODE_REWATCH_DELAY"


def delay_node_rewatches(seconds: float) -> None:
    watches = itertools.count(1)  # next() is atomic under the GIL: the first watch is the one not delayed

    def rewatch(kwargs: dict[str, Any]) -> bool:
        return bool(kwargs.get("watch")) and next(watches) > 1

    delay_calls("list_node", seconds, "node watch", rewatch)


if __name__ == "__main__":
    delay_node_rewatches(float(os.environ.get(DELAY_ENV, "0")))
    sys.exit(cli.main())
