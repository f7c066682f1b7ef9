"""Memory of the extender worker and the reconciler at scale, filled through list+watch (issue 19).

Nodes and pods are created through the API of the e2e control plane (tests/e2e/testenv): N nodes of
G x A100-40GB (per GPU 2 x 1g.5gb, 1 x 2g.10gb, 1 x 3g.20gb) and P pods shaped like a Deployment's
(labels, an owner, env, cpu/memory requests, one MIG slice), bound with ``nodeName`` so no scheduler
and no kubelet is involved. Then ``mig-extender serve`` (and ``mig-extender reconcile``) start against
it and list+watch everything as in a cluster. Printed per arm:

* sync s: process start to ``/readyz`` answering 200 (the initial list of nodes and pods done);
* peak MiB: the process's VmHWM (the kernel's high-water mark of resident memory), i.e. the peak
  during the initial list, not a sampled guess;
* steady MiB: VmRSS ``--settle`` seconds after ready;
* + arbiter MiB: steady plus the gunicorn arbiter's VmRSS (what the container holds).

Both components run under gunicorn, their state in its one worker: the worker is measured.

``--code LABEL=DIR`` (repeatable) runs the components from another checkout (e.g. ``git archive`` of
the commit before a change) against the same populated cluster, so before and after are measured side
by side in one run. Without it, this checkout is the one arm.

    python bench/memory.py [--nodes 5000] [--gpus 8] [--pods 100000] [--kubeconfig FILE] [--code L=DIR ...]

Without ``--kubeconfig`` it starts its own control plane (and stops it at the end); with one it reuses
that cluster and creates only what is missing, e.g. after
``python -m tests.e2e.testenv up --no-kubelet --state-dir /tmp/mem``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout and its tests/ package, not an installed copy

import requests  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402
from procstat import children  # noqa: E402

from mig_extender.cluster.client import JsonPoster, raw  # noqa: E402
from tests.e2e.testenv import procs  # noqa: E402
from tests.e2e.testenv.nodes import BASE_CAPACITY, gpu_labels, mig_count_labels, node_status  # noqa: E402

PER_GPU = {"nvidia.com/mig-1g.5gb": 2, "nvidia.com/mig-2g.10gb": 1, "nvidia.com/mig-3g.20gb": 1}
MIX = ["nvidia.com/mig-1g.5gb", "nvidia.com/mig-1g.5gb", "nvidia.com/mig-2g.10gb", "nvidia.com/mig-3g.20gb"]
PODS_PER_NAMESPACE = 1000
NO_PROXY = {"http": "", "https": ""}


def node_body(name: str, gpus: int, stamp: str) -> dict[str, Any]:
    capacity = {**BASE_CAPACITY, "pods": "250", **{r: str(n * gpus) for r, n in PER_GPU.items()}}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "node.kubernetes.io/instance-type": "p4d.24xlarge",
              "topology.kubernetes.io/zone": f"zone-{int(name[-5:]) % 3}",
              **gpu_labels("A100-40GB", gpus), **mig_count_labels(capacity)}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {}, "status": node_status(name, capacity, stamp)}


def pod_body(i: int, node: str) -> dict[str, Any]:
    """A pod as a Deployment's ReplicaSet would create it (the fields a real one carries, roughly its size)."""
    app = f"infer-{i // 50:04d}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{app}-7d9c8b6f5-{i:06d}", "labels": {"app": app, "pod-template-hash": "7d9c8b6f5", "tier": "gpu"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{app}-7d9c8b6f5",
                                 "uid": f"00000000-0000-4000-8000-{i // 50:012d}", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 30,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "server", "image": "registry.example.com/infer/server:1.4.2",
                "args": ["--model", "/models/m", "--port", "8080"],
                "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"}],
                "env": [{"name": f"VAR_{k}", "value": f"value-{k}"} for k in range(6)],
                "resources": {"requests": {"cpu": "2", "memory": "8Gi"},
                              "limits": {"cpu": "4", "memory": "8Gi", MIX[i % len(MIX)]: "1"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5},
                "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
            }],
            "volumes": [{"name": "models", "emptyDir": {}}],
        },
    }


def count(api: client.ApiClient, kind: str, namespace: str = "") -> int:
    """Objects of ``kind`` ('nodes', 'pods') in the cluster or a namespace, from a one-item list's
    remainingItemCount."""
    core = client.CoreV1Api(api)
    if kind == "nodes":
        page = raw(core.list_node, limit=1)
    elif namespace:
        page = raw(core.list_namespaced_pod, namespace, limit=1)
    else:
        page = raw(core.list_pod_for_all_namespaces, limit=1)
    return len(page.get("items") or []) + int((page.get("metadata") or {}).get("remainingItemCount") or 0)


