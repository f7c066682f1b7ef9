#!/usr/bin/env python3
"""Load test: the extender's /filter and /prioritize and the webhook's /mutate under sustained traffic.

Starts the real processes as deployed (gunicorn, one threaded worker; the webhook over HTTPS) on loopback,
drives them from a second process with keep-alive connections, bounded in requests and seconds, and
reports p50/p99 latency, requests/s, errors, and the serving worker's RSS before and after the run.

    python bench/load.py                          # 1,000 and 5,000 nodes, 20 s per phase
    python bench/load.py --nodes 1000 --seconds 5 --json

The cluster is a generated snapshot: N nodes of 8 x A100-80GB (per GPU 2 x 1g.10gb, 1 x 2g.20gb,
1 x 3g.40gb), about half the slices used, and a fixed set of 64 pending pods cycling through the
requests, as a scheduler retries its queue (so recorded substitutions settle instead of growing).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from procstat import children, rss_kb

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PER_GPU = {"nvidia.com/mig-1g.10gb": 2, "nvidia.com/mig-2g.20gb": 1, "nvidia.com/mig-3g.40gb": 1}
PROFILES = list(PER_GPU)
NO_PROXY = {"http": "", "https": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(nodes: int, seed: int = 7) -> dict[str, Any]:
    """A v1 List like `kubectl get nodes,pods -A -o json`: nodes half full of running MIG pods."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    for i in range(nodes):
        name = f"gpu-{i:05d}"
        alloc = {r: str(n * 8) for r, n in PER_GPU.items()}
        items.append({"apiVersion": "v1", "kind": "Node",
                      "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                                                            "nvidia.com/gpu.count": "8"}},
                      "spec": {}, "status": {"allocatable": {"cpu": "64", "pods": "110", **alloc}}})
        for r, n in PER_GPU.items():
            for k in range(rng.randint(0, n * 8)):
                items.append(pod(f"run-{i}-{r[-7:]}-{k}", f"uid-run-{i}-{r}-{k}", r, name, "Running"))
    return {"apiVersion": "v1", "kind": "List", "items": items}


def pod(name: str, uid: str, resource: str, node: str = "", phase: str = "Pending") -> dict[str, Any]:
    body = json.loads((FIXTURES / "filter-request.json").read_text())["Pod"]  # a real scheduler's Pod
    body["metadata"].update(name=name, uid=uid, namespace="bench")
    limits = {resource: "1"}
    body["spec"]["containers"][0]["resources"] = {"limits": limits, "requests": dict(limits)}
    if node:
        body["spec"]["nodeName"] = node
    body["status"] = {"phase": phase}
    body["kind"], body["apiVersion"] = "Pod", "v1"
    return body


def worker_rss_kb(master_pid: int) -> int:
    """RSS of gunicorn's (single) worker, the process that serves and keeps state."""
    workers = children(master_pid)
    if not workers or not (rss := rss_kb(workers[0])):
        raise RuntimeError(f"no gunicorn worker under pid {master_pid}")
    return rss


def start(argv: list[str], ready_url: str, verify: Any = True) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(ready_url, timeout=1, verify=verify, proxies=NO_PROXY).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[3]} exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"{argv[3]} not ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def _drive(url: str, bodies: list[bytes], deadline: float, limit: int, verify: Any, out: Any) -> None:
    """One load-generating thread: keep-alive POSTs round-robin over ``bodies``."""
    session = requests.Session()
    session.trust_env = False
    latencies, errors, i = [], 0, 0
    headers = {"Content-Type": "application/json"}
    while time.perf_counter() < deadline and i < limit:
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        resp = session.post(url, data=body, headers=headers, timeout=10, verify=verify)
        latencies.append(time.perf_counter() - t0)
        if resp.status_code != 200 or (b'"Error":"' in resp.content and b'"Error":""' not in resp.content):
            errors += 1
        i += 1
    out.put((latencies, errors))


