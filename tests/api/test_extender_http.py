"""The extender verbs over HTTP, fed the payloads a real kube-scheduler (v1.36) sent."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
from kubernetes.client.rest import ApiException
from urllib3.exceptions import MaxRetryError, NewConnectionError

from mig_extender.core.resources import ANN_RULE, PodInfo, ResourceCount
from mig_extender.core.rulebook import RuleBook
from mig_extender.core.rules import Phase, Rule, new_rule
from tests.api.conftest import FIXTURES, fixture, pending
from tests.builders import make_pod


def bind(client, pod: dict, node: str):
    """POST /bind for ``pod`` as kube-scheduler sends it (names and uid only)."""
    meta = pod["metadata"]
    return client.post("/bind", json={"PodName": meta["name"], "PodNamespace": meta.get("namespace", "default"),
                                      "PodUID": meta["uid"], "Node": node})

def test_recorded_filter_request_with_node_names(client) -> None:
    body = fixture("filter-request.json")  # a 1g.5gb pod; our fixture cluster is A100-80GB (no 1g.5gb)
    resp = client.post("/filter", json=body)
    assert resp.status_code == 200
    out = resp.get_json()
    assert set(out) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    assert out["Error"] == "" and out["Nodes"] is None and out["NodeNames"] == []
    # 1g.10gb is the least-waste stand-in for 1g.5gb on an 80GB A100; gpu-a has more slices used elsewhere
    assert "substitute nvidia.com/mig-1g.10gb recorded on" in out["FailedAndUnresolvableNodes"]["gpu-a"]
    rules = client.get("/debug/rules").get_json()
    assert len(rules) == 1 and rules[0]["pod"]["uid"] == body["Pod"]["metadata"]["uid"]
    assert rules[0]["original"] == {"resource": "nvidia.com/mig-1g.5gb", "count": 1}
    assert rules[0]["phase"] == "Recorded" and rules[0]["reserved"]["resource"] == "nvidia.com/mig-1g.10gb"


def test_recorded_full_nodes_request_echoes_passing_node_objects(client) -> None:
    body = fixture("filter-full-nodes.json")  # 1g.10gb pod, all 3 nodes as full objects
    out = client.post("/filter", json=body).get_json()
    names = [n["metadata"]["name"] for n in out["Nodes"]["items"]]
    assert sorted(names) == ["gpu-a", "gpu-b"] and out["NodeNames"] is None
    assert out["Nodes"]["items"][0] in body["Nodes"]["items"]  # echoed unchanged
    # cpu-c failed, but a node passed: kube-scheduler would never show why (issue 19, encode_filter)
    assert out["FailedAndUnresolvableNodes"] == {} and out["FailedNodes"] == {}


def test_failed_nodes_are_named_when_no_node_passes_and_left_out_when_one_does(client) -> None:
    """kube-scheduler reads an extender's failed nodes only for a pod that fits nowhere (the FitError's
    "0/N nodes are available: ..." and preemption); a sold-out pod's substitute answer named every node."""
    fits_one = client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["gpu-a", "cpu-c"]})
    out = fits_one.get_json()
    assert out["NodeNames"] == ["gpu-a"] and out["FailedNodes"] == {} and out["FailedAndUnresolvableNodes"] == {}
    fits_none = client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["cpu-c"]}).get_json()
    assert fits_none["NodeNames"] == [] and set(fits_none["FailedAndUnresolvableNodes"]) == {"cpu-c"}
    assert "nvidia.com/mig-1g.10gb" in fits_none["FailedAndUnresolvableNodes"]["cpu-c"]


def test_prioritize_recorded_request_scores_each_candidate(client) -> None:
    body = fixture("prioritize-request-full-nodes.json")
    out = client.post("/prioritize", json=body).get_json()
    assert {h["Host"] for h in out} == {n["metadata"]["name"] for n in body["Nodes"]["items"]}
    assert all(0 <= h["Score"] <= 10 and isinstance(h["Score"], int) for h in out)


def test_bind_assumes_the_pod_before_the_watch(client, service) -> None:
    pod = pending({"1g.10gb": 1})
    service.inventory.upsert_pod(pod)
    meta = pod["metadata"]
    resp = bind(client, pod, "gpu-b")
    assert resp.status_code == 200 and resp.get_json() == {"Error": ""}
    assert service.binder.calls == [("default", meta["name"], meta["uid"], "gpu-b")]
    assert service.snapshot().free("gpu-b", "nvidia.com/mig-1g.10gb") == 0


