"""The scheduler-extender verbs: POST /filter, /prioritize, /bind, /preempt. Thin adapters.

Each handler decodes kube-scheduler's wire format (ExtenderArgs, ExtenderBindingArgs), calls the
ExtenderService once, and encodes the answer (ExtenderFilterResult, HostPriorityList,
ExtenderBindingResult). Both shapes of ExtenderArgs are spoken: ``NodeNames`` (nodeCacheCapable: true)
and full ``Nodes`` (a v1 NodeList, echoed back for the nodes that pass). Malformed input is a 400 whose
body is still a well-formed result with ``Error`` set; a node that was not in the input is never
returned (the scheduler fails the cycle if one is).

``answer()`` is the one way a verb is served: read and decode the body, call the handler, map every
failure to a status and a result with ``Error``, count and time it, encode. Two WSGI paths call it: the
lean one in verbwsgi.py (what gunicorn serves the scheduler's POSTs through) and the Flask blueprint
here (other methods get Flask's 405, the metrics address Flask's 404 guard). A new verb is one line
in ``VERBS``. Must not: import Flask's request globals into a handler, or decide anything itself.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Mapping
from itertools import repeat
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from ..components.extender import BindConflict, BindError, ExtenderService, NotReady
from ..core.planner import FilterDecision
from ..core.preemption import PreemptAnswer, Victims
from ..core.resources import DemandError, pod_info

log = logging.getLogger(__name__)
bp = Blueprint("extender", __name__)

Handler = Callable[[ExtenderService, Mapping[str, Any]], Any]


class WireError(ValueError):
    """The request body is not the extender wire format; the message says what is wrong."""


def _empty_result(verb: str, message: str) -> Any:
    if verb == "filter":
        return {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
                "Error": message}
    if verb == "preempt":
        return {"NodeNameToMetaVictims": None, "Error": message}
    return {"Error": message}


def _outcome(name: str, exc: Exception) -> tuple[int, str, Any]:
    """(status, metrics outcome, result) for a verb that raised ``exc``."""
    if isinstance(exc, HTTPException):  # body too large (413), client gone mid-body (400)
        return exc.code or 400, "bad_request", _empty_result(name, f"{exc.name}: {exc.description}")
    if isinstance(exc, (WireError, DemandError)):
        return 400, "bad_request", _empty_result(name, str(exc))
    if isinstance(exc, BindConflict):  # lost the last slice to a concurrent bind: the scheduler retries
        return 409, "conflict", _empty_result(name, str(exc))
    if isinstance(exc, NotReady):  # caches not synced yet: the scheduler forgets the pod and retries
        return 503, "not_ready", _empty_result(name, str(exc))
    if isinstance(exc, BindError):  # the API server refused or could not be reached
        return 502, "error", _empty_result(name, str(exc))
    # a bug: answer cleanly, keep the worker, log the trace
    log.error("%s failed", name, exc_info=exc)
    return 500, "internal_error", _empty_result(name, f"internal error: {type(exc).__name__}")


def answer(service: ExtenderService, name: str, handler: Handler, read: Callable[[], bytes]) -> tuple[int, bytes]:
    """(HTTP status, encoded JSON body) of verb ``name``: ``read()`` gives the request body (and may
    raise werkzeug's 413). Every failure is a result with ``Error``; nothing escapes but the answer."""
    start = time.perf_counter()
    status, outcome = 200, "ok"
    try:
        body = decode(read())
        if not isinstance(body, Mapping):
            raise WireError("request body must be a JSON object")
        result = handler(service, body)
        encoded = orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE)
    except Exception as exc:
        status, outcome, result = _outcome(name, exc)
        encoded = orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE)
    service.metrics.requests.labels(name, outcome).inc()
    service.metrics.latency.labels(name).observe(time.perf_counter() - start)
    return status, encoded


def decode(data: bytes) -> Any:
    """The request body as JSON, or a WireError carrying the parser's message (Flask's own error hides
    it outside debug mode)."""
    try:
        return orjson.loads(data)
    except ValueError as exc:  # orjson's decode errors are ValueErrors
        raise WireError(f"request body is not valid JSON: {exc}") from exc


