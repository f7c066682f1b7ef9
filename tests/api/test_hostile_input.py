"""Property-based hostile input at every endpoint: random and malformed JSON, wrong types, absurd quantities,
unknown resources, malformed AdmissionReviews. Each must get a 4xx or a well-formed answer, never a 500,
and must not change state (no rule recorded, no slice assumed) unless the input was a valid request.

The number of cases tried is printed at the end of the session (see docs/reliability.md).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.components.extender import ExtenderService
from mig_extender.components.metrics import Metrics
from mig_extender.components.settings import Settings
from mig_extender.components.webhook import WebhookService
from mig_extender.web.app import create_app, create_webhook_app
from tests.api.conftest import FIXTURES, RecordingBinder
from tests.builders import inventory_of, make_node, make_pod

CASES: Counter[str] = Counter()
EXAMPLES = 300
PROFILE = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                      st.text(max_size=30))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                             st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                          max_leaves=25)
quantity = st.one_of(st.sampled_from(["1e9", "-1", "abc", "1.5", "500m", "", " ", "0x10", "1Ki", "9" * 40, "NaN",
                                      "Infinity", "1e-3", "+1", "\u0661"]),  # an Arabic-Indic digit one
                     st.integers(-10, 10**12), st.floats(allow_nan=True), st.none(),
                     st.lists(st.integers(), max_size=2))
resource = st.one_of(st.sampled_from(["nvidia.com/mig-1g.10gb", "nvidia.com/mig-1g.5gb", "nvidia.com/mig-99g.1gb",
                                      "nvidia.com/mig-", "nvidia.com/mig-1g.10gb.me", "nvidia.com/mig-1g.10gb+gfx",
                                      "nvidia.com/gpu", "cpu"]),
                     st.text(max_size=40).map(lambda t: "nvidia.com/mig-" + t))


def fresh_service() -> ExtenderService:
    nodes = [make_node("gpu-a", "A100-80GB", {"1g.10gb": 2, "2g.20gb": 1}),
             make_node("gpu-b", "A100-80GB", {"1g.10gb": 1})]
    metrics = Metrics()
    svc = ExtenderService(inventory_of(*nodes), MemoryRuleStore(), Settings().plan, metrics, RecordingBinder())
    metrics.watch(svc.snapshot)
    return svc


SERVICE = fresh_service()
CLIENT = create_app(Settings(max_body_bytes=64 * 1024), SERVICE).test_client()
WEBHOOK = create_webhook_app(Settings(max_body_bytes=64 * 1024), WebhookService(MemoryRuleStore())).test_client()
REVIEW = json.loads((FIXTURES / "admission-review-pod-create.json").read_text())


def post(client: Any, path: str, body: Any) -> Any:
    """Encoded with the stdlib, as any client might: big integers, NaN and Infinity included (the
    server's own JSON layer refuses to write those, so the test client's ``json=`` cannot send them)."""
    return client.post(path, data=json.dumps(body), content_type="application/json")


def strict_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def state() -> tuple[int, dict[str, Any]]:
    snap = SERVICE.snapshot()
    return len(snap.rules), {n: dict(i.used) for n, i in snap.nodes.items()}


def check(resp: Any, verb: str) -> None:
    assert resp.status_code < 500, (verb, resp.status_code, resp.data[:300])
    body = resp.get_json(silent=True)
    assert body is not None, (verb, resp.data[:300])
    if resp.status_code >= 400 and verb != "mutate":
        assert isinstance(body, dict) and body.get("Error"), body


@PROFILE
@given(body=json_value, verb=st.sampled_from(["filter", "prioritize", "bind"]))
def test_random_json_at_the_extender_verbs(body: Any, verb: str) -> None:
    before = state()
    resp = CLIENT.post(f"/{verb}", data=json.dumps(body), content_type="application/json")
    check(resp, verb)
    if verb != "bind":
        assert state() == before
    CASES["random-json"] += 1


@PROFILE
@given(raw=st.binary(max_size=300), verb=st.sampled_from(["filter", "prioritize", "bind", "mutate"]))
def test_random_bytes_everywhere(raw: bytes, verb: str) -> None:
    target = WEBHOOK if verb == "mutate" else CLIENT
    before = state()
    resp = target.post(f"/{verb}", data=raw, content_type="application/json")
    check(resp, verb)
    assert state() == before
    CASES["random-bytes"] += 1


@PROFILE
@given(qty=quantity, res=resource, names=st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=4)),
       verb=st.sampled_from(["filter", "prioritize"]))
def test_absurd_quantities_and_unknown_resources(qty: Any, res: str, names: Any, verb: str) -> None:
    pod = make_pod(mig={"1g.10gb": 1})
    pod["spec"]["containers"][0]["resources"] = {"limits": {res: qty}, "requests": {res: qty}}
    before = state()
    resp = post(CLIENT, f"/{verb}", {"Pod": pod, "NodeNames": names})
    check(resp, verb)
    if verb == "filter" and resp.status_code == 200:
        out = resp.get_json()
        assert set(out["NodeNames"] or []) <= set(names or [])  # never a node that was not asked about
    rules_before, used_before = before
    rules_after, used_after = state()
    assert used_after == used_before and rules_after <= rules_before + 1
    CASES["quantities"] += 1


FILTER = json.loads((FIXTURES / "filter-request.json").read_text())
# every field of a Pod / AdmissionReview that some code path reads: each gets random, wrongly typed values
POD_FIELDS = [
    ("metadata",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "uid"), ("metadata", "annotations"),
    ("metadata", "annotations", "mig-extender.io/substitute"), ("metadata", "annotations", "mig-extender.io/rule"),
    ("metadata", "annotations", "mig-extender.io/original-demand"), ("metadata", "ownerReferences"),
    ("metadata", "ownerReferences", 0), ("metadata", "ownerReferences", 0, "controller"),
    ("metadata", "deletionTimestamp"), ("metadata", "creationTimestamp"), ("metadata", "labels"), ("spec",),
    ("spec", "containers"), ("spec", "containers", 0), ("spec", "containers", 0, "resources"),
    ("spec", "containers", 0, "resources", "limits"), ("spec", "containers", 0, "resources", "requests"),
    ("spec", "containers", 0, "resources", "limits", "nvidia.com/mig-1g.5gb"), ("spec", "initContainers"),
    ("spec", "initContainers", 0), ("spec", "initContainers", 0, "restartPolicy"), ("spec", "nodeName"),
    ("spec", "schedulerName"), ("status",), ("status", "phase"),
]


def put(document: dict, path: tuple, value: Any) -> dict:
    """``document`` with ``value`` at ``path``, creating containers on the way (``0`` indexes a list)."""
    doc = copy.deepcopy(document)
    node: Any = doc
    for key, nxt in zip(path, (*path[1:], None), strict=True):
        if nxt is None:
            if isinstance(node, list):
                node[:1] = [value]
            else:
                node[key] = value
            return doc
        if isinstance(node, list):
            if not node or not isinstance(node[0], (dict, list)):
                node[:1] = [{} if not isinstance(nxt, int) else []]
            node = node[0]
        else:
            if not isinstance(node.get(key), (dict, list)):
                node[key] = [] if isinstance(nxt, int) else {}
            node = node[key]
    return doc


@PROFILE
@given(field=st.sampled_from(POD_FIELDS), value=json_value, verb=st.sampled_from(["filter", "prioritize"]))
def test_wrong_types_in_every_pod_field(field: tuple, value: Any, verb: str) -> None:
    before = state()
    resp = post(CLIENT, f"/{verb}", put(FILTER, ("Pod", *field), value))
    check(resp, verb)
    rules_before, used_before = before
    rules_after, used_after = state()
    assert used_after == used_before and rules_after <= rules_before + 1
    CASES["pod-field-types"] += 1


@PROFILE
@given(field=st.sampled_from(["PodName", "PodNamespace", "PodUID", "Node"]), value=json_value)
def test_wrong_types_in_every_binding_field(field: str, value: Any) -> None:
    body = put({"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": "gpu-a"}, (field,), value)
    resp = post(CLIENT, "/bind", body)
    check(resp, "bind")
    if not strict_json(value):  # NaN or Infinity: not JSON, refused before any field is read
        assert resp.status_code == 400 and "not valid JSON" in resp.get_json()["Error"]
    elif not isinstance(value, str) or not value:
        assert resp.status_code == 400 and field in resp.get_json()["Error"]
    CASES["binding-field-types"] += 1


REVIEW_FIELDS = [("request",), ("request", "uid"), ("request", "kind"), ("request", "kind", "kind"),
                 ("request", "operation"), ("request", "namespace"), ("request", "dryRun"), ("request", "object")]
REVIEW_FIELDS += [("request", "object", *f) for f in POD_FIELDS]


@PROFILE
@given(field=st.sampled_from(REVIEW_FIELDS), value=json_value)
def test_malformed_admission_reviews(field: tuple, value: Any) -> None:
    review = put(REVIEW, field, value)
    resp = post(WEBHOOK, "/mutate", review)
    check(resp, "mutate")
    if resp.status_code == 200:
        answer = resp.get_json()["response"]
        assert answer["allowed"] is True  # the webhook never blocks a pod
    CASES["admission-reviews"] += 1


def test_huge_bodies_are_413_without_reading_them() -> None:
    for verb, target in (("filter", CLIENT), ("mutate", WEBHOOK)):
        resp = target.post(f"/{verb}", data=b"[" + b"1," * 200_000 + b"1]", content_type="application/json")
        assert resp.status_code == 413
    CASES["huge-bodies"] += 2
