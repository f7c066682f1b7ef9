"""Item 17: a dry-run reconciler makes no write at all (cluster/dryrun.py sandboxes its API client).

The real KubeRuleStore and KubeActions run over a kubernetes ApiClient whose transport is a fake API
server: it serves reads from a dict and records every request. Over every scenario the reconciler acts
on (upgrade of a controller-owned and of a bare pod, apply, bind, restore, a stashed bare pod to
create, expiry, deletion of finished rules, a Job pod), the sandboxed run must send no mutating request;
the same run without the sandbox shows the scenarios do write (so the check can fail).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client
from kubernetes.client import rest

from mig_extender.cluster.actions import KubeActions
from mig_extender.cluster.dryrun import sandbox
from mig_extender.cluster.rulestore_kube import KubeRuleStore
from mig_extender.components.reconciler import Reconciler
from mig_extender.core.planner import filter_pod
from mig_extender.core.resources import ANN_ORIGINAL, ANN_RULE, pod_info
from mig_extender.core.rules import ANN_RECREATE, rule_to_object
from tests.builders import inventory_of, make_node, make_pod

RULES = "/apis/mig-extender.io/v1alpha1/namespaces/default/migsubstitutions/"
PODS = "/api/v1/namespaces/default/pods/"


class _Raw:
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.reason, self.headers = status, "OK" if status < 400 else "Not Found", {}
        self.data = json.dumps(body).encode()

    def release_conn(self) -> None:
        return None


class FakeApiServer:
    """Stands in for the ApiClient's rest_client: GETs from ``objects`` (path -> object), writes echoed."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, server-side dry run)

    def request(self, method: str, url: str, headers: Any = None, body: Any = None, post_params: Any = None,
                _request_timeout: Any = None) -> rest.RESTResponse:
        parts = urlsplit(url)
        self.requests.append((method, parts.path, "All" in parse_qs(parts.query).get("dryRun", [])))
        if method == "GET":
            obj = self.objects.get(parts.path.removesuffix("/status"))
            return rest.RESTResponse(_Raw(200, obj) if obj else _Raw(404, {"kind": "Status", "code": 404}))
        echo = dict(body) if isinstance(body, dict) else {}
        echo.setdefault("metadata", {}).setdefault("resourceVersion", "99")
        return rest.RESTResponse(_Raw(200, echo))

    def mutations(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, dry in self.requests if m not in ("GET", "HEAD") and not dry]


class _ListedStore(KubeRuleStore):
    """Listed once by ``_on_relist`` below, as an informer's first list: synced (the reconciler waits for it)."""

    synced = True  # type: ignore[assignment]