def populate(api: client.ApiClient, nodes: int, gpus: int, pods: int) -> dict[str, float]:
    """Create what is missing: nodes node-00000.., then pods spread round-robin over them."""
    poster = JsonPoster(api, timeout=60)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    names = [f"node-{n:05d}" for n in range(nodes)]
    out: dict[str, float] = {}

    def post(path: str, body: dict[str, Any]) -> None:
        for attempt in range(5):
            try:
                poster.post(path, body)
                return
            except ApiException as exc:
                if exc.status == 409:
                    return  # there already (a rerun)
                if exc.status not in (429, 500, 503, 504) or attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))

    have = count(api, "nodes")
    t0 = time.monotonic()
    if have < nodes:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: post("/api/v1/nodes", node_body(n, gpus, stamp)), names[have:]))
    out["nodes_s"] = time.monotonic() - t0
    namespaces = sorted({f"mem-{i // PODS_PER_NAMESPACE:03d}" for i in range(pods)})
    core = client.CoreV1Api(api)
    for ns in namespaces:
        try:
            core.create_namespace({"metadata": {"name": ns}})
        except ApiException as exc:
            if exc.status != 409:
                raise
    t0 = time.monotonic()
    # a rerun creates only the namespaces' missing pods (a create that exists costs a whole admission)
    full = {ns for ns in namespaces if count(api, "pods", ns) >= PODS_PER_NAMESPACE}
    missing = [i for i in range(pods) if f"mem-{i // PODS_PER_NAMESPACE:03d}" not in full]

    def create(i: int) -> None:
        post(f"/api/v1/namespaces/mem-{i // PODS_PER_NAMESPACE:03d}/pods", pod_body(i, names[i % nodes]))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, missing))
    out["pods_s"] = time.monotonic() - t0
    return out


def apply_crd(api: client.ApiClient) -> None:
    crd = yaml.safe_load((REPO / "manifests/base/crd.yaml").read_text())
    try:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "mig-extender"}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    time.sleep(2)  # the CRD's Established condition; the reconciler's rule informer retries anyway


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(label: str, code: Path, component: str, kubeconfig: Path, logs: Path, settle: float,
            timeout: float) -> dict[str, Any]:
    """Start one component from ``code``, wait for /readyz, read its memory; stop it."""
    port = procs.free_port()
    if component == "serve":
        argv = [sys.executable, "-m", "mig_extender.cli", "serve", "--bind", f"127.0.0.1:{port}",
                "--kubeconfig", str(kubeconfig)]
    else:
        argv = [sys.executable, "-m", "mig_extender.cli", "reconcile", "--kubeconfig", str(kubeconfig),
                "--metrics-bind", f"127.0.0.1:{port}", "--identity", f"mem-{label}"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = procs.start(f"{component}-{label}", argv, logs / f"{component}-{label}.log", env=env, cwd=code,
                       die_with_parent=True)

    def ready() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2, proxies=NO_PROXY).status_code == 200
        except requests.RequestException:
            return False

    try:
        synced = procs.wait_ready(proc, ready, timeout)
        time.sleep(settle)
        # both run under gunicorn: the state lives in its one worker, a child of the arbiter started here;
        # the container holds both
        pid = (children(proc.pid) or [proc.pid])[0]
        return {"arm": label, "component": component, "sync_s": round(synced, 1),
                "peak_mib": round(status_kb(pid, "VmHWM") / 1024), "steady_mib": round(status_kb(pid, "VmRSS") / 1024),
                "container_mib": round(sum(status_kb(p, "VmRSS") for p in {proc.pid, pid}) / 1024)}
    finally:
        proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--kubeconfig", type=Path, help="use this running cluster instead of starting one")
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                        help="also measure the components from this checkout (repeatable)")
    parser.add_argument("--components", default="serve,reconcile")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after ready before steady RSS")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a component may take to sync")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    arms = [("this", REPO)]
    for item in args.code:
        label, sep, path = item.partition("=")
        if not sep or not (Path(path) / "mig_extender").is_dir():
            parser.error(f"--code {item}: expected LABEL=DIR with DIR/mig_extender")
        arms.insert(0, (label, Path(path).resolve()))

    cluster = None
    if args.kubeconfig is None:
        from tests.e2e.testenv.cluster import E2ECluster
        cluster = E2ECluster.start(Path(tempfile.mkdtemp(prefix="mig-mem-")), kubelet=False, verbosity=1)
        kubeconfig = cluster.kubeconfig
    else:
        kubeconfig = args.kubeconfig
    logs = Path(tempfile.mkdtemp(prefix="mig-mem-logs-"))
    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        made = populate(api, args.nodes, args.gpus, args.pods)
        apply_crd(api)
        have = {"nodes": count(api, "nodes"), "pods": count(api, "pods")}
        rows = [measure(label, code, component, kubeconfig, logs, args.settle, args.timeout)
                for component in args.components.split(",") for label, code in arms]
    finally:
        if cluster is not None:
            cluster.stop(remove_state=True)
    if args.json:
        print(json.dumps({"cluster": have, "populate": made, "rows": rows}, indent=2))
        return 0
    print(f"cluster: {have['nodes']} nodes x {args.gpus} GPUs, {have['pods']} pods (populated in "
          f"{made['nodes_s']:.0f} s nodes + {made['pods_s']:.0f} s pods); logs in {logs}")
    print(f"{'component':<11}{'arm':<12}{'sync s':>8}{'peak MiB':>10}{'steady MiB':>12}{'+ arbiter MiB':>15}")
    for r in rows:
        print(f"{r['component']:<11}{r['arm']:<12}{r['sync_s']:>8}{r['peak_mib']:>10}{r['steady_mib']:>12}"
              f"{r['container_mib']:>15}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
