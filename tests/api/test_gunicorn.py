"""The real ``mig-extender serve`` process: gunicorn, one threaded worker, the README's curl session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.api.served import free_port, serving_example_snapshot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served():
    with serving_example_snapshot(ready_within=20) as s:
        yield s.url, s.proc, s.ops


def test_readme_curl_session(served) -> None:
    url, _, _ = served
    body = json.loads((ROOT / "examples/filter-1g.json").read_text())
    out = requests.post(url + "/filter", json=body, timeout=5).json()
    assert out["NodeNames"] == [] and out["Error"] == ""
    # sold out, and no lower-priority pod could free a slice: unresolvable (issue 13 item 10)
    assert "substitute nvidia.com/mig-2g.10gb recorded on gpu-a" in out["FailedAndUnresolvableNodes"]["gpu-a"]
    rules = requests.get(url + "/debug/rules", timeout=5).json()
    assert [r["phase"] for r in rules] == ["Recorded"]
    assert rules[0]["substitute"]["resource"] == "nvidia.com/mig-2g.10gb"


def test_served_by_gunicorn_with_one_worker(served) -> None:
    _, proc, _ = served
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1  # master + exactly one worker
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert b"serve" in cmdline


def test_garbage_does_not_kill_the_worker(served) -> None:
    url, _, _ = served
    for payload in (b"\x00\xff", b"{" * 5000, b'{"Pod": {"metadata": [], "spec": 1}}'):
        resp = requests.post(url + "/filter", data=payload, headers={"Content-Type": "application/json"}, timeout=5)
        assert 400 <= resp.status_code < 500 and resp.json()["Error"]
    assert requests.get(url + "/healthz", timeout=5).status_code == 200


def test_metrics_address_serves_only_probes_and_metrics(served) -> None:
    _, _, ops = served
    assert requests.get(ops + "/healthz", timeout=5).status_code == 200
    assert requests.get(ops + "/readyz", timeout=5).status_code == 200
    assert b"mig_extender_requests_total" in requests.get(ops + "/metrics", timeout=5).content
    for method, path in (("post", "/filter"), ("post", "/bind"), ("get", "/debug/rules"), ("get", "/debug/inventory")):
        resp = getattr(requests, method)(ops + path, json={}, timeout=5)
        assert resp.status_code == 404 and "not served on the metrics address" in resp.json()["Error"]


def test_serve_over_tls(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "mig_extender.cli", "certs", "--out", str(tmp_path)], check=True,
                   capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mig_extender.cli", "serve", "--snapshot", str(ROOT / "examples/cluster-snapshot.json"),
         "--bind", f"127.0.0.1:{port}", "--tls-cert", str(tmp_path / "tls.crt"),
         "--tls-key", str(tmp_path / "tls.key")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url, ca = f"https://127.0.0.1:{port}", str(tmp_path / "ca.crt")
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if requests.get(url + "/readyz", verify=ca, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        body = json.loads((ROOT / "examples/filter-1g.json").read_text())
        assert requests.post(url + "/filter", json=body, verify=ca, timeout=5).json()["Error"] == ""
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)  # plain HTTP is not served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
