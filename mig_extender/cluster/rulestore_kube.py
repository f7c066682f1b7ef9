"""Rules as MigSubstitution objects in the Kubernetes API: every replica and every restart sees the same.

Reads come from an informer cache (list+watch of all MigSubstitutions), never from a request per read.
Our own writes are also kept for a short while in a cachetools TTL overlay, so the writer sees its write
at once, before its watch event arrives (the newer resourceVersion wins when both know a rule). Writes use
optimistic concurrency: an update carries the resourceVersion it was read at, and a 409 becomes
ConflictError so the caller re-reads and decides again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from cachetools import TTLCache
from kubernetes import client
from kubernetes.client.rest import ApiException

from ..core.rulebook import RuleBook
from ..core.rules import API_GROUP, API_VERSION, PLURAL, Rule, rule_from_object, rule_status, rule_to_object
from .client import raw
from .informer import Informer
from .rulestore import BookCache, ConflictError, ReportingTTLCache, never_back

log = logging.getLogger(__name__)
_GONE = object()  # tombstone in the overlay: deleted by us, the watch may not know yet


def _bounded(timeout: float | None) -> dict[str, Any]:
    """The generated client's per-call timeout (connect and read), when the caller bounds the call."""
    return {} if timeout is None else {"_request_timeout": timeout}


def _rv(rule: Rule) -> int:
    return _rv_text(rule.resource_version)


def _rv_text(version: Any) -> int:
    """A resourceVersion as a number, for ordering copies of one object (-1 when absent or opaque)."""
    try:
        return int(version)
    except (TypeError, ValueError):
        return -1


