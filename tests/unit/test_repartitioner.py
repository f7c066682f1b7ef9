"""The repartition actuator (components/repartitioner.py) over a fake API: what it writes to Nodes and
which Events it sends, pass by pass, including a new leader taking over and the API refusing writes.

The fake API keeps Node objects with resourceVersions (a patch carrying one is conditional, as on the
real API server) and feeds every write back into the inventory, as the watch would; ``lag=True``
holds writes back from the inventory (a lagging watch)."""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from mig_extender.cluster.actions import NodeWrite
from mig_extender.cluster.inventory import ClusterInventory
from mig_extender.components.repartitioner import ConfigError, Repartitioner, load_mig_configs
from mig_extender.core.repartition import (
    LABEL_MIG_CONFIG,
    LABEL_MIG_CONFIG_STATE,
    LABEL_REPARTITION,
    NamedConfig,
    RepartitionSettings,
)
from mig_extender.core.repartition_change import ANN_CHANGE, ANN_LAST, Change, ChangePhase
from tests.builders import make_node, make_pod

L33 = ("3g.40gb", "3g.40gb")
L7 = ("7g.80gb",)
CONFIGS = (NamedConfig("all-3g.40gb", all=L33), NamedConfig("all-7g.80gb", all=L7))
SETTINGS = RepartitionSettings(window=60.0, cooldown=600.0, settle=5.0, timeout=100.0)
T0 = 10_000.0
R7 = "nvidia.com/mig-7g.80gb"


class FakeApi:
    """Nodes by name; writes bump resourceVersion and reach the inventory unless ``lag``."""

    def __init__(self, inventory: ClusterInventory) -> None:
        self.inventory = inventory
        self.objs: dict[str, dict[str, Any]] = {}
        self.rv = 1
        self.lag = False
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str, bool]] = []
        self.refuse: NodeWrite | None = None
        self.bound: list[dict[str, Any]] = []  # pods the API has bound; the inventory sees them via upsert_pod

    def put(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objs[obj["metadata"]["name"]] = obj
        if not self.lag:
            self.inventory.upsert_node(copy.deepcopy(obj))

    def sync(self) -> None:
        for obj in self.objs.values():
            self.inventory.upsert_node(copy.deepcopy(obj))

    # NodeWriter
    def read(self, node: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objs.get(node))

    def patch(self, node: str, labels: Any = None, annotations: Any = None, resource_version: str = "") -> NodeWrite:
        if self.refuse is not None:
            return self.refuse
        obj = self.objs.get(node)
        if obj is None:
            return NodeWrite.GONE
        if resource_version and obj["metadata"]["resourceVersion"] != resource_version:
            return NodeWrite.CONFLICT
        obj = copy.deepcopy(obj)
        for key, values in (("labels", labels), ("annotations", annotations)):
            target = obj["metadata"].setdefault(key, {})
            for k, v in (values or {}).items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v
        self.patches.append((node, {"labels": dict(labels or {}), "annotations": dict(annotations or {})}))
        self.put(obj)
        return NodeWrite.DONE

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.bound if p["spec"].get("nodeName") == node]

    # NodeEventWriter
    def write(self, node: str, reason: str, message: str, warning: bool = False, action: str = "") -> str:
        self.events.append((node, reason, message, warning))
        return "created"

    # helpers for the tests: what the MIG manager and the device plugin would do
    def mig_manager(self, node: str, state: str, mig: dict[str, int] | None = None) -> None:
        obj = copy.deepcopy(self.objs[node])
        obj["metadata"]["labels"][LABEL_MIG_CONFIG_STATE] = state
        if mig is not None:
            alloc = {k: v for k, v in obj["status"]["allocatable"].items() if not k.startswith("nvidia.com/mig-")}
            alloc.update({f"nvidia.com/mig-{p}": str(n) for p, n in mig.items()})
            obj["status"]["allocatable"] = obj["status"]["capacity"] = alloc
        self.put(obj)

    def labels(self, node: str) -> dict[str, str]:
        return self.objs[node]["metadata"].get("labels", {})

    def annotations(self, node: str) -> dict[str, str]:
        return self.objs[node]["metadata"].get("annotations", {})

    def reasons(self) -> list[str]:
        return [e[1] for e in self.events]


class World:
    def __init__(self, opted_in: bool = True, waiting: int = 2, label: str | None = "all-3g.40gb") -> None:
        self.clock = T0
        self.inventory = ClusterInventory(clock=lambda: self.clock)
        self.api = FakeApi(self.inventory)
        labels = {"nvidia.com/gpu.count": "2"}
        if opted_in:
            labels[LABEL_REPARTITION] = "true"
        if label:
            labels[LABEL_MIG_CONFIG] = label
        self.api.put(make_node("gpu-1", gpu="A100-80GB", mig={"3g.40gb": 4}, labels=labels))
        for i in range(waiting):
            self.inventory.upsert_pod(make_pod(f"big-{i}", mig={"7g.80gb": 1}))
        self.inventory.synced = True

    def actuator(self, mode: str = "on", settings: RepartitionSettings = SETTINGS,
                 monotonic: Any = None) -> Repartitioner:
        return Repartitioner(mode, settings, CONFIGS, self.api, self.api, clock=lambda: self.clock,
                             monotonic=monotonic or (lambda: self.clock))

    def run(self, rep: Repartitioner, at: float) -> Counter[str]:
        self.clock = at
        counts: Counter[str] = Counter()
        rep.run_once(self.inventory.snapshot(now=at), counts)
        return counts

    def mig_manager_ahead_of_the_watch(self, shown: tuple[str, dict[str, int]],
                                       fresh: tuple[str, dict[str, int]]) -> None:
        """The MIG manager reports ``shown`` and then ``fresh``; the actuator's watch stops at ``shown``
        (the pass decides on it) while a fresh read of the Node gives ``fresh``."""
        self.api.mig_manager("gpu-1", *shown)
        self.api.lag = True
        self.api.mig_manager("gpu-1", *fresh)

    def change(self) -> Change | None:
        text = self.api.annotations("gpu-1").get(ANN_CHANGE)
        return Change.from_json(text) if text else None


