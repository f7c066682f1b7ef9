"""A dry run as a sandboxed API client: reads go to the cluster, writes are logged and never sent.

As the descheduler's dry run swaps its clientset for a sandbox, ``sandbox(api)`` swaps one ApiClient's
``call_api`` so that every component built on it (rule store, actions, Events) runs its normal code and
makes no change to the cluster, without a ``dry_run`` branch in each write. A write is answered as the
API server would roughly answer it, so callers carry on: a create echoes its body, a replace or merge
patch returns the current object with the change applied and a bumped resourceVersion (the rule store
then sees its own would-be write for a while, so a pass is not re-decided and re-logged every second),
a delete or an eviction returns Success. A request that is already a server-side dry run
(``dryRun=All``: validated, admitted, never stored) is passed through, since it changes nothing.

Must not: decide anything, or be used for the extender's Bindings (JsonPoster bypasses ``call_api``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client
from kubernetes.client import rest

log = logging.getLogger(__name__)
READS = frozenset({"GET", "HEAD", "OPTIONS"})


class _Answer:
    """Enough of a urllib3 response for RESTResponse and ``client.raw``."""

    def __init__(self, status: int, body: Any) -> None:
        self.status, self.reason = status, "OK (dry run)"
        self.data = json.dumps(body).encode()
        self.headers: dict[str, str] = {"Content-Type": "application/json"}

    def release_conn(self) -> None:
        return None


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _bump(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    with contextlib.suppress(ValueError):  # an opaque resourceVersion: left as it is
        meta["resourceVersion"] = str(int(meta.get("resourceVersion") or 0) + 1)
    return obj


class Sandbox:
    """Installed on one ApiClient by ``sandbox()``; ``writes`` lists (method, path) of what was held back."""

    def __init__(self, api: client.ApiClient) -> None:
        self._real: Callable[..., Any] = api.call_api
        self._lock = threading.Lock()
        self.writes: list[tuple[str, str]] = []

    def call_api(self, method: str, url: str, header_params: Any = None, body: Any = None,
                 post_params: Any = None, _request_timeout: Any = None) -> rest.RESTResponse:
        parts = urlsplit(url)
        if method.upper() in READS or "All" in parse_qs(parts.query).get("dryRun", []):
            return self._real(method, url, header_params, body, post_params, _request_timeout)
        with self._lock:
            self.writes.append((method.upper(), parts.path))
        log.info("dry-run: would %s %s%s", method.upper(), parts.path, f" {_summary(body)}" if body else "")
        return rest.RESTResponse(self._answer(method.upper(), url, parts.path, body, header_params))

    def _answer(self, method: str, url: str, path: str, body: Any, headers: Any) -> _Answer:
        if method == "DELETE" or path.endswith("/eviction"):
            return _Answer(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        if method == "POST":
            echo = dict(body) if isinstance(body, dict) else {}
            return _Answer(201, echo)
        current = self._current(url)
        if method == "PATCH":
            return _Answer(200, _bump(_merge_patch(current, body)))
        merged = dict(current)
        merged.update(body if isinstance(body, dict) else {})
        merged["metadata"] = current.get("metadata") or merged.get("metadata") or {}
        return _Answer(200, _bump(merged))

    def _current(self, url: str) -> dict[str, Any]:
        """The object a replace or patch would change (a real read, the subresource suffix dropped)."""
        parts = urlsplit(url)
        path = parts.path.removesuffix("/status")
        target = parts._replace(path=path, query="").geturl()
        try:
            response = self._real("GET", target, {"Accept": "application/json"})
            response.read()
            return json.loads(response.data or b"{}")
        except Exception as exc:  # the write is not sent either way; answer with what we were given
            log.debug("dry-run: could not read %s: %s", path, exc)
            return {}


def _summary(body: Any) -> str:
    text = json.dumps(body, separators=(",", ":"), default=str)
    return text if len(text) <= 300 else text[:300] + "..."


def sandbox(api: client.ApiClient) -> Sandbox:
    """Make ``api`` a dry-run client (in place); returns the sandbox, whose ``writes`` tests inspect."""
    box = Sandbox(api)
    api.call_api = box.call_api  # type: ignore[method-assign]
    return box
