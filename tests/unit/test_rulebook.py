"""RuleBook: the rules indexed once per rule-store state, shared by every /filter until the store changes
or a reservation lapses (issue 19: the O(rules) pass per call on the scheduler's hot path)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from kubernetes import client

from mig_extender.cluster.rulestore import MemoryRuleStore
from mig_extender.cluster.rulestore_kube import KubeRuleStore
from mig_extender.components.extender import ExtenderService
from mig_extender.core.planner import PlanSettings
from mig_extender.core.resources import PodInfo, ResourceCount
from mig_extender.core.rulebook import RuleBook
from mig_extender.core.rules import Phase, new_rule, parent_links, restart_parents, rule_to_object
from tests.builders import inventory_of, make_node, make_pod

TWO_G = "nvidia.com/mig-2g.10gb"


def a_rule(name: str = "p", now: float = 1000.0, ttl: float = 60.0, node: str = "gpu-a"):
    return new_rule(PodInfo("ns", name, f"uid-{name}"), ResourceCount("nvidia.com/mig-1g.5gb", 1),
                    ResourceCount(TWO_G, 1), node, now, ttl)


def test_the_book_indexes_the_rules_as_snapshots_read_them() -> None:
    recorded, restoring = a_rule("a"), replace(a_rule("b", node="gpu-b"), phase=Phase.RESTORING,
                                               restore_node="gpu-b", bound_pod="uid-b")
    book = RuleBook.of([recorded, restoring], 1001.0)
    assert book.by_name == {recorded.name: recorded, restoring.name: restoring}
    assert book.by_pod_uid == {"uid-a": recorded, "uid-b": restoring}
    assert book.reserved == {"gpu-a": {TWO_G: 1}, "gpu-b": {"nvidia.com/mig-1g.5gb": 1}}
    assert book.restoring == (restoring,)
    assert (book.built_at, book.until) == (1001.0, 1060.0)  # the earliest expiry of a counted reservation


@pytest.mark.parametrize(("now", "holds"), [
    pytest.param(1001.0, True, id="when-built"),
    pytest.param(1059.9, True, id="before-the-first-reservation-lapses"),
    pytest.param(1060.0, False, id="when-a-reservation-lapses"),
    pytest.param(1000.5, False, id="before-it-was-built-the-clock-went-back"),
])
def test_a_book_holds_only_while_its_reservations_do(now: float, holds: bool) -> None:
    book = RuleBook.of([a_rule("a"), a_rule("b", ttl=120.0)], 1001.0)
    assert book.holds_at(now) is holds


# -- the stores: one book per state, a new one after every change ------------------------------------------


def memory_store(now: list[float]) -> MemoryRuleStore:
    store = MemoryRuleStore(retention=300.0, clock=lambda: now[0])
    store.record(a_rule("a"))
    return store


def kube_store(now: list[float]) -> KubeRuleStore:
    store = KubeRuleStore(client.ApiClient(), overlay_ttl=30.0, clock=lambda: now[0])
    store._on_relist(iter([rule_to_object(replace(a_rule("a"), resource_version="5"))]))
    return store


MEMORY_CHANGES: dict[str, Callable[[MemoryRuleStore, list[float]], None]] = {
    "record": lambda s, now: s.record(a_rule("b")),
    "update": lambda s, now: s.update(s.get("ns", a_rule("a").name).applied("a2", 1001.0, 60.0)),
    "delete": lambda s, now: s.delete(a_rule("a")),
    "retention-ran-out": lambda s, now: now.__setitem__(0, 1301.0),
}
KUBE_CHANGES: dict[str, Callable[[KubeRuleStore, list[float]], None]] = {
    "watch-added": lambda s, now: s._on_event("ADDED", rule_to_object(replace(a_rule("b"), resource_version="6"))),
    "watch-modified": lambda s, now: s._on_event(
        "MODIFIED", rule_to_object(replace(a_rule("a").applied("a2", 1001.0, 60.0), resource_version="7"))),
    "watch-deleted": lambda s, now: s._on_event("DELETED", rule_to_object(replace(a_rule("a"), resource_version="8"))),
    "relist": lambda s, now: s._on_relist(iter([])),
    "our-write": lambda s, now: s._remember(replace(a_rule("a").applied("a2", 1001.0, 60.0), resource_version="9")),
}


@pytest.mark.parametrize("change", list(MEMORY_CHANGES))
def test_the_memory_store_serves_one_book_until_it_changes(change: str) -> None:
    now = [1001.0]
    store = memory_store(now)
    book = store.book(now[0])
    assert store.book(now[0] + 1) is book  # no change, no reservation lapsed: the same book, no pass over rules
    MEMORY_CHANGES[change](store, now)
    fresh = store.book(now[0])
    assert fresh is not book
    assert list(fresh.rules) == store.list()


@pytest.mark.parametrize("change", list(KUBE_CHANGES))
def test_the_kube_store_serves_one_book_until_it_changes(change: str) -> None:
    now = [1001.0]
    store = kube_store(now)
    book = store.book(now[0])
    assert store.book(now[0] + 1) is book
    KUBE_CHANGES[change](store, now)
    fresh = store.book(now[0])
    assert fresh is not book
    assert sorted(fresh.rules, key=lambda r: r.name) == sorted(store.list(), key=lambda r: r.name)


def test_the_kube_store_books_again_when_its_own_write_ages_out_of_the_overlay() -> None:
    """Our write's copy wins over the watch's older one for ``overlay_ttl``; when it ages out the watch's
    copy is the rule again, with no event: the book must follow."""
    now = [1001.0]
    store = kube_store(now)
    store._remember(replace(a_rule("a").applied("a2", 1001.0, 600.0), resource_version="9"))
    assert store.book(now[0]).rules[0].applied_pod == "a2"
    now[0] = 1040.0  # past the overlay's 30 s; the watch never delivered version 9
    assert store.book(now[0]).rules[0].applied_pod == ""


# -- the extender: a lapsed reservation frees its slice with no change in the store ----------------------


def test_a_reservation_that_lapses_frees_its_slice_though_the_store_did_not_change() -> None:
    """A rule reserves gpu-a's only 2g.10gb until 1059. A 2g.10gb pod filtered at 1001 finds it taken; at 1059,
    with no write to the store in between, the cached book must not keep the reservation alive."""
    now = [1001.0]
    store = MemoryRuleStore(clock=lambda: now[0])
    store.record(a_rule("holder", ttl=59.0))
    service = ExtenderService(inventory_of(make_node("gpu-a", "A100-40GB", {"2g.10gb": 1})), store, PlanSettings(),
                              clock=lambda: now[0])
    pod = make_pod("wants-2g", mig={"2g.10gb": 1})
    assert service.filter(pod, ["gpu-a"]).passed == ()
    now[0] = 1058.9
    assert service.filter(pod, ["gpu-a"]).passed == ()
    now[0] = 1059.0
    assert service.filter(pod, ["gpu-a"]).passed == ("gpu-a",)


# -- a wall clock that steps back (NTP): the TTL caches' expire() no longer reports every expiry -------------


def names(rules) -> list[str]:
    return sorted(r.name for r in rules)


def test_the_memory_book_drops_a_rule_past_its_retention_after_the_clock_stepped_back() -> None:
    """cachetools' expire() walks its links in insertion order and stops at the first live one: after a
    step back, "b" (recorded later, at the earlier time) lapses behind "a" and expire() reports nothing.
    The book must still follow the store (list() hides "b" from 1290 on)."""
    now = [1000.0]
    store = MemoryRuleStore(retention=300.0, clock=lambda: now[0])
    store.record(a_rule("a", ttl=10_000.0))
    now[0] = 990.0  # the wall clock stepped back 10 s
    store.record(a_rule("b", now=990.0, ttl=10_000.0))
    for t in (990.0, 1000.0, 1289.0, 1295.0, 1299.0, 1300.0, 1301.0):
        now[0] = t
        assert names(store.book(t).rules) == names(store.list()), t


def test_the_kube_book_drops_an_overlay_copy_past_its_ttl_after_the_clock_stepped_back() -> None:
    now = [1000.0]
    store = kube_store(now)  # "a" from the watch, version 5
    store._remember(replace(a_rule("a", ttl=10_000.0), resource_version="9", message="ours"))
    now[0] = 990.0  # the wall clock stepped back 10 s
    store._remember(replace(a_rule("b", now=990.0, ttl=10_000.0), resource_version="10"))
    for t in (990.0, 1000.0, 1019.0, 1025.0, 1029.0, 1030.0, 1031.0):
        now[0] = t
        assert names(store.book(t).rules) == names(store.list()), t


def test_a_delete_event_as_our_overlay_copy_lapses_does_not_fail_the_watch() -> None:
    """The DELETED handler reads our overlay copy, then drops it: if the copy's TTL runs out between the two,
    cachetools deletes it and raises KeyError, which reached the informer's thread."""
    readings = [1000.0]  # the write
    store = KubeRuleStore(client.ApiClient(), overlay_ttl=30.0, clock=lambda: readings.pop(0) if readings else 1031.0)
    rule = replace(a_rule("a"), resource_version="5")
    store._remember(rule)
    readings.extend([1029.0])  # the handler's read of our copy: still live; its delete: lapsed
    store._on_event("DELETED", rule_to_object(replace(rule, resource_version="7")))
    assert store.list() == [] and store.book(1031.0).rules == ()


