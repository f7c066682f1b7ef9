"""Readiness probes for the control-plane components: cheap, never raising, False for "not yet".

Must not: retry or sleep (procs.wait_ready polls them).
"""

from __future__ import annotations

from pathlib import Path

import requests

NO_PROXY = {"http": "", "https": ""}  # loopback only, whatever the environment says


def etcd_healthy(port: int) -> bool:
    try:
        response = requests.get(f"http://127.0.0.1:{port}/health", timeout=2, proxies=NO_PROXY)
        return response.ok and response.json().get("health") == "true"
    except (requests.RequestException, ValueError):
        return False


def https_ok(url: str, ca_file: Path, token: str | None = None, body: str | None = None) -> bool:
    """GET `url` verified against the cluster CA: 200 (and exactly `body`, when given)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(url, verify=str(ca_file), headers=headers, timeout=2, proxies=NO_PROXY)
        return response.status_code == 200 and (body is None or response.text.strip() == body)
    except requests.RequestException:
        return False
