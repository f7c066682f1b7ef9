"""Soak defect D1: a bare pod is recreated from its stash only when OUR eviction removed it.

KubeActions against a small in-memory API (pods by name, one MigSubstitution): the eviction's uid
precondition answers 404 / 409 as the API server does, and a "new leader" is a fresh KubeActions that
knows only what the rule object holds. Plus the pure decision ``recreate_step`` as a table.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from mig_extender.cluster.actions import KubeActions
from mig_extender.core.podspec import Recreate, RecreateReason, RecreateStep, Restart, recreate_step, replacement_pod
from mig_extender.core.resources import ResourceCount
from mig_extender.core.rules import Rule, rule_from_object, rule_to_object
from tests.builders import make_pod, res


class _Response:
    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode()

    def release_conn(self) -> None:
        pass


class FakeApi:
    """Pods by name and one rule object; every write is recorded in ``writes``."""

    def __init__(self, pod: dict[str, Any], rule: Rule) -> None:
        self.pods: dict[str, dict[str, Any]] = {pod["metadata"]["name"]: pod}
        self.rule_obj = rule_to_object(rule)
        self.writes: list[tuple[str, str]] = []
        self.before_evict: list[Any] = []   # callbacks run when the eviction arrives (the racing user)
        self.read_errors: list[Exception] = []  # raised, one per read, before any pod is read
        self.created = 0
        self.events: list[str] = []

    # CoreV1Api
    def read_namespaced_pod(self, name: str, namespace: str, **_: Any) -> _Response:
        if self.read_errors:
            raise self.read_errors.pop(0)
        if name not in self.pods:
            raise ApiException(status=404, reason="NotFound")
        return _Response(self.pods[name])

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any], dry_run: str = "", **_: Any) -> _Response:
        if dry_run:
            return _Response(body)
        name = body["metadata"]["name"]
        if name in self.pods:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created += 1
        self.writes.append(("create", name))
        self.pods[name] = {**body, "metadata": {**body["metadata"], "uid": f"new-{self.created}"}}
        return _Response(self.pods[name])

    def create_namespaced_pod_eviction(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> _Response:
        for hook in self.before_evict:
            hook()
        pod = self.pods.get(name)
        if pod is None:
            raise ApiException(status=404, reason="NotFound")
        preconditions = body["deleteOptions"]["preconditions"]
        if pod["metadata"]["uid"] != preconditions["uid"]:
            raise ApiException(status=409, reason="Conflict")
        if preconditions.get("resourceVersion", pod["metadata"].get("resourceVersion")) != pod["metadata"].get(
                "resourceVersion"):
            raise ApiException(status=409, reason="Conflict")  # eviction.go: an explicit RV is not retried
        self.writes.append(("evict", name))
        del self.pods[name]  # a pending pod: deleted at once (no node, so no grace period)
        return _Response({})

    # EventsV1Api
    def create_namespaced_event(self, namespace: str, body: dict[str, Any], **_: Any) -> _Response:
        self.events.append(body["reason"])
        return _Response(body)

    # CustomObjectsApi
    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                       body: dict[str, Any], **_: Any) -> _Response:
        annotations = self.rule_obj["metadata"].setdefault("annotations", {})
        for key, value in body["metadata"]["annotations"].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        self.writes.append(("rule", name))
        return _Response(self.rule_obj)

    def rule(self) -> Rule:
        return rule_from_object(self.rule_obj)

    def user_deletes(self, name: str) -> None:
        self.pods.pop(name, None)

    def user_starts_deleting(self, name: str) -> None:
        """A graceful delete: the pod stays, terminating, until its kubelet has stopped it."""
        self.change(name, deletionTimestamp="2026-11-29T17:00:00Z")

    def change(self, name: str, **meta: Any) -> None:
        """Any write to the pod (a status update, a delete) moves its resourceVersion on."""
        pod = self.pods[name]["metadata"]
        pod.update(meta, resourceVersion=str(int(pod.get("resourceVersion", "1")) + 1))

    def user_recreates(self, name: str) -> None:
        self.pods[name] = make_pod(name, mig={"1g.5gb": 1}, uid="users-own")


def actions_on(api: FakeApi) -> KubeActions:
    actions = KubeActions(client.ApiClient())
    actions._core = api  # type: ignore[assignment]
    actions._custom = api  # type: ignore[assignment]
    actions._events = api  # type: ignore[assignment]
    return actions


def world() -> tuple[FakeApi, dict[str, Any]]:
    pod = make_pod("solo", mig={"1g.5gb": 1}, uid="old-uid")
    pod["metadata"]["resourceVersion"] = "1"
    rule = Rule(name="solo-rule", namespace="default", pod_name="solo", pod_uid="old-uid", owner=None,
                original=ResourceCount(res("1g.5gb"), 1), substitute=ResourceCount(res("2g.10gb"), 1), node="gpu-a",
                created=1000.0, expires=4_000_000_000.0)
    return FakeApi(pod, rule), pod


def restart(api: FakeApi, actions: KubeActions, pod: dict[str, Any]) -> Any:
    return actions.stash_and_evict_bare_pod("default", "solo-rule", pod, replacement_pod(pod))


def test_soak_d1_a_bare_pod_the_user_deletes_before_our_eviction_is_not_recreated() -> None:
    api, pod = world()
    api.before_evict.append(lambda: api.user_deletes("solo"))
    actions = actions_on(api)
    assert restart(api, actions, pod).kind is Restart.GONE
    assert not api.rule().stash  # nothing left for this leader or the next to create the pod from
    assert "solo" not in api.pods and api.created == 0


def test_soak_d11_a_bare_pod_the_user_deletes_gracefully_before_our_eviction_is_not_recreated() -> None:
    """The Eviction API deletes a terminating pod without asking (eviction.go canIgnorePDB): with only the
    uid precondition our eviction 'succeeded' on the user's delete and the pod came back from the stash."""
    api, pod = world()
    api.before_evict.append(lambda: api.user_starts_deleting("solo"))
    actions = actions_on(api)
    assert restart(api, actions, pod).kind is Restart.GONE
    assert not api.rule().stash and ("evict", "solo") not in api.writes
    assert "solo" in api.pods and api.created == 0  # terminating, left to the kubelet and the user


