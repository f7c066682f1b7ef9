"""/prioritize for the pod /filter just saw reuses the pod read there (issue 19): kube-scheduler sends the
same Pod object, at the same resourceVersion, to both verbs of one scheduling cycle."""

from __future__ import annotations

import pytest

import mig_extender.components.extender as extender_module
from tests.api.conftest import pending


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = extender_module.pod_info

    def counting(pod):
        seen.append(pod["metadata"].get("resourceVersion", ""))
        return real(pod)

    monkeypatch.setattr(extender_module, "pod_info", counting)
    return seen


def versioned(pod: dict, version: str) -> dict:
    return {**pod, "metadata": {**pod["metadata"], "resourceVersion": version}}


def test_prioritize_reads_the_pod_filter_read(client, parses) -> None:
    pod = versioned(pending({"1g.10gb": 1}), "41")
    client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a", "gpu-b"]})
    out = client.post("/prioritize", json={"Pod": pod, "NodeNames": ["gpu-a", "gpu-b"]}).get_json()
    assert parses == ["41"]
    assert [h["Host"] for h in out] == ["gpu-a", "gpu-b"] and all(0 <= h["Score"] <= 10 for h in out)


@pytest.mark.parametrize("second", [
    pytest.param(lambda pod: versioned(pod, "42"), id="newer-resource-version"),
    pytest.param(lambda pod: {**pod, "metadata": {**pod["metadata"], "uid": "another-uid"}}, id="another-uid"),
    pytest.param(lambda pod: {**pod, "metadata": {k: v for k, v in pod["metadata"].items() if k != "resourceVersion"}},
                 id="no-resource-version"),
])
def test_a_pod_that_may_differ_is_read_again(client, parses, second) -> None:
    pod = versioned(pending({"1g.10gb": 1}), "41")
    client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a"]})
    client.post("/prioritize", json={"Pod": second(pod), "NodeNames": ["gpu-a"]})
    assert len(parses) == 2


def test_the_reused_pod_scores_as_a_fresh_read(client, service) -> None:
    pod = versioned(pending({"2g.20gb": 1}), "7")
    fresh = client.post("/prioritize", json={"Pod": pod, "NodeNames": ["gpu-a", "gpu-b"]}).get_json()
    client.post("/filter", json={"Pod": pod, "NodeNames": ["gpu-a", "gpu-b"]})
    assert client.post("/prioritize", json={"Pod": pod, "NodeNames": ["gpu-a", "gpu-b"]}).get_json() == fresh
