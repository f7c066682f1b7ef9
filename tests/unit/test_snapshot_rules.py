"""``serve --snapshot`` with the MigSubstitutions saved beside the nodes and pods: a replay of a cluster
offline sees its rules' reservations, as the live extender did (and as ``bench/extender.py`` uses to load an
hour's finished rules)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from mig_extender.components.settings import Settings
from mig_extender.core.resources import PodInfo, ResourceCount
from mig_extender.core.rules import new_rule, rule_to_object
from mig_extender.process import build_service, snapshot_rules
from tests.builders import make_node, make_pod

TWO_G = "nvidia.com/mig-2g.10gb"


def saved_rule(name: str, node: str = "gpu-a") -> dict:
    rule = new_rule(PodInfo("ns", name, f"uid-{name}"), ResourceCount("nvidia.com/mig-1g.5gb", 1),
                    ResourceCount(TWO_G, 1), node, time.time(), 600.0)
    return rule_to_object(rule)


def test_the_saved_rules_reserve_their_slices_when_served(tmp_path: Path) -> None:
    """gpu-a's only 2g.10gb is reserved by a saved rule: a 2g.10gb pod must not be promised it."""
    pod = make_pod("wants-2g", mig={"2g.10gb": 1})
    for saved, passed in (([], ("gpu-a",)), ([saved_rule("holder")], ())):
        path = tmp_path / "snap.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                    "items": [make_node("gpu-a", "A100-40GB", {"2g.10gb": 1}), *saved]}))
        service = build_service(Settings(snapshot=str(path)))
        assert [r.pod_uid for r in service.store.list()] == [r["spec"]["podUID"] for r in saved]
        assert service.filter(pod, ["gpu-a"]).passed == passed


def test_a_saved_rule_that_cannot_be_read_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    broken = saved_rule("broken")
    del broken["spec"]["original"]
    doc = {"items": [saved_rule("good"), broken, make_pod("p", mig={"1g.5gb": 1})]}
    with caplog.at_level(logging.WARNING):
        assert [r.pod_uid for r in snapshot_rules(doc)] == ["uid-good"]
    assert "--snapshot" in caplog.text


@pytest.mark.parametrize("field,value", [
    ("spec", "not-a-map"), ("status", ["not", "a", "map"]), ("metadata", "not-a-map"),
    ("metadata.annotations", "not-a-map"), ("spec.preemption", "not-a-map"), ("spec.original.count", float("inf")),
    ("spec.substitute.count", 0), ("spec.original.count", -1),  # the CRD asks for 1 to 1024
])
def test_a_saved_rule_of_the_wrong_shape_is_skipped_not_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 field: str, value: object) -> None:
    """A hand-edited file is not checked by the CRD's schema: a MigSubstitution whose parts have the wrong
    JSON type is logged and skipped like any unreadable one; ``serve`` must not die with a traceback."""
    broken = saved_rule("broken")
    *path, last = field.split(".")
    where = broken
    for part in path:
        where = where[part]
    where[last] = value
    doc = {"apiVersion": "v1", "kind": "List",
           "items": [make_node("gpu-a", "A100-40GB", {"2g.10gb": 1}), saved_rule("good"), broken]}
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        service = build_service(Settings(snapshot=str(snap)))
    assert [r.pod_uid for r in service.store.list()] == ["uid-good"]
    assert "--snapshot" in caplog.text and "malformed" in caplog.text
