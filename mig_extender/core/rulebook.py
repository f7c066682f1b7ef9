"""The rules of one rule-store state, indexed once for every snapshot taken while that state holds. Pure.

A snapshot needs the rules by name, by pod uid, the slices they reserve per node and the Restoring ones.
Built per ``/filter`` call that was a pass over every rule in Python, and rules outlive their pods by the
store's retention (an hour by default): a cluster that substitutes a few thousand pods an hour paid
milliseconds per call on the scheduler's hot path for rules long finished (issue 19). Rules change only
when the store does, and a reservation lapses only at its rule's ``expires``, so one book serves every
snapshot taken from ``built_at`` until the earliest expiry among the reservations it counts (``until``);
the rule stores keep the last book and build a new one only when they changed or that time has come.

A change to a few rules patches the last book (``patched``) instead of indexing every rule again: in a
sold-out burst every ``/filter`` records a rule, and the full pass (1.5 us a rule, the hour's finished rules
included) ran on every call. A patch copies the indexes (C-speed copies) and re-indexes only the changed
rules; it is exact because, while the last book holds, no other rule's reservation differs at ``now``.

Must not: read a clock, a store or the cluster (the caller passes ``now``); change after it is built
(snapshots of concurrent requests share it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from .rules import Phase, Rule, claimed_uids, newest_rule_per_pod, parent_links, restore_order

RuleKey = tuple[str, str]  # (namespace, name): how the stores key a rule


def rule_key(rule: Rule) -> RuleKey:
    return rule.namespace, rule.name


@dataclass(frozen=True, eq=False)
class RuleBook:
    """Rules and what snapshots read of them, valid for snapshots taken at ``built_at <= now < until``."""

    rules: tuple[Rule, ...] = ()
    by_key: Mapping[RuleKey, Rule] = field(default_factory=dict)
    by_name: Mapping[str, Rule] = field(default_factory=dict)
    by_pod_uid: Mapping[str, Rule] = field(default_factory=dict)  # each pod's newest rule
    reserved: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # node -> resource -> slices
    # Phase.RESTORING rules in the order they take new pods (rules.restore_order); the inventory checks
    # their upgraded pods
    restoring: tuple[Rule, ...] = ()
    # Phase.RECORDED rules: the only ones a new pod can take (rules.rule_for_new_pod), read by the webhook
    # per admission instead of every rule
    recorded: tuple[Rule, ...] = ()
    # uid -> how many rules count that pod as their own (bound as an upgrade, or it finished a restore):
    # rules.restore_claims as a multiset, so a patch can take one rule's claim away
    claims: Mapping[str, int] = field(default_factory=dict)
    built_at: float = 0.0
    until: float = math.inf

    @classmethod
    def of(cls, rules: Iterable[Rule], now: float) -> RuleBook:
        """The book of ``rules`` at ``now``: one pass per index over the rules."""
        by_key = {rule_key(r): r for r in rules}
        rules = tuple(by_key.values())  # one rule per key, the last copy, as a store keyed by it holds
        reserved: dict[str, dict[str, int]] = {}
        until = math.inf
        for rule in rules:
            held = rule.reservation(now)
            if held is not None:
                node, rc = held
                per_node = reserved.setdefault(node, {})
                per_node[rc.resource] = per_node.get(rc.resource, 0) + rc.count
                until = min(until, rule.expires)  # held now, lapses then (Rule.reservation)
        claims: dict[str, int] = {}
        for uid in claimed_uids(rules):
            claims[uid] = claims.get(uid, 0) + 1
        return cls(rules=rules, by_key=by_key, by_name={r.name: r for r in rules},
                   by_pod_uid=newest_rule_per_pod(rules), reserved=reserved, restoring=tuple(restore_order(rules)),
                   recorded=tuple(r for r in rules if r.phase is Phase.RECORDED), claims=claims,
                   built_at=now, until=until)

    @classmethod
    def at(cls, rules: Iterable[Rule] | RuleBook, now: float) -> RuleBook:
        """A book for a snapshot at ``now``: ``rules`` itself when it is a book that holds then, else the
        book of its rules (a rule store's book, or the plain rules the simulator and reconciler pass)."""
        if isinstance(rules, RuleBook):
            return rules if rules.holds_at(now) else cls.of(rules.rules, now)
        return cls.of(rules, now)

    def patched(self, changes: Mapping[RuleKey, Rule | None], now: float) -> RuleBook:
        """This book with each key in ``changes`` set to its rule (None: the rule is gone), for snapshots at
        ``now``. Only while the book holds at ``now`` (the caller checks): then every unchanged rule
        reserves at ``now`` what it did at ``built_at``, so only the changed ones are indexed again. The
        result equals ``RuleBook.of`` over the same rules but for the order of ``rules`` and ``restoring``
        (no reader depends on it) and an ``until`` that may be earlier (a rebuild sooner, never a stale
        book): the rule that set ``until`` may have gone, and finding the next earliest is the full pass."""
        by_key = dict(self.by_key)
        gone: dict[RuleKey, Rule] = {}
        came: dict[RuleKey, Rule] = {}
        for key, rule in changes.items():
            old = by_key.pop(key, None) if rule is None else by_key.get(key)
            if old is rule:
                continue
            if old is not None:
                gone[key] = old
            if rule is not None:
                by_key[key] = rule
                came[key] = rule
        if not gone and not came:
            return self
        reserved = dict(self.reserved)
        copied: set[str] = set()  # nodes whose inner mapping this book owns (the old book's stays as it was)

        def count(rule: Rule, sign: int) -> bool:
            """Add (+1) or take away (-1) what ``rule`` reserves at ``now``; does it reserve anything?"""
            held = rule.reservation(now)
            if held is None:
                return False
            node, rc = held
            if node not in copied:
                reserved[node] = dict(reserved.get(node, {}))
                copied.add(node)
            per_node = reserved[node]
            left = per_node.get(rc.resource, 0) + sign * rc.count
            if left:
                per_node[rc.resource] = left
            else:  # nothing left (a count of 0 is never stored: a rule that reserves 0 slices adds no entry)
                per_node.pop(rc.resource, None)
                if not per_node:
                    del reserved[node]
                    copied.discard(node)
            return True

        until = self.until
        for old in gone.values():
            count(old, -1)
        for rule in came.values():
            if count(rule, +1):
                until = min(until, rule.expires)
        by_name = dict(self.by_name)
        by_pod_uid = dict(self.by_pod_uid)
        recount: set[str] = set()  # pods whose newest rule went: the newest left is looked up below
        for key, old in gone.items():
            if by_name.get(old.name) is old:
                del by_name[old.name]
            if old.pod_uid and by_pod_uid.get(old.pod_uid) is old:
                new = came.get(key)
                if new is not None and new.pod_uid == old.pod_uid and (new.created, new.name) >= (
                        old.created, old.name):
                    by_pod_uid[old.pod_uid] = new  # a new version of the newest rule: still the newest
                else:
                    recount.add(old.pod_uid)
        for rule in came.values():
            by_name[rule.name] = rule
            if rule.pod_uid and rule.pod_uid not in recount:
                held = by_pod_uid.get(rule.pod_uid)
                if held is None or (rule.created, rule.name) > (held.created, held.name):
                    by_pod_uid[rule.pod_uid] = rule
        if recount:  # rare (a pod's newest rule deleted or handed over): one pass for those pods
            for uid in recount:
                by_pod_uid.pop(uid, None)
            by_pod_uid.update(newest_rule_per_pod(r for r in by_key.values() if r.pod_uid in recount))
        if len(by_name) != len(by_key):  # two namespaces use one rule name: index the names as ``of`` does
            by_name = {r.name: r for r in by_key.values()}
        restoring = _of_phase(self.restoring, gone, came, Phase.RESTORING)
        if restoring is not self.restoring:
            restoring = tuple(restore_order(restoring))
        recorded = _of_phase(self.recorded, gone, came, Phase.RECORDED)
        claims = self.claims
        if any(r.bound_pod or r.restored_pod for r in (*gone.values(), *came.values())):
            claims = dict(claims)
            for uid in claimed_uids(gone.values()):
                if claims[uid] == 1:
                    del claims[uid]
                else:
                    claims[uid] -= 1
            for uid in claimed_uids(came.values()):
                claims[uid] = claims.get(uid, 0) + 1
        book = RuleBook(rules=tuple(by_key.values()), by_key=by_key, by_name=by_name, by_pod_uid=by_pod_uid,
                        reserved=reserved, restoring=restoring, recorded=recorded, claims=claims, built_at=now,
                        until=until)
        links = self.__dict__.get("_links")
        if links is not None:  # the links were read from this book: patch them, else the next book makes them
            book.__dict__["_links"] = _patched_links(links, gone.values(), came.values(), book.rules)
        return book

    @property
    def restart_parents(self) -> Mapping[str, tuple[str, float]]:
        """rules.restart_parents over these rules, for the loop guard (ClusterSnapshot.lineage_restarts):
        made on first use, and patched (O(changed)) by a patch of a book that had made them."""
        return self._links[0]

    @cached_property
    def _links(self) -> tuple[dict[str, tuple[str, float]], dict[str, int]]:
        """(rules.restart_parents over ``rules``, uid -> how many rules link it): the count tells a patch when
        a link it removes or adds meets another rule's link for the same pod (then the later rule's wins)."""
        parents: dict[str, tuple[str, float]] = {}
        linked: dict[str, int] = {}
        for rule in self.rules:
            for uid, parent in parent_links(rule):
                parents[uid] = parent
                linked[uid] = linked.get(uid, 0) + 1
        return parents, linked

    def holds_at(self, now: float) -> bool:
        """Are the reservations the same at ``now`` as when the book was built? A rule's reservation
        depends on its phase (fixed in the book) and on ``now >= expires``: after ``built_at`` only the
        reservations counted can lapse, the earliest at ``until``; before it, an expired one may not be."""
        return self.built_at <= now < self.until


def _patched_links(links: tuple[dict[str, tuple[str, float]], dict[str, int]], gone: Iterable[Rule],
                   came: Iterable[Rule], rules: Iterable[Rule]) -> tuple[dict[str, tuple[str, float]], dict[str, int]]:
    """RuleBook._links of ``rules``, from the links of the book before ``gone`` went and ``came`` came."""
    gone_links = [link for r in gone for link in parent_links(r)]
    came_links = [link for r in came for link in parent_links(r)]
    if not gone_links and not came_links:
        return links  # no restart link changed (a new rule has none until its pod is bound)
    parents, linked = dict(links[0]), dict(links[1])
    shared: set[str] = set()  # pods another rule links too: which rule's link wins is looked up below
    for uid, _ in gone_links:
        linked[uid] -= 1
        if linked[uid]:
            shared.add(uid)
        else:
            del linked[uid]
            parents.pop(uid, None)
    for uid, parent in came_links:
        linked[uid] = linked.get(uid, 0) + 1
        if linked[uid] > 1:
            shared.add(uid)
        else:
            parents[uid] = parent
    if shared:  # rare (two rules name one pod): one pass, the later rule's link as restart_parents keeps it
        for uid in shared:
            parents.pop(uid, None)
        parents.update((uid, parent) for r in rules for uid, parent in parent_links(r) if uid in shared)
    return parents, linked


def _of_phase(before: tuple[Rule, ...], gone: Mapping[RuleKey, Rule], came: Mapping[RuleKey, Rule],
              phase: Phase) -> tuple[Rule, ...]:
    """``before`` (a book's rules in ``phase``) after a patch: the same tuple unless a rule of that phase
    went or came."""
    if not any(r.phase is phase for r in (*gone.values(), *came.values())):
        return before
    return tuple(r for r in before if rule_key(r) not in gone) + tuple(r for r in came.values() if r.phase is phase)