def test_failed_bind_is_forgotten_and_reported(client, service) -> None:
    pod = pending({"1g.10gb": 1})
    service.inventory.upsert_pod(pod)
    service.binder.fail = True
    resp = bind(client, pod, "gpu-b")
    assert resp.status_code == 502 and "not found" in resp.get_json()["Error"]
    assert service.snapshot().free("gpu-b", "nvidia.com/mig-1g.10gb") == 1


def test_a_bind_that_timed_out_keeps_its_slices_booked(client, service) -> None:
    """The Binding may have been made even though no answer came: until the watch shows the pod (or the
    assumption expires) the slice is not offered again."""
    pod = pending({"1g.10gb": 1})
    service.inventory.upsert_pod(pod)
    service.binder.time_out = True
    resp = bind(client, pod, "gpu-b")
    assert resp.status_code == 502 and "timed out" in resp.get_json()["Error"]
    assert service.snapshot().free("gpu-b", "nvidia.com/mig-1g.10gb") == 0
    other = pending({"1g.10gb": 1})
    assert client.post("/filter", json={"Pod": other, "NodeNames": ["gpu-b"]}).get_json()["NodeNames"] == []


def test_concurrent_binds_never_overcommit_the_last_slice(client, service) -> None:
    """Both pods were filtered before either was bound (the scheduler binds asynchronously)."""
    first, second = pending({"2g.20gb": 1}), pending({"2g.20gb": 1})
    for pod in (first, second):
        service.inventory.upsert_pod(pod)
        out = client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a"]}).get_json()
        assert out["NodeNames"] == ["gpu-a"]  # each alone fits: gpu-a has one 2g.20gb
    binds = [bind(client, p, "gpu-a") for p in (first, second)]
    assert [b.status_code for b in binds] == [200, 409]
    assert "scheduler will retry" in binds[1].get_json()["Error"]
    assert service.snapshot().nodes["gpu-a"].used == {"nvidia.com/mig-2g.20gb": 1}
    assert len(service.binder.calls) == 1
    again = bind(client, first, "gpu-a")
    assert again.status_code == 200  # a repeated bind of the same pod is not a conflict with itself


