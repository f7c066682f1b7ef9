"""Operations endpoints: /healthz, /readyz, /metrics and (unless disabled) /debug/rules, /debug/inventory.

They serve every component (extender, webhook, reconciler): each registers itself as
``app.extensions["mig_extender_ops"]`` with ``readiness_problems()`` and ``metrics``.
/readyz is 503 until the node, pod and rule caches have synced: a scheduler that asked before then
would get decisions from an empty inventory. /debug/* return JSON for humans and tests; they show pod
names and node usage, so they can be turned off (``--no-debug-endpoints``) where the port is exposed.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from ..components.extender import ExtenderService

ops = Blueprint("ops", __name__)
debug = Blueprint("debug", __name__)


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
    return jsonify({"synced": snap.synced, "problems": problems, "nodes": out})