def _client_process(url: str, bodies: list[bytes], seconds: float, limit: int, threads: int, verify: Any,
                    out: Any) -> None:
    import threading

    deadline = time.perf_counter() + seconds
    local: Any = __import__("queue").Queue()
    workers = [threading.Thread(target=_drive, args=(url, bodies, deadline, limit // threads, verify, local))
               for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lat, err = [], 0
    while not local.empty():
        a, b = local.get()
        lat += a
        err += b
    out.put((lat, err))


def drive(url: str, bodies: list[bytes], seconds: float, limit: int, threads: int, verify: Any = True) -> dict:
    """Load from a second process (bounded by ``seconds`` and ``limit`` requests); latency and throughput."""
    queue: Any = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_client_process,
                                           args=(url, bodies, seconds, limit, threads, verify, queue))
    started = time.perf_counter()
    proc.start()
    latencies, errors = queue.get(timeout=seconds + 120)
    proc.join(timeout=30)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(ordered), "errors": errors,
            "p50_ms": round(1000 * statistics.median(ordered), 3),
            "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 3),
            "rps": round(len(ordered) / elapsed, 1)}


def extender_phase(nodes: int, seconds: float, limit: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        snap = Path(tmp) / "snapshot.json"
        snap.write_text(json.dumps(snapshot(nodes)))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start([sys.executable, "-m", "mig_extender.cli", "serve", "--snapshot", str(snap), "--bind",
                      f"127.0.0.1:{port}", "--log-level", "warning"], url + "/readyz")
        try:
            names = [f"gpu-{i:05d}" for i in range(nodes)]
            pending = [pod(f"wait-{k}", f"uid-wait-{k}", PROFILES[k % len(PROFILES)]) for k in range(64)]
            bodies = [json.dumps({"Pod": p, "Nodes": None, "NodeNames": names}).encode() for p in pending]
            drive(url + "/filter", bodies, 2, 200, 2)  # warm-up: rules recorded, caches built
            before = worker_rss_kb(proc.pid)
            result = {"filter": drive(url + "/filter", bodies, seconds, limit, threads),
                      "prioritize": drive(url + "/prioritize", bodies, seconds, limit, threads)}
            result["rss_kb_before"], result["rss_kb_after"] = before, worker_rss_kb(proc.pid)
            return result
        finally:
            stop(proc)


def webhook_phase(seconds: float, limit: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "mig_extender.cli", "certs", "--out", tmp], check=True,
                       capture_output=True, cwd=ROOT)
        port = free_port()
        url, ca = f"https://127.0.0.1:{port}", str(Path(tmp) / "ca.crt")
        proc = start([sys.executable, "-m", "mig_extender.cli", "webhook", "--no-cluster",
                      "--bind", f"127.0.0.1:{port}", "--tls-cert", f"{tmp}/tls.crt", "--tls-key", f"{tmp}/tls.key",
                      "--log-level", "warning"],
                     url + "/readyz", verify=ca)
        try:
            review = json.loads((FIXTURES / "admission-review-pod-create.json").read_text())
            bodies = []
            for k in range(64):
                r = json.loads(json.dumps(review))
                r["request"]["uid"] = f"review-{k}"
                r["request"]["object"]["spec"]["containers"][0]["resources"] = {
                    "limits": {PROFILES[k % len(PROFILES)]: "1"}}
                bodies.append(json.dumps(r).encode())
            drive(url + "/mutate", bodies, 2, 200, 2, verify=ca)
            before = worker_rss_kb(proc.pid)
            result = {"mutate": drive(url + "/mutate", bodies, seconds, limit, threads, verify=ca)}
            result["rss_kb_before"], result["rss_kb_after"] = before, worker_rss_kb(proc.pid)
            return result
        finally:
            stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1000,5000", help="comma-separated cluster sizes (8 GPUs a node)")
    ap.add_argument("--seconds", type=float, default=20.0, help="per verb and size")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per verb and size")
    ap.add_argument("--threads", type=int, default=4, help="client threads (one process)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, Any] = {"extender": {}, "machine": f"{os.cpu_count()} cpus",
                               "date": time.strftime("%Y-%m-%d")}
    for n in (int(x) for x in args.nodes.split(",")):
        results["extender"][str(n)] = extender_phase(n, args.seconds, args.max_requests, args.threads)
    results["webhook"] = webhook_phase(args.seconds, args.max_requests, args.threads)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'target':<28}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'RSS MiB':>18}")
    rows = [(f"filter     {n:>5} nodes", r["filter"], r) for n, r in results["extender"].items()]
    rows += [(f"prioritize {n:>5} nodes", r["prioritize"], r) for n, r in results["extender"].items()]
    rows.append(("webhook /mutate (HTTPS)", results["webhook"]["mutate"], results["webhook"]))
    for label, m, r in rows:
        rss = f"{r['rss_kb_before'] / 1024:.0f} -> {r['rss_kb_after'] / 1024:.0f}"
        print(f"{label:<28}{m['requests']:>10}{m['errors']:>8}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}{m['rps']:>9.0f}"
              f"{rss:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