def test_upgraded_pod_binds_on_its_reservation_and_the_rule_records_it(client, service) -> None:
    for _ in range(3):  # sell out 1g.10gb
        service.inventory.upsert_pod(make_pod(mig={"1g.10gb": 1}, node="gpu-a" if _ < 2 else "gpu-b"))
    first = pending({"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    client.post("/filter", json={"Pod": first, "NodeNames": ["gpu-a", "gpu-b"]})
    (rule,) = service.store.list()
    service.store.update(rule.applied("web-2", service.clock(), 300))
    replacement = pending({"2g.20gb": 1}, owner=("ReplicaSet", "web", "rs-1"), annotations={ANN_RULE: rule.name})
    service.inventory.upsert_pod(replacement)
    out = client.post("/filter", json={"Pod": replacement, "NodeNames": ["gpu-a", "gpu-b"]}).get_json()
    assert rule.node in out["NodeNames"]
    bind(client, replacement, rule.node)
    (bound,) = service.store.list()
    assert bound.bound_pod == replacement["metadata"]["uid"] and bound.reservation(service.clock()) is None


def test_a_snapshot_that_reaches_the_store_after_a_later_one_does_not_index_every_rule(service, monkeypatch) -> None:
    """Request threads (/filter of the next pod, /bind of the last, the metrics) each read the clock, then
    queue for the rule store's lock; a thread that read first can reach the store second, asking for a
    time before the cached book's: the store then indexes every rule again (O(rules) under its lock; an
    hour of finished rules: 4.6 ms at 3,000, issue 19). The extender reads its clock and its book in one
    order, so no snapshot asks for a time behind the last one's."""
    now = [2000.0]
    service.clock = lambda: now[0]
    for i in range(50):
        service.store.record(a_finished_rule(i))
    service.snapshot()  # the cached book, at 2000
    indexed: list[float] = []
    of = RuleBook.of.__func__  # type: ignore[attr-defined]
    ours = ("first", "second")  # RuleBook.of is patched process-wide: other tests' housekeeping threads may call it

    def counted(cls: type[RuleBook], rules: object, t: float) -> RuleBook:
        if threading.current_thread().name in ours:
            indexed.append(t)
        return of(cls, rules, t)

    monkeypatch.setattr(RuleBook, "of", classmethod(counted))
    book = service.store.book
    first_read, go = threading.Event(), threading.Event()

    def slow_book(at=None):  # the first thread is descheduled between its clock read and the store
        if threading.current_thread().name == "first":
            first_read.set()
            go.wait(5)
        return book(at)

    service.store.book = slow_book
    now[0] = 2001.0
    first = threading.Thread(target=service.snapshot, name="first")
    first.start()
    assert first_read.wait(5)
    now[0] = 2002.0
    service.store.record(a_finished_rule(99))  # a change pending: the next book patches it
    second = threading.Thread(target=service.snapshot, name="second")
    second.start()
    second.join(0.3)  # reaches the store first unless the extender orders its reads
    go.set()
    first.join(5)
    second.join(5)
    assert indexed == []  # patched each time, never indexed again


def a_finished_rule(i: int) -> Rule:
    rule = new_rule(PodInfo("ns", f"p{i}", f"uid-{i}"), ResourceCount("nvidia.com/mig-1g.10gb", 1),
                    ResourceCount("nvidia.com/mig-2g.20gb", 1), "gpu-a", 1000.0, 60.0)
    return replace(rule, phase=Phase.RESTORED)


REFUSED = MaxRetryError(None, "/apis/mig-extender.io/v1alpha1/namespaces/default/migsubstitutions",  # type: ignore[arg-type]
                        NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]


def _refuse_rule_writes(service, error: Exception = REFUSED) -> list[str]:
    """From now on every rule status write fails with ``error`` (by default as the kube store's while the
    API server restarts: urllib3's MaxRetryError); returns the attempts."""
    attempts: list[str] = []
    store = service.store

    def update(rule, timeout=None):
        attempts.append(str(rule.phase))
        raise error

    store.update = update
    return attempts


def _upgraded(client, service):
    """A sold-out 1g.10gb pod's rule, and its rewritten replacement (2g.20gb, carrying the rule)."""
    for i in range(3):  # sell out 1g.10gb
        service.inventory.upsert_pod(make_pod(mig={"1g.10gb": 1}, node="gpu-a" if i < 2 else "gpu-b"))
    first = pending({"1g.10gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    client.post("/filter", json={"Pod": first, "NodeNames": ["gpu-a", "gpu-b"]})
    (rule,) = service.store.list()
    replacement = pending({"2g.20gb": 1}, owner=("ReplicaSet", "web", "rs-1"), annotations={ANN_RULE: rule.name})
    return rule, replacement


@pytest.mark.parametrize("error", [pytest.param(REFUSED, id="connection-refused"),
                                   pytest.param(ApiException(status=503, reason="Service Unavailable"), id="503"),
                                   pytest.param(ApiException(status=429, reason="Too Many Requests"), id="429"),
                                   pytest.param(TimeoutError("read timed out"), id="timeout")])
def test_a_rule_write_refused_while_the_replacement_is_filtered_still_answers_the_filter(client, service,
                                                                                         error) -> None:
    """Soak seed 37: /filter answered 500 while the API server restarted. Marking a rule Applied is
    bookkeeping the reconciler also does (``_observe``) once the API is back; the answer, the reservation's
    node for the rewritten pod, does not depend on it. kube-scheduler treats a 5xx from a non-ignorable
    extender as a failed scheduling attempt and backs the pod off."""
    rule, replacement = _upgraded(client, service)
    service.inventory.upsert_pod(replacement)
    attempts = _refuse_rule_writes(service, error)
    out = client.post("/filter", json={"Pod": replacement, "NodeNames": ["gpu-a", "gpu-b"]})
    assert attempts == ["Applied"]  # the Applied mark was tried
    assert out.status_code == 200 and out.get_json()["NodeNames"] == [rule.node]
    assert 'mig_extender_rule_events_total{event="applied_failed"} 1.0' in client.get("/metrics").get_data(True)


def test_a_conflict_on_the_applied_mark_is_decided_again_not_counted_as_failed(client, service) -> None:
    """409: someone wrote the rule since /filter read it (the reconciler's leader, another replica). That is no
    API failure: update_with_retry reads the rule again and applies the mark to it, as before."""
    rule, replacement = _upgraded(client, service)
    service.inventory.upsert_pod(replacement)
    written = service.store.update(replace(rule, message="written by the reconciler meanwhile"))
    stale = service.store.book  # /filter decides on the copy it read before that write
    service.store.book = lambda now=None: replace(stale(now), by_name={rule.name: rule})  # type: ignore[method-assign]
    fetched: list[str] = []
    fetch = service.store.fetch
    service.store.fetch = lambda ns, name, timeout=None: fetched.append(name) or fetch(ns, name)  # type: ignore[method-assign]
    out = client.post("/filter", json={"Pod": replacement, "NodeNames": ["gpu-a", "gpu-b"]})
    assert out.status_code == 200 and out.get_json()["NodeNames"] == [rule.node]
    assert fetched == [rule.name]  # refused as stale, read again
    (stored,) = service.store.list()
    assert stored.phase is Phase.APPLIED and int(stored.resource_version) > int(written.resource_version)
    metrics = client.get("/metrics").get_data(True)
    assert 'event="applied"} 1.0' in metrics and "applied_failed" not in metrics


def test_a_sibling_is_not_offered_the_slice_of_a_pod_whose_rule_writes_failed(client, service) -> None:
    """While the API is away the rule stays Recorded under its bound pod (both its Applied mark and its bound
    record failed). A sibling of the same workload arriving meanwhile must not be told the slice is free:
    the bound pod's booking and the rule's reservation then count the one slice twice, which only ever
    offers less, never the same slice to two pods."""
    rule, replacement = _upgraded(client, service)
    service.inventory.upsert_pod(replacement)
    _refuse_rule_writes(service)
    assert client.post("/filter", json={"Pod": replacement, "NodeNames": ["gpu-a", "gpu-b"]}).get_json()[
        "NodeNames"] == [rule.node]
    assert bind(client, replacement, rule.node).status_code == 200
    sibling = pending({"2g.20gb": 1}, owner=("ReplicaSet", "web", "rs-1"))
    out = client.post("/filter", json={"Pod": sibling, "NodeNames": [rule.node]}).get_json()
    assert out["NodeNames"] == []
    # counted twice (the bound pod's booking, the rule's reservation) until the bound record lands
    assert service.snapshot().free(rule.node, "nvidia.com/mig-2g.20gb") == -1
    del service.store.update  # the API is back: housekeeping writes what it could not (the instance's own patch)
    service.housekeeping()
    (stored,) = service.store.list()
    assert stored.bound_pod == replacement["metadata"]["uid"]
    assert service.snapshot().free(rule.node, "nvidia.com/mig-2g.20gb") == 0


def test_a_defect_in_a_rule_write_is_still_a_500_with_its_trace(client, service, caplog) -> None:
    """Only a write the API could not take is bookkeeping for later; a defect of ours must stay visible."""
    _, replacement = _upgraded(client, service)
    service.inventory.upsert_pod(replacement)
    _refuse_rule_writes(service, TypeError("a bug"))
    out = client.post("/filter", json={"Pod": replacement, "NodeNames": ["gpu-a", "gpu-b"]})
    assert out.status_code == 500 and "TypeError" in out.get_json()["Error"]
    assert any(r.exc_info for r in caplog.records)


def test_a_rule_write_refused_after_the_binding_was_made_still_answers_the_bind(client, service) -> None:
    """The Binding is made, then recording the bound pod on the rule fails (API server restarting): the pod
    is bound, so /bind must say so; an error there tells kube-scheduler the bind failed and it forgets a pod
    that is in fact bound. The reconciler records the bound pod when the API is back."""
    rule, replacement = _upgraded(client, service)
    service.store.update(rule.applied(replacement["metadata"]["name"], service.clock(), 300))
    service.inventory.upsert_pod(replacement)
    assert client.post("/filter", json={"Pod": replacement, "NodeNames": ["gpu-a", "gpu-b"]}).get_json()[
        "NodeNames"] == [rule.node]
    attempts = _refuse_rule_writes(service)
    out = bind(client, replacement, rule.node)
    assert attempts == ["Applied"]
    assert out.status_code == 200 and out.get_json() == {"Error": ""}
    assert service.binder.calls[-1][3] == rule.node
    assert 'mig_extender_rule_events_total{event="bound_failed"} 1.0' in client.get("/metrics").get_data(True)


@pytest.mark.parametrize("path, body, status, message", [
    pytest.param("/filter", b"{not json", 400, "not valid JSON: ", id="filter-not-json"),
    pytest.param("/filter", b'{"Pod": NaN}', 400, "not valid JSON: ", id="filter-nan"),
    pytest.param("/bind", b"\xff\xfe{}", 400, "not valid JSON: ", id="bind-not-utf8"),
    pytest.param("/filter", b"[]", 400, "JSON object", id="filter-not-object"),
    pytest.param("/filter", b'{"Pod": 5}', 400, "Pod must be a Pod", id="filter-pod-wrong-type"),
    pytest.param("/filter", b'{"Pod": {"metadata": {}, "spec": {}}, "NodeNames": "a"}', 400, "list of strings",
                 id="filter-names-wrong-type"),
    pytest.param("/filter", b'{"Pod": {"metadata": {}, "spec": {}}, "Nodes": {"items": [{}]}}', 400, "metadata.name",
                 id="filter-node-without-name"),
    pytest.param("/prioritize", b"null", 400, "JSON object", id="prioritize-null"),
    pytest.param("/bind", b'{"PodName": "a"}', 400, "PodNamespace", id="bind-missing-fields"),
])
def test_bad_input_gets_4xx_with_error_field(client, path: str, body: bytes, status: int, message: str) -> None:
    resp = client.post(path, data=body, content_type="application/json")
    assert resp.status_code == status
    assert message in resp.get_json()["Error"]


def test_filter_error_result_is_well_formed(client) -> None:
    out = client.post("/filter", data=b"{bad").get_json()
    assert out["NodeNames"] is None and out["FailedNodes"] == {} and out["Error"]


def test_bad_quantity_is_an_error_result_not_a_crash(client) -> None:
    pod = pending({"1g.10gb": "abc"})
    out = client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a"]}).get_json()
    assert out["Error"] and "not a quantity" in out["Error"] and out["NodeNames"] == []


def test_oversized_body_is_413(client) -> None:
    resp = client.post("/filter", data=b"{" + b" " * (300 * 1024) + b"}", content_type="application/json")
    assert resp.status_code == 413 and resp.get_json()["Error"]


def test_unknown_verb_and_method_are_json_errors(client) -> None:
    assert client.post("/unreserve", json={}).status_code == 404
    assert client.get("/filter").status_code == 405
    assert "Error" in client.get("/filter").get_json()


def test_never_returns_a_node_that_was_not_asked_about(client) -> None:
    out = client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["gpu-b"]}).get_json()
    assert out["NodeNames"] == ["gpu-b"]


def test_health_ready_metrics_and_inventory(client, service) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    service.inventory.synced = False
    resp = client.get("/readyz")
    assert resp.status_code == 503 and b"not synced" in resp.data
    client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["gpu-a"]})
    text = client.get("/metrics").data.decode()
    assert 'mig_extender_requests_total{outcome="ok",verb="filter"} 1.0' in text
    assert 'mig_extender_slices{resource="nvidia.com/mig-2g.20gb",state="allocatable"} 4.0' in text
    assert "mig_extender_pending_slices{" not in text  # nothing waits yet
    service.inventory.upsert_pod(pending({"1g.10gb": 2}))
    text = client.get("/metrics").data.decode()
    assert 'mig_extender_pending_slices{resource="nvidia.com/mig-1g.10gb"} 2.0' in text
    inv = client.get("/debug/inventory?node=gpu-a").get_json()
    assert inv["nodes"][0]["gpu"] == "A100-80GB"
    assert inv["nodes"][0]["resources"]["nvidia.com/mig-1g.10gb"] == {"allocatable": 2, "used": 0, "reserved": 0,
                                                                      "free": 2}
    assert inv["nodes"][0]["problems"] == []


