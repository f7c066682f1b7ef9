"""Issue 16: ``mig-extender explain NAMESPACE/NAME [--url URL]`` against the real gunicorn app serving
examples/cluster-snapshot.json, run as a subprocess: a table of node | verdict | reason plus the pod's rules;
every user mistake one line on stderr and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api.served import free_port, serving_example_snapshot

ROOT = Path(__file__).resolve().parents[2]
FILTER_BODY = json.loads((ROOT / "examples/filter-1g.json").read_text())
SOLD_OUT_POD = FILTER_BODY["Pod"]["metadata"]["name"]  # infer-b-...: asks for 1g.5gb, sold out on both GPUs


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, str]]:
    with serving_example_snapshot(env=_env()) as s:
        yield s.url, s.ops


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mig_extender.cli", "explain", *args], capture_output=True,
                          text=True, env=_env(), timeout=60, cwd=ROOT)


def test_explain_prints_each_node_verdict_and_the_substitute_it_would_get(served) -> None:
    url, _ = served
    # the pod is known to /filter only (no watch with --snapshot): explain reads the /filter cache. Post it
    # with a node list that fits nowhere so nothing is recorded yet; the dry run then shows what would be.
    requests.post(url + "/filter", json={**FILTER_BODY, "NodeNames": ["cpu-c"]}, timeout=5)
    done = explain(f"default/{SOLD_OUT_POD}", "--url", url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"pod default/{SOLD_OUT_POD} (uid {FILTER_BODY['Pod']['metadata']['uid']}): "
                        "1 x nvidia.com/mig-1g.5gb; Pending, not bound [seen by: filter-cache]")
    assert lines[1] == "decision: no node fits; would record substitute 1 x nvidia.com/mig-2g.10gb on gpu-a"
    table = {line.split()[0]: line.split(None, 2)[1:] for line in lines[2:6]}
    assert table["NODE"] == ["VERDICT", "REASON"]
    assert table["gpu-a"] == ["unresolvable", "nvidia.com/mig-1g.5gb: 0 free of 2, 1 requested"]
    assert table["cpu-c"] == ["unresolvable", "nvidia.com/mig-1g.5gb: none on this node"]
    assert lines[-1] == "rules: none"
    assert requests.get(url + "/debug/rules", timeout=5).json() == []  # explain recorded nothing


def test_explain_lists_the_pods_rules_after_filter_recorded_one(served) -> None:
    url, _ = served
    requests.post(url + "/filter", json=FILTER_BODY, timeout=5)  # records the 2g.10gb substitution
    done = explain(f"default/{SOLD_OUT_POD}", "--url", url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "note: substitute nvidia.com/mig-2g.10gb=1 recorded on gpu-a; waiting for the pod to be recreated" in lines
    header = lines.index(next(line for line in lines if line.startswith("RULE ")))
    rule = lines[header + 1].split()
    assert rule[1:5] == ["Recorded", "nvidia.com/mig-1g.5gb", "nvidia.com/mig-2g.10gb", "gpu-a"]


MISTAKES = [
    pytest.param(["no-slash"], "mig-extender explain: give the pod as NAMESPACE/NAME, got 'no-slash'",
                 id="bad-name"),
    pytest.param(["default/nope", "--url", "{url}"],
                 "mig-extender explain: pod default/nope not known to mig-extender (no such pod, not seen yet, "
                 "or it asks for no MIG slice)", id="unknown-pod-404"),
    pytest.param(["default/nope", "--url", "{ops}"],
                 "mig-extender explain: --url {ops}: no /debug/pods there (not mig-extender serve, or started "
                 "with --no-debug-endpoints)", id="no-debug-endpoint"),
    pytest.param(["default/nope", "--url", "http://127.0.0.1:{closed}"],
                 "mig-extender explain: --url http://127.0.0.1:{closed}: cannot reach the extender "
                 "(Connection refused)", id="unreachable"),
    pytest.param(["default/nope", "--url", "127.0.0.1:8888"],
                 "mig-extender explain: --url must start with http:// or https://, got '127.0.0.1:8888'",
                 id="url-without-scheme"),
]


@pytest.mark.parametrize("args, message", MISTAKES)
def test_user_mistake_is_one_line_and_exit_2(served, args: list[str], message: str) -> None:
    url, ops = served
    fill = {"url": url, "ops": ops, "closed": str(free_port())}
    done = explain(*(a.format(**fill) for a in args))
    assert (done.returncode, done.stderr, done.stdout) == (2, message.format(**fill) + "\n", "")