def test_soak_d11_a_status_update_between_our_read_and_our_eviction_is_not_a_delete() -> None:
    api, pod = world()
    api.before_evict.append(lambda: api.before_evict.clear() or api.change("solo"))  # once: the kubelet's report
    actions = actions_on(api)
    assert restart(api, actions, pod).kind is Restart.EVICTED
    assert actions.finish_recreate(api.rule()) == "created" and api.created == 1


def test_soak_d11_a_reread_that_fails_after_a_conflict_leaves_no_stash_behind() -> None:
    """The 409 proves our eviction removed nothing. The re-read failing (the API server restarting) raised
    out with the stash written and no record: once the kubelet let the user's terminating pod go, the next
    pass (or a new leader) found it gone, unproven, and created it again."""
    api, pod = world()
    api.before_evict.append(lambda: api.before_evict.clear() or api.user_starts_deleting("solo"))
    api.read_errors.append(ApiException(status=503, reason="ServiceUnavailable"))
    outcome = None
    with contextlib.suppress(ApiException):
        outcome = restart(api, actions_on(api), pod)
    api.user_deletes("solo")  # its kubelet is done
    rule = api.rule()
    next_leader = actions_on(api).finish_recreate(rule) if rule.stash else "no stash"
    assert next_leader == "no stash" and api.created == 0
    assert outcome is not None and outcome.kind is Restart.REFUSED  # not evicted; tried again later


def test_soak_d11_a_pod_that_changes_before_every_eviction_is_refused_not_reported_gone() -> None:
    """Three 409s on a pod that is still there, the same and not terminating (its kubelet or a controller
    writing to it) were answered GONE, "deleted or replaced by someone else": the restore was abandoned
    rather than deferred, and its rule held the original reserved until it expired."""
    api, pod = world()
    api.before_evict.append(lambda: api.change("solo"))  # every time
    outcome = restart(api, actions_on(api), pod)
    assert (outcome.kind, "solo" in api.pods, api.rule().stash) == (Restart.REFUSED, True, "")


def test_an_eviction_409_from_the_pdb_update_is_a_refusal_not_a_gone_pod() -> None:
    """eviction.go retries conflicts on the PodDisruptionBudget's status 20 times (EvictionsRetry), then
    answers with the last one: a 409 about the PDB, not the pod (client-go retry.OnError returns lastErr,
    so the 'couldn't update PodDisruptionBudget' timeout branch never runs). It was read as "the pod is
    gone": a controller-owned pod's restore was dropped, not deferred, and its rule sat Restoring."""
    api, pod = world()
    pdb_conflict = ApiException(status=409, reason="Conflict")
    pdb_conflict.body = json.dumps({"kind": "Status", "reason": "Conflict", "code": 409, "message":
                                    'Operation cannot be fulfilled on poddisruptionbudgets.policy "web": the '
                                    "object has been modified; please apply your changes to the latest version",
                                    "details": {"name": "web", "group": "policy", "kind": "poddisruptionbudgets"}})

    def contended() -> None:
        raise pdb_conflict

    api.before_evict.append(contended)
    outcome = actions_on(api).evict(pod)
    assert (outcome.kind, "solo" in api.pods) == (Restart.REFUSED, True)