def test_debug_inventory_reports_a_node_whose_gpu_is_unknown(service, client) -> None:
    """Issue 16: not a silent `gpu: null`; the problem says what the extender does instead."""
    from mig_extender.core.snapshot import UnknownGpu
    from tests.builders import make_node

    service.inventory.upsert_node(make_node("gpu-x", None, {"1g.20gb": 1},
                                            labels={"nvidia.com/gpu.product": "NVIDIA-Future-X1"}))
    body = client.get("/debug/inventory").get_json()
    problem = str(UnknownGpu("NVIDIA-Future-X1", None, "A100-80GB"))
    assert [(n["node"], n["gpu"], n["problems"]) for n in body["nodes"] if n["problems"]] == [
        ("gpu-x", "A100-80GB", [problem])]
    assert body["problems"] == {"gpu-x": [problem]}


def test_debug_endpoints_can_be_disabled(service) -> None:
    from mig_extender.components.settings import Settings
    from mig_extender.web.app import create_app

    client = create_app(Settings(debug_endpoints=False), service).test_client()
    assert client.get("/debug/rules").status_code == 404
    assert client.get("/healthz").status_code == 200


def test_every_recorded_request_of_a_real_scheduler_is_answered(client) -> None:
    """Replay a real scheduler's session (filter and prioritize for several pods), in order."""
    seen = set()
    for line in (FIXTURES / "extender-requests-k8s-1.36.jsonl").read_text().splitlines():
        rec = json.loads(line)
        resp = client.post(rec["path"], json=rec["body"])
        assert resp.status_code == 200, (rec["path"], resp.get_json())
        assert resp.get_json() is not None
        if rec["path"] == "/filter":
            assert resp.get_json()["Error"] == ""
        seen.add(rec["path"])
    assert seen == {"/filter", "/prioritize"}


