"""List, then watch one collection forever: resume from the last resourceVersion, relist on 410 Gone.

The same contract as client-go's Reflector, minus the cache: the owner gets `on_list(items)` after
every (re)list, so it can drop what disappeared while it was not watching, and `on_event(type, obj)`
for each change. Bookmarks only advance the resourceVersion.

Must not: interpret the objects.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("testenv.reflector")

WATCH_TIMEOUT_S = 60  # server side: watches end and resume this often (cheap, from the watch cache)
READ_TIMEOUT_S = 90  # client side: a dead connection is noticed even without bookmarks
RETRY_S = 0.5


class Gone(Exception):
    """The resourceVersion we resumed from is compacted: relist."""


class Reflector:
    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        on_list: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
        **selectors: str,
    ) -> None:
        self.name = name
        self._list_call = list_call
        self._on_list = on_list
        self._on_event = on_event
        self._stop = stop
        self._selectors = selectors
        self._response: Any = None
        self.synced = threading.Event()
        self.relists = 0
        self.thread = threading.Thread(target=self._run, name=f"reflector-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def interrupt(self) -> None:
        """Unblock a watch read so the thread sees the stop flag now, not at the next event."""
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:
                log.debug("shutdown of %s watch failed", self.name, exc_info=True)

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                resource_version = self._watch(resource_version)
            except Gone:
                log.info("%s: resourceVersion %s is gone; relisting", self.name, resource_version)
                resource_version = None
            except Exception as exc:
                if self._stop.is_set():
                    break
                if isinstance(exc, ApiException) and exc.status == 410:
                    resource_version = None
                log.warning("%s: %s; retrying", self.name, exc)
                self._stop.wait(RETRY_S)

    def _list(self) -> str:
        response = self._list_call(_preload_content=False, **self._selectors)
        body = json.loads(response.data)
        self.relists += 1
        self._on_list(body.get("items") or [])
        self.synced.set()
        return body["metadata"]["resourceVersion"]

    def _watch(self, resource_version: str) -> str:
        response = self._list_call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_S,
            _request_timeout=(5, READ_TIMEOUT_S),
            _preload_content=False,
            **self._selectors,
        )
        self._response = response
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message"))
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                resource_version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    try:
                        self._on_event(kind, obj)
                    except Exception:
                        log.exception("%s: handling %s %s failed", self.name, kind, obj["metadata"].get("name"))
        finally:
            self._response = None
            response.release_conn()
        return resource_version
