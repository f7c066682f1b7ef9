"""Operations endpoints: /healthz, /readyz, /metrics and (unless disabled) /debug/rules, /debug/inventory,
/debug/pods/<ns>/<name> (why a pod is or is not placed or substituted; ``mig-extender explain`` prints it).

They serve every component (extender, webhook, reconciler): each registers itself as
``app.extensions["mig_extender_ops"]`` with ``readiness_problems()`` and ``metrics``.
/readyz is 503 until the node, pod and rule caches have synced: a scheduler that asked before then
would get decisions from an empty inventory. /debug/* return JSON for humans and tests; they show pod
names and node usage, so they can be turned off (``--no-debug-endpoints``) where the port is exposed.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, jsonify, request

from ..components.extender import Explanation, ExtenderService

if TYPE_CHECKING:  # the book's module imports the kubernetes client; the web layer needs only its type
    from ..cluster.drainventory import DraInventory

ops = Blueprint("ops", __name__)
debug = Blueprint("debug", __name__)
repartition = Blueprint("repartition", __name__)


def _service() -> ExtenderService:
    return current_app.extensions["mig_extender"]


def _component():
    """Whatever this process runs (extender, webhook or reconciler): it has readiness and metrics."""
    return current_app.extensions["mig_extender_ops"]


@ops.get("/healthz")
def healthz() -> Response:
    return Response("ok\n", mimetype="text/plain")


@ops.get("/readyz")
def readyz() -> Response:
    problems = _component().readiness_problems()
    if problems:
        return Response("not ready: " + "; ".join(problems) + "\n", status=503, mimetype="text/plain")
    return Response("ok\n", mimetype="text/plain")


@ops.get("/metrics")
def metrics() -> Response:
    return Response(_component().metrics.render(), mimetype="text/plain; version=0.0.4")


@debug.get("/debug/rules")
def rules() -> Response:
    snap = _service().snapshot()
    body = [r.to_dict(snap.now) for r in sorted(snap.rules, key=lambda r: (r.created, r.name))]
    return jsonify(body)


@debug.get("/debug/inventory")
def inventory() -> Response:
    """Per node: GPU model, what is wrong with its recognition, and per MIG resource allocatable/used/
    reserved/free; ``problems`` lists the nodes that have some. ``?node=NAME`` filters."""
    snap = _service().snapshot()
    only = request.args.get("node")
    out: list[dict[str, Any]] = []
    for name in sorted(snap.nodes):
        if only and name != only:
            continue
        info = snap.nodes[name]
        reserved = snap.reserved.get(name, {})
        out.append({
            "node": name,
            "gpu": info.gpu.name if info.gpu else None,
            "problems": list(info.problems),
            "schedulable": info.schedulable,
            "resources": {
                r: {"allocatable": a, "used": info.used.get(r, 0), "reserved": reserved.get(r, 0),
                    "free": snap.free(name, r)}
                for r, a in sorted(info.allocatable.items())
            },
        })
    problems = {n["node"]: n["problems"] for n in out if n["problems"]}
    body: dict[str, Any] = {"synced": snap.synced, "problems": problems, "nodes": out}
    book = _service().dra
    if book is not None:
        body["dra"] = dra_json(book, only)
    return jsonify(body)


def dra_json(book: DraInventory, only: str | None = None) -> dict[str, Any]:
    """MIG devices served by DRA: per node and profile devices/allocated/free, and the claims of ours that
    run on a substitute (what restore will move back): "got" is the subrequest that won, "held" the profile
    of its device (the ``got`` label of mig_extender_dra_upgraded_claims). The metrics sum the same usage."""
    usage = book.usage()
    return {
        "nodes": {node: {p: {"devices": u.devices, "allocated": u.allocated, "free": u.free}
                         for p, u in by.items()} for node, by in usage.nodes.items() if not only or node == only},
        "upgraded": [{"claim": f"{c.namespace}/{c.name}", "pod": c.pod, "asked": c.asked, "got": c.subrequest,
                      "held": c.held} for c in usage.upgraded],
    }


@debug.get("/debug/pods/<namespace>/<name>")
def pod(namespace: str, name: str) -> Response:
    """The pod's demand, its rules (any phase) and the decision /filter would make for it now, per node:
    a dry run, nothing recorded. 404 when the extender has not seen the pod (or it asks for no MIG)."""
    found = _service().explain(namespace, name)
    if found is None:
        response = jsonify({"Error": f"pod {namespace}/{name} not known to mig-extender (no such pod, not "
                                     "seen yet, or it asks for no MIG slice)"})
        response.status_code = 404
        return response
    return jsonify(explanation_json(found))


@repartition.get("/debug/repartition")
def repartition_status() -> Response:
    """The repartitioner's last pass: mode, demand, changes under way, plans and why not (reconciler)."""
    return jsonify(_component().repartitioner.status_json())


def reason_json(reason: object) -> dict[str, Any] | None:
    """A typed reason as JSON: its kind (the class name), its text and its fields."""
    if reason is None or reason == "":
        return None
    if isinstance(reason, str):  # a note made of words only ("substitute ... recorded on ...")
        return {"kind": "Note", "text": reason}
    out: dict[str, Any] = {"kind": type(reason).__name__, "text": str(reason)}
    if is_dataclass(reason):
        out.update((f.name, getattr(reason, f.name)) for f in fields(reason))
    if hasattr(reason, "unresolvable"):
        out["unresolvable"] = reason.unresolvable
    return out


def explanation_json(found: Explanation) -> dict[str, Any]:
    pod, decision = found.pod, found.decision
    verdicts, passed = [], set(decision.passed)
    for node in found.nodes:
        if node in passed:
            verdict, reason = "fits", None
        elif node in decision.unresolvable:
            verdict, reason = "unresolvable", decision.unresolvable[node]
        else:
            verdict, reason = "fails", decision.failed.get(node)
        verdicts.append({"node": node, "verdict": verdict, "reason": reason_json(reason),
                         "substitute": reason_json(decision.unsubstituted.get(node))})
    chosen = decision.record
    return {
        "pod": {"namespace": pod.namespace, "name": pod.name, "uid": pod.uid, "node": pod.node or None,
                "phase": pod.phase, "demand": dict(pod.demand), "priority": pod.priority, "source": found.source},
        "rules": [r.to_dict(found.now) for r in found.rules],
        "decision": {
            "error": decision.error or None,
            # the planner's note would say "recorded", but a dry run records nothing: would_record says it
            "note": reason_json(decision.note) if chosen is None else None,
            "would_record": chosen.to_dict(found.now) if chosen is not None else None,
            "nodes": verdicts,
        },
    }