def test_a_pod_the_watch_has_not_delivered_yet_is_checked_and_assumed_from_its_filter(client, service) -> None:
    """Under load the pod watch lags: /bind (names only) can come before the pod's ADDED event. The
    demand seen by /filter still books the slice, so the next pod cannot be promised it (seen in e2e:
    four 1g pods bound to a node with three 1g slices while the API server was busy)."""
    first, second = pending({"2g.20gb": 1}), pending({"2g.20gb": 1})  # never given to the inventory
    for pod in (first, second):
        out = client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a"]}).get_json()
        assert out["NodeNames"] == ["gpu-a"]
    binds = [bind(client, p, "gpu-a") for p in (first, second)]
    assert [b.status_code for b in binds] == [200, 409]
    assert service.snapshot().nodes["gpu-a"].used == {"nvidia.com/mig-2g.20gb": 1}
    # the watch catches up with the pod as created (unbound): the bind's assumption holds
    service.inventory.upsert_pod(first)
    assert service.snapshot().nodes["gpu-a"].used == {"nvidia.com/mig-2g.20gb": 1}
    third = pending({"2g.20gb": 1})
    assert client.post("/filter", json={"Pod": third, "NodeNames": ["gpu-a"]}).get_json()["NodeNames"] == []


def test_recorded_bind_request_for_a_pod_not_in_the_inventory_still_binds(client, service) -> None:
    body = fixture("bind-request.json")  # the scheduler sends names only; the pod is unknown to this inventory
    resp = client.post("/bind", json=body)
    assert resp.status_code == 200 and resp.get_json() == {"Error": ""}
    assert service.binder.calls == [(body["PodNamespace"], body["PodName"], body["PodUID"], body["Node"])]


