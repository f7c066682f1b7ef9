"""The webhook component: the admission decision over the live rules, with the claim and metrics.

Why here and not in the core: it talks to the rule store. Handing a rule to a pod is claiming it in the
store with a compare-and-swap (``Rule.claimed``, an optimistic status write on the MigSubstitution), so
of the webhook replicas admitting a burst of one workload's pods only one hands out each rule; a claim
kept in a replica's memory stopped nobody else. The loser tries the next eligible rule. In a DRA namespace
(label ``mig-extender.io/dra=true``) a MIG pod is instead rewritten into claims from the reconciler's
templates (core/drapod.py): one bounded read of the namespace's templates; when one is missing or
unreadable the pod is admitted as it is, with a warning. Must not: know
about HTTP (web/webhook.py), write anything for a dryRun request, or ever let an error or a slow API
block pod creation: every API call is bounded (``api_timeout``, and ``api_budget`` in all, inside the
API server's 3 s ``timeoutSeconds``), and a claim that fails admits the pod without substitution.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..cluster.rulestore import ConflictError, RuleStore
from ..core.admission import Mutation, mutate, review_uid, substitution_candidate
from ..core.drapod import DraSkipped, rewrite_for_dra
from ..core.resources import LABEL_DRA, PodInfo
from ..core.rules import Rule, rule_for_new_pod, unmarked_rules_for
from .extender import readiness_problems
from .metrics import Metrics

log = logging.getLogger(__name__)

REFRESHES = 2  # rules read fresh per admission at most (see _refresh_unmarked): bounds the API calls


class _Deadline:
    """What is left of the time this admission may spend on API calls, one call at most ``per_call``."""

    def __init__(self, budget: float, per_call: float) -> None:
        self._end = time.monotonic() + budget
        self._per_call = per_call

    def next_call(self) -> float:
        """Seconds the next call may take; 0 when the budget is spent."""
        return max(0.0, min(self._per_call, self._end - time.monotonic()))


class WebhookService:
    """What the /mutate handler needs: rules, namespace labels, claims, metrics.

    ``claim_ttl``: seconds a claimed rule stays held for a pod that has not appeared yet (a pod refused by
    a later admission plugin never does); once the pod is seen the rule is Applied and the claim is moot.
    ``api_timeout``: seconds one API call may take; ``api_budget``: seconds all of one admission's calls
    may take (the API server gives up on the webhook after 3 s and then creates the pod unchanged).
    """

    def __init__(self, store: RuleStore, namespace_labels: Callable[[str], Mapping[str, str] | None] = lambda ns: None,
                 metrics: Metrics | None = None, claim_ttl: float = 30.0, clock: Callable[[], float] = time.time,
                 api_timeout: float = 1.0, api_budget: float = 2.0,
                 dra_templates: Callable[[str, float], set[str]] | None = None) -> None:
        self.store = store
        self.namespace_labels = namespace_labels
        self.metrics = metrics or Metrics()
        self.claim_ttl = claim_ttl
        self.clock = clock
        self.api_timeout = api_timeout
        self.api_budget = api_budget
        self.dra_templates = dra_templates  # (namespace, timeout) -> names of our templates there; None: no DRA
        self.checks: list[Callable[[], str]] = []

    def readiness_problems(self) -> list[str]:
        return readiness_problems(None, self.store, self.checks)

    def review(self, body: Any) -> dict[str, Any]:
        uid = review_uid(body)
        try:
            req = body["request"]
            labels = self.namespace_labels(str(req.get("namespace") or "")) if req.get("operation") == "CREATE" else {}
            mutation = self._decide(body, labels, dry_run=bool(req.get("dryRun")))
        except Exception as exc:  # never block pod creation
            log.exception("webhook failed; admitting the pod unchanged")
            mutation = Mutation(uid, result="error", message=f"mig-extender webhook error: {type(exc).__name__}")
        if mutation.rule is not None:
            log.info("pod CREATE in %s: %s", body["request"].get("namespace"), mutation.message)
        self.metrics.webhook.labels(mutation.result).inc()
        return mutation.response()

    def _decide(self, body: Mapping[str, Any], labels: Mapping[str, str] | None, dry_run: bool) -> Mutation:
        """The patch, with the chosen rule claimed (unless dry run); the next rule when a claim is lost."""
        now = self.clock()
        if (labels or {}).get(LABEL_DRA) == "true":
            dra = self._decide_dra(body)
            if dra is not None:
                return dra
        pod = substitution_candidate(body)
        if pod is None:
            return mutate(body, (), namespace_labels=labels, now=now)
        deadline = _Deadline(self.api_budget, self.api_timeout)
        # only Recorded rules can be taken by a new pod, and the book keeps them apart, so an admission does
        # no O(rules) work for the hour of finished rules a busy cluster retains (issue 19); they do not
        # depend on the time, so the book is the store's at its own clock (RuleStore.book)
        rules = self._refresh_unmarked(pod, list(self.store.book().recorded), now, deadline)
        lost: set[str] = set()
        while True:
            mutation = mutate(body, rules, lost, labels, now)
            if mutation.rule is None or dry_run:
                return mutation
            outcome = self._claim(mutation.rule, pod, now, deadline)
            self.metrics.webhook_claims.labels(outcome).inc()
            if outcome == "won":
                return mutation
            if outcome == "error":  # the API is unreachable or slow: no more calls, admit without substitution
                return mutate(body, (), namespace_labels=labels, now=now)
            lost.add(mutation.rule.name)  # finite: each round leaves one more rule out

    def _decide_dra(self, body: Mapping[str, Any]) -> Mutation | None:
        """The DRA rewrite of a MIG pod CREATE; None when the request is not one (the usual path decides)."""
        pod = substitution_candidate(body)
        if pod is None:
            return None
        uid, namespace = review_uid(body), pod.namespace
        if self.dra_templates is None:
            return Mutation(uid, result="dra_skipped", warnings=(
                f"namespace {namespace} is in DRA mode but this webhook cannot read ResourceClaimTemplates; "
                "the pod keeps its nvidia.com/mig-* requests",))
        try:
            templates = self.dra_templates(namespace, self.api_timeout)
        except Exception as exc:
            log.warning("reading DRA templates of %s failed (%s: %s); pod admitted unchanged", namespace,
                        type(exc).__name__, exc)
            return Mutation(uid, result="dra_skipped", warnings=(
                "mig-extender could not read its ResourceClaimTemplates; the pod keeps its nvidia.com/mig-* requests",))
        result = rewrite_for_dra(body["request"]["object"], templates)
        if isinstance(result, DraSkipped):
            missing = f": no template {', '.join(result.missing)} yet" if result.missing else ""
            return Mutation(uid, result="dra_skipped", warnings=(
                f"mig-extender left the pod's nvidia.com/mig-* requests as they are ({result.reason}{missing})",))
        log.info("pod CREATE in %s: %s -> DRA claims %s", namespace, result.demand, ", ".join(result.claims))
        return Mutation(uid, result.patch, result="dra", message=f"{result.demand} -> claims from "
                        f"{', '.join(sorted(set(result.claims.values())))}")

    def _claim(self, rule: Rule, pod: PodInfo, now: float, deadline: _Deadline) -> str:
        """Claim ``rule`` for ``pod`` with a compare-and-swap: won, lost (another replica, or the rule moved
        on) or error. A conflict may only mean this replica's cache is behind: the rule is read fresh once
        and claimed again if it is still free for ``pod``."""
        for attempt in range(2):
            try:
                self.store.update(rule.claimed(now, self.claim_ttl), timeout=self._call_time(deadline))
                return "won"
            except ConflictError:
                if attempt:
                    return "lost"
            except Exception as exc:
                return self._api_failed("claiming", rule, exc)
            try:
                fresh = self.store.fetch(rule.namespace, rule.name, timeout=self._call_time(deadline))
            except Exception as exc:
                return self._api_failed("re-reading", rule, exc)
            if fresh is None or rule_for_new_pod(pod, (fresh,), now) is not fresh:
                return "lost"
            rule = fresh
        return "lost"

    def _refresh_unmarked(self, pod: PodInfo, rules: list[Rule], now: float, deadline: _Deadline) -> list[Rule]:
        """Rules ``pod`` would take but for a restart mark this replica's watch may not have delivered yet,
        read fresh (at most REFRESHES, oldest first). Costs nothing when no such rule exists, the usual case.
        A failed read keeps the cached rule (the pod is then admitted without it)."""
        stale = unmarked_rules_for(pod, rules, now)[:REFRESHES]
        if not stale:
            return rules
        fresh: dict[tuple[str, str], Rule | None] = {}
        for rule in stale:
            try:
                fresh[(rule.namespace, rule.name)] = self.store.fetch(rule.namespace, rule.name,
                                                                      timeout=self._call_time(deadline))
            except Exception as exc:
                self.metrics.webhook_claims.labels(self._api_failed("reading", rule, exc)).inc()
                break
        kept = []
        for rule in rules:
            key = (rule.namespace, rule.name)
            current = fresh.get(key, rule)
            if current is not None:  # None: deleted meanwhile
                kept.append(current)
        return kept

    @staticmethod
    def _api_failed(doing: str, rule: Rule, exc: Exception) -> str:
        log.warning("%s rule %s/%s failed (%s: %s); the pod is admitted without it", doing, rule.namespace,
                    rule.name, type(exc).__name__, exc)
        return "error"

    @staticmethod
    def _call_time(deadline: _Deadline) -> float:
        left = deadline.next_call()
        if left <= 0:
            raise TimeoutError("the webhook's API budget for this admission is spent")
        return left
