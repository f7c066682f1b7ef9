"""The scheduler's hot path as plain WSGI, in front of the Flask app inside the same gunicorn worker.

kube-scheduler POSTs /filter, /prioritize and /bind for every pod. Through Flask each call also paid for
a request context, URL matching, before-request hooks, a Request and a Response object: about 0.1 ms of
CPU per call in process (bench/README.md, issue 19), on a machine where the extender shares cores with
the scheduler and the API server. ``VerbRouter`` answers ``POST /<verb>`` on the serving address itself
through ``verbs.answer`` (the same handlers, errors, metrics and body limit as the Flask views), and
hands every other request to Flask unchanged: another method (Flask's 405), the metrics address (Flask's
404 guard), /debug, /metrics, the probes.

Must not: decide anything, or answer a request Flask would answer differently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from werkzeug.wsgi import get_input_stream

from ..components.extender import ExtenderService
from .verbs import VERBS, Handler, answer

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_STATUS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


class VerbRouter:
    """WSGI middleware: POST /filter, /prioritize, /bind, /preempt -> ``verbs.answer``; the rest -> ``app``."""

    def __init__(self, app: WSGIApp, service: ExtenderService, max_body: int, ops_port: str = "") -> None:
        self.app = app  # what answers everything else (and the tests' reference for the verbs)
        self._service, self._max_body, self._ops_port = service, max_body, ops_port
        self._routes: dict[str, tuple[str, Handler]] = {f"/{name}": (name, h) for name, h in VERBS.items()}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = self._routes.get(environ.get("PATH_INFO", ""))
        if (route is None or environ.get("REQUEST_METHOD") != "POST"
                or (self._ops_port and environ.get("SERVER_PORT") == self._ops_port)):
            return self.app(environ, start_response)
        name, handler = route
        status, data = answer(self._service, name, handler, lambda: self._read(environ))
        start_response(_STATUS.get(status) or f"{status} ERROR",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def _read(self, environ: dict[str, Any]) -> bytes:
        """The body, at most ``max_body`` bytes: a larger Content-Length is refused (413) before reading."""
        return get_input_stream(environ, max_content_length=self._max_body).read()
