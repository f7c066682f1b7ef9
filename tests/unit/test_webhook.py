"""The admission webhook: pure mutate() decisions and the /mutate endpoint, from a recorded AdmissionReview."""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import jsonpatch
import pytest

from mig_extender.cluster.rulestore import ConflictError, MemoryRuleStore
from mig_extender.components.settings import Settings
from mig_extender.components.webhook import WebhookService
from mig_extender.core.admission import ReviewError, escape, mutate
from mig_extender.core.resources import (
    ANN_ORIGINAL,
    ANN_RULE,
    ANN_SUBSTITUTE,
    LABEL_SCHEDULER_OPT_IN,
    ResourceCount,
    pod_info,
)
from mig_extender.core.rulebook import RuleBook
from mig_extender.core.rules import Phase, new_rule
from mig_extender.core.schedconfig import SCHEDULER_NAME
from mig_extender.web.app import create_webhook_app
from tests.builders import RECORDED_REVIEW, admission_review, make_pod, res

RECORDED = RECORDED_REVIEW
NOW = 1000.0
review = admission_review


MARK = 950.0  # when the reconciler began restarting the pending pod (rule.restart_at)


def rs_rule(original: str = "1g.10gb", substitute: str = "2g.20gb", uid: str = "rs-1", pod_uid: str = "old",
            marked: bool = True):
    """A ReplicaSet pod's rule; ``marked``: its pending pod is being restarted (the replacement may take it)."""
    pending = pod_info(make_pod("web-old", mig={original: 1}, owner=("ReplicaSet", "web", uid), uid=pod_uid))
    rule = new_rule(pending, ResourceCount(res(original), 1), ResourceCount(res(substitute), 1), "gpu-a", 900.0, 300.0)
    return rule.restarting(MARK) if marked else rule


def apply_patch(pod: dict, response: dict) -> dict:
    ops = json.loads(base64.b64decode(response["response"]["patch"]))
    return jsonpatch.apply_patch(pod, ops)


def test_recorded_review_without_a_rule_is_admitted_untouched() -> None:
    m = mutate(RECORDED, [], now=NOW)
    assert m.response() == {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                            "response": {"uid": RECORDED["request"]["uid"], "allowed": True}}


def test_replacement_pod_of_the_workload_is_rewritten_everywhere() -> None:
    rule = rs_rule()
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"), uid="", init_mig={"1g.10gb": 1})
    pod["metadata"].pop("name")
    m = mutate(review(pod), [rule], now=NOW)
    assert m.rule == rule and m.result == "substituted"
    patched = apply_patch(pod, m.response())
    for c in patched["spec"]["containers"] + patched["spec"]["initContainers"]:
        for kind in ("limits",):
            assert res("2g.20gb") in c["resources"][kind] and res("1g.10gb") not in c["resources"][kind]
    assert patched["spec"]["containers"][0]["resources"]["requests"] == {res("2g.20gb"): "1"}
    ann = patched["metadata"]["annotations"]
    assert ann[ANN_RULE] == rule.name and ann[ANN_ORIGINAL] == "nvidia.com/mig-1g.10gb=1"
    # every path escapes the "/" in the resource name (RFC 6901)
    ops = json.loads(base64.b64decode(m.response()["response"]["patch"]))
    assert all("nvidia.com~1mig" in op["path"] for op in ops if "resources" in op["path"])


def test_existing_annotations_are_added_to_not_replaced() -> None:
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"), annotations={"keep": "me"})
    patched = apply_patch(pod, mutate(review(pod), [rs_rule()], now=NOW).response())
    assert patched["metadata"]["annotations"]["keep"] == "me" and ANN_RULE in patched["metadata"]["annotations"]


