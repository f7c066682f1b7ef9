"""/debug/repartition on the reconciler's ops app: the last pass's plan, changes under way and typed
reasons, as JSON; absent when the debug endpoints are off."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from mig_extender.cluster.inventory import ClusterInventory
from mig_extender.components.metrics import Metrics
from mig_extender.components.repartitioner import Repartitioner
from mig_extender.components.settings import Settings
from mig_extender.core.repartition import LABEL_REPARTITION, NamedConfig, RepartitionSettings
from mig_extender.web.app import create_ops_app
from tests.builders import make_node, make_pod

T0 = 10_000.0


class _Unused:
    def read(self, node: str) -> Any:
        raise AssertionError("advise reads no node")

    def patch(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("advise writes no node")

    def write(self, node: str, reason: str, message: str, warning: bool = False, action: str = "") -> str:
        return "created"


class _Component:
    def __init__(self, repartitioner: Repartitioner) -> None:
        self.metrics, self.repartitioner = Metrics(), repartitioner

    def readiness_problems(self) -> list[str]:
        return []


def _advised() -> Repartitioner:
    inv = ClusterInventory(clock=lambda: T0)
    inv.upsert_node(make_node("in", gpu="A100-80GB", mig={"3g.40gb": 2},
                              labels={LABEL_REPARTITION: "true"}))
    inv.upsert_node(make_node("out", gpu="A100-80GB", mig={"3g.40gb": 2}))
    inv.upsert_pod(make_pod("big", mig={"7g.80gb": 1}))
    inv.synced = True
    rep = Repartitioner("advise", RepartitionSettings(window=0.0), (NamedConfig("all-7g", all=("7g.80gb",)),),
                        _Unused(), _Unused(), clock=lambda: T0)
    rep.run_once(inv.snapshot(now=T0), Counter())
    return rep


def test_debug_repartition_shows_plans_and_why_not() -> None:
    client = create_ops_app(Settings(), _Component(_advised())).test_client()
    body = client.get("/debug/repartition").get_json()
    assert body["mode"] == "advise" and body["configs"] == ["all-7g"]
    assert body["plans"] == [{"node": "in", "config": "all-7g", "gpus": [0], "after": ["7g.80gb"],
                              "serves": {"nvidia.com/mig-7g.80gb": 1}}]
    assert {"kind": "NodeSkipped", "node": "out", "why": "not-opted-in"} in body["whyNot"]
    assert body["inFlight"] == {}


def test_debug_repartition_is_off_with_the_debug_endpoints() -> None:
    app = create_ops_app(replace(Settings(), debug_endpoints=False), _Component(_advised()))
    assert app.test_client().get("/debug/repartition").status_code == 404