def test_idle_opted_in_node_goes_through_reserve_apply_finish() -> None:
    w = World()
    rep = w.actuator()
    w.run(rep, T0)  # demand first seen: too young
    assert w.api.patches == []
    w.run(rep, T0 + 60)
    change = w.change()
    assert change is not None and change.phase is ChangePhase.RESERVING
    assert (change.config, change.previous, change.after) == ("all-7g.80gb", "all-3g.40gb", (L7, L7))
    assert LABEL_MIG_CONFIG_STATE not in w.api.labels("gpu-1") and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == \
        "all-3g.40gb"  # reserved only: the MIG manager has not been asked yet
    w.run(rep, T0 + 62)  # settling
    assert w.change().phase is ChangePhase.RESERVING
    w.run(rep, T0 + 65)
    assert w.change().phase is ChangePhase.APPLYING
    assert w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-7g.80gb"
    assert w.api.reasons() == ["MigRepartitioning"]
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    w.run(rep, T0 + 70)
    w.api.mig_manager("gpu-1", "success", {"7g.80gb": 2})
    w.run(rep, T0 + 90)
    assert ANN_CHANGE not in w.api.annotations("gpu-1")
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST])["outcome"] == "success"
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitioned"]
    assert w.inventory.snapshot(now=T0 + 90).held_nodes == frozenset()


def test_reservation_holds_the_node_from_the_first_write() -> None:
    w = World()
    rep = w.actuator()
    w.run(rep, T0)
    w.run(rep, T0 + 60)
    snap = w.inventory.snapshot(now=T0 + 60)
    assert snap.held_nodes == {"gpu-1"} and snap.free("gpu-1", "nvidia.com/mig-3g.40gb") == 0


def test_node_not_opted_in_is_never_written() -> None:
    w = World(opted_in=False)
    rep = w.actuator()
    for t in (T0, T0 + 60, T0 + 120):
        w.run(rep, t)
    assert w.api.patches == [] and w.api.events == []
    assert {"kind": "NodeSkipped", "node": "gpu-1", "why": "not-opted-in"} in rep.status_json()["whyNot"]


def test_advise_writes_one_event_and_no_label() -> None:
    w = World()
    rep = w.actuator("advise")
    for t in (T0, T0 + 60, T0 + 65, T0 + 120):
        w.run(rep, t)
    assert w.api.patches == []
    assert w.api.reasons() == ["MigRepartitionAdvised"]
    assert rep.status_json()["plans"] == [{"node": "gpu-1", "config": "all-7g.80gb", "gpus": [0, 1],
                                           "after": ["7g.80gb", "7g.80gb"], "serves": {R7: 2}}]


def start_applying(w: World, rep: Repartitioner) -> None:
    w.run(rep, T0)
    w.run(rep, T0 + 60)
    w.run(rep, T0 + 65)
    assert w.change().phase is ChangePhase.APPLYING


def test_failed_state_rolls_back_the_label_and_says_why() -> None:
    """The label goes back at once; the node stays held until the MIG manager has applied it (it acts on
    the value set back, and a pod placed on the node meanwhile would make that apply fail)."""
    w = World()
    rep = w.actuator()
    start_applying(w, rep)
    w.api.mig_manager("gpu-1", "failed")
    w.run(rep, T0 + 70)
    assert w.change().phase is ChangePhase.ROLLING_BACK and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"
    assert LABEL_MIG_CONFIG_STATE not in w.api.labels("gpu-1")  # the failed is ours, cleared in the same patch
    _, reason, message, warning = w.api.events[-1]
    assert (reason, warning) == ("MigRepartitionFailed", True) and message.startswith("MigManagerFailed")
    assert "stays held until the MIG manager has restored the previous layout" in message
    w.run(rep, T0 + 75)  # nothing reported for the value set back yet: still held
    assert w.change().phase is ChangePhase.ROLLING_BACK and "gpu-1" in w.inventory.snapshot(now=T0 + 75).held_nodes
    w.api.mig_manager("gpu-1", "success", {"3g.40gb": 4})  # the previous config found in place
    w.run(rep, T0 + 80)
    assert w.change() is None and w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST]) == {"at": T0 + 80, "outcome": "MigManagerFailed"}


def test_failed_node_is_not_changed_again_within_the_cooldown() -> None:
    w = World()
    rep = w.actuator()
    start_applying(w, rep)
    w.api.mig_manager("gpu-1", "failed")
    w.run(rep, T0 + 70)
    w.api.mig_manager("gpu-1", "success", {"3g.40gb": 4})
    w.run(rep, T0 + 71)  # released: the cooldown counts from here
    patches = len(w.api.patches)
    w.run(rep, T0 + 200)
    assert len(w.api.patches) == patches
    w.run(rep, T0 + 71 + SETTINGS.cooldown)
    assert w.change() is not None  # the cooldown is over: tried again