@pytest.mark.parametrize("pod, why", [
    pytest.param(make_pod(owner=("ReplicaSet", "web", "rs-1")), "no MIG", id="no-mig"),
    pytest.param(make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"),
                          annotations={ANN_SUBSTITUTE: "false"}), "opt-out", id="opt-out"),
    pytest.param(make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "other", "rs-2")), "other workload", id="other"),
    pytest.param(make_pod(mig={"1g.10gb": 2}, owner=("ReplicaSet", "web", "rs-1")), "other demand", id="count"),
    pytest.param(make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"), uid="old"), "same pod", id="self"),
])
def test_pods_the_rule_is_not_for_pass_untouched(pod: dict, why: str) -> None:
    m = mutate(review(pod), [rs_rule()], now=NOW)
    assert m.patch == [] and m.rule is None, why


def test_expired_claimed_skipped_and_non_create_requests_are_untouched() -> None:
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    rule = rs_rule()
    assert mutate(review(pod), [rule], now=rule.expires + 1).rule is None
    assert mutate(review(pod), [rule.claimed(NOW - 1, 30.0)], now=NOW).rule is None
    assert mutate(review(pod), [rule.claimed(NOW - 31, 30.0)], now=NOW).rule == rule.claimed(NOW - 31, 30.0)
    assert mutate(review(pod), [rule], skip={rule.name}, now=NOW).rule is None
    assert mutate(review(pod, operation="UPDATE"), [rule], now=NOW).rule is None


@pytest.mark.parametrize("marked, created, takes", [
    pytest.param(False, "", False, id="sibling-before-the-restart"),
    pytest.param(True, "", True, id="replacement-after-the-restart"),
    pytest.param(True, "1970-01-01T00:10:00Z", False, id="pod-created-long-before-the-restart"),
])
def test_item5_sibling_pod_does_not_steal_pending_pods_rule(marked: bool, created: str, takes: bool) -> None:
    """Issue 13 item 5: a rule belongs to the pending pod it was recorded for until the reconciler restarts
    that pod; a new pod of the same ReplicaSet (an HPA scale-up) created before then must not take it, or
    the pending pod is never restarted. At admission the pod has no creationTimestamp (the API server sets
    it after the webhooks), so only the restart mark decides; a pod created before the mark never takes it."""
    rule = rs_rule(marked=marked)
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"), uid="", created=created)
    assert (mutate(review(pod), [rule], now=NOW).rule == rule) is takes


def test_bare_pod_is_matched_by_name() -> None:
    pending = pod_info(make_pod("solo", mig={"1g.10gb": 1}, uid="u-old"))
    rule = new_rule(pending, ResourceCount(res("1g.10gb"), 1), ResourceCount(res("2g.20gb"), 1), "n", 900.0, 300.0)
    rule = rule.restarting(MARK)  # the reconciler deleted it and creates it again under its name
    assert mutate(review(make_pod("solo", mig={"1g.10gb": 1}, uid="")), [rule], now=NOW).rule == rule
    assert mutate(review(make_pod("other", mig={"1g.10gb": 1}, uid="")), [rule], now=NOW).rule is None


def test_oldest_rule_of_the_workload_is_used_first() -> None:
    older, newer = rs_rule(pod_uid="a"), rs_rule(pod_uid="b")
    newer = replace(newer, created=950.0, name="zzz")
    older = replace(older, created=910.0, name="aaa-later-name")
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    assert mutate(review(pod), [newer, older], now=NOW).rule.name == "aaa-later-name"


def test_scheduler_injection_only_for_opted_in_namespaces() -> None:
    pod = make_pod(mig={"1g.10gb": 1})
    m = mutate(review(pod), [], namespace_labels={LABEL_SCHEDULER_OPT_IN: "true"}, now=NOW)
    assert apply_patch(pod, m.response())["spec"]["schedulerName"] == "mig-scheduler"
    assert mutate(review(pod), [], namespace_labels={}, now=NOW).patch == []
    plain = make_pod()  # no MIG: never touched, even when opted in
    assert mutate(review(plain), [], namespace_labels={LABEL_SCHEDULER_OPT_IN: "true"}, now=NOW).patch == []


