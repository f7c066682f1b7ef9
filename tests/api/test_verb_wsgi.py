"""The scheduler verbs' lean WSGI path (web/verbwsgi.py): POSTs skip Flask, and answer exactly as Flask did.

Each case is sent twice, to two apps over identical fresh clusters: through the app as served (the
VerbRouter in front) and through the Flask app behind it (the route the verbs had before issue 19). Status,
content type and body must be equal, so the wire format, the errors and the metrics cannot drift apart.
"""

from __future__ import annotations

import io
import json

import pytest
from werkzeug.test import Client

from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.extender import ExtenderService
from mig_extender.components.metrics import Metrics
from mig_extender.components.settings import Settings
from mig_extender.web.app import create_app
from tests.api.conftest import RecordingBinder, fixture, pending
from tests.builders import inventory_of, make_node

LIMIT = 64 * 1024


def fresh_app(**settings):
    nodes = [make_node("gpu-a", "A100-80GB", {"1g.10gb": 2, "2g.20gb": 1}),
             make_node("gpu-b", "A100-80GB", {"1g.10gb": 1, "2g.20gb": 3}), make_node("cpu-c", None)]
    metrics = Metrics()
    service = ExtenderService(inventory_of(*nodes), MemoryRuleStore(), Settings().plan, metrics, RecordingBinder(),
                              clock=lambda: 1000.0)
    metrics.watch(service.snapshot)
    return create_app(Settings(max_body_bytes=LIMIT, **settings), service), service


POD = pending({"1g.10gb": 1}, name="web-1", uid="uid-web-1")
SOLD_OUT = pending({"2g.20gb": 5}, name="big", uid="uid-big")
CASES = [
    pytest.param("/filter", json.dumps({"Pod": POD, "NodeNames": ["gpu-a", "gpu-b", "cpu-c", "gone"]}), id="filter"),
    pytest.param("/filter", json.dumps({"Pod": SOLD_OUT, "NodeNames": ["gpu-a", "gpu-b"]}), id="filter-no-fit"),
    pytest.param("/filter", json.dumps(fixture("filter-full-nodes.json")), id="filter-full-nodes"),
    pytest.param("/prioritize", json.dumps({"Pod": POD, "NodeNames": ["gpu-a", "gpu-b"]}), id="prioritize"),
    pytest.param("/bind", json.dumps({"PodName": "web-1", "PodNamespace": "default", "PodUID": "uid-web-1",
                                      "Node": "gpu-b"}), id="bind"),
    pytest.param("/preempt", json.dumps({"Pod": POD, "NodeNameToMetaVictims": {"gpu-a": {"Pods": []}}}),
                 id="preempt"),
    pytest.param("/bind", '{"PodName": "a"}', id="bind-missing-fields"),
    pytest.param("/filter", "{not json", id="bad-json"),
    pytest.param("/filter", '{"Pod": NaN}', id="nan"),
    pytest.param("/prioritize", "[]", id="not-an-object"),
    pytest.param("/filter", "", id="empty-body"),
    pytest.param("/filter", '{"Pod": {"metadata": {}, "spec": {}}, "NodeNames": "a"}', id="names-wrong-type"),
    pytest.param("/filter", json.dumps({"Pod": pending({"1g.10gb": "abc"}), "NodeNames": ["gpu-a"]}),
                 id="bad-quantity"),
    pytest.param("/filter", "[" + "1," * 40_000 + "1]", id="body-over-the-limit"),
]


def exchange(wsgi, path: str, body: str):
    response = Client(wsgi).post(path, data=body, content_type="application/json")
    return response.status_code, response.headers["Content-Type"], response.get_data()


@pytest.mark.parametrize("path, body", CASES)
def test_lean_path_answers_exactly_as_the_flask_route(path: str, body: str) -> None:
    served, served_service = fresh_app()
    flask_only, flask_service = fresh_app()
    lean = exchange(served, path, body)
    assert lean == exchange(flask_only.wsgi_app.app, path, body)
    assert lean[1] == "application/json" and json.loads(lean[2]) is not None
    count = "mig_extender_requests_total"
    assert served_service.metrics.registry.get_sample_value(count, {"verb": path[1:], "outcome": "ok"}) == \
        flask_service.metrics.registry.get_sample_value(count, {"verb": path[1:], "outcome": "ok"})


