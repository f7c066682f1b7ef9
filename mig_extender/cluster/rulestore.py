"""Where rules live: the RuleStore interface and its in-memory implementation.

The extender records rules, the webhook applies them and the reconciler drives them on; all three
talk to a RuleStore. ``MemoryRuleStore`` keeps rules in a cachetools TTL cache (one process only:
``serve --snapshot`` and unit tests); ``kuberules.KubeRuleStore`` keeps them as MigSubstitution
objects in the API so every replica and a restarted process see the same rules.
cachetools caches are not thread-safe, so every access holds the store's lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from cachetools import TTLCache

from ..core.rulebook import RuleBook, RuleKey
from ..core.rules import IllegalTransition, Rule, check_transition

log = logging.getLogger(__name__)


class ConflictError(RuntimeError):
    """The rule changed since it was read; re-read and decide again."""


class RuleStore(Protocol):
    """The operations every component needs. Implementations are thread-safe."""

    @property
    def synced(self) -> bool: ...

    def list(self) -> list[Rule]: ...

    def get(self, namespace: str, name: str) -> Rule | None: ...

    def fetch(self, namespace: str, name: str, timeout: float | None = None) -> Rule | None:
        """The current rule from the source of truth (after a conflict), bypassing any cache. ``timeout``:
        seconds the call may take at most (the webhook's calls run inside the API server's admission
        deadline); None: the client's default."""
        ...

    def record(self, rule: Rule) -> Rule:
        """Create ``rule``; if one of that name exists already, return it unchanged (idempotent)."""
        ...

    def update(self, rule: Rule, timeout: float | None = None) -> Rule:
        """Replace the stored rule; ConflictError if it changed since ``rule`` was read (a compare-and-swap
        on its resourceVersion). ``timeout`` as for ``fetch``."""
        ...

    def delete(self, rule: Rule) -> None: ...

    def book(self, now: float | None = None) -> RuleBook:
        """The rules indexed for snapshots taken at ``now`` (core/rulebook.py): the same book while the
        store has not changed and its reservations hold, so ``/filter`` does no O(rules) work per call.
        ``now=None``: at the store's own clock, read under its lock (``never_back``), for a reader that needs
        no particular time (the webhook reads only the Recorded rules). A time before the last book's is
        indexed again over every rule, and request threads read their clocks before they queue for the
        lock: a reader passing its own ``now`` that lost that race pays the full pass; this one never does."""
        ...


class BookCache:
    """A store's last RuleBook and the keys changed since it was built. The next ``get`` patches the book
    with those keys' current rules (RuleBook.patched: O(changed) in Python, the rest C-speed copies)
    while it holds; it indexes every rule again only when it has none, when time left its validity (a
    reservation lapsed, the clock went back), after ``changed_all`` (a relist), or when most rules changed.
    The store reports every change, calls ``get`` under its own lock, and a store whose cache can drop a
    rule on its own (a TTL) reports those drops too (``ReportingTTLCache``)."""

    def __init__(self) -> None:
        self._book: RuleBook | None = None
        self._changed: set[RuleKey] | None = None  # None: the next book indexes every rule

    def changed(self, key: RuleKey) -> None:
        if self._changed is not None:
            self._changed.add(key)

    def changed_all(self) -> None:
        self._changed = None

    def get(self, now: float, rules: Callable[[], Iterable[Rule]],
            current: Callable[[RuleKey], Rule | None]) -> RuleBook:
        """The book at ``now``; ``rules()`` lists every rule, ``current(key)`` reads one (None: gone)."""
        book, changed = self._book, self._changed
        if book is None or changed is None or not book.holds_at(now) or 4 * len(changed) > len(book.rules) + 64:
            book = RuleBook.of(rules(), now)
        elif changed:
            book = book.patched({key: current(key) for key in changed}, now)
        self._book, self._changed = book, set()
        return book


