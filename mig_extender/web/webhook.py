"""POST /mutate: the admission webhook's HTTP adapter. Thin: decode, ask the component, encode.

Must not: decide anything (core/admission.py) or hold state (components/webhook.py).
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify, request

from ..components.webhook import WebhookService
from ..core.admission import ReviewError

webhook_bp = Blueprint("webhook", __name__)



@webhook_bp.post("/mutate")
def mutate_view() -> Response:
    service: WebhookService = current_app.extensions["mig_extender_webhook"]
    start = time.perf_counter()
    body = request.get_json(force=True, silent=True)
    try:
        answer = jsonify(service.review(body))
        outcome = "ok"
    except ReviewError as exc:
        answer = jsonify({"error": str(exc)})
        answer.status_code = 400
        outcome = "bad_request"
    service.metrics.requests.labels("mutate", outcome).inc()
    service.metrics.latency.labels("mutate").observe(time.perf_counter() - start)
    return answer