class Scenarios:
    """One cluster holding a rule in every state the reconciler acts on."""

    def __init__(self, dry_run: bool) -> None:
        self.now = 2000.0
        self.server = FakeApiServer()
        api = client.ApiClient(client.Configuration(host="http://fake"))
        api.rest_client = self.server
        self.box = sandbox(api) if dry_run else None
        self.store = _ListedStore(api, clock=lambda: self.now)
        node = make_node("gpu-a", "A100-40GB", {"1g.5gb": 3, "2g.10gb": 4, "3g.20gb": 1})
        self.inventory = inventory_of(node)
        self.inventory._clock = lambda: self.now
        self.rules: list[dict] = []
        self.blocker = self.pod(make_pod("blocker", mig={"1g.5gb": 3}, node="gpu-a"))
        self._build()
        self.store._on_relist(self.rules)
        self.reconciler = Reconciler(self.inventory, self.store, KubeActions(api), clock=lambda: self.now)

    def pod(self, obj: dict) -> dict:
        self.inventory.upsert_pod(obj)
        self.server.objects[PODS + obj["metadata"]["name"]] = obj
        return obj

    def record(self, pending: dict, **changes: Any):
        snap = self.inventory.snapshot((), self.now)
        rule = replace(filter_pod(pod_info(pending), ["gpu-a"], snap).record, created=self.now - 10,
                       resource_version="1", **changes)
        obj = rule_to_object(rule)
        if rule.stash:
            obj["metadata"]["annotations"] = {ANN_RECREATE: rule.stash}
        self.rules.append(obj)
        self.server.objects[RULES + rule.name] = obj
        return rule

    def _build(self) -> None:
        rs = ("ReplicaSet", "web", "rs-1")
        self.record(self.pod(make_pod("upgrade-rs", mig={"1g.5gb": 1}, owner=rs)))        # upgrade: evict
        self.record(self.pod(make_pod("upgrade-bare", mig={"1g.5gb": 1})))               # upgrade: stash + evict
        job = ("Job", "train", "job-1")
        self.server.objects["/apis/batch/v1/namespaces/default/jobs/train"] = {
            "metadata": {"name": "train", "uid": "job-1"}, "spec": {"backoffLimit": 6}, "status": {}}
        self.record(self.pod(make_pod("upgrade-job", mig={"1g.5gb": 1}, owner=job)))      # upgrade: reads the Job
        applied = self.record(make_pod("gone", mig={"1g.5gb": 1}, owner=("ReplicaSet", "b", "rs-b")))
        self.pod(make_pod("carrier", mig={"2g.10gb": 1}, node="gpu-a", owner=("ReplicaSet", "b", "rs-b"),
                          annotations={ANN_RULE: applied.name, ANN_ORIGINAL: str(applied.original)}))  # apply, bind
        running = self.pod(make_pod("restore-me", mig={"3g.20gb": 1}, node="gpu-a", owner=("ReplicaSet", "c", "rs-c")))
        bound = self.record(make_pod("c-old", mig={"1g.5gb": 1}, owner=("ReplicaSet", "c", "rs-c")))
        self._replace_rule(bound.applied("restore-me", self.now - 5, 120).bound(
            running["metadata"]["uid"], "restore-me", "gpu-a", self.now - 5))        # restore once 1g.5gb frees
        stashed = json.dumps(make_pod("recreate-me", mig={"1g.5gb": 1}))
        self.record(make_pod("recreate-me", mig={"1g.5gb": 1}), stash=stashed)         # stash: create the pod
        self.record(make_pod("late", mig={"1g.5gb": 1}), expires=self.now - 1)         # expiry
        self.record(make_pod("old", mig={"1g.5gb": 1}), phase=replace(bound).phase.EXPIRED, updated=self.now - 7200)

    def _replace_rule(self, rule) -> None:
        obj = rule_to_object(replace(rule, resource_version="1"))
        self.rules[-1] = obj
        self.server.objects[RULES + rule.name] = obj

    def run(self) -> None:
        for step in range(4):
            self.now += 2
            if step == 1:  # capacity frees: the restore becomes due
                self.inventory.delete_pod(self.blocker["metadata"]["uid"])
            assert self.reconciler.run_once()["errors"] == 0


def kind_of(method: str, path: str) -> str:
    """What a write was, from its method and path."""
    if path.endswith("/eviction"):
        return "evict"
    if "/events" in path:
        return "event"
    if "/migsubstitutions" in path:
        return {"PUT": "rule-status", "PATCH": "rule-stash", "DELETE": "rule-delete"}.get(method, "rule-create")
    return f"pod-{method.lower()}"


def test_item17_dry_run_makes_no_write_over_every_scenario() -> None:
    world = Scenarios(dry_run=True)
    world.run()
    assert world.server.mutations() == []
    # everything the reconciler would have done was held back (so the empty list above means something)
    held = {kind_of(m, p) for m, p in world.box.writes}
    assert held == {"evict", "event", "rule-status", "rule-stash", "rule-delete", "pod-post"}
    dry_creates = [p for m, p, dry in world.server.requests if m == "POST" and dry]
    assert dry_creates == [PODS.rstrip("/")]  # the bare pod's replacement was checked server-side (dryRun=All)


@pytest.mark.parametrize("dry_run", [pytest.param(False, id="without-the-sandbox-every-scenario-writes")])
def test_item17_the_scenarios_do_write_when_not_dry(dry_run: bool) -> None:
    world = Scenarios(dry_run=dry_run)
    world.run()
    assert {kind_of(m, p) for m, p in world.server.mutations()} == {
        "evict", "event", "rule-status", "rule-stash", "rule-delete", "pod-post"}