def test_failed_state_left_by_an_earlier_change_is_not_read_as_this_ones() -> None:
    w = World()
    w.api.mig_manager("gpu-1", "failed")  # an older failure still on the node
    rep = w.actuator()
    start_applying(w, rep)
    assert LABEL_MIG_CONFIG_STATE not in w.api.labels("gpu-1")  # cleared in the same patch as the label
    w.run(rep, T0 + 66)
    assert w.change().phase is ChangePhase.APPLYING


def test_wedged_pending_times_out_and_rolls_back() -> None:
    w = World()
    rep = w.actuator()
    start_applying(w, rep)
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    w.run(rep, T0 + 65 + SETTINGS.timeout - 1)
    assert w.change() is not None
    w.run(rep, T0 + 65 + SETTINGS.timeout)
    assert w.change().phase is ChangePhase.ROLLING_BACK and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"
    assert w.api.events[-1][2].startswith("Timeout: nvidia.com/mig.config.state pending")


def test_rollback_without_a_previous_label_removes_ours() -> None:
    w = World(label=None)
    rep = w.actuator()
    start_applying(w, rep)
    w.api.mig_manager("gpu-1", "failed")
    w.run(rep, T0 + 70)
    assert LABEL_MIG_CONFIG not in w.api.labels("gpu-1")
    # the MIG manager ignores a removed label: nothing is left for it to do, so the node is released now
    assert w.change() is None and w.api.events[-1][2].startswith("MigManagerFailed")
    assert "label nvidia.com/mig.config removed, reservation released" in w.api.events[-1][2]
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST])["outcome"] == "MigManagerFailed"


def test_new_leader_resumes_the_change_and_times_out_a_wedged_one() -> None:
    w = World()
    start_applying(w, w.actuator())
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    successor = w.actuator()  # nothing in memory: only what the API shows
    w.run(successor, T0 + 80)
    assert w.change().phase is ChangePhase.APPLYING
    assert sum(1 for _, p in w.api.patches if ANN_CHANGE in p["annotations"]) == 2  # reserve + apply, no second
    # the successor announces the change it found, with the very same text: NodeEvents derives the Event's
    # name from it, so the API answers 409 when the old leader had written it
    first, again = w.api.events
    assert first == again and first[1] == "MigRepartitioning"
    w.run(successor, T0 + 65 + SETTINGS.timeout)
    assert w.change().phase is ChangePhase.ROLLING_BACK and w.api.reasons()[-1] == "MigRepartitionFailed"


def test_new_leader_finishes_a_reservation_the_old_one_made() -> None:
    w = World()
    old = w.actuator()
    w.run(old, T0)
    w.run(old, T0 + 60)
    successor = w.actuator()
    w.run(successor, T0 + 61)
    assert w.change().phase is ChangePhase.RESERVING
    w.run(successor, T0 + 65)
    assert w.change().phase is ChangePhase.APPLYING


def test_pod_placed_before_the_reservation_settled_aborts_without_a_label() -> None:
    w = World()
    rep = w.actuator()
    w.run(rep, T0)
    w.run(rep, T0 + 60)
    w.inventory.upsert_pod(make_pod("late", mig={"3g.40gb": 1}, node="gpu-1", phase="Running"))
    w.run(rep, T0 + 65)
    assert w.change() is None and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"
    assert w.api.events[-1][2].startswith("GpuBusy")


def test_conflict_on_reserve_writes_nothing() -> None:
    w = World()
    rep = w.actuator()
    w.run(rep, T0)
    w.api.refuse = NodeWrite.CONFLICT
    counts = w.run(rep, T0 + 60)
    assert counts["repartition_conflict"] == 1 and w.change() is None


def test_throttled_apply_is_retried_next_pass() -> None:
    w = World()
    rep = w.actuator()
    w.run(rep, T0)
    w.run(rep, T0 + 60)
    w.api.refuse = NodeWrite.THROTTLED
    assert w.run(rep, T0 + 65)["repartition_throttled"] == 1
    w.api.refuse = None
    w.run(rep, T0 + 66)
    assert w.change().phase is ChangePhase.APPLYING


def test_lagging_watch_never_starts_a_second_change() -> None:
    """The inventory has not seen our reservation yet: the planner plans the node again, and the fresh
    read before the write finds the record."""
    w = World()
    rep = w.actuator()
    w.run(rep, T0)
    w.api.lag = True
    w.run(rep, T0 + 60)
    counts = w.run(rep, T0 + 61)
    assert counts["repartition_conflict"] == 1
    assert sum(1 for _, p in w.api.patches if ANN_CHANGE in p["annotations"]) == 1


def test_label_changed_by_someone_else_is_left_alone() -> None:
    w = World()
    rep = w.actuator()
    start_applying(w, rep)
    obj = copy.deepcopy(w.api.objs["gpu-1"])
    obj["metadata"]["labels"][LABEL_MIG_CONFIG] = "all-1g.10gb"
    w.api.put(obj)
    w.run(rep, T0 + 70)
    assert w.change() is None and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-1g.10gb"


def test_off_still_finishes_a_change_under_way_and_starts_none() -> None:
    w = World()
    start_applying(w, w.actuator())
    off = w.actuator("off")
    w.api.mig_manager("gpu-1", "success", {"7g.80gb": 2})
    w.run(off, T0 + 80)
    assert w.change() is None and w.api.reasons()[-1] == "MigRepartitioned"
    patches = len(w.api.patches)
    w.run(off, T0 + 5000)
    assert len(w.api.patches) == patches


