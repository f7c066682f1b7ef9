"""The rules of one rule-store state, indexed once for every snapshot taken while that state holds. Pure.

A snapshot needs the rules by name, by pod uid, the slices they reserve per node and the Restoring ones.
Built per ``/filter`` call that was a pass over every rule in Python, and rules outlive their pods by the
store's retention (an hour by default): a cluster that substitutes a few thousand pods an hour paid
milliseconds per call on the scheduler's hot path for rules long finished (issue 19). Rules change only
when the store does, and a reservation lapses only at its rule's ``expires``, so one book serves every
snapshot taken from ``built_at`` until the earliest expiry among the reservations it counts (``until``);
the rule stores keep the last book and build a new one only when they changed or that time has come.

Must not: read a clock, a store or the cluster (the caller passes ``now``); change after it is built
(snapshots of concurrent requests share it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .rules import Phase, Rule, newest_rule_per_pod


@dataclass(frozen=True, eq=False)
class RuleBook:
    """Rules and what snapshots read of them, valid for snapshots taken at ``built_at <= now < until``."""

    rules: tuple[Rule, ...] = ()
    by_name: Mapping[str, Rule] = field(default_factory=dict)
    by_pod_uid: Mapping[str, Rule] = field(default_factory=dict)  # each pod's newest rule
    reserved: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # node -> resource -> slices
    restoring: tuple[Rule, ...] = ()  # Phase.RESTORING rules: the inventory checks their upgraded pods
    built_at: float = 0.0
    until: float = math.inf

    @classmethod
    def of(cls, rules: Iterable[Rule], now: float) -> RuleBook:
        """The book of ``rules`` at ``now``: one pass per index over the rules."""
        rules = tuple(rules)
        reserved: dict[str, dict[str, int]] = {}
        until = math.inf
        for rule in rules:
            held = rule.reservation(now)
            if held is not None:
                node, rc = held
                per_node = reserved.setdefault(node, {})
                per_node[rc.resource] = per_node.get(rc.resource, 0) + rc.count
                until = min(until, rule.expires)  # held now, lapses then (Rule.reservation)
        return cls(rules=rules, by_name={r.name: r for r in rules}, by_pod_uid=newest_rule_per_pod(rules),
                   reserved=reserved, restoring=tuple(r for r in rules if r.phase is Phase.RESTORING),
                   built_at=now, until=until)

    @classmethod
    def at(cls, rules: Iterable[Rule] | RuleBook, now: float) -> RuleBook:
        """A book for a snapshot at ``now``: ``rules`` itself when it is a book that holds then, else the
        book of its rules (a rule store's book, or the plain rules the simulator and reconciler pass)."""
        if isinstance(rules, RuleBook):
            return rules if rules.holds_at(now) else cls.of(rules.rules, now)
        return cls.of(rules, now)

    def holds_at(self, now: float) -> bool:
        """Are the reservations the same at ``now`` as when the book was built? A rule's reservation
        depends on its phase (fixed in the book) and on ``now >= expires``: after ``built_at`` only the
        reservations counted can lapse, the earliest at ``until``; before it, an expired one may not be."""
        return self.built_at <= now < self.until