def _pod(body: Mapping[str, Any]) -> Mapping[str, Any]:
    pod = body.get("Pod")
    if not isinstance(pod, Mapping):
        raise WireError("ExtenderArgs.Pod must be a Pod object")
    if not isinstance(pod.get("metadata"), Mapping) or not isinstance(pod.get("spec"), Mapping):
        raise WireError("ExtenderArgs.Pod needs metadata and spec objects")
    return pod


def _nodes(body: Mapping[str, Any]) -> tuple[list[str], list[Mapping[str, Any]] | None]:
    """Candidate names, plus the full Node objects when the scheduler sent them (cache not capable)."""
    names = body.get("NodeNames")
    if names is not None:
        if not isinstance(names, list) or not _all_strings(names):
            raise WireError("ExtenderArgs.NodeNames must be a list of strings")
        return names, None
    nodes = body.get("Nodes")
    if nodes is None:
        return [], None
    items = nodes.get("items") if isinstance(nodes, Mapping) else None
    if items is None and isinstance(nodes, Mapping):
        items = []
    if not isinstance(items, list):
        raise WireError("ExtenderArgs.Nodes must be a NodeList with an items array")
    out = []
    for item in items:
        meta = item.get("metadata") if isinstance(item, Mapping) else None
        if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
            raise WireError("every item of ExtenderArgs.Nodes needs metadata.name")
        out.append(meta["name"])
    return out, items


def _all_strings(items: list[Any]) -> bool:
    """Every item a str: ``str.join`` refuses anything else, in C, ~5x faster than collecting the types
    of 5,000 names into a set (issue 19)."""
    try:
        "".join(items)
    except TypeError:
        return False
    return True


def _reasons(reasons: Mapping[str, object], note: object, why_not: Mapping[str, object]) -> dict[str, str]:
    """Node -> text: its reason, why no substitute is there (``why_not``), then the note. Nodes share
    reason objects, so each distinct reason (or pair) is formatted once (5,000 nodes hold a handful)."""
    suffix = f"; {note}" if note else ""
    if not why_not:  # the usual answer: per node only C loops (map, zip); Python formats the distinct few
        values = list(reasons.values())
        if values and all(map(operator.is_, values, repeat(values[0]))):  # one reason for every node
            return dict.fromkeys(reasons, f"{values[0]}{suffix}")  # (a sold-out call: ~2x faster)
        ids = list(map(id, values))
        texts = {key: f"{reason}{suffix}" for key, reason in dict(zip(ids, values, strict=True)).items()}
        return dict(zip(reasons, map(texts.__getitem__, ids), strict=True))
    out = {}
    pairs: dict[tuple[int, int], str] = {}
    for node, reason in reasons.items():
        why = why_not.get(node)
        key = (id(reason), id(why))
        text = pairs.get(key)
        if text is None:
            middle = f"; not substituted here: {why}" if why is not None else ""
            text = pairs[key] = f"{reason}{middle}{suffix}"
        out[node] = text
    return out


