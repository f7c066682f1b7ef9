"""Latency and throughput of the extender's /filter and /prioritize through the real gunicorn app.

For each cluster size: generate a snapshot (N nodes x 8 A100-80GB with mixed MIG layouts, about half
the slices held by bound pods, one profile sold out), start ``mig-extender serve --snapshot`` as a
subprocess on a free loopback port, and post recorded-shape ExtenderArgs (the Pod and Node objects of
../shared/samples, a real kube-scheduler's) from this process over one keep-alive session, one call
at a time as kube-scheduler does (``--concurrency`` adds client threads for throughput). Both shapes:
NodeNames (nodeCacheCapable: true) and full Nodes (false). A floor row (a pod without MIG, one name:
answered without reading any book) shows what any call costs through the server stack on this machine,
its tail included, in the same run as the targets. Then the webhook's AdmissionReview round
trip over HTTPS (``mig-extender webhook`` with a certificate from ``mig-extender certs``). Prints p50/p99
latency and requests/s.

    python bench/extender.py                 # 100, 1000 and 5000 nodes
    python bench/extender.py --nodes 5000 --json
    python bench/extender.py --nodes 5000 --modes names --retained-rules 3000   # an hour of finished rules

Bounded: at most --requests calls and --seconds per measurement. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout, not whatever is installed

import requests  # noqa: E402
from procstat import children, rss_kb  # noqa: E402

from mig_extender.core.catalog import model  # noqa: E402
from mig_extender.core.resources import PodInfo, ResourceCount  # noqa: E402
from mig_extender.core.rules import Phase, new_rule, rule_to_object  # noqa: E402
from mig_extender.sim.cluster import gpu_layouts  # noqa: E402
from mig_extender.sim.stats import percentile  # noqa: E402

SAMPLES = Path(os.environ.get("SAMPLES") or REPO / ".." / "shared" / "samples")  # $SAMPLES: from a worktree
GPU = model("A100-80GB")
TARGET_P99_MS = 2.0           # /filter at 5,000 candidate names (issue 19)
TARGET_SOLD_OUT_P99_MS = 10.0  # sold-out /filter (substitute search) at 5,000 nodes (issue 19)
FLOOR = "filter (floor: no MIG, 1 name)"


def _sample(name: str) -> dict[str, Any]:
    path = SAMPLES / name
    if not path.is_file():
        sys.exit(f"{path} not found: the recorded payloads live in ../shared/samples beside the repo")
    return json.loads(path.read_text())


def make_cluster(nodes: int, seed: int = 1) -> tuple[list[dict], list[dict]]:
    """Node objects shaped like the recorded ones, and bound pods holding about half the slices.

    Every 3g.40gb slice is taken, so a 3g.40gb pod exercises the substitution path.
    """
    template = _sample("filter-full-nodes.json")["Nodes"]["items"][0]
    layouts = gpu_layouts(GPU, "mixed")
    rng = random.Random(seed)
    node_objs, pods = [], []
    for i in range(nodes):
        name = f"gpu-{i:05d}"
        alloc: dict[str, int] = {}
        for g in range(8):
            for prof in layouts[(i * 8 + g) % len(layouts)]:
                r = GPU.profile(prof).resource
                alloc[r] = alloc.get(r, 0) + 1
        node = copy.deepcopy(template)
        node["metadata"].update(name=name, uid=f"00000000-0000-4000-8000-{i:012d}")
        node["metadata"]["labels"].update({"kubernetes.io/hostname": name, "nvidia.com/gpu.count": "8"})
        for section in ("capacity", "allocatable"):
            node["status"][section] = {k: v for k, v in node["status"][section].items() if not k.startswith("nvidia")}
            node["status"][section].update({r: str(n) for r, n in alloc.items()})
        node_objs.append(node)
        for r, n in alloc.items():
            used = n if "3g" in r else sum(rng.random() < 0.5 for _ in range(n))
            for k in range(used):
                pods.append({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"load-{i}-{r[15:]}-{k}", "namespace": "bench", "uid": f"p-{i}-{r}-{k}"},
                    "spec": {"nodeName": name, "containers": [{"name": "c", "resources": {"limits": {r: "1"}}}]},
                    "status": {"phase": "Running"},
                })
    return node_objs, pods


def finished_rules(count: int, nodes: list[str]) -> list[dict[str, Any]]:
    """``count`` MigSubstitutions that reserve nothing any more (Restored or Expired), as a cluster keeps them
    for the rule retention (an hour by default) after their pods moved back or went: what every snapshot's
    rule book carries on a busy cluster."""
    now = time.time()
    out = []
    for i in range(count):
        pod = PodInfo("bench", f"done-{i}", f"bench-done-{i}")
        rule = new_rule(pod, ResourceCount("nvidia.com/mig-1g.10gb", 1), ResourceCount("nvidia.com/mig-2g.20gb", 1),
                        nodes[i % len(nodes)], now - 600, 300.0)
        out.append(rule_to_object(replace(rule, phase=Phase.RESTORED if i % 2 else Phase.EXPIRED)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mig-extender serve --snapshot FILE`` in its own process group."""

    def __init__(self, snapshot: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mig_extender.cli", "serve", "--snapshot", str(snapshot),
             "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, session: requests.Session, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mig-extender serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if session.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or the worker still loading the snapshot
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mig-extender serve not ready after {timeout:.0f} s; see {self.log.name}")

    def rss_mb(self) -> float:
        """Resident memory of the gunicorn worker (the child that holds the inventory)."""
        return max(rss_kb(pid) for pid in [self.proc.pid, *children(self.proc.pid)]) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def measure(post: Callable[[http.client.HTTPConnection, int], None], port: int, requests_max: int, seconds: float,
            concurrency: int, warmup: int = 10, https: Any = None) -> dict[str, float]:
    """Latency of ``post`` one call at a time per client thread (each its own keep-alive connection);
    rps over the whole run. http.client, not requests: requests adds ~1 ms of client time per call at
    5,000 names, which is not the extender's (kube-scheduler's Go client costs far less)."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    def client() -> None:
        conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=120, context=https) if https
                else http.client.HTTPConnection("127.0.0.1", port, timeout=120))
        try:
            for _ in range(warmup):
                post(conn, next(counter))
            while time.monotonic() < deadline:
                with lock:
                    if len(latencies) >= requests_max:
                        return
                i = next(counter)
                start = time.perf_counter()
                post(conn, i)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return {"n": len(latencies), "p50_ms": round(1000 * (percentile(latencies, 50) or 0), 3),
            "p99_ms": round(1000 * (percentile(latencies, 99) or 0), 3),
            "rps": round(len(latencies) / wall, 1) if wall else 0.0}


def call(conn: http.client.HTTPConnection, path: str, data: bytes) -> bytes:
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    body = answer.read()
    if answer.status != 200:
        raise RuntimeError(f"POST {path}: HTTP {answer.status}: {body[:200]!r}")
    return body


def bench_size(nodes: int, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    node_objs, pods = make_cluster(nodes)
    snapshot = workdir / f"snapshot-{nodes}.json"
    listed = [{"apiVersion": "v1", "kind": "Node", **n} for n in node_objs]  # NodeList items carry no kind
    retained = finished_rules(args.retained_rules, [n["metadata"]["name"] for n in node_objs])
    snapshot.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [*listed, *pods, *retained]}))
    # a ReplicaSet's pod asking for nvidia.com/mig-1g.10gb: 1, as a real kube-scheduler sent it
    pod = _sample("filter-full-nodes.json")["Pod"]
    names = [n["metadata"]["name"] for n in node_objs]
    server = Server(snapshot, workdir / f"serve-{nodes}.log")
    rows: list[dict[str, Any]] = []
    try:
        with requests.Session() as session:
            session.trust_env = False
            began = time.perf_counter()
            server.wait_ready(session)
            startup = time.perf_counter() - began
            probe = session.post(server.url + "/filter", json={"Pod": pod, "NodeNames": names, "Nodes": None}).json()
            passed = probe["NodeNames"] or []
            if probe.get("Error") or not passed:
                raise RuntimeError(f"/filter passed no node: {probe.get('Error') or probe.get('FailedNodes')}")
        by_name = {n["metadata"]["name"]: n for n in node_objs}
        bodies = {
            ("names", "filter"): {"Pod": pod, "NodeNames": names, "Nodes": None},
            ("names", "prioritize"): {"Pod": pod, "NodeNames": passed, "Nodes": None},
            ("full", "filter"): {"Pod": pod, "Nodes": {"metadata": {}, "items": node_objs}, "NodeNames": None},
            ("full", "prioritize"): {"Pod": pod, "Nodes": {"metadata": {}, "items": [by_name[n] for n in passed]},
                                     "NodeNames": None},
        }
        for (mode, verb), body in bodies.items():
            if mode not in args.modes:
                continue
            data = json.dumps(body, separators=(",", ":")).encode()

            def post(conn: http.client.HTTPConnection, _: int, data: bytes = data, verb: str = verb) -> None:
                call(conn, "/" + verb, data)

            result = measure(post, server.port, args.requests, args.seconds, args.concurrency)
            rows.append({"nodes": nodes, "mode": mode, "verb": verb, "candidates": len(body.get("NodeNames") or [])
                         or len((body["Nodes"] or {}).get("items", [])), "body_kb": round(len(data) / 1024),
                         **result})
        # the floor: a pod without MIG and one name answers at once (no books read), so this row is what
        # any call costs through this server stack on this machine, its tail included (issue 19)
        plain = copy.deepcopy(pod)
        for section in ("limits", "requests"):
            plain["spec"]["containers"][0]["resources"][section].pop("nvidia.com/mig-1g.10gb")
        floor = json.dumps({"Pod": plain, "NodeNames": names[:1], "Nodes": None}, separators=(",", ":")).encode()
        result = measure(lambda conn, _: call(conn, "/filter", floor), server.port, args.requests, args.seconds, 1)
        rows.append({"nodes": nodes, "mode": "names", "verb": FLOOR, "candidates": 1,
                     "body_kb": round(len(floor) / 1024), **result})
        # the sold-out path: every node fails, the planner picks a substitute over all of them and a rule
        # is recorded; each call is a new pod (uid) so the rule is new too
        sold_out = copy.deepcopy(pod)
        for section in ("limits", "requests"):
            res = sold_out["spec"]["containers"][0]["resources"][section]
            res.pop("nvidia.com/mig-1g.10gb")
            res["nvidia.com/mig-3g.40gb"] = "1"

        # each call a new pod: its uid and name spliced into one encoded body, so the client's JSON encoding
        # of 5,000 names (~1 ms, not the extender's) stays out of the timed call
        sold_out["metadata"]["uid"], sold_out["metadata"]["name"] = "bench-sold-out-@@", "sold-out-@@"
        template = json.dumps({"Pod": sold_out, "NodeNames": names, "Nodes": None}, separators=(",", ":")).encode()

        def post_sold_out(conn: http.client.HTTPConnection, i: int) -> None:
            call(conn, "/filter", template.replace(b"@@", str(i).encode()))

        # each call reserves one of the ~nodes free 7g slices: stop well before they run out
        result = measure(post_sold_out, server.port, min(args.requests, 200, nodes // 2), args.seconds, 1,
                         warmup=min(10, nodes // 10))
        rows.append({"nodes": nodes, "mode": "names", "verb": "filter (sold out: substitute)",
                     "candidates": len(names), "body_kb": None, **result})
        for row in rows:
            row["server_startup_s"] = round(startup, 2)
            row["server_rss_mb"] = round(server.rss_mb())
    finally:
        server.stop()
    return rows


def bench_webhook(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The webhook's AdmissionReview round trip over HTTPS (``mig-extender webhook``, its own certificate),
    one call at a time on one keep-alive connection, as the API server calls it. Without a cluster there
    are no rules, so every pod is admitted unchanged: the decode, the rule lookup and the answer."""
    import ssl

    certs = workdir / "certs"
    subprocess.run([sys.executable, "-m", "mig_extender.cli", "certs", "--out", str(certs)], check=True,
                   capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    port = free_port()
    log = (workdir / "webhook.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mig_extender.cli", "webhook", "--no-cluster", "--bind", f"127.0.0.1:{port}",
         "--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key"), "--log-level", "warning"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    review = json.loads((REPO / "tests" / "fixtures" / "admission-review-pod-create.json").read_text())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mig-extender webhook did not become ready; see {log.name}")
            time.sleep(0.2)

        def post(conn: http.client.HTTPConnection, i: int) -> None:
            review["request"]["uid"] = f"review-{i}"
            answer = json.loads(call(conn, "/mutate", json.dumps(review).encode()))
            if not answer["response"]["allowed"]:
                raise RuntimeError(f"/mutate refused the pod: {answer['response']}")

        result = measure(post, port, args.requests, args.seconds, 1, https=context)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        log.close()
    return {"nodes": None, "mode": "https", "verb": "webhook /mutate", "candidates": None,
            "body_kb": round(len(json.dumps(review)) / 1024, 1), **result}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, action="append", help="cluster size (repeatable; default 100, 1000, 5000)")
    ap.add_argument("--requests", type=int, default=300, help="calls per measurement (after 10 warm-up calls)")
    ap.add_argument("--seconds", type=float, default=30.0, help="time cap per measurement")
    ap.add_argument("--concurrency", type=int, default=1, help="client threads (kube-scheduler calls one at a time)")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    ap.add_argument("--retained-rules", type=int, default=0, metavar="N",
                    help="finished rules in the snapshot (a busy cluster keeps an hour of them; default 0)")
    ap.add_argument("--modes", default="names,full", type=lambda v: v.split(","),
                    help="ExtenderArgs shapes to measure: names (nodeCacheCapable), full (Node objects)")
    args = ap.parse_args()
    sizes = args.nodes or [100, 1000, 5000]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mig-bench-") as tmp:
        for n in sizes:
            rows += bench_size(n, args, Path(tmp))
            if not args.json:
                print(f"... {n} nodes done", file=sys.stderr)
        rows.append(bench_webhook(args, Path(tmp)))
    verdict = [r for r in rows if r["verb"] == "filter" and r["mode"] == "names" and r["nodes"] >= 5000]
    sold_out = [r for r in rows if r["verb"].startswith("filter (sold out") and r["nodes"] >= 5000]
    floors = [r for r in rows if r["verb"] == FLOOR and r["nodes"] >= 5000]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "floor_p99_ms": max(r["p99_ms"] for r in floors) if floors else None,
        "date": time.strftime("%Y-%m-%d"),
        "retained_rules": args.retained_rules,
        "target": f"filter p99 <= {TARGET_P99_MS} ms at 5000 candidate names",
        "target_met": all(r["p99_ms"] <= TARGET_P99_MS for r in verdict) if verdict else None,
        "target_sold_out": f"sold-out filter p99 <= {TARGET_SOLD_OUT_P99_MS} ms at 5000 nodes",
        "target_sold_out_met": all(r["p99_ms"] <= TARGET_SOLD_OUT_P99_MS for r in sold_out) if sold_out else None,
    }
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=2))
        return 0
    print(f"{'nodes':>6} {'mode':>6} {'verb':<30} {'candidates':>10} {'body KB':>8} {'n':>5} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'rps':>7}")
    for r in rows:
        print(f"{r['nodes'] or '-':>6} {r['mode']:>6} {r['verb']:<30} {r['candidates'] or '-':>10} "
              f"{r['body_kb'] or '-':>8} "
              f"{r['n']:>5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>7.1f}")
    def verdict_text(met: bool | None) -> str:
        return "not measured" if met is None else "met" if met else "NOT met"

    print(f"\n{summary['machine']}, {summary['date']}, {args.retained_rules} finished rules retained; "
          f"{summary['target']}: {verdict_text(summary['target_met'])}; "
          f"{summary['target_sold_out']}: {verdict_text(summary['target_sold_out_met'])}")
    if summary["floor_p99_ms"] is not None:
        print(f"the server's floor here (a call that reads no books): p99 {summary['floor_p99_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