@pytest.mark.parametrize(("text", "error"), [
    pytest.param("version: v1\n", "no mig-configs", id="no-configs"),
    pytest.param("mig-configs:\n  x:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {'5g.99gb': 1}\n",
                 "x: 5g.99gb is a valid layout on no GPU model", id="unknown-profile"),
    pytest.param("mig-configs:\n  x:\n    - devices: some\n      mig-enabled: true\n"
                 "      mig-devices: {'1g.10gb': 7}\n",
                 "x: devices must be 'all' or a list of GPU indices", id="bad-devices"),
    pytest.param("mig-configs: [", "not YAML", id="not-yaml"),
    # Defect: a name that is no label value passed; every Apply then got a 422 and held the node
    pytest.param("mig-configs:\n  all 7g:\n    - devices: all\n      mig-enabled: true\n"
                 "      mig-devices: {'7g.80gb': 1}\n",
                 "'all 7g' is not a valid label value", id="name-not-a-label-value"),
    pytest.param("mig-configs:\n  " + "x" * 64 + ":\n    - devices: all\n      mig-enabled: true\n"
                 "      mig-devices: {'7g.80gb': 1}\n",
                 "is not a valid label value", id="name-too-long-for-a-label"),
])
def test_bad_name_map_is_one_error(tmp_path: Any, text: str, error: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_mig_configs(str(path))


def test_name_map_reads_the_configmap_and_per_gpu_configs(tmp_path: Any) -> None:
    inner = ("version: v1\nmig-configs:\n  all-7g.80gb:\n    - devices: all\n      mig-enabled: true\n"
             "      mig-devices: {'7g.80gb': 1}\n  gpu1-1g:\n    - devices: [1]\n      mig-enabled: true\n"
             "      mig-devices: {'1g.10gb': 7}\n  all-disabled:\n    - devices: all\n      mig-enabled: false\n")
    path = tmp_path / "cm.yaml"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "data": {"config.yaml": inner}}))
    assert load_mig_configs(str(path)) == (NamedConfig("all-7g.80gb", all=L7),
                                           NamedConfig("gpu1-1g", devices={1: ("1g.10gb",) * 7}))


def test_rollback_refused_by_the_api_says_nothing_until_it_is_written() -> None:
    """Defect: the Event ``MigRepartitionFailed`` ("label set back, reservation released") was written
    whatever the API answered to the patch that does it. A 429 left the node reserved and the label ours
    while the Event said otherwise; the retry next pass wrote a second Event (its text carries the
    elapsed seconds), and a success arriving in between ended in ``MigRepartitioned`` after it."""
    w = World()
    rep = w.actuator()
    start_applying(w, rep)
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    w.api.refuse = NodeWrite.THROTTLED
    counts = w.run(rep, T0 + 65 + SETTINGS.timeout)
    assert counts["repartition_throttled"] == 1 and w.change() is not None
    assert w.api.reasons() == ["MigRepartitioning"]
    w.api.refuse = None
    w.run(rep, T0 + 65 + SETTINGS.timeout + 7)
    assert w.change().phase is ChangePhase.ROLLING_BACK
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]