def test_books_read_while_the_watch_writes_end_with_the_stores_rules() -> None:
    """Request threads read books while the informer's thread applies events: every book is one state of
    the store, and once the events stop the next book holds exactly the rules ``list()`` holds (no book
    built from an older state outlives a newer generation)."""
    import threading

    store = kube_store([1001.0])
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            book = store.book(1001.0)
            assert len(book.by_name) == len(book.rules)  # one state: the indexes agree with the rules
            seen.append(len(book.rules))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(1500):
        rule = replace(a_rule(f"r{i % 40}"), resource_version=str(10 + i))
        store._on_event("DELETED" if i % 3 == 2 else "MODIFIED", rule_to_object(rule))
    stop.set()
    for t in readers:
        t.join()
    final = store.book(1001.0)
    assert sorted(r.name for r in final.rules) == sorted(r.name for r in store.list())
    assert seen  # the readers ran alongside the writes


class RefusingObjectsApi:
    """The generated CustomObjectsApi answering every status write with ``status`` (409: someone wrote
    first; 429: the API server's priority and fairness turned us away)."""

    def __init__(self, status: int) -> None:
        self.status = status

    def replace_namespaced_custom_object_status(self, *args, **kwargs):
        from kubernetes.client.rest import ApiException

        raise ApiException(status=self.status, reason="Conflict" if self.status == 409 else "TooManyRequests")