def test_rule_store_outage_still_answers_and_promises_nothing(client, service) -> None:
    class Down(type(service.store)):
        def record(self, rule):
            raise ConnectionError("connection refused")

    service.store.__class__ = Down
    for i in range(3):
        service.inventory.upsert_pod(make_pod(mig={"1g.10gb": 1}, node="gpu-a" if i < 2 else "gpu-b"))
    out = client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["gpu-a", "gpu-b"]})
    assert out.status_code == 200 and out.get_json()["NodeNames"] == []
    assert "could not be stored" in out.get_json()["FailedAndUnresolvableNodes"]["gpu-a"]  # sold out: item 10
    assert service.snapshot().reserved == {}


@pytest.mark.parametrize("owns_rules, phase", [(True, "Expired"), (False, "Recorded")])
def test_housekeeping_expires_rules_only_where_it_owns_them(client, service, owns_rules: bool, phase: str) -> None:
    for i in range(3):
        service.inventory.upsert_pod(make_pod(mig={"1g.10gb": 1}, node="gpu-a" if i < 2 else "gpu-b"))
    client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["gpu-a", "gpu-b"]})
    (rule,) = service.store.list()
    service.clock = lambda: rule.expires + 1
    service.expire_rules = owns_rules
    service.housekeeping()
    (after,) = service.store.list()
    assert str(after.phase) == phase
    assert service.snapshot().reserved == {}  # either way the reservation is void once expired


def test_item11_bound_pod_keeps_its_slice_through_housekeeping_while_the_watch_lags(client, service) -> None:
    """The Binding succeeded but the watch delivers nothing for 60 s: housekeeping must not forget the
    pod, or the next filter offers its slice again (the kubelet then rejects one of the two pods)."""
    now = [1000.0]
    service.inventory._clock = lambda: now[0]
    pod = pending({"2g.20gb": 1})
    assert client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a"]}).get_json()["NodeNames"] == ["gpu-a"]
    assert bind(client, pod, "gpu-a").status_code == 200
    now[0] += 60
    service.housekeeping()
    other = pending({"2g.20gb": 1})
    assert client.post("/filter", json={"Pod": other, "NodeNames": ["gpu-a"]}).get_json()["NodeNames"] == []
    assert service.snapshot().free("gpu-a", "nvidia.com/mig-2g.20gb") == 0