class Broken(Exception):
    """What the kubernetes client raises for a 5xx, or a 422/403 from a policy webhook (an ApiException:
    it carries the status)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


def test_one_node_the_api_refuses_does_not_stall_the_others() -> None:
    """Defect: an exception from one node's write (a 500, or a 403/422 an admission policy returns on
    every try) left ``run_once`` at that node, every pass: the changes on the nodes after it in name
    order were never followed (a wedged one never timed out, its node stayed reserved) and nothing new
    was planned. Each node is now its own unit of failure."""
    w = World(waiting=4)
    labels = {"nvidia.com/gpu.count": "2", LABEL_REPARTITION: "true", LABEL_MIG_CONFIG: "all-3g.40gb"}
    stuck = make_node("gpu-0", gpu="A100-80GB", mig={"3g.40gb": 4}, labels=labels)
    stuck["metadata"]["annotations"] = {ANN_CHANGE: Change("all-7g.80gb", "all-3g.40gb", (L33, L33), (L7, L7),
                                                           {R7: 2}, T0).to_json()}
    w.api.put(stuck)
    rep = w.actuator()
    patch = w.api.patch

    def refusing(node: str, *args: Any, **kwargs: Any) -> NodeWrite:
        if node == "gpu-0":
            raise Broken("500 Internal Server Error")
        return patch(node, *args, **kwargs)

    w.api.patch = refusing  # type: ignore[method-assign]
    w.run(rep, T0)
    counts = w.run(rep, T0 + 60)  # gpu-0's Apply fails; gpu-1 is planned and reserved all the same
    assert counts["repartition_errors"] == 1
    assert w.change() is not None
    w.run(rep, T0 + 65)
    assert w.change().phase is ChangePhase.APPLYING


@pytest.mark.parametrize("error, trace", [pytest.param(Broken("500 Internal Server Error"), False, id="api-error"),
                                          pytest.param(TypeError("a defect of ours"), True, id="defect")])
def test_a_failed_node_step_is_logged_with_its_trace_only_when_it_is_no_api_error(error: Exception, trace: bool,
                                                                                   caplog: Any) -> None:
    """Both stay that node's alone; an API refusal is expected in production and logged in one line, a
    defect of ours must show where it is."""
    w = World(waiting=4)
    rep = w.actuator()
    w.run(rep, T0)

    def failing(node: str, *args: Any, **kwargs: Any) -> NodeWrite:
        raise error

    w.api.patch = failing  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="mig_extender.components.repartitioner"):
        counts = w.run(rep, T0 + 60)
    assert counts["repartition_errors"] >= 1
    failures = [r for r in caplog.records if "retried next pass" in r.getMessage()]
    assert failures and all(bool(r.exc_info) is trace for r in failures)


def _edited_while_settling(lag: bool, edit: Callable[[dict[str, str]], object]) -> World:
    """gpu-1 reserved, its labels edited by someone else while the reservation settles (the actuator's
    watch lagging behind that edit when ``lag``), then the pass that would write the label."""
    w = World()
    rep = w.actuator()
    w.run(rep, T0)
    w.run(rep, T0 + 60)
    w.api.lag = lag
    obj = copy.deepcopy(w.api.objs["gpu-1"])
    edit(obj["metadata"]["labels"])
    w.api.put(obj)
    w.run(rep, T0 + 65)
    return w


@pytest.mark.parametrize("lag", [pytest.param(False, id="watch-current"), pytest.param(True, id="watch-lagging")])
def test_opt_out_while_settling_writes_no_label(lag: bool) -> None:
    """Defect: the label was written after the operator removed the opt-in while the reservation
    settled; with a lagging watch, the fresh read before the write must see it too."""
    w = _edited_while_settling(lag, lambda labels: labels.pop(LABEL_REPARTITION))
    assert w.change() is None and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"
    assert w.api.events[-1][2].startswith("OptedOut")


def test_label_set_by_someone_else_while_settling_is_not_overwritten() -> None:
    """Defect: an admin (or the GPU operator's default) set the label while our reservation settled;
    the Apply wrote ours over it and removed the MIG manager's ``pending``: the MIG manager then
    reported ``success`` for theirs, which lifted our hold on a layout we never asked for."""
    # the snapshot still shows the old label: only the fresh read can tell
    w = _edited_while_settling(True, lambda labels: labels.update({LABEL_MIG_CONFIG: "all-1g.10gb"}))
    assert w.change() is None and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-1g.10gb"
    assert w.api.events[-1][2].startswith("LabelChanged")


def test_new_leader_with_a_clock_a_day_behind_still_times_out_a_wedged_change() -> None:
    """Defect: the deadline was the old leader's ``appliedAt`` plus the timeout, read by the new leader's
    wall clock: a day behind, the node stayed reserved (and its MIG manager wedged) for a day. The new
    leader now also counts from when it first saw the record, on its monotonic clock."""
    w = World()
    old = w.actuator()
    day = 86_400.0
    for t in (T0 + day, T0 + day + 60, T0 + day + 65):
        w.run(old, t)
    assert w.change().phase is ChangePhase.APPLYING
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    ticks = [500.0]
    successor = w.actuator(monotonic=lambda: ticks[0])
    w.run(successor, T0 + 70)
    ticks[0] += SETTINGS.timeout - 1
    w.run(successor, T0 + 70 + SETTINGS.timeout - 1)
    assert w.change() is not None
    ticks[0] += 1
    w.run(successor, T0 + 70 + SETTINGS.timeout)
    assert w.change().phase is ChangePhase.ROLLING_BACK and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"
    assert w.api.events[-1][2].startswith("Timeout")


def test_rollback_decided_on_a_lagging_view_is_not_written_over_a_fresh_success() -> None:
    """Defect: the end of a change was decided on the pass's snapshot and written unconditionally. At
    the deadline the watch still showed ``pending`` while the MIG manager had just written ``success``
    with the target layout (the extenders, their watch current, had lifted the hold and could place
    pods there): the rollback set the label back, and the MIG manager went on to reconfigure the node
    under those pods. The end is now written only if the node still shows what it was decided on."""
    w = World()
    rep = w.actuator()
    start_applying(w, rep)
    w.mig_manager_ahead_of_the_watch(("pending", {"3g.40gb": 0}), ("success", {"7g.80gb": 2}))
    counts = w.run(rep, T0 + 65 + SETTINGS.timeout)
    assert counts["repartition_conflict"] == 1
    assert w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-7g.80gb" and w.change() is not None
    w.api.lag = False
    w.api.sync()
    w.run(rep, T0 + 65 + SETTINGS.timeout + 1)
    assert w.change() is None and w.api.reasons() == ["MigRepartitioning", "MigRepartitioned"]
    assert w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-7g.80gb"


def test_pod_bound_while_settling_stops_the_label_though_the_watch_has_not_shown_it() -> None:
    """Defect: the settle's busy check read only the reconciler's pod watch. A pod bound to the node
    just before the reservation reached the extenders (or created with nodeName set), not yet delivered
    by a lagging watch, did not stop the Apply: the MIG manager then paused the device plugin under it
    (the kubelet rejects it in admission) or destroyed the GPU instance it was given before its container
    started. The actuator now lists the node's pods from the API before it writes the label."""
    w = World()
    rep = w.actuator()
    w.run(rep, T0)
    w.run(rep, T0 + 60)
    w.api.bound.append(make_pod("late", mig={"3g.40gb": 1}, node="gpu-1", phase="Pending"))
    w.run(rep, T0 + 65)  # released on what the API shows: the watch may never show this pod
    assert w.change() is None and w.api.events[-1][2].startswith("GpuBusy")
    assert w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"


def test_label_the_api_always_refuses_releases_the_node_after_the_timeout() -> None:
    """The reserving phase's deadline, end to end: a policy refusing every write of the MIG config label
    (a 403 each pass) releases the node after settle + timeout and records it for the cooldown."""
    w = World()
    rep = w.actuator()
    patch = w.api.patch

    def no_label(node: str, labels: Any = None, **kwargs: Any) -> NodeWrite:
        if labels and LABEL_MIG_CONFIG in labels:
            raise Broken("403 Forbidden: nvidia.com/mig.config is managed by policy")
        return patch(node, labels=labels, **kwargs)

    w.api.patch = no_label  # type: ignore[method-assign]
    w.run(rep, T0)
    w.run(rep, T0 + 60)
    assert w.run(rep, T0 + 65)["repartition_errors"] == 1
    w.run(rep, T0 + 60 + SETTINGS.settle + SETTINGS.timeout - 1)
    assert w.change() is not None
    w.run(rep, T0 + 60 + SETTINGS.settle + SETTINGS.timeout)
    assert w.change() is None and w.api.events[-1][2].startswith("Timeout: the label could not be written")
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST])["outcome"] == "Timeout"
    w.run(rep, T0 + 60 + SETTINGS.settle + SETTINGS.timeout + 60)
    assert w.change() is None  # the cooldown holds it off