def test_scheduler_verbs_do_not_go_through_flask() -> None:
    """Issue 19: Flask's request context and routing cost ~0.1 ms of CPU per call on the hot path."""
    app, _ = fresh_app()
    seen: list[str] = []
    app.before_request(lambda: seen.append(__import__("flask").request.path))
    client = app.test_client()
    for path, body in (("/filter", {"Pod": POD, "NodeNames": ["gpu-a"]}), ("/prioritize", {"Pod": POD}),
                       ("/bind", {}), ("/preempt", {"Pod": POD})):
        assert client.post(path, json=body).status_code in (200, 400)
    assert seen == []
    client.get("/healthz")
    assert seen == ["/healthz"]


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_another_method_on_a_verb_is_flasks_405_as_json(method: str) -> None:
    app, _ = fresh_app()
    response = getattr(app.test_client(), method)("/filter")
    assert response.status_code == 405
    assert response.get_json()["Error"].startswith("Method Not Allowed")


def test_unknown_verb_is_a_json_404() -> None:
    app, _ = fresh_app()
    response = app.test_client().post("/unreserve", json={})
    assert response.status_code == 404 and response.get_json()["Error"].startswith("Not Found")


class Unreadable(io.BytesIO):
    def read(self, *_):  # pragma: no cover - the test fails if it is called
        raise AssertionError("the body was read")


def test_a_body_over_the_limit_is_413_before_it_is_read() -> None:
    app, service = fresh_app()
    response = app.test_client().post("/filter", content_type="application/json", environ_overrides={
        "CONTENT_LENGTH": str(LIMIT + 1), "wsgi.input": Unreadable()})
    assert response.status_code == 413
    assert response.get_json() == {"Nodes": None, "NodeNames": None, "FailedNodes": {},
                                   "FailedAndUnresolvableNodes": {}, "Error": response.get_json()["Error"]}
    assert response.get_json()["Error"].startswith("Request Entity Too Large")
    assert service.metrics.registry.get_sample_value(
        "mig_extender_requests_total", {"verb": "filter", "outcome": "bad_request"}) == 1


@pytest.mark.parametrize("verb, breaks, expected", [
    pytest.param("filter", lambda s: setattr(s, "filter", lambda *a: 1 / 0),
                 {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
                  "Error": "internal error: ZeroDivisionError"}, id="handler-raises"),
    pytest.param("prioritize", lambda s: setattr(s, "prioritize", lambda *a: [("gpu-a", object())]),
                 {"Error": "internal error: TypeError"}, id="result-not-encodable"),
    pytest.param("preempt", lambda s: setattr(s, "preempt", lambda *a: None),
                 {"NodeNameToMetaVictims": None, "Error": "internal error: AttributeError"}, id="preempt-raises"),
])
def test_a_failure_inside_a_verb_is_a_500_with_a_json_error_and_counted(verb, breaks, expected, caplog) -> None:
    app, service = fresh_app()
    breaks(service)
    response = app.test_client().post(f"/{verb}", json={"Pod": POD, "NodeNames": ["gpu-a"]})
    assert (response.status_code, response.get_json()) == (500, expected)
    assert f"{verb} failed" in caplog.text  # the trace is logged
    registry = service.metrics.registry
    assert registry.get_sample_value("mig_extender_requests_total", {"verb": verb, "outcome": "internal_error"}) == 1
    assert registry.get_sample_value("mig_extender_request_duration_seconds_count", {"verb": verb}) == 1
    assert app.test_client().get("/healthz").status_code == 200  # the worker lives on


def test_every_verb_is_counted_and_timed_by_outcome() -> None:
    app, service = fresh_app()
    client = app.test_client()
    client.post("/filter", json={"Pod": POD, "NodeNames": ["gpu-a"]})
    client.post("/filter", data=b"{bad")
    client.post("/prioritize", json={"Pod": POD, "NodeNames": ["gpu-a"]})
    client.post("/bind", json={"PodName": "web-1", "PodNamespace": "default", "PodUID": "uid-web-1", "Node": "gpu-a"})
    text = client.get("/metrics").get_data(as_text=True)
    for line in ('mig_extender_requests_total{outcome="ok",verb="filter"} 1.0',
                 'mig_extender_requests_total{outcome="bad_request",verb="filter"} 1.0',
                 'mig_extender_requests_total{outcome="ok",verb="prioritize"} 1.0',
                 'mig_extender_requests_total{outcome="ok",verb="bind"} 1.0',
                 'mig_extender_request_duration_seconds_count{verb="filter"} 2.0'):
        assert line in text
    assert service.binder.calls == [("default", "web-1", "uid-web-1", "gpu-a")]


def test_verbs_on_the_metrics_address_still_meet_its_guard() -> None:
    app, service = fresh_app(ops_bind="127.0.0.1:9464")
    response = app.test_client().post("/bind", json={"PodName": "web-1", "PodNamespace": "default",
                                                     "PodUID": "uid-web-1", "Node": "gpu-a"},
                                      environ_overrides={"SERVER_PORT": "9464"})
    assert response.status_code == 404 and "not served on the metrics address" in response.get_json()["Error"]
    assert service.binder.calls == []
