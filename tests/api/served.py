"""One place that starts ``mig-extender serve`` on the example snapshot for the HTTP tests that need the
real gunicorn process (the README session, the worker model, ``mig-extender explain``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Served:
    url: str                    # scheduler verbs, /debug/*, ops
    ops: str                    # the --metrics-bind address
    proc: subprocess.Popen


@contextmanager
def serving_example_snapshot(env: dict[str, str] | None = None, ready_within: float = 30.0) -> Iterator[Served]:
    """``serve --snapshot examples/cluster-snapshot.json`` on two free loopback ports until the block ends."""
    port, ops = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mig_extender.cli", "serve", "--snapshot", str(ROOT / "examples/cluster-snapshot.json"),
         "--bind", f"127.0.0.1:{port}", "--metrics-bind", f"127.0.0.1:{ops}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + ready_within
    while time.time() < deadline:
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mig-extender serve did not become ready: " + proc.stdout.read().decode()[-2000:])
    try:
        yield Served(url, f"http://127.0.0.1:{ops}", proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