def test_a_second_change_like_the_first_is_reported_too() -> None:
    """Soak seed 44 (docs/reliability.md, phase 2): 12 changes finished, 8 ``MigRepartitioned`` Events. An
    Event is written once per (node, reason, text) and its name comes from its content, so the end of
    a change alike an earlier one on the same node (same config, GPUs, seconds) was never reported."""
    w = World()
    rep = w.actuator()
    for at in (T0, T0 + 60, T0 + 65):
        w.run(rep, at)
    w.api.mig_manager("gpu-1", "success", {"7g.80gb": 2})
    w.run(rep, T0 + 70)  # finished in 5 s
    back = copy.deepcopy(w.api.objs["gpu-1"])
    back["metadata"]["labels"][LABEL_MIG_CONFIG] = "all-3g.40gb"  # an admin puts it back
    w.api.put(back)
    w.api.mig_manager("gpu-1", "success", {"3g.40gb": 4})
    for at in (T0 + 700, T0 + 705):  # after the cooldown: the same change again
        w.run(rep, at)
    assert w.change() is not None and w.change().phase is ChangePhase.APPLYING
    w.api.mig_manager("gpu-1", "success", {"7g.80gb": 2})
    w.run(rep, T0 + 710)  # finished in 5 s again
    assert w.change() is None
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitioned"] * 2


def test_a_record_rewritten_before_the_label_is_counted_as_a_conflict_in_the_metric_too() -> None:
    """Defect: the fresh read before the label found our record rewritten (another leader released
    it), and the pass counted it in its own tally only: ``mig_extender_repartitions_total{outcome=
    "conflict"}`` stayed 0, so the operator's dashboard never showed these races."""
    w = World()
    rep = w.actuator()
    w.run(rep, T0)
    w.run(rep, T0 + 60)
    w.api.lag = True  # the pass still sees our reservation...
    obj = copy.deepcopy(w.api.objs["gpu-1"])
    del obj["metadata"]["annotations"][ANN_CHANGE]  # ...which the API no longer holds
    w.api.put(obj)
    counts = w.run(rep, T0 + 65)
    assert counts["repartition_conflict"] == 1
    assert rep.metrics.repartitions.labels("conflict")._value.get() == 1
    assert w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"  # no label written on a released node


# --------------------------------------------------------------------------------------------------
# Rolling back: the node stays held until the MIG manager is done with the value set back

RB = T0 + 65 + SETTINGS.timeout  # when roll_back_on_timeout writes the rollback


def roll_back_on_timeout(w: World, rep: Repartitioner) -> None:
    """gpu-1's change applied, the MIG manager slow in ``pending`` past the timeout: rolled back at RB."""
    start_applying(w, rep)
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    w.run(rep, RB)
    assert w.change().phase is ChangePhase.ROLLING_BACK


def test_slow_mig_manager_keeps_the_node_held_after_a_timeout_until_the_previous_layout_is_back() -> None:
    """Defect (docs/repartition.md, Limits): a rollback on Timeout released the node while a slow (not
    wedged) MIG manager still worked: it finished our value, then applied the previous one, and a pod
    placed on our layout in between made that second apply fail (label previous, layout ours, failed).
    The node now stays held until the previous layout is back, and the release says nothing more."""
    w = World()
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    change = w.change()
    assert (change.rolled_back_at, change.rolled_back_for) == (RB, "Timeout")
    labels = w.api.labels("gpu-1")
    assert labels[LABEL_MIG_CONFIG] == "all-3g.40gb" and LABEL_MIG_CONFIG_STATE not in labels
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST]) == {"at": RB, "outcome": "Timeout"}  # cooldown from now
    _, reason, message, warning = w.api.events[-1]
    assert (reason, warning) == ("MigRepartitionFailed", True)
    assert message.startswith("Timeout: ") and "label set back to all-3g.40gb" in message
    assert "the node stays held until the MIG manager has restored the previous layout" in message
    w.api.mig_manager("gpu-1", "success", {"7g.80gb": 2})  # ours finished first...
    w.run(rep, RB + 10)
    snap = w.inventory.snapshot(now=RB + 10)
    assert w.change().phase is ChangePhase.ROLLING_BACK
    assert snap.held_nodes == {"gpu-1"} and snap.free("gpu-1", R7) == 0  # ...a pod there would break the next
    w.api.mig_manager("gpu-1", "pending", {"7g.80gb": 0})
    w.run(rep, RB + 20)
    assert w.change().phase is ChangePhase.ROLLING_BACK
    w.api.mig_manager("gpu-1", "success", {"3g.40gb": 4})
    w.run(rep, RB + 30)
    assert w.change() is None and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST]) == {"at": RB + 30, "outcome": "Timeout"}
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]  # no second Event
    assert w.inventory.snapshot(now=RB + 30).held_nodes == frozenset()