SCHEDULER_OP = {"op": "add", "path": "/spec/schedulerName", "value": SCHEDULER_NAME}


@pytest.mark.parametrize("annotations, labels, patch, result", [
    pytest.param({ANN_SUBSTITUTE: "false"}, {LABEL_SCHEDULER_OPT_IN: "true"}, [SCHEDULER_OP], "scheduler",
                 id="opted-out-pod-opted-in-namespace"),
    pytest.param({ANN_SUBSTITUTE: "false"}, {}, [], "untouched", id="opted-out-pod-plain-namespace"),
])
def test_item3_opted_out_mig_pod_still_gets_the_scheduler(annotations: dict, labels: dict, patch: list,
                                                          result: str) -> None:
    """Issue 13 item 3: opting out of substitution must not leave a MIG pod on the default scheduler in an
    opted-in namespace (two schedulers would count the same slices differently); the rule it would
    otherwise match is still not applied."""
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"), annotations=annotations)
    m = mutate(review(pod), [rs_rule()], namespace_labels=labels, now=NOW)
    assert (m.patch, m.rule, m.result) == (patch, None, result)


@pytest.mark.parametrize("body", [None, [], {}, {"request": {}}, {"request": {"uid": 5}}])
def test_reviews_without_uid_are_review_errors(body: object) -> None:
    with pytest.raises(ReviewError):
        mutate(body, [])  # type: ignore[arg-type]


def test_escape() -> None:
    assert escape("nvidia.com/mig-1g.5gb") == "nvidia.com~1mig-1g.5gb" and escape("a~b/c") == "a~0b~1c"


# -- HTTP -------------------------------------------------------------------------------------------


class ExplodingStore(MemoryRuleStore):
    def book(self, now=None):
        raise RuntimeError("API unreachable")


@pytest.fixture
def store() -> MemoryRuleStore:
    return MemoryRuleStore()


def client_for(store: MemoryRuleStore):
    return create_webhook_app(Settings(max_body_bytes=64 * 1024), WebhookService(store)).test_client()


