"""The Flask application factory: wires settings, inventory, rule store and blueprints together.

``create_app(settings, service)`` is what gunicorn serves (see process.py) and what the HTTP tests
drive with Flask's test client. One JSON error shape for every non-verb path (404, 405, 413).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..components.extender import ExtenderService
from ..components.settings import Settings
from ..components.webhook import WebhookService
from .debug import debug, ops, repartition
from .verbs import bp as extender_bp
from .verbwsgi import VerbRouter
from .webhook import webhook_bp
from .wirejson import OrjsonProvider


def error_response(exc: HTTPException) -> Response:
    response = jsonify({"Error": f"{exc.name}: {exc.description}"})
    response.status_code = exc.code or 500
    return response


def _base(settings: Settings, component: Any) -> Flask:
    app = Flask("mig_extender")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = OrjsonProvider(app)
    app.extensions["mig_extender_ops"] = component
    app.register_blueprint(ops)
    app.register_error_handler(HTTPException, error_response)
    return app


OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _ops_only(settings: Settings, app: Flask) -> None:
    """On the ``ops_bind`` address serve only OPS_PATHS: the verbs and /debug stay on loopback.

    gunicorn sets SERVER_PORT from the listening socket (not from the Host header), so a caller cannot
    reach a verb through the ops port by lying about the port."""
    ops_port = settings.ops_bind.rpartition(":")[2]

    @app.before_request
    def guard() -> Response | None:
        if request.environ.get("SERVER_PORT") == ops_port and request.path not in OPS_PATHS:
            response = jsonify({"Error": f"{request.path} is not served on the metrics address"})
            response.status_code = 404
            return response
        return None


def create_app(settings: Settings, service: ExtenderService) -> Flask:
    """The extender: scheduler verbs, ops endpoints and (unless disabled) /debug/*. The verbs' POSTs are
    answered in front of Flask (verbwsgi.py); the app object stays Flask's, for its test client."""
    app = _base(settings, service)
    if settings.ops_bind:
        _ops_only(settings, app)
    app.extensions["mig_extender"] = service
    app.register_blueprint(extender_bp)
    if settings.debug_endpoints:
        app.register_blueprint(debug)
    ops_port = settings.ops_bind.rpartition(":")[2] if settings.ops_bind else ""
    app.wsgi_app = VerbRouter(app.wsgi_app, service, settings.max_body_bytes, ops_port)  # type: ignore[method-assign]
    return app


def create_webhook_app(settings: Settings, service: WebhookService) -> Flask:
    """The admission webhook: POST /mutate plus ops endpoints."""
    app = _base(settings, service)
    app.extensions["mig_extender_webhook"] = service
    app.register_blueprint(webhook_bp)
    return app


def create_ops_app(settings: Settings, component: Any) -> Flask:
    """/healthz, /readyz and /metrics (the reconciler), and /debug/repartition when it repartitions."""
    app = _base(settings, component)
    if settings.debug_endpoints and getattr(component, "repartitioner", None) is not None:
        app.register_blueprint(repartition)
    return app