def test_mig_manager_failing_the_value_set_back_releases_the_node_and_says_so() -> None:
    w = World()
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    w.api.mig_manager("gpu-1", "failed")
    counts = w.run(rep, RB + 10)
    assert counts["repartition_released_RollbackFailed"] == 1
    assert w.change() is None and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"
    _, reason, message, warning = w.api.events[-1]
    assert (reason, warning) == ("MigRepartitionFailed", True) and message.startswith("RollbackFailed: ")
    assert "reservation released" in message
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST])["outcome"] == "Timeout"
    w.run(rep, RB + 11)
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed", "MigRepartitionFailed"]


def test_mig_manager_wedged_while_rolling_back_releases_the_node_after_a_second_timeout() -> None:
    """A wedged MIG manager never acts on the value set back: the node must not stay held for good."""
    w = World()
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    w.run(rep, RB + SETTINGS.timeout - 1)
    assert w.change().phase is ChangePhase.ROLLING_BACK
    w.run(rep, RB + SETTINGS.timeout)
    assert w.change() is None and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == "all-3g.40gb"
    assert w.api.events[-1][2].startswith("RollbackTimeout: nvidia.com/mig.config.state pending")
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST])["outcome"] == "Timeout"


def test_new_leader_with_a_clock_a_day_behind_resumes_a_rollback_and_bounds_it() -> None:
    """The rollback was written by a leader whose clock ran a day ahead; its successor must neither roll
    back again (no second label write, no second Event) nor hold the node a day: it releases a wedged
    rollback a timeout after it first saw it (monotonic clock), and a restored one at once."""
    w = World()
    old = w.actuator()
    day = 86_400.0
    for t in (T0 + day, T0 + day + 60, T0 + day + 65):
        w.run(old, t)
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    w.run(old, T0 + day + 65 + SETTINGS.timeout)
    assert w.change().phase is ChangePhase.ROLLING_BACK
    label_writes = sum(1 for _, p in w.api.patches if p["labels"])
    ticks = [500.0]
    successor = w.actuator(monotonic=lambda: ticks[0])
    w.run(successor, T0 + 70)
    ticks[0] += SETTINGS.timeout - 1
    w.run(successor, T0 + 70 + SETTINGS.timeout - 1)
    assert w.change().phase is ChangePhase.ROLLING_BACK
    assert sum(1 for _, p in w.api.patches if p["labels"]) == label_writes
    ticks[0] += 1
    w.run(successor, T0 + 70 + SETTINGS.timeout)
    assert w.change() is None and w.api.events[-1][2].startswith("RollbackTimeout")
    # the successor said the rollback again in the same words (the API refuses the repeat: one Event)
    distinct = list(dict.fromkeys((reason, text) for _, reason, text, _ in w.api.events))
    assert [reason for reason, _ in distinct] == ["MigRepartitioning", "MigRepartitionFailed", "MigRepartitionFailed"]


def test_new_leader_releases_a_rollback_the_mig_manager_finished() -> None:
    w = World()
    roll_back_on_timeout(w, w.actuator())
    w.api.mig_manager("gpu-1", "success", {"3g.40gb": 4})
    w.run(w.actuator(), RB + 3)
    assert w.change() is None and w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]


def test_lagging_watch_still_showing_applying_writes_no_second_rollback() -> None:
    """The rollback is written; the pass's snapshot still shows phase applying past its deadline and
    decides to roll back again: the fresh read shows the new record, so nothing is written or said."""
    w = World()
    rep = w.actuator()
    start_applying(w, rep)
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    w.api.lag = True
    w.run(rep, RB)
    assert w.change().phase is ChangePhase.ROLLING_BACK
    patches = len(w.api.patches)
    counts = w.run(rep, RB + 1)
    assert counts["repartition_conflict"] == 1 and len(w.api.patches) == patches
    assert w.change().phase is ChangePhase.ROLLING_BACK
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]
    w.api.mig_manager("gpu-1", "success", {"3g.40gb": 4})
    w.api.lag = False
    w.api.sync()
    w.run(rep, RB + 2)
    assert w.change() is None and w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]


def test_release_decided_on_a_lagging_view_is_not_written_over_a_fresh_state() -> None:
    """The snapshot shows the rollback wedged past its second timeout; the API already shows the MIG
    manager's success for the value set back: the release waits for the view the decision matches."""
    w = World()
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    w.mig_manager_ahead_of_the_watch(("pending", {"3g.40gb": 0}), ("success", {"3g.40gb": 4}))
    counts = w.run(rep, RB + SETTINGS.timeout)
    assert counts["repartition_conflict"] == 1 and w.change() is not None
    w.api.lag = False
    w.api.sync()
    w.run(rep, RB + SETTINGS.timeout + 1)
    assert w.change() is None and w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]


@pytest.mark.parametrize("refusal", [pytest.param(NodeWrite.CONFLICT, id="409"),
                                     pytest.param(NodeWrite.THROTTLED, id="429")])