def test_mutate_endpoint_claims_a_rule_once(store: MemoryRuleStore) -> None:
    rule = store.record(replace(rs_rule(), expires=4e9))
    client = client_for(store)
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    first = client.post("/mutate", json=review(pod)).get_json()
    second = client.post("/mutate", json=review(make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"))))
    assert first["response"]["patchType"] == "JSONPatch" and apply_patch(pod, first)["metadata"]["annotations"][
        ANN_RULE] == rule.name
    assert "patch" not in second.get_json()["response"]  # the one rule went to the first pod


class NoListing(MemoryRuleStore):
    """A store whose every rule must not be walked per admission (an hour of finished rules on a busy cluster)."""

    def list(self):
        raise AssertionError("the webhook listed every rule for one admission")


def test_an_admission_reads_the_recorded_rules_only_not_every_rule() -> None:
    """Among 500 finished rules of the same workload, the one Recorded rule still goes to the replacement,
    read from the store's book (its Recorded rules), never from list() (issue 19: O(rules) per pod created)."""
    store = NoListing()
    for i in range(500):
        store.record(replace(rs_rule(), name=f"done-{i}", phase=Phase.RESTORED, expires=4e9))
    rule = store.record(replace(rs_rule(), expires=4e9))
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    answer = client_for(store).post("/mutate", json=review(pod)).get_json()
    assert apply_patch(pod, answer)["metadata"]["annotations"][ANN_RULE] == rule.name


def test_an_admission_that_reaches_the_store_after_a_later_one_does_not_index_every_rule(monkeypatch) -> None:
    """Request threads read the clock, then queue for the store's lock: an admission that read its clock
    first can reach the store after one that read it later. A book asked for a time before the cached one's
    is indexed again over every rule (issue 19: the hour of finished rules, under the store's lock), though
    the Recorded rules an admission reads do not depend on the time. Both pods get their rule, one index."""
    indexed: list[float] = []
    of = RuleBook.of.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(RuleBook, "of", classmethod(lambda cls, rules, now: indexed.append(now) or of(cls, rules, now)))
    clock = [NOW + 1.0]
    store = MemoryRuleStore(clock=lambda: clock[0])  # one process: the webhook's clock is its store's
    for i in range(500):
        store.record(replace(rs_rule(), name=f"done-{i}", phase=Phase.RESTORED, expires=4e9))
    rules = [store.record(replace(rs_rule(pod_uid=f"old-{i}"), expires=NOW + 300, created=900.0 + i)) for i in range(2)]
    service = WebhookService(store, clock=lambda: clock[0])
    assert admit(service) == rules[0].name  # read its clock second, reached the store first
    clock[0] = NOW  # read its clock first, reached the store second
    assert admit(service) == rules[1].name
    assert indexed == [NOW + 1.0]  # the first book only; the second admission's claim write patched it


def test_dry_run_does_not_claim(store: MemoryRuleStore) -> None:
    store.record(replace(rs_rule(), expires=4e9))
    client = client_for(store)
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    assert "patch" in client.post("/mutate", json=review(pod, dry_run=True)).get_json()["response"]
    assert "patch" in client.post("/mutate", json=review(pod)).get_json()["response"]


def test_internal_failure_admits_the_pod_unchanged() -> None:
    client = client_for(ExplodingStore())
    pod = make_pod(mig={"1g.10gb": 1})
    out = client.post("/mutate", json=review(pod))
    assert out.status_code == 200
    answer = out.get_json()["response"]
    assert answer["allowed"] is True and "patch" not in answer and "webhook error" in answer["warnings"][0]


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"request": {}}'])
def test_malformed_review_is_400(store: MemoryRuleStore, data: bytes) -> None:
    resp = client_for(store).post("/mutate", data=data, content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["error"]


def test_webhook_metrics_and_health(store: MemoryRuleStore) -> None:
    client = client_for(store)
    client.post("/mutate", json=RECORDED)
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert 'mig_extender_webhook_mutations_total{result="untouched"} 1.0' in client.get("/metrics").data.decode()


# -- issue 13 item 15: a rule is claimed through the store (compare-and-swap), not in a replica's memory ------


class ReadTogether(MemoryRuleStore):
    """Two replicas' caches: the first ``readers`` list() calls wait for each other, so every replica decides
    on the rules as they were before any of them claimed one (as two informers lagging behind each other)."""

    def __init__(self, readers: int = 2) -> None:
        super().__init__()
        self._barrier = threading.Barrier(readers, timeout=5)
        self._waiting = readers
        self._count = threading.Lock()

    def book(self, now=None):
        rules = super().book(now)
        with self._count:
            wait, self._waiting = self._waiting > 0, self._waiting - 1
        if wait:
            self._barrier.wait()
        return rules


def generated_pod() -> dict:
    """A ReplicaSet's new pod as admission sees it: generateName, no name, no uid, no creationTimestamp."""
    pod = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"), uid="")
    pod["metadata"]["generateName"] = pod["metadata"].pop("name")[:4] + "-"
    return pod


def stamped(pod: dict, answer: dict) -> str:
    """The rule name the answer's patch stamps on ``pod`` ('' when it does not substitute)."""
    if "patch" not in answer["response"]:
        return ""
    return (apply_patch(pod, answer)["metadata"].get("annotations") or {}).get(ANN_RULE, "")


def admit(service: WebhookService, dry_run: bool = False) -> str:
    """Admit a new pod of ReplicaSet web through ``service``; the rule it was handed, or ''."""
    pod = generated_pod()
    return stamped(pod, service.review(review(pod, dry_run=dry_run)))


@pytest.mark.parametrize("rules", [pytest.param(1, id="one-rule-one-winner"),
                                   pytest.param(2, id="two-rules-the-loser-takes-the-next")])
def test_item15_two_webhook_replicas_hand_one_rule_to_one_pod(rules: int) -> None:
    """Issue 13 item 15: the manifests run two webhook replicas; each kept its claims in its own memory, so
    a burst of one ReplicaSet's pods could be handed the same rule twice. The claim is now a
    compare-and-swap on the rule: exactly one replica wins it, the other tries the next eligible rule."""
    store = ReadTogether()
    recorded = [store.record(replace(rs_rule(pod_uid=f"old-{i}"), expires=NOW + 300, created=900.0 + i))
                for i in range(rules)]
    replicas = [WebhookService(store, clock=lambda: NOW) for _ in range(2)]
    pods = [generated_pod() for _ in replicas]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda i: replicas[i].review(review(pods[i])), range(2)))
    names = sorted(stamped(pod, answer) for pod, answer in zip(pods, answers, strict=True))
    assert names == sorted([r.name for r in recorded] + [""] * (2 - rules))
    for rule in recorded:
        claimed = store.get(rule.namespace, rule.name)
        assert claimed.claimed_until == NOW + replicas[0].claim_ttl and claimed.applied_pod == ""
    lost = sum(r.metrics.webhook_claims.labels("lost")._value.get() for r in replicas)
    assert lost == 1


