"""The harness's own logic, without a cluster: watch resume and relist, and kubelet admission arithmetic.
A fake kubelet that miscounted would make every over-commit assertion in e2e meaningless."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3

from mig_extender.core.catalog import model
from mig_extender.core.repartition import STATE_FAILED, STATE_PENDING, STATE_SUCCESS, NamedConfig

from .testenv.dradriver import mig_devices
from .testenv.fakekubelet import FakeKubelet
from .testenv.migmanager import decide, gpus_in_use
from .testenv.podresources import claim_devices, claim_names, claim_problem, effective_requests, first_shortfall
from .testenv.reflector import Reflector


class FakeResponse:
    def __init__(self, body: Any = None, events: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(body).encode() if body is not None else b""
        self._lines = [json.dumps(e).encode() + b"\n" for e in events or []]

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        yield from self._lines

    def release_conn(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


def test_reflector_resumes_from_the_last_resource_version_and_relists_on_410() -> None:
    stop = threading.Event()
    calls: list[dict[str, Any]] = []
    lists: list[list[str]] = []
    events: list[tuple[str, str]] = []
    script = [
        FakeResponse({"metadata": {"resourceVersion": "10"}, "items": [_obj("a", "9")]}),
        FakeResponse(
            events=[{"type": "ADDED", "object": _obj("b", "11")}, {"type": "BOOKMARK", "object": _obj("", "15")}]
        ),
        FakeResponse(events=[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]),
        FakeResponse({"metadata": {"resourceVersion": "20"}, "items": [_obj("b", "11"), _obj("c", "19")]}),
    ]

    def list_call(**kwargs: Any) -> FakeResponse:
        calls.append(kwargs)
        if len(calls) > len(script):
            stop.set()
            return FakeResponse(events=[])
        return script[len(calls) - 1]

    reflector = Reflector(
        "test",
        list_call,
        lambda items: lists.append([i["metadata"]["name"] for i in items]),
        lambda kind, obj: events.append((kind, obj["metadata"]["name"])),
        stop,
    )
    reflector.start()
    reflector.thread.join(timeout=10)

    assert lists == [["a"], ["b", "c"]]
    assert events == [("ADDED", "b")]
    watch_versions = [c.get("resource_version") for c in calls if c.get("watch")]
    # resumes from the list's RV, then from the bookmark's; after the 410 relists and resumes from "20"
    assert watch_versions[:3] == ["10", "15", "20"]
    assert reflector.relists == 2


@pytest.mark.parametrize(
    ("case", "request_", "used", "allocatable", "reason"),
    [
        (
            "fits-exactly",
            {"nvidia.com/mig-1g.5gb": 1},
            {"nvidia.com/mig-1g.5gb": 1},
            {"nvidia.com/mig-1g.5gb": 2},
            None,
        ),
        (
            "one-too-many",
            {"nvidia.com/mig-1g.5gb": 1},
            {"nvidia.com/mig-1g.5gb": 2},
            {"nvidia.com/mig-1g.5gb": 2},
            "OutOfnvidia.com/mig-1g.5gb",
        ),
        (
            "resource-absent",
            {"nvidia.com/mig-2g.10gb": 1},
            {},
            {"nvidia.com/mig-1g.5gb": 7},
            "OutOfnvidia.com/mig-2g.10gb",
        ),
        ("zero-request-ignored", {"nvidia.com/mig-2g.10gb": 0}, {}, {}, None),
        ("pods-count", {"pods": 1}, {"pods": 110}, {"pods": 110}, "OutOfpods"),
    ],
)
def test_first_shortfall(
    case: str, request_: dict[str, int], used: dict[str, int], allocatable: dict[str, int], reason: str | None
) -> None:
    def dec(values: dict[str, int]) -> dict[str, Decimal]:
        return {k: Decimal(v) for k, v in values.items()}

    shortfall = first_shortfall(dec(request_), dec(used), dec(allocatable))
    assert (shortfall[0] if shortfall else None) == reason, case


def test_effective_request_is_max_of_containers_and_init_containers() -> None:
    pod = {
        "spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"nvidia.com/mig-1g.5gb": "3"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"nvidia.com/mig-1g.5gb": "1"}}},
                {"name": "b", "resources": {"requests": {"nvidia.com/mig-1g.5gb": "1"}}},
            ],
        }
    }
    assert effective_requests(pod)["nvidia.com/mig-1g.5gb"] == 3


def test_effective_requests_follow_the_kubelet_rules() -> None:
    """Pure: sidecars add to the total and to later init containers; overhead is added."""
    pod = {
        "spec": {
            "initContainers": [
                {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "1"}}},
                {"name": "setup", "resources": {"requests": {"cpu": "4"}}},
            ],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "1", "nvidia.com/mig-1g.5gb": "1"}}},
                {"name": "b", "resources": {"requests": {"cpu": "500m"}}},
            ],
            "overhead": {"cpu": "100m"},
        }
    }
    requests = effective_requests(pod)
    # max(1 + 0.5 + 1 sidecar, 4 + 1 sidecar) + 0.1 overhead
    assert requests["cpu"] == Decimal("5.1")
    assert requests["nvidia.com/mig-1g.5gb"] == 1
    assert requests["pods"] == 1


# ---- the fake MIG manager's verdicts (tests/e2e/testenv/migmanager.py) ------------------------------

L33 = ("3g.40gb", "3g.40gb")
L1 = ("1g.10gb",) * 7
MIG_CONFIGS = {c.name: c for c in (NamedConfig("all-3g", all=L33), NamedConfig("all-1g", all=L1),
                                   NamedConfig("gpu1-1g", devices={1: L1}),
                                   NamedConfig("broken", all=("1g.10gb",) * 8))}
R3 = "nvidia.com/mig-3g.40gb"


@pytest.mark.parametrize(("config", "used", "state", "target"), [
    pytest.param("all-1g", {}, STATE_PENDING, (L1, L1), id="idle node: apply"),
    pytest.param("all-3g", {}, STATE_SUCCESS, (L33, L33), id="already applied: success at once"),
    pytest.param("nope", {}, STATE_FAILED, None, id="unknown name: failed"),
    pytest.param("broken", {}, STATE_FAILED, None, id="invalid layout: failed"),
    pytest.param("all-1g", {R3: 1}, STATE_FAILED, (L1, L1), id="a pod on GPU 0: refuses, evicts nothing"),
    pytest.param("gpu1-1g", {R3: 1}, STATE_PENDING, (L33, L1), id="per-GPU config leaves the busy GPU alone"),
    pytest.param("gpu1-1g", {R3: 3}, STATE_FAILED, (L33, L1), id="pods on both GPUs: refuses"),
])
def test_fake_mig_manager_decides_like_the_real_one(config: str, used: dict[str, int], state: str,
                                                    target: tuple | None) -> None:
    outcome = decide(model("A100-80GB"), (L33, L33), used, config, MIG_CONFIGS)
    assert (outcome.state, outcome.target) == (state, target)
    if state == STATE_FAILED:
        assert outcome.reason


def test_fake_device_plugin_hands_out_instances_lowest_gpu_first() -> None:
    gpu = model("A100-80GB")
    assert gpus_in_use(gpu, (L33, L33), {R3: 2}) == {0}
    assert gpus_in_use(gpu, (L33, L33), {R3: 3}) == {0, 1}
    assert gpus_in_use(gpu, (L1, L33), {R3: 1}) == {1}


def _dra_pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"uid": "u1"},
        "spec": {
            "containers": [{"name": "main", "resources": {"requests": {"nvidia.com/mig-1g.5gb": "1", "cpu": "1"}}}],
            "resourceClaims": [{"name": "mig", "resourceClaimTemplateName": "t"}],
        },
        "status": status,
    }


def test_extended_resources_dra_serves_are_not_charged() -> None:
    """KEP-5004: the kubelet drops a request the scheduler mapped to a claim (predicate.go)."""
    mapped = {"requestMappings": [{"containerName": "main", "resourceName": "nvidia.com/mig-1g.5gb",
                                   "requestName": "r"}], "resourceClaimName": "x"}
    assert "nvidia.com/mig-1g.5gb" in effective_requests(_dra_pod())
    assert "nvidia.com/mig-1g.5gb" not in effective_requests(_dra_pod(extendedResourceClaimStatus=mapped))
    assert effective_requests(_dra_pod(extendedResourceClaimStatus=mapped))["cpu"] == 1


@pytest.mark.parametrize(
    ("status", "names", "missing"),
    [
        pytest.param({}, [], ["mig"], id="not-generated-yet"),
        pytest.param({"resourceClaimStatuses": [{"name": "mig", "resourceClaimName": "p-mig-x"}]},
                     ["p-mig-x"], [], id="generated"),
        pytest.param({"resourceClaimStatuses": [{"name": "mig", "resourceClaimName": "p-mig-x"}],
                      "extendedResourceClaimStatus": {"resourceClaimName": "ext"}},
                     ["p-mig-x", "ext"], [], id="with-extended-resource-claim"),
    ],
)
def test_claim_names(status: dict[str, Any], names: list[str], missing: list[str]) -> None:
    assert claim_names(_dra_pod(**status)) == (names, missing)


@pytest.mark.parametrize(
    ("claim_status", "ok"),
    [
        pytest.param({}, False, id="unallocated"),
        pytest.param({"allocation": {"devices": {"results": []}}, "reservedFor": [{"uid": "other"}]}, False,
                     id="reserved-for-another-pod"),
        pytest.param({"allocation": {"devices": {"results": []}}, "reservedFor": [{"uid": "u1"}]}, True,
                     id="allocated-and-reserved"),
    ],
)
def test_claim_problem_mirrors_the_kubelets_dra_manager(claim_status: dict[str, Any], ok: bool) -> None:
    claim = {"metadata": {"name": "c"}, "status": claim_status}
    assert (claim_problem(_dra_pod(), claim) == "") is ok


def test_claim_devices() -> None:
    claim = {"status": {"allocation": {"devices": {"results": [
        {"request": "mig/a", "driver": "gpu.nvidia.com", "pool": "n1", "device": "gpu-0-mig-19-0-1"}]}}}}
    assert claim_devices(claim) == [("gpu.nvidia.com", "n1", "gpu-0-mig-19-0-1")]


def test_fake_driver_names_devices_like_nvidias() -> None:
    """gpu-<minor>-mig-<GI profile id>-<start>-<size>, placed without overlap."""
    devices = mig_devices("n1", "A100-40GB", [["2g.10gb", "1g.5gb", "1g.5gb"], ["7g.40gb"]])
    assert [d["name"] for d in devices] == ["gpu-0-mig-14-0-2", "gpu-0-mig-19-2-1", "gpu-0-mig-19-3-1",
                                            "gpu-1-mig-0-0-8"]
    assert [d["attributes"]["profile"]["string"] for d in devices] == ["2g.10gb", "1g.5gb", "1g.5gb", "7g.40gb"]
    with pytest.raises(ValueError):
        mig_devices("n1", "A100-40GB", [["7g.40gb", "1g.5gb"]])


def test_fake_kubelet_retries_finalizing_a_pod_when_the_api_refused_the_delete_at_connect() -> None:
    """Soak seed 34 did not settle: a gracefully deleted pod stayed terminating for 860 s. The fake
    kubelet's delete met an API server restart (a refused connection, no ApiException), escaped, and
    the pod, marked as being finalized, was never tried again: nothing sends a terminating pod's next event."""
    calls: list[str] = []

    class Core:
        def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
            calls.append(name)
            if len(calls) == 1:
                raise urllib3.exceptions.MaxRetryError(None, "/api/v1/pods", "connection refused")

    retried = threading.Event()
    fake = SimpleNamespace(core=Core(), _stop=threading.Event())
    fake._delete_pod = lambda *args: FakeKubelet._delete_pod(fake, *args)
    fake._submit = lambda call, *args: (call(*args), retried.set())
    FakeKubelet._delete_pod(fake, "ns", "p", "uid-p")  # type: ignore[arg-type]
    assert retried.wait(5) and calls == ["p", "p"]