class ReportingTTLCache(TTLCache):
    """A TTLCache that tells ``dropped(key)`` about every item it removes on its own: past its TTL
    (``expire``, which cachetools also runs inside every write) or evicted for room (``popitem``). A
    BookCache must hear of those, or its book keeps a rule the store no longer has."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float],
                 dropped: Callable[[RuleKey], None]) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self._dropped = dropped

    def expire(self, time: float | None = None) -> list:
        gone = super().expire(time)
        for key, _ in gone:
            self._dropped(key)
        return gone

    def popitem(self) -> tuple:
        key, value = super().popitem()
        self._dropped(key)
        return key, value


def never_back(clock: Callable[[], float]) -> Callable[[], float]:
    """``clock`` held at its highest reading, for the stores' TTL caches. cachetools' ``expire()`` walks the
    items in insertion order and stops at the first live one: after a wall clock stepped back (NTP), an item
    put later at the earlier time lapses behind a live one, reads hide it, yet ``expire()`` does not report
    it, and the store's BookCache would never hear of that change. Call it under the store's lock."""
    last = -math.inf

    def timer() -> float:
        nonlocal last
        last = max(last, clock())
        return last

    return timer


def update_with_retry(store: RuleStore, rule: Rule, change: Callable[[Rule], Rule], attempts: int = 3,
                      refused: Callable[[str], None] | None = None) -> Rule | None:
    """Store ``change(rule)``; on a conflict re-read the rule from the source of truth and apply ``change``
    to that. None when the rule is gone, keeps conflicting, or the write is refused.

    Every attempt is checked against the phase machine (core/rules.py TRANSITIONS), and a retry only
    proceeds while the fresh rule is still in the phase the change was decided for: a change made for an
    Applied rule means nothing for one that has since become Restoring or Expired (the next pass decides
    again from a fresh snapshot). A refusal is logged and reported to ``refused`` (the caller counts it).
    """
    decided_in = rule.phase
    for _ in range(attempts):
        try:
            if rule.phase is not decided_in:
                raise IllegalTransition(f"rule {rule.namespace}/{rule.name} is {rule.phase} now, the change was "
                                        f"decided while it was {decided_in}")
            after = change(rule)
            check_transition(rule, after)
            return store.update(after)
        except IllegalTransition as exc:
            log.warning("transition refused: %s", exc)
            if refused is not None:
                refused(str(exc))
            return None
        except ConflictError:
            fresh = store.fetch(rule.namespace, rule.name)
            if fresh is None:
                return None
            rule = fresh
    return None


class MemoryRuleStore:
    """Rules in process memory; finished rules fall out after ``retention`` seconds without change."""

    def __init__(self, retention: float = 3600.0, clock: Callable[[], float] = time.time,
                 maxsize: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._books = BookCache()  # told of every change, a rule falling out included
        self._now = never_back(clock)  # the TTL cache's clock, and book()'s when it is given no time
        self._rules: TTLCache[tuple[str, str], Rule] = ReportingTTLCache(
            maxsize=maxsize, ttl=retention, timer=self._now, dropped=self._books.changed)
        self._version = 0

    @property
    def synced(self) -> bool:
        return True

    def list(self) -> list[Rule]:
        with self._lock:
            return list(self._rules.values())

    def book(self, now: float | None = None) -> RuleBook:
        with self._lock:
            self._rules.expire()  # rules past their retention fall out (reported to the book cache)
            return self._books.get(self._now() if now is None else now, self._rules.values, self._rules.get)

    def get(self, namespace: str, name: str) -> Rule | None:
        with self._lock:
            return self._rules.get((namespace, name))

    def fetch(self, namespace: str, name: str, timeout: float | None = None) -> Rule | None:
        return self.get(namespace, name)

    def record(self, rule: Rule) -> Rule:
        with self._lock:
            key = (rule.namespace, rule.name)
            existing = self._rules.get(key)
            if existing is not None:
                return existing
            return self._put(rule)

    def update(self, rule: Rule, timeout: float | None = None) -> Rule:
        with self._lock:
            key = (rule.namespace, rule.name)
            current = self._rules.get(key)
            if current is None:
                raise ConflictError(f"rule {rule.namespace}/{rule.name} no longer exists")
            if rule.resource_version and current.resource_version != rule.resource_version:
                raise ConflictError(f"rule {rule.namespace}/{rule.name} changed since it was read")
            return self._put(rule)

    def delete(self, rule: Rule) -> None:
        with self._lock:
            key = (rule.namespace, rule.name)
            if self._rules.pop(key, None) is not None:
                self._books.changed(key)

    def _put(self, rule: Rule) -> Rule:
        self._version += 1
        stored = replace(rule, resource_version=str(self._version))
        key = (rule.namespace, rule.name)
        self._rules[key] = stored
        self._books.changed(key)
        return stored