def test_soak_d11_a_pod_already_terminating_when_read_is_neither_stashed_nor_evicted() -> None:
    api, _ = world()
    api.user_starts_deleting("solo")
    outcome = restart(api, actions_on(api), api.pods["solo"])
    assert outcome.kind is Restart.GONE and "being deleted" in outcome.detail
    assert api.writes == []


def test_soak_d1_a_namesake_the_user_created_before_our_eviction_is_left_alone() -> None:
    api, pod = world()
    api.before_evict.append(lambda: (api.user_deletes("solo"), api.user_recreates("solo")))
    actions = actions_on(api)
    assert restart(api, actions, pod).kind is Restart.GONE
    assert api.pods["solo"]["metadata"]["uid"] == "users-own" and api.created == 0 and not api.rule().stash


def test_soak_d1_a_new_leader_finishes_the_recreate_our_eviction_began_exactly_once() -> None:
    api, pod = world()
    restart(api, actions_on(api), pod)  # the leader dies right after its eviction
    assert "solo" not in api.pods and api.rule().stash
    successor = actions_on(api)
    assert successor.finish_recreate(api.rule()) == "created"
    stale = rule_from_object(api.rule_obj)
    assert not stale.stash  # cleared after the create
    assert api.created == 1


def test_soak_d1_a_leader_dying_after_create_before_clearing_the_stash_does_not_create_twice() -> None:
    api, pod = world()
    restart(api, actions_on(api), pod)
    before_clear = api.rule()  # the stash as the next leader would read it had the clear not landed
    actions_on(api).finish_recreate(before_clear)
    assert actions_on(api).finish_recreate(before_clear) != "created"
    assert api.created == 1 and api.pods["solo"]["metadata"]["uid"] == "new-1"


def test_soak_d1_a_leader_dying_between_stash_and_eviction_leaves_the_pod_alone() -> None:
    api, pod = world()
    actions = actions_on(api)
    actions.replacement_problem = lambda manifest: ""  # type: ignore[method-assign]
    actions._set_stash("default", "solo-rule", json.dumps(replacement_pod(pod)), "old-uid")  # then it dies
    successor = actions_on(api)
    assert successor.finish_recreate(api.rule()) != "created"
    assert api.pods["solo"]["metadata"]["uid"] == "old-uid" and not api.rule().stash
    assert api.events == ["MigRecreateSkipped"]
    api.user_deletes("solo")  # the user's later delete is final: no stash is left to bring it back
    assert not api.rule().stash and api.created == 0


def _terminating(uid: str, evicted: bool) -> dict[str, Any]:
    pod = make_pod("solo", mig={"1g.5gb": 1}, uid=uid, terminating=True, node="gpu-a")
    if evicted:
        pod["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                        "reason": "EvictionByEvictionAPI"}]
    return pod


@pytest.mark.parametrize("predecessor, deleted, current, expected", [
    pytest.param("old", True, None, RecreateStep(Recreate.CREATE, RecreateReason.DELETED_BY_US),
                 id="our-eviction-removed-it"),
    pytest.param("old", False, None, RecreateStep(Recreate.CREATE, RecreateReason.UNPROVEN),
                 id="leader-died-between-eviction-and-its-record"),
    pytest.param("", False, None, RecreateStep(Recreate.CREATE, RecreateReason.UNPROVEN),
                 id="stash-of-an-older-version"),
    pytest.param("old", True, _terminating("old", True), RecreateStep(Recreate.WAIT, RecreateReason.TERMINATING),
                 id="ours-still-terminating"),
    pytest.param("old", False, _terminating("old", True), RecreateStep(Recreate.WAIT, RecreateReason.TERMINATING),
                 id="unrecorded-eviction-still-terminating"),
    pytest.param("old", False, _terminating("old", False),
                 RecreateStep(Recreate.DROP, RecreateReason.DELETED_BY_OTHERS), id="user-deleted-it-first"),
    pytest.param("old", False, make_pod("solo", uid="old"), RecreateStep(Recreate.DROP, RecreateReason.NOT_EVICTED),
                 id="leader-died-before-the-eviction"),
    pytest.param("old", True, make_pod("solo", uid="other"), RecreateStep(Recreate.DROP, RecreateReason.NAME_TAKEN),
                 id="created-already-or-users-namesake"),
    pytest.param("old", True, _terminating("other", False), RecreateStep(Recreate.DROP, RecreateReason.NAME_TAKEN),
                 id="a-namesake-terminating"),
])
def test_recreate_step(predecessor: str, deleted: bool, current: dict[str, Any] | None,
                       expected: RecreateStep) -> None:
    assert recreate_step(predecessor, deleted, current) == expected