class FailingWrites(MemoryRuleStore):
    """Reads work; every write fails the way ``failure`` says (the API server down, slow, or contended)."""

    def __init__(self, failure: Exception) -> None:
        super().__init__()
        self.failure = failure
        self.writes: list[float | None] = []

    def update(self, rule, timeout=None):
        self.writes.append(timeout)
        raise self.failure


@pytest.mark.parametrize("failure, outcome", [
    pytest.param(RuntimeError("connection refused"), "error", id="api-down"),
    pytest.param(TimeoutError("read timed out"), "error", id="timeout"),
    pytest.param(ConflictError("409"), "lost", id="conflict-storm"),
])
def test_item15_a_failed_claim_admits_the_pod_unchanged_and_counts_it(failure: Exception, outcome: str) -> None:
    """The claim is an API call: when it fails the pod is admitted without substitution (never blocked),
    the scheduler still injected, the failure counted, and every call bounded in time."""
    store = FailingWrites(failure)
    store.record(replace(rs_rule(), expires=NOW + 300))
    service = WebhookService(store, lambda ns: {LABEL_SCHEDULER_OPT_IN: "true"}, clock=lambda: NOW)
    pod = generated_pod()
    answer = service.review(review(pod))
    assert answer["response"]["allowed"] is True and stamped(pod, answer) == ""
    assert apply_patch(pod, answer)["spec"]["schedulerName"] == SCHEDULER_NAME
    assert service.metrics.webhook_claims.labels(outcome)._value.get() == 1
    assert store.writes and all(t is not None and 0 < t <= service.api_timeout for t in store.writes)