def encode_filter(decision: FilterDecision, objects: list[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The ExtenderFilterResult. Failed nodes are named, each with its reason, only when no node passed:
    kube-scheduler reads them only to explain a pod that fits nowhere (``findNodesThatPassExtenders`` copies
    them into the diagnosis, which only ``FitError`` and preemption read when no node is feasible;
    pkg/scheduler/schedule_one.go). With a node passing they were never shown, yet a pod that fits on a
    few nodes of a busy 5,000-node cluster had thousands named, to be encoded here and decoded there.
    When none passes (a sold-out pod: "substitute ... recorded" on every node) each node keeps its
    reason: FitError counts nodes per reason, and a node left out would be counted under none. Trade:
    with a second filter extender configured after ours that rejects every node we passed, its FitError
    would not carry our reasons for the others."""
    passed = bool(decision.passed)
    result: dict[str, Any] = {
        "FailedNodes": {} if passed else _reasons(decision.failed, decision.note, decision.unsubstituted),
        "FailedAndUnresolvableNodes": {} if passed else _reasons(decision.unresolvable, decision.note,
                                                                  decision.unsubstituted),
        "Error": decision.error,
    }
    if objects is None:
        result["Nodes"], result["NodeNames"] = None, list(decision.passed)
    else:
        keep = set(decision.passed)
        result["Nodes"] = {"metadata": {}, "items": [o for o in objects if o["metadata"]["name"] in keep]}
        result["NodeNames"] = None
    return result


def filter_(service: ExtenderService, body: Mapping[str, Any]) -> dict[str, Any]:
    pod = _pod(body)
    names, objects = _nodes(body)
    return encode_filter(service.filter(pod, names), objects)


def prioritize(service: ExtenderService, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(body)
    names, _ = _nodes(body)
    return [{"Host": n, "Score": s} for n, s in service.prioritize(pod, names)]


def bind(service: ExtenderService, body: Mapping[str, Any]) -> dict[str, Any]:
    fields = {}
    for key in ("PodName", "PodNamespace", "PodUID", "Node"):
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise WireError(f"ExtenderBindingArgs.{key} must be a non-empty string")
        fields[key] = value
    service.bind(fields["PodNamespace"], fields["PodName"], fields["PodUID"], fields["Node"])
    return {"Error": ""}


def _victims(service: ExtenderService, body: Mapping[str, Any]) -> dict[str, Victims]:
    """ExtenderPreemptionArgs -> node -> Victims: full pods (NodeNameToVictims, nodeCacheCapable false) or
    uids (NodeNameToMetaVictims), looked up in the inventory; an unknown uid frees nothing."""
    full = body.get("NodeNameToVictims")
    key, given = ("NodeNameToVictims", full) if full is not None else (
        "NodeNameToMetaVictims", body.get("NodeNameToMetaVictims") or {})
    if not isinstance(given, Mapping):
        raise WireError(f"ExtenderPreemptionArgs.{key} must be an object")
    out = {}
    for node, entry in given.items():
        pods = entry.get("Pods") if isinstance(entry, Mapping) else None
        if not isinstance(pods, list) or not all(isinstance(p, Mapping) for p in pods):
            raise WireError(f"ExtenderPreemptionArgs.{key}[{node}].Pods must be a list of objects")
        if full is None and not all(isinstance(p.get("UID"), str) for p in pods):
            raise WireError(f"ExtenderPreemptionArgs.{key}[{node}].Pods[].UID must be a string")
        infos = [pod_info(p) for p in pods] if full is not None else [service.victim(p["UID"]) for p in pods]
        violations = entry.get("NumPDBViolations") or 0
        out[node] = Victims(tuple(infos), violations if isinstance(violations, int) else 0)
    return out


def encode_preempt(answer: PreemptAnswer) -> dict[str, Any]:
    """ExtenderPreemptionResult: victims by uid, in the order decided; only nodes that were asked about."""
    nodes = {node: {"Pods": [{"UID": p.uid} for p in v.pods], "NumPDBViolations": v.pdb_violations}
             for node, v in answer.nodes.items()}
    return {"NodeNameToMetaVictims": nodes, **({"Error": answer.error} if answer.error else {})}


def preempt(service: ExtenderService, body: Mapping[str, Any]) -> dict[str, Any]:
    pod = _pod(body)
    return encode_preempt(service.preempt(pod, _victims(service, body)))


# verb name -> handler: what kube-scheduler's extender config names (filterVerb, ...) at POST /<name>
VERBS: dict[str, Handler] = {"filter": filter_, "prioritize": prioritize, "bind": bind, "preempt": preempt}


def _flask_view(name: str, handler: Handler) -> Callable[[], Response]:
    """The verb as a Flask view: what serves it when the lean path does not (another method gets Flask's
    405 from the route; the metrics address gets the app's 404 guard first)."""

    def view() -> Response:
        service = current_app.extensions["mig_extender"]
        status, data = answer(service, name, handler,
                              lambda: request.get_data(cache=False))  # reading past the limit raises the 413
        return current_app.response_class(data, status=status, mimetype="application/json")

    view.__name__ = name
    return view


for _name, _handler in VERBS.items():
    bp.add_url_rule(f"/{_name}", view_func=_flask_view(_name, _handler), methods=["POST"])
