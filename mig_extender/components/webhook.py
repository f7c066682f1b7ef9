"""The webhook component: the admission decision over the live rules, with claims and metrics.

Why here and not in the core: it holds state (the rule store, a short-lived claim per rule so one replica
does not hand the same rule to two pods created back to back) and counts outcomes. Must not: know about
HTTP (web/webhook.py), or ever let an error block pod creation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from cachetools import TTLCache

from ..cluster.rulestore import RuleStore
from ..core.admission import Mutation, mutate, review_uid
from .extender import readiness_problems
from .metrics import Metrics

log = logging.getLogger(__name__)


class WebhookService:
    """What the /mutate handler needs: rules, namespace labels, claims, metrics."""

    def __init__(self, store: RuleStore, namespace_labels: Callable[[str], Mapping[str, str] | None] = lambda ns: None,
                 metrics: Metrics | None = None, claim_ttl: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.namespace_labels = namespace_labels
        self.metrics = metrics or Metrics()
        self._claims: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=claim_ttl)
        self._lock = threading.Lock()
        self.checks: list[Callable[[], str]] = []

    def readiness_problems(self) -> list[str]:
        return readiness_problems(None, self.store, self.checks)

    def review(self, body: Any) -> dict[str, Any]:
        uid = review_uid(body)
        try:
            req = body["request"]
            labels = self.namespace_labels(str(req.get("namespace") or "")) if req.get("operation") == "CREATE" else {}
            with self._lock:
                mutation = mutate(body, self.store.list(), set(self._claims), labels, self.clock())
                if mutation.rule is not None and not req.get("dryRun"):
                    self._claims[mutation.rule.name] = True
        except Exception as exc:  # never block pod creation
            log.exception("webhook failed; admitting the pod unchanged")
            mutation = Mutation(uid, result="error", message=f"mig-extender webhook error: {type(exc).__name__}")
        if mutation.rule is not None:
            log.info("pod CREATE in %s: %s", body["request"].get("namespace"), mutation.message)
        self.metrics.webhook.labels(mutation.result).inc()
        return mutation.response()