@pytest.mark.parametrize("state, mig, said", [
    pytest.param("success", {"3g.40gb": 4}, [], id="restored"),
    pytest.param("failed", None, ["MigRepartitionFailed"], id="rollback-failed"),
])
def test_release_refused_by_the_api_is_retried_next_pass_without_a_second_event(
        refusal: NodeWrite, state: str, mig: dict[str, int] | None, said: list[str]) -> None:
    w = World()
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    w.api.mig_manager("gpu-1", state, mig)
    w.api.refuse = refusal
    counts = w.run(rep, RB + 10)
    assert counts["repartition_" + refusal.value] == 1 and w.change().phase is ChangePhase.ROLLING_BACK
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]
    w.api.refuse = None
    w.run(rep, RB + 11)
    w.run(rep, RB + 12)
    assert w.change() is None
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed", *said]


@pytest.mark.parametrize("edit, label, why", [
    pytest.param(lambda labels: labels.pop(LABEL_REPARTITION), "all-3g.40gb", "OptedOut", id="opted-out"),
    pytest.param(lambda labels: labels.update({LABEL_MIG_CONFIG: "all-1g.10gb"}), "all-1g.10gb", "LabelChanged",
                 id="label-changed"),
])
def test_opt_out_or_someone_elses_label_while_rolling_back_releases_without_a_label(
        edit: Callable[[dict[str, str]], object], label: str, why: str) -> None:
    w = World()
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    obj = copy.deepcopy(w.api.objs["gpu-1"])
    edit(obj["metadata"]["labels"])
    w.api.put(obj)
    w.run(rep, RB + 10)
    assert w.change() is None and w.api.labels("gpu-1")[LABEL_MIG_CONFIG] == label
    assert w.api.patches[-1][1]["labels"] == {}  # released, nothing written over theirs
    assert w.api.events[-1][2].startswith(why)


def test_timeout_without_a_previous_label_holds_until_the_mig_manager_finishes_ours() -> None:
    """Our label is removed, which the MIG manager ignores; it may still be applying ours, so the node
    stays held until it reports the end of that (any success or failed), not a layout of the past."""
    w = World(label=None)
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    assert LABEL_MIG_CONFIG not in w.api.labels("gpu-1")
    w.run(rep, RB + 5)
    assert w.change().phase is ChangePhase.ROLLING_BACK
    w.api.mig_manager("gpu-1", "success", {"7g.80gb": 2})
    w.run(rep, RB + 10)
    assert w.change() is None and w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST])["outcome"] == "Timeout"


def test_rollback_read_by_the_previous_version_still_keeps_the_cooldown() -> None:
    """Version skew (a rolling update, a downgrade): the previous version cannot read phase rolling_back,
    so its leader aborts the record as Unreadable, which removes the annotation and writes nothing else.
    ANN_LAST was written only at the Release, so nothing recorded the failed change: the very next passes
    reserved the node again and set the label that had just timed out, over a MIG manager still
    restoring the previous value. The rollback patch records the outcome already (the Release rewrites it)."""
    w = World()
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    assert json.loads(w.api.annotations("gpu-1")[ANN_LAST]) == {"at": RB, "outcome": "Timeout"}
    obj = copy.deepcopy(w.api.objs["gpu-1"])
    del obj["metadata"]["annotations"][ANN_CHANGE]  # what the previous version's Abort(Unreadable) writes
    obj["status"]["allocatable"] = obj["status"]["capacity"] = {**obj["status"]["allocatable"],
                                                                "nvidia.com/mig-3g.40gb": "4"}  # plugin back
    w.api.put(obj)
    patches = len(w.api.patches)
    for t in (RB + 10, RB + 80, RB + 90):
        w.run(rep, t)
    assert w.change() is None and len(w.api.patches) == patches


class _EventsDown(Exception):
    pass


def test_rollback_whose_event_was_lost_is_reported_by_the_next_pass_once() -> None:
    """Review of rolling_back: the rollback patch was written, then its MigRepartitionFailed Event was not
    (the leader died, or the Event write failed). The node stayed held with nothing said: a new leader
    waited silently and a Restored release only logs. The pass that waits on a rollback says it, from
    the record alone, so every leader writes the same text (the API then refuses a repeat)."""
    w = World()
    rep = w.actuator()
    start_applying(w, rep)
    w.api.mig_manager("gpu-1", "pending", {"3g.40gb": 0})
    real_write = w.api.write

    def down(*args: Any, **kwargs: Any) -> str:
        raise _EventsDown("events API down")

    w.api.write = down  # type: ignore[method-assign]
    w.run(rep, RB)
    assert w.change().phase is ChangePhase.ROLLING_BACK and w.api.reasons() == ["MigRepartitioning"]
    w.api.write = real_write  # type: ignore[method-assign]
    for at in (RB + 1, RB + 2, RB + 3):
        w.run(rep, at)
    assert w.api.reasons() == ["MigRepartitioning", "MigRepartitionFailed"]
    assert "stays held until the MIG manager has restored the previous layout" in w.api.events[-1][2]


def test_a_new_leader_says_the_rollback_in_the_same_words_as_the_old_one() -> None:
    """The Event is named from its text: the same text from a new leader is the same Event (refused as
    a repeat by the API), not a second, different report of one rollback."""
    w = World()
    rep = w.actuator()
    roll_back_on_timeout(w, rep)
    first = w.api.events[-1]
    assert first[1] == "MigRepartitionFailed"
    successor = w.actuator()
    w.run(successor, RB + 1)
    assert w.api.events[-1] == first  # written again word for word (the API would answer 409)
    w.run(successor, RB + 2)
    assert sum(1 for e in w.api.events if e[1] == "MigRepartitionFailed") == 2  # once per leader