@pytest.mark.parametrize("status", [409, 429])
def test_a_refused_rule_write_leaves_the_book_as_it_was(status: int) -> None:
    """A write the API refused changed nothing: the book stays the same object with the same rule (no stale
    copy of the attempted write), and the next event still moves it on."""
    now = [1001.0]
    store = kube_store(now)
    store._api = RefusingObjectsApi(status)  # type: ignore[assignment]
    book = store.book(now[0])
    attempted = replace(store.get("ns", a_rule("a").name).applied("a2", 1001.0, 60.0))
    with pytest.raises(Exception):  # noqa: B017  ConflictError for 409, the ApiException itself for 429
        store.update(attempted)
    assert store.book(now[0]) is book and book.rules[0].applied_pod == ""
    store._on_event("MODIFIED", rule_to_object(replace(attempted, resource_version="7")))
    assert store.book(now[0]).rules[0].applied_pod == "a2"


def test_a_sibling_recorded_after_the_book_was_cached_keeps_its_slice() -> None:
    """Two replicas of one ReplicaSet ask for a sold-out 1g.5gb; gpu-a's only 2g.10gb can go to one. The first
    filter of replica 2 caches the book; replica 1 then records the substitute; replica 2's next filter must
    see that reservation (the record bumped the store), not the book it cached, and not be promised the slice."""
    now = [1001.0]
    store = MemoryRuleStore(clock=lambda: now[0])
    inventory = inventory_of(make_node("gpu-a", "A100-40GB", {"1g.5gb": 1, "2g.10gb": 1}),
                             make_pod("holder", mig={"1g.5gb": 1}, node="gpu-a"))
    service = ExtenderService(inventory, store, PlanSettings(), clock=lambda: now[0])
    owner = ("ReplicaSet", "infer", "rs-uid")
    first, second = (make_pod(f"infer-{i}", mig={"1g.5gb": 1}, owner=owner) for i in (1, 2))
    service.snapshot()  # the book is cached with no rule
    recorded = service.filter(first, ["gpu-a"]).record
    assert recorded is not None and recorded.node == "gpu-a"
    decision = service.filter(second, ["gpu-a"])
    assert decision.record is None and decision.passed == ()
    assert [r.pod_uid for r in store.book(now[0]).rules] == [first["metadata"]["uid"]]


