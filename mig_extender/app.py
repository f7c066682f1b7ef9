"""The Flask application factory: wires settings, inventory, rule store and blueprints together.

``create_app(settings, service)`` is what gunicorn serves (see server.py) and what the HTTP tests
drive with Flask's test client. One JSON error shape for every non-verb path (404, 405, 413).
"""

from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from .debug import debug, ops
from .extender import bp as extender_bp
from .service import ExtenderService
from .settings import Settings


def error_response(exc: HTTPException) -> Response:
    response = jsonify({"Error": f"{exc.name}: {exc.description}"})
    response.status_code = exc.code or 500
    return response


def create_app(settings: Settings, service: ExtenderService) -> Flask:
    app = Flask("mig_extender")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["mig_extender"] = service
    app.register_blueprint(extender_bp)
    app.register_blueprint(ops)
    if settings.debug_endpoints:
        app.register_blueprint(debug)
    app.register_error_handler(HTTPException, error_response)
    return app
