"""cluster.informer.Informer against a scripted fake API: list, watch from the list's resourceVersion, resume after a
dropped connection from the last version seen, relist on 410 Gone, and report how long it was cut off."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from mig_extender.cluster.informer import Informer, staleness_check


class FakeResponse:
    def __init__(self, data: bytes = b"", lines: list[dict] | None = None, fail: Exception | None = None) -> None:
        self.data, self.lines, self.fail = data, lines or [], fail

    def stream(self, amt: Any = None, decode_content: bool = False):
        for line in self.lines:
            yield (json.dumps(line) + "\n").encode()
        if self.fail:
            raise self.fail

    def release_conn(self) -> None:
        pass


def obj(name: str, rv: str) -> dict:
    return {"metadata": {"name": name, "resourceVersion": rv}}


class FakeApi:
    """Plays a script: each call pops the next answer; records what each call asked for."""

    def __init__(self, script: list[Any]) -> None:
        self.script, self.calls = script, []
        self.done = threading.Event()

    def __call__(self, **kwargs: Any) -> FakeResponse:
        self.calls.append({k: v for k, v in kwargs.items() if k in ("watch", "resource_version", "_continue")})
        if not self.script:
            self.done.set()
            time.sleep(0.05)
            return FakeResponse(lines=[], fail=ConnectionError("script over"))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def page(items: list[dict], rv: str, cont: str = "") -> FakeResponse:
    return FakeResponse(json.dumps({"items": items, "metadata": {"resourceVersion": rv, "continue": cont}}).encode())


def test_list_watch_resume_and_relist_on_410() -> None:
    api = FakeApi([
        page([obj("a", "5")], "9", cont="next"),            # paginated list
        page([obj("b", "8")], "10"),
        FakeResponse(lines=[{"type": "ADDED", "object": obj("c", "11")},
                            {"type": "BOOKMARK", "object": obj("", "12")}],
                     fail=ConnectionError("connection reset")),  # dropped mid-watch
        FakeResponse(lines=[{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}]),
        page([obj("a", "20"), obj("d", "21")], "22"),        # relist after 410
        FakeResponse(lines=[{"type": "DELETED", "object": obj("a", "23")}]),
    ])
    events, relists = [], []
    informer = Informer("things", api, lambda kind, o: events.append((kind, o["metadata"]["name"])),
                        lambda items: relists.append(sorted(i["metadata"]["name"] for i in items)))
    informer.start()
    assert api.done.wait(20)
    informer.stop()
    assert relists == [["a", "b"], ["a", "d"]]
    assert events == [("ADDED", "c"), ("DELETED", "a")]
    watches = [c for c in api.calls if c.get("watch")]
    assert watches[0]["resource_version"] == "10"   # from the list
    assert watches[1]["resource_version"] == "12"   # resumed from the last version seen (a bookmark)
    assert watches[2]["resource_version"] == "22"   # after the relist
    assert [c.get("_continue") for c in api.calls if not c.get("watch")][:2] == [None, "next"]


def test_staleness_counts_time_cut_off_not_quiet_time() -> None:
    api = FakeApi([page([], "1")] + [ConnectionError("refused")] * 50)
    informer = Informer("things", api, lambda *a: None, lambda items: None).start()
    check = staleness_check([informer], limit=0.3)
    assert informer.synced.wait(5)
    time.sleep(1.0)
    problem = check()
    informer.stop()
    assert "API unreachable" in problem
    quiet = Informer("quiet", FakeApi([]), lambda *a: None, lambda items: None)
    quiet.last_contact = time.time() - 3600  # an hour without events, but never cut off
    assert staleness_check([quiet], limit=0.3)() == ""


def test_issue19_relist_hands_each_page_over_before_fetching_the_next() -> None:
    # holding every page's JSON until the list ended made the initial list of 100k pods peak at several
    # times the steady memory; the consumer must see page one before page two is asked for
    api = FakeApi([page([obj("a", "5"), obj("b", "6")], "9", cont="next"), page([obj("c", "8")], "10")])
    lists_when_seen: list[tuple[str, int]] = []

    def on_relist(items: Any) -> None:
        for item in items:
            lists_when_seen.append((item["metadata"]["name"], len([c for c in api.calls if not c.get("watch")])))

    informer = Informer("things", api, lambda *a: None, on_relist).start()
    assert informer.synced.wait(5)
    informer.stop()
    assert lists_when_seen == [("a", 1), ("b", 1), ("c", 2)]


def test_issue19_a_consumer_that_stops_reading_still_gets_the_watch_from_the_lists_version() -> None:
    api = FakeApi([page([obj("a", "5")], "9", cont="next"), page([obj("b", "8")], "10")])
    informer = Informer("things", api, lambda *a: None, lambda items: next(iter(items))).start()
    assert informer.synced.wait(5) and api.done.wait(5)
    informer.stop()
    assert next(c.get("resource_version") for c in api.calls if c.get("watch")) == "10"


class TimedApi(FakeApi):
    def __init__(self, script: list[Any]) -> None:
        super().__init__(script)
        self.times: list[float] = []

    def __call__(self, **kwargs: Any) -> FakeResponse:
        self.times.append(time.monotonic())
        return super().__call__(**kwargs)


def test_soak_d12_a_410_after_the_api_returns_relists_at_once_not_after_the_escalated_backoff() -> None:
    """Soak seed 34: the API server restarted; each informer's retries backed off 0.5, 1, 2, 4 s, and the
    410 the API answered once back was followed by the next backoff step (8 s) before the relist. For
    those seconds the API (and kube-scheduler's binds) ran while our books missed a node's allocatable
    shrinking: two pods were bound onto slices that no longer existed. A 410 is an answer: relist now,
    as client-go's reflector relists after an expired watch."""
    gone = FakeResponse(lines=[{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}])
    api = TimedApi([page([obj("a", "5")], "9"), *[ConnectionError("refused")] * 5, gone, page([obj("a", "20")], "22")])
    informer = Informer("things", api, lambda *a: None, lambda items: list(items))
    informer.BACKOFF_START = 0.05  # 0.05, 0.1, 0.2, 0.4, 0.8: the next step after five failures is 1.6 s
    informer.start()
    assert api.done.wait(20)
    informer.stop()
    relist_after_410 = api.times[7] - api.times[6]
    assert api.calls[7].get("watch") is None and relist_after_410 < 0.5, relist_after_410


def test_a_watch_resumed_after_a_failure_is_caught_up_only_once_it_settles() -> None:
    """A watch resumed from our last version first delivers what it missed: /bind waits ``settle`` (D12).
    A watch renewed after its timeout, with no failure between, was never behind."""
    informer = Informer("x", FakeApi([]), lambda *a: None, lambda items: None)
    assert not informer.caught_up()  # not listed yet
    informer.synced.set()
    assert informer.caught_up()
    informer._lost()
    assert not informer.caught_up()
    informer._connected()
    assert not informer.caught_up(settle=0.3)
    time.sleep(0.35)
    assert informer.caught_up(settle=0.3)
    informer._connected()  # a renewal, no failure before it
    assert informer.caught_up(settle=0.3)