# -- patched books: a few changed rules re-indexed, equal to indexing every rule again -------------------------


def same_book(book: RuleBook, rules: list, now: float) -> None:
    """``book`` indexes exactly ``rules`` at ``now``: as ``RuleBook.of`` does, up to the order of ``rules``
    and ``restoring``, and with an ``until`` no later than the full pass's (a rebuild sooner, never later)."""
    full = RuleBook.of(rules, now)
    assert dict(book.by_key) == dict(full.by_key)
    assert sorted(book.rules, key=lambda r: (r.namespace, r.name)) == sorted(full.rules,
                                                                             key=lambda r: (r.namespace, r.name))
    assert dict(book.by_pod_uid) == dict(full.by_pod_uid)
    assert {n: dict(per) for n, per in book.reserved.items()} == {n: dict(per) for n, per in full.reserved.items()}
    assert set(book.restoring) == set(full.restoring) and len(book.restoring) == len(full.restoring)
    assert [(r.updated, r.name) for r in book.restoring] == [(r.updated, r.name) for r in full.restoring]  # in order
    assert dict(book.claims) == dict(full.claims)
    assert set(book.recorded) == set(full.recorded) and len(book.recorded) == len(full.recorded)
    links = [uid for r in rules for uid, _ in parent_links(r)]
    if len(set(links)) == len(links):  # two rules linking one pod: the later one's link, in either order
        assert dict(book.restart_parents) == restart_parents(rules)  # read on every book: patches carry it
    if len({r.name for r in rules}) == len(rules):  # two namespaces with one name: either copy may be indexed
        assert dict(book.by_name) == dict(full.by_name)
    assert book.holds_at(now) and book.until <= full.until
    assert dict(book.restart_parents) == restart_parents(book.rules)  # exact in the book's own order


def random_rule(rng, now: float):
    """A rule in any phase, reserving or not: pods share uids (a pod's second rule), names repeat across
    namespaces, expiries fall inside the run."""
    pod = rng.randrange(12)
    rule = new_rule(PodInfo(rng.choice(["ns", "ns2"]), f"p{pod}", f"uid-{pod}"),
                    ResourceCount("nvidia.com/mig-1g.5gb", 1), ResourceCount(TWO_G, rng.choice([1, 2])),
                    f"gpu-{rng.randrange(4)}", now - rng.uniform(0, 30), rng.uniform(1, 120),
                    after=rng.choice(["", "x"]))
    phase = rng.choice(list(Phase))
    return replace(rule, phase=phase, bound_pod=rng.choice(["", "", f"uid-{pod}", f"uid-{rng.randrange(12)}"]),
                   updated=rng.choice([now, now - 9]),
                   restored_pod=rng.choice(["", "", f"uid-{rng.randrange(12)}"]),
                   restore_node=f"gpu-{rng.randrange(4)}" if phase is Phase.RESTORING else "",
                   created=round(rule.created, 1 if rng.random() < 0.5 else 3))