NOT_SYNCED = "mig-extender inventory not synced yet"


def test_item1_filter_refuses_until_synced(client, service) -> None:
    """After a restart nodes are listed before the (paginated) pod list: every slice looks free. Until
    both caches have synced each node fails with a reason the scheduler retries, and no rule is recorded."""
    for _ in range(3):  # sell out 1g.10gb: a synced extender would record a substitute
        service.inventory.upsert_pod(make_pod(mig={"1g.10gb": 1}, node="gpu-a"))
    service.inventory.synced = False
    out = client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["gpu-a", "gpu-b"]}).get_json()
    assert out["NodeNames"] == [] and out["Error"] == "" and out["FailedAndUnresolvableNodes"] == {}
    assert out["FailedNodes"] == {"gpu-a": NOT_SYNCED, "gpu-b": NOT_SYNCED}
    assert service.store.list() == []
    service.inventory.synced = True
    out = client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["gpu-a", "gpu-b"]}).get_json()
    assert out["NodeNames"] == ["gpu-b"]


def test_item1_filter_refuses_until_the_rule_store_synced(client, service) -> None:
    """Reservations live in the rule store: without them a reserved slice would look free."""
    class Syncing(type(service.store)):
        synced = False

    service.store.__class__ = Syncing
    out = client.post("/filter", json={"Pod": pending({"1g.10gb": 1}), "NodeNames": ["gpu-a"]}).get_json()
    assert out["NodeNames"] == [] and out["FailedNodes"] == {"gpu-a": NOT_SYNCED}


def test_item1_pods_without_mig_pass_untouched_while_not_synced(client, service) -> None:
    service.inventory.synced = False
    out = client.post("/filter", json={"Pod": make_pod(), "NodeNames": ["gpu-a", "cpu-c"]}).get_json()
    assert out["NodeNames"] == ["gpu-a", "cpu-c"] and out["FailedNodes"] == {}


def test_item1_bind_refuses_until_synced(client, service) -> None:
    pod = pending({"1g.10gb": 1})
    client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-b"]})
    service.inventory.synced = False
    resp = bind(client, pod, "gpu-b")
    assert resp.status_code == 503 and NOT_SYNCED in resp.get_json()["Error"]
    assert service.binder.calls == []
    assert service.snapshot().free("gpu-b", "nvidia.com/mig-1g.10gb") == 1  # nothing assumed
    service.inventory.synced = True
    assert bind(client, pod, "gpu-b").status_code == 200


def test_soak_d12_no_mig_pod_is_bound_while_a_watch_is_cut_off_or_just_back(client, service) -> None:
    """Soak seed 34: the API server came back while our node watch was still in backoff; kube-scheduler
    bound two pods through /bind onto slices a re-partition had removed meanwhile, and the kubelet rejected
    them (a bare pod then stays Failed). /filter may answer from the cache while the API is away (nothing
    can be bound then); /bind refuses MIG pods until every watch has caught up."""
    pod = pending({"1g.10gb": 1})
    client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-b"]})
    service.watch_gaps = lambda: ["nodes"]
    resp = bind(client, pod, "gpu-b")
    assert resp.status_code == 503 and "watch of nodes is reconnecting" in resp.get_json()["Error"]
    assert service.binder.calls == [] and service.snapshot().free("gpu-b", "nvidia.com/mig-1g.10gb") == 1
    plain = make_pod()  # no MIG: nothing of ours to get wrong
    assert bind(client, plain, "cpu-c").status_code == 200
    service.watch_gaps = list
    assert bind(client, pod, "gpu-b").status_code == 200


def test_debug_rules_shows_a_preemption_hold_with_its_victims(client, service) -> None:
    import time

    from mig_extender.core.resources import pod_info
    from mig_extender.core.rules import preemption_hold

    pod = pending({"1g.10gb": 1})
    service.store.record(preemption_hold(pod_info(pod), "gpu-b", ["victim-uid"], time.time(), 60.0))
    (rule,) = client.get("/debug/rules").get_json()
    assert rule["victims"] == ["victim-uid"] and rule["phase"] == "Recorded"
    assert rule["reserved"] == {"node": "gpu-b", "resource": "nvidia.com/mig-1g.10gb", "count": 1}