class CountingWrites(MemoryRuleStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def update(self, rule, timeout=None):
        self.writes += 1
        return super().update(rule, timeout)


def test_item15_dry_run_writes_nothing_and_claims_expire() -> None:
    """A dryRun request makes no write (sideEffects: NoneOnDryRun); a claim whose pod never materialised
    (a later admission plugin refused it) stops holding the rule after claim_ttl."""
    now = [NOW]
    store = CountingWrites()
    rule = store.record(replace(rs_rule(), expires=NOW + 300))
    service = WebhookService(store, clock=lambda: now[0], claim_ttl=30.0)
    assert admit(service, dry_run=True) == rule.name
    assert store.writes == 0
    assert admit(service) == rule.name  # claimed; a later admission plugin refuses the pod
    now[0] += 29.0
    assert admit(service) == ""
    now[0] += 2.0
    assert admit(service) == rule.name
    assert store.writes == 2


class LaggingMarks(MemoryRuleStore):
    """The webhook's watch has not delivered the reconciler's restart mark yet: list() shows rules as they
    were recorded; fetch() reads the source of truth."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches = 0

    def book(self, now=None):
        book = super().book(now)
        return RuleBook.of([replace(r, restart_at=0.0) for r in book.rules], book.built_at)

    def fetch(self, namespace, name, timeout=None):
        self.fetches += 1
        return super().fetch(namespace, name)


def test_item15_replacement_admitted_before_the_watch_shows_the_mark_still_gets_the_rule() -> None:
    """The reconciler writes the mark and at once restarts the pod; its replacement can reach the webhook
    before the webhook's watch delivers the mark. A rule of the workload that looks unmarked is read fresh
    (one bounded GET) before the pod is turned away; pods of other workloads cost no API call."""
    store = LaggingMarks()
    rule = store.record(replace(rs_rule(), expires=NOW + 300))
    service = WebhookService(store, clock=lambda: NOW)
    other = make_pod(mig={"1g.10gb": 1}, owner=("ReplicaSet", "other", "rs-2"), uid="")
    assert stamped(other, service.review(review(other))) == "" and store.fetches == 0
    assert admit(service) == rule.name and store.fetches == 1


# ---- DRA mode --------------------------------------------------------------------------------------

DRA_LABELS = {"mig-extender.io/dra": "true"}


def dra_service(templates: set[str] | Exception, labels: dict[str, str] = DRA_LABELS) -> WebhookService:
    def lookup(namespace: str, timeout: float) -> set[str]:
        if isinstance(templates, Exception):
            raise templates
        return templates

    return WebhookService(MemoryRuleStore(), lambda ns: labels, dra_templates=lookup)


def test_dra_namespace_pod_gets_claims_instead_of_extended_resources() -> None:
    pod = make_pod("p", namespace="ml", mig={"1g.5gb": 1}, uid="")
    answer = dra_service({"mig-extender-1g.5gb"}).review(review(pod))
    out = apply_patch(pod, answer)
    assert out["spec"]["resourceClaims"] == [{"name": "mig-1g-5gb-0",
                                              "resourceClaimTemplateName": "mig-extender-1g.5gb"}]
    assert not any(k.startswith("nvidia.com/mig-") for k in out["spec"]["containers"][0]["resources"]["limits"])


@pytest.mark.parametrize(
    "templates",
    [
        pytest.param(set(), id="template-missing"),
        pytest.param(TimeoutError("slow API"), id="templates-unreadable"),
    ],
)
def test_dra_pod_is_admitted_unchanged_with_a_warning_when_claims_cannot_be_made(
        templates: set[str] | Exception) -> None:
    pod = make_pod("p", namespace="ml", mig={"1g.5gb": 1}, uid="")
    answer = dra_service(templates).review(review(pod))["response"]
    assert answer["allowed"] is True and "patch" not in answer
    assert len(answer["warnings"]) == 1 and "nvidia.com/mig-*" in answer["warnings"][0]


def test_namespace_without_the_dra_label_is_not_rewritten_to_claims() -> None:
    pod = make_pod("p", namespace="ml", mig={"1g.5gb": 1}, uid="")
    answer = dra_service({"mig-extender-1g.5gb"}, labels={}).review(review(pod))["response"]
    assert "patch" not in answer and "warnings" not in answer


def test_dra_mode_leaves_opted_out_pods_and_pods_without_mig_alone() -> None:
    service = dra_service({"mig-extender-1g.5gb"})
    opted_out = make_pod("p", namespace="ml", mig={"1g.5gb": 1}, uid="", annotations={ANN_SUBSTITUTE: "false"})
    plain = make_pod("q", namespace="ml", uid="")
    for pod in (opted_out, plain):
        assert "patch" not in service.review(review(pod))["response"]