@pytest.mark.parametrize("seed", range(40))
def test_the_memory_stores_patched_books_equal_a_full_pass(seed: int) -> None:
    """Random records, updates, deletes, retention lapses and clock steps (back, too): after each, the
    store's book (patched when it can be) indexes what ``list()`` holds, as a full pass would."""
    import random

    rng = random.Random(seed)
    now = [1000.0]
    store = MemoryRuleStore(retention=90.0, clock=lambda: now[0], maxsize=40)
    patches = 0
    for _ in range(150):
        op = rng.random()
        live = store.list()
        if op < 0.35 or not live:
            store.record(random_rule(rng, now[0]))
        elif op < 0.6:
            old = rng.choice(live)
            fresh = random_rule(rng, now[0])
            store.update(replace(fresh, name=old.name, namespace=old.namespace, resource_version=old.resource_version))
        elif op < 0.7:
            store.delete(rng.choice(live))
        elif op < 0.95:
            now[0] += rng.choice([0.5, 3.0, 20.0])
        else:
            now[0] -= rng.choice([0.5, 5.0])  # the wall clock stepped back
        before = store._books._book
        book = store.book(now[0])
        patches += before is not None and book is not before and book.built_at == now[0] and bool(book.rules)
        same_book(book, store.list(), now[0])
    assert patches > 20  # the patch path ran, not only full passes


class ObjectsApiThatDeletes:
    def delete_namespaced_custom_object(self, *args, **kwargs) -> None:
        return None


@pytest.mark.parametrize("seed", range(40))
def test_the_kube_stores_patched_books_equal_a_full_pass(seed: int) -> None:
    """Random watch events (in and out of order), our writes and deletes (the overlay), overlay copies
    aging out, relists and clock steps: after each the book indexes what ``list()`` holds."""
    import random

    rng = random.Random(seed)
    now = [1000.0]
    store = KubeRuleStore(client.ApiClient(), overlay_ttl=15.0, clock=lambda: now[0])
    store._api = ObjectsApiThatDeletes()  # type: ignore[assignment]
    version = [10]

    def versioned(rule):
        version[0] += 1
        return replace(rule, resource_version=str(version[0] - rng.choice([0, 0, 0, 5])))  # some arrive late

    for _ in range(150):
        op = rng.random()
        live = store.list()
        if op < 0.3 or not live:
            store._on_event(rng.choice(["ADDED", "MODIFIED"]), rule_to_object(versioned(random_rule(rng, now[0]))))
        elif op < 0.45:
            old = rng.choice(live)
            fresh = versioned(random_rule(rng, now[0]))
            store._on_event("MODIFIED", rule_to_object(replace(fresh, name=old.name, namespace=old.namespace)))
        elif op < 0.55:
            store._on_event("DELETED", rule_to_object(versioned(rng.choice(live))))
        elif op < 0.7:
            old = rng.choice(live)
            store._remember(versioned(replace(random_rule(rng, now[0]), name=old.name, namespace=old.namespace)))
        elif op < 0.75:
            store.delete(rng.choice(live))
        elif op < 0.78:
            store._on_relist(iter([rule_to_object(versioned(r)) for r in live if rng.random() < 0.8]))
        elif op < 0.97:
            now[0] += rng.choice([0.5, 3.0, 20.0])
        else:
            now[0] -= rng.choice([0.5, 5.0])
        same_book(store.book(now[0]), store.list(), now[0])