class KubeRuleStore:
    def __init__(self, api: client.ApiClient, retention: float = 3600.0, overlay_ttl: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._api = client.CustomObjectsApi(api)
        self._lock = threading.Lock()
        self._informed: dict[tuple[str, str], Rule] = {}
        self._books = BookCache()  # told of every event, relist, write of ours and overlay copy aging out
        self._now = never_back(clock)  # the overlay's clock, and book()'s when it is given no time
        self._overlay: TTLCache[tuple[str, str], Any] = ReportingTTLCache(
            maxsize=10_000, ttl=overlay_ttl, timer=self._now, dropped=self._books.changed)
        self._informer: Informer | None = None
        self.retention = retention
        self.malformed = 0
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every rule event the watch delivers (and after a relist), outside the
        store's lock: the reconciler wakes on a rule's creation instead of waiting for its next pass.
        A callback must be quick and must not raise (it runs on the informer's thread)."""
        self._subscribers.append(callback)

    def _notify(self) -> None:
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:  # a subscriber's fault must not stop the watch that keeps the store current
                log.exception("rule store subscriber failed")

    # -- informer ---------------------------------------------------------------------------------

    def start(self) -> KubeRuleStore:
        listing = functools.partial(self._api.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL)
        self._informer = Informer("migsubstitutions", listing, self._on_event, self._on_relist).start()
        return self

    def stop(self) -> None:
        if self._informer is not None:
            self._informer.stop()

    @property
    def informer(self) -> Informer | None:
        return self._informer

    @property
    def synced(self) -> bool:
        return self._informer is not None and self._informer.synced.is_set()

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return self._informer is not None and self._informer.synced.wait(timeout)

    def _read(self, obj: Mapping[str, Any]) -> Rule | None:
        try:
            return rule_from_object(obj)
        except ValueError as exc:
            self.malformed += 1
            log.warning("%s", exc)
            return None

    def _on_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        self._apply_event(kind, obj)
        self._notify()

    def _apply_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._lock:
            self._books.changed(key)
            if kind == "DELETED":
                self._informed.pop(key, None)
                # someone else (the garbage collector, a user) deleted it: the delete is newer than any
                # version we wrote before it, so our overlay copy goes too, or it kept the rule and its
                # reservation alive until the overlay's TTL (soak D2). A copy newer than the deleted object
                # is one we recreated since; a late DELETED of the old object must not hide it.
                mine = self._overlay.get(key)
                if mine is not None and mine is not _GONE and _rv(mine) <= _rv_text(meta.get("resourceVersion")):
                    with contextlib.suppress(KeyError):  # lapsed since the read: cachetools drops it, then raises
                        del self._overlay[key]
                return
            rule = self._read(obj)
            if rule is not None:
                self._informed[key] = rule

    def _on_relist(self, items: Iterable[Mapping[str, Any]]) -> None:
        fresh = {}
        for obj in items:
            rule = self._read(obj)
            if rule is not None:
                fresh[(rule.namespace, rule.name)] = rule
        with self._lock:
            self._informed = fresh
            self._books.changed_all()
        self._notify()

    # -- reads ------------------------------------------------------------------------------------

    def _merged(self) -> dict[tuple[str, str], Rule]:
        merged = dict(self._informed)
        for key, value in list(self._overlay.items()):
            if value is _GONE:
                merged.pop(key, None)
            elif key not in merged or _rv(value) > _rv(merged[key]):
                merged[key] = value
        return merged

    def _merged_one(self, key: tuple[str, str]) -> Rule | None:
        """``_merged().get(key)`` without merging every rule."""
        value, informed = self._overlay.get(key), self._informed.get(key)
        if value is _GONE:
            return None
        if value is None or (informed is not None and _rv(value) <= _rv(informed)):
            return informed
        return value

    def list(self) -> list[Rule]:
        with self._lock:
            return list(self._merged().values())

    def book(self, now: float | None = None) -> RuleBook:
        with self._lock:
            self._overlay.expire()  # our writes' copies aged out (reported): the watch's copies count again
            return self._books.get(self._now() if now is None else now, lambda: self._merged().values(),
                                   self._merged_one)

    def get(self, namespace: str, name: str) -> Rule | None:
        with self._lock:
            return self._merged_one((namespace, name))

    def fetch(self, namespace: str, name: str, timeout: float | None = None) -> Rule | None:
        """A fresh read from the API (after a conflict), bypassing the cache."""
        try:
            obj = raw(self._api.get_namespaced_custom_object, API_GROUP, API_VERSION, namespace, PLURAL, name,
                      **_bounded(timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        rule = self._read(obj)
        if rule is not None:
            self._remember(rule)
        return rule

    def _remember(self, rule: Rule) -> Rule:
        key = (rule.namespace, rule.name)
        with self._lock:
            self._overlay[key] = rule
            self._books.changed(key)
        return rule

    # -- writes -----------------------------------------------------------------------------------

    def record(self, rule: Rule) -> Rule:
        body = rule_to_object(rule)
        body["metadata"].pop("resourceVersion", None)
        try:
            obj = raw(self._api.create_namespaced_custom_object, API_GROUP, API_VERSION, rule.namespace, PLURAL, body)
        except ApiException as exc:
            if exc.status == 409:  # recorded already (another replica, or a retry): keep theirs
                return self.fetch(rule.namespace, rule.name) or rule
            raise
        created = self._read(obj)
        if created is None:
            return rule
        # the status subresource ignores status on create; write it so every reader sees the same fields
        try:
            return self.update(replace(rule, resource_version=created.resource_version))
        except ConflictError:
            return self.fetch(rule.namespace, rule.name) or created

    def update(self, rule: Rule, timeout: float | None = None) -> Rule:
        body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "MigSubstitution",
                "metadata": {"name": rule.name, "namespace": rule.namespace,
                             "resourceVersion": rule.resource_version},
                "status": rule_status(rule)}
        if not rule.resource_version:
            body["metadata"].pop("resourceVersion")
        try:
            obj = raw(self._api.replace_namespaced_custom_object_status, API_GROUP, API_VERSION, rule.namespace,
                      PLURAL, rule.name, body, **_bounded(timeout))
        except ApiException as exc:
            if exc.status in (404, 409):
                raise ConflictError(f"rule {rule.namespace}/{rule.name}: {exc.reason}") from exc
            raise
        stored = self._read(obj)
        return self._remember(stored) if stored is not None else rule

    def delete(self, rule: Rule) -> None:
        try:
            self._api.delete_namespaced_custom_object(API_GROUP, API_VERSION, rule.namespace, PLURAL, rule.name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        key = (rule.namespace, rule.name)
        with self._lock:
            self._overlay[key] = _GONE
            self._books.changed(key)