def test_debug_inventory_shows_dra_devices_and_upgraded_claims(service, client) -> None:
    """Issue 20: MIG devices served by DRA appear in /debug/inventory, with the claims on a substitute."""
    from mig_extender.cluster.drainventory import DraInventory
    from mig_extender.core.dra import ANN_DRA_PROFILE
    from mig_extender.core.resources import LABEL_MANAGED_BY
    from tests.builders import make_resource_slice

    assert "dra" not in client.get("/debug/inventory").get_json(), "no DRA book: no section"
    book = DraInventory()
    book.replace_slices([make_resource_slice("gpu-d", profiles=("1g.5gb", "2g.10gb"))])
    book.claim_event("ADDED", {
        "metadata": {"namespace": "ml", "name": "web-mig", "labels": {LABEL_MANAGED_BY: "mig-extender"},
                     "annotations": {ANN_DRA_PROFILE: "1g.5gb"}},
        "status": {"allocation": {"devices": {"results": [{"request": "mig/mig-2g-10gb", "driver": "gpu.nvidia.com",
                                                            "pool": "gpu-d", "device": "gpu-0-mig-1"}]}},
                   "reservedFor": [{"resource": "pods", "name": "web", "uid": "u"}]}})
    service.dra = book
    body = client.get("/debug/inventory").get_json()["dra"]
    assert body["nodes"] == {"gpu-d": {"1g.5gb": {"devices": 1, "allocated": 0, "free": 1},
                                       "2g.10gb": {"devices": 1, "allocated": 1, "free": 0}}}
    assert body["upgraded"] == [{"claim": "ml/web-mig", "pod": "web", "asked": "1g.5gb", "got": "mig-2g-10gb",
                                 "held": "2g.10gb"}]
    book.claim_event("DELETED", {"metadata": {"namespace": "ml", "name": "web-mig"}})
    assert client.get("/debug/inventory").get_json()["dra"]["upgraded"] == []


def test_a_rule_write_the_api_could_not_take_is_tried_again_by_housekeeping(client, service) -> None:
    """The verb answers without the write, but the write is not left to the reconciler alone: until today a
    5xx made kube-scheduler retry the pod, and each retry wrote again. Now the pod is bound at once; a rule
    left Recorded under its bound pod is one the webhook may hand to a second new pod of the workload once
    the claim lapses (30 s), while the reconciler's leader is still recovering from the same outage."""
    _, replacement = _upgraded(client, service)
    service.inventory.upsert_pod(replacement)
    write = service.store.update
    attempts = _refuse_rule_writes(service)
    assert client.post("/filter", json={"Pod": replacement, "NodeNames": ["gpu-a", "gpu-b"]}).status_code == 200
    assert attempts == ["Applied"]
    service.housekeeping()  # the API still away: tried, kept for the next round
    assert attempts == ["Applied", "Applied"]
    service.store.update = write  # the API is back
    service.housekeeping()
    (stored,) = service.store.list()
    assert stored.phase is Phase.APPLIED and stored.applied_pod == replacement["metadata"]["name"]
    metrics = client.get("/metrics").get_data(True)
    assert 'mig_extender_rule_events_total{event="applied"} 1.0' in metrics
    service.housekeeping()  # done: never written twice
    assert service.store.list()[0].resource_version == stored.resource_version


def test_housekeeping_leaves_a_rule_written_meanwhile_to_its_writer(client, service) -> None:
    """The reconciler's leader recorded the transition first (the rule changed since the write failed): the
    retry is dropped, not written over the newer rule."""
    rule, replacement = _upgraded(client, service)
    service.inventory.upsert_pod(replacement)
    write = service.store.update
    attempts = _refuse_rule_writes(service)
    client.post("/filter", json={"Pod": replacement, "NodeNames": ["gpu-a", "gpu-b"]})
    service.store.update = write
    newer = service.store.update(rule.applied(replacement["metadata"]["name"], service.clock(), 300))
    service.housekeeping()
    assert attempts == ["Applied"] and service.store.list() == [newer]


def test_housekeeping_stops_its_retries_at_the_first_the_api_still_refuses(client, service) -> None:
    """Each retry may wait for the client's timeout on the housekeeping thread: after an outage's burst,
    one refused write says the API is still away, and the others wait for the next round."""
    rule, _ = _upgraded(client, service)
    other = service.store.record(replace(rule, name=rule.name + "-2", resource_version=""))
    attempts = _refuse_rule_writes(service)
    for r in (rule, other):
        service._transition(r, lambda x: x.expired(service.clock()), "cancelled")
    assert len(attempts) == 2
    service.housekeeping()
    assert len(attempts) == 3  # one tried, one left for the next round
    service.housekeeping()
    assert len(attempts) == 4