@pytest.mark.parametrize("counts", [(0,), (0, 1), (-1, 1)])
def test_a_patch_with_a_rule_reserving_no_slices_does_not_fail(counts: tuple) -> None:
    """A rule whose count sums to nothing on a node (a count of 0, or -1 beside +1: only a hand-made file
    has them, the CRD asks for >= 1) must not make the patch delete a count it never stored (KeyError):
    book() raised on every /filter until the book was rebuilt for another reason."""
    now = 1000.0
    store = MemoryRuleStore(clock=lambda: now)
    assert store.book(now).rules == ()  # the cached book: what follows is patched into it
    rules = []
    for i, count in enumerate(counts):
        rule = new_rule(PodInfo("ns", f"p{i}", f"uid-{i}"), ResourceCount("nvidia.com/mig-1g.5gb", 1),
                        ResourceCount(TWO_G, count), "gpu-0", now, 600.0)
        rules.append(store.record(rule))
        book = store.book(now)
        assert book.reserved.get("gpu-0", {}).get(TWO_G, 0) == sum(counts[:i + 1])
    for i, rule in enumerate(rules):
        store.delete(rule)
        book = store.book(now)
        assert book.reserved.get("gpu-0", {}).get(TWO_G, 0) == sum(counts[i + 1:])
        assert len(book.rules) == len(rules) - i - 1


def test_a_bind_patches_the_restart_links_instead_of_walking_every_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bind of a substituted pod adds a restart link (bound_pod), and every sold-out /filter reads the
    links (planner.restart_loop): a patched book must not walk every retained rule again to rebuild them
    (O(changed) per change, as for the other indexes), and must still equal rules.restart_parents."""
    from mig_extender.core import rulebook
    from mig_extender.core import rules as rules_module

    now = 1000.0
    done = [replace(new_rule(PodInfo("ns", f"d{i}", f"old-{i}"), ResourceCount("nvidia.com/mig-1g.5gb", 1),
                             ResourceCount(TWO_G, 1), "gpu-0", now - 900, 300.0),
                    phase=Phase.RESTORED, bound_pod=f"new-{i}", restored_pod=f"back-{i}") for i in range(500)]
    recorded = [new_rule(PodInfo("ns", f"w{i}", f"w-{i}"), ResourceCount("nvidia.com/mig-1g.5gb", 1),
                         ResourceCount(TWO_G, 1), "gpu-1", now, 300.0) for i in range(3)]
    book = RuleBook.of([*done, *recorded], now)
    assert book.restart_parents["new-7"] == ("old-7", done[7].restart_at or done[7].created)
    calls = [0]

    def counted(rule):
        calls[0] += 1
        return parent_links(rule)

    monkeypatch.setattr(rules_module, "parent_links", counted)
    monkeypatch.setattr(rulebook, "parent_links", counted)
    bound = recorded[0].bound("w-0-again", "w0", "gpu-1", now + 1)  # recreated and bound: a link appears
    gone = done[3]  # a finished rule falls out of retention: its two links go
    book = book.patched({(bound.namespace, bound.name): bound, (gone.namespace, gone.name): None}, now + 1)
    parents, walked = dict(book.restart_parents), calls[0]
    assert walked < 20, f"{walked} rules walked for one bind"
    assert parents == restart_parents([*done[:3], *done[4:], bound, *recorded[1:]])
    assert "new-3" not in parents and parents["w-0-again"][0] == "w-0"


@pytest.mark.parametrize("make", [memory_store, kube_store], ids=["memory", "kube"])
def test_a_book_asked_without_a_time_is_at_the_stores_clock_and_never_behind_the_last_one(make, monkeypatch) -> None:
    """``book()`` reads the store's own clock under its lock, at its highest reading: a reader that needs no
    particular time (the webhook) never asks for a time before the last book's, so never pays a full pass
    for losing the race for the lock, nor for a wall clock stepped back."""
    now = [1001.0]
    store = make(now)
    assert store.book().built_at == 1001.0
    indexed: list[float] = []
    of = RuleBook.of.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(RuleBook, "of", classmethod(lambda cls, rules, t: indexed.append(t) or of(cls, rules, t)))
    now[0] = 995.0  # stepped back
    store._books.changed(("ns", a_rule("a").name))  # a change pending, as a write leaves one
    book = store.book()
    assert book.built_at == 1001.0 and indexed == []  # patched at the highest reading, no full pass
