"""Pods/s scheduled by a real kube-scheduler with mig-extender vs the same scheduler without it.

One run on the e2e control plane of tests/e2e (etcd, kube-apiserver, controllers, a fake kubelet):
N fake nodes of 8 x A100-40GB (per GPU 2 x 1g.5gb, 1 x 2g.10gb, 1 x 3g.20gb), and the same MIG
workload (--pods pods of one slice each, 1g/2g/3g in 2:1:1, all of which fit) for each scheduler:

* stock: a kube-scheduler whose profile only counts the MIG resources in-tree (what a cluster without
  mig-extender runs; client qps as ours);
* floor: the same generated configuration pointed at bench/floor_extender.py, an extender in the same
  server stack (gunicorn, one gthread worker, the product's Binding path) that keeps no books: the least
  any extender with binding costs here, so the gap between floor and mig-extender is our own work;
* mig-extender: a kube-scheduler with the configuration ``mig-extender scheduler-config`` writes
  (extender filter, prioritize and bind over HTTP, nodeCacheCapable), and ``mig-extender serve`` beside it.

The pods are created first, for a scheduler that is not running yet; then the scheduler starts and a
watch records when each pod is bound. Throughput = (pods - 1) / (last bind - first bind), so pod
creation and scheduler start-up are not in it. Prints the three rates, the ratios to stock per round and their medians,
and per run the CPU each process spent per bound pod (the run is CPU-bound: everything shares 2 cores).

While binds are measured the fake kubelet holds the pods (``holding_pods``) and starts them afterwards:
a real kubelet runs on its own node, and this one's status writes would land inside the window of
whichever scheduler is slower (the faster run ends before the kubelet catches up), charging it for
CPU the other run spends after its window. ``--kubelet-in-window`` measures the old way.

    python bench/e2e_throughput.py [--pods 1000] [--nodes 64] [--repeat 3] [--json]

Needs the e2e binaries (see tests/e2e/README.md; a first build takes minutes). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout and its tests/ package, not an installed copy

import yaml  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402
from procstat import children, cpu_seconds  # noqa: E402

from mig_extender.cluster.informer import Informer  # noqa: E402
from tests.e2e.testenv.binaries import BinariesUnavailable, find_binaries  # noqa: E402
from tests.e2e.testenv.cluster import E2ECluster  # noqa: E402
from tests.e2e.testenv.extender import ExtenderProcess, cli_argv  # noqa: E402
from tests.e2e.testenv.workloads import make_pod  # noqa: E402

PER_GPU = {"nvidia.com/mig-1g.5gb": 2, "nvidia.com/mig-2g.10gb": 1, "nvidia.com/mig-3g.20gb": 1}
MIX = ["nvidia.com/mig-1g.5gb", "nvidia.com/mig-1g.5gb", "nvidia.com/mig-2g.10gb", "nvidia.com/mig-3g.20gb"]
QPS = 200  # both schedulers: mig-extender's generated config raises the client's 50 qps default to this


def stock_config(path: Path, name: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": "@KUBECONFIG@", "qps": QPS, "burst": 2 * QPS},
        "leaderElection": {"leaderElect": False}, "profiles": [{"schedulerName": name}],
    }, sort_keys=False))
    return path


def mig_config(path: Path, name: str, extender_url: str, kubeconfig: Path) -> Path:
    subprocess.run(cli_argv("scheduler-config", "--url", extender_url, "--kubeconfig", str(kubeconfig),
                            "--no-leader-elect", "--qps", str(QPS), "--scheduler-name", name, "--out", str(path)),
                   cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return path


def cpu_by_component(cluster: E2ECluster, extender: ExtenderProcess | None,
                     name: str = "mig-extender") -> dict[str, float]:
    """CPU seconds so far of each process on the machine's cores: the control plane's binaries, the
    extender (gunicorn arbiter and worker) and this process (the fake kubelet and the bind watch)."""
    out = {name: cpu_seconds(proc.pid) for name, proc in cluster.control_plane.processes.items()}
    if extender is not None and extender.process is not None:
        pid = extender.process.pid
        out[name] = cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))
    out["bench (fake kubelet, watch)"] = cpu_seconds(os.getpid())
    return out


def run_one(cluster: E2ECluster, label: str, scheduler: str, config: Path, pods: int, timeout: float,
            extender: ExtenderProcess | None = None, kubelet_in_window: bool = False) -> dict:
    namespace = cluster.create_namespace(prefix=f"bench-{label}")
    bound: dict[str, float] = {}
    done = threading.Event()
    cpu: list[dict[str, float]] = []  # at the first and at the last bind

    def seen(name: str) -> None:
        bound[name] = time.monotonic()
        if len(bound) == 1 or len(bound) == pods:
            cpu.append(cpu_by_component(cluster, extender, "floor extender" if label == "floor" else "mig-extender"))

    def on_event(kind: str, pod: dict) -> None:
        if (pod.get("spec") or {}).get("nodeName") and pod["metadata"]["name"] not in bound:
            seen(pod["metadata"]["name"])
        if len(bound) >= pods:
            done.set()

    # the product's own raw-JSON informer: the generated client's model classes cost more CPU per event
    # than the scheduler being measured, on the same cores
    watcher = Informer(f"bench-{label}", functools.partial(cluster.core.list_namespaced_pod, namespace),
                       on_event, lambda items: [on_event("ADDED", p) for p in items])
    hold = contextlib.nullcontext() if kubelet_in_window else cluster.fake_kubelet.holding_pods()
    try:
        with hold:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: cluster.core.create_namespaced_pod(
                    namespace, make_pod(f"p{i:05d}", resources={MIX[i % len(MIX)]: "1"}, scheduler_name=scheduler)),
                    range(pods)))
            watcher.start()
            started = time.monotonic()
            cluster.start_scheduler(scheduler, config)
            done.wait(timeout)
            cluster.stop_scheduler(scheduler)
            watcher.stop()
        times = sorted(bound.values())
        if len(times) < 2:
            raise RuntimeError(f"{label}: only {len(times)} of {pods} pods bound in {timeout:.0f} s; "
                               f"see {cluster.log_path(scheduler)}")
        span = times[-1] - times[0]
        per_pod = {}
        if len(cpu) == 2:  # CPU ms per bound pod between the first and the last bind, by process
            per_pod = {k: round(1000 * (cpu[1][k] - cpu[0].get(k, 0.0)) / (len(times) - 1), 2) for k in cpu[1]}
            per_pod = dict(sorted(((k, v) for k, v in per_pod.items() if v > 0), key=lambda kv: -kv[1]))
        return {"scheduler": label, "pods": pods, "bound": len(times), "bind_span_s": round(span, 3),
                "pods_per_s": round((len(times) - 1) / span, 1) if span > 0 else None,
                "from_scheduler_start_s": round(times[-1] - started, 3),
                "cpu_ms_per_pod": per_pod, "cpu_ms_per_pod_total": round(sum(per_pod.values()), 2)}
    finally:
        delete_namespace(cluster, namespace)


def delete_namespace(cluster: E2ECluster, namespace: str, attempts: int = 5) -> None:
    """Delete a run's pods and namespace; on a loaded machine deleting 1,000 pods can outlast the API
    server's 60 s request timeout (a 504), and pods left bound would fill the next run's nodes."""
    for attempt in range(attempts):
        try:
            cluster.delete_namespace(namespace)
            return
        except ApiException as exc:
            if exc.status < 500 or attempt == attempts - 1:
                raise
            time.sleep(2.0)


def start_extenders(cluster: E2ECluster, threads: int | None) -> tuple[ExtenderProcess, ExtenderProcess]:
    """``mig-extender serve`` and the floor extender, both with the same gunicorn threads."""
    thread_args = ("--threads", str(threads)) if threads else ()
    extender = ExtenderProcess(cluster.kubeconfig, cluster.log_path("mig-extender"),
                               args=("--rule-store", "memory", "--log-level", "warning", *thread_args))
    floor = ExtenderProcess(cluster.kubeconfig, cluster.log_path("floor-extender"), module="bench.floor_extender",
                            args=thread_args)
    extender.start()
    floor.start()
    return extender, floor


def summarise(rounds: list[dict[str, dict]]) -> dict[str, object]:
    """Per round each arm's rate over stock's (and ours over the floor's), and the medians of those."""
    def ratio(a: str, b: str) -> list[float]:
        return [round(r[a]["pods_per_s"] / r[b]["pods_per_s"], 3) for r in rounds
                if r[a]["pods_per_s"] and r[b]["pods_per_s"]]

    out: dict[str, object] = {}
    for name, (a, b) in {"mig-extender / stock": ("mig-extender", "stock"), "floor / stock": ("floor", "stock"),
                         "mig-extender / floor": ("mig-extender", "floor")}.items():
        values = ratio(a, b)
        out[name] = {"per_round": values, "median": round(statistics.median(values), 3) if values else None}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of stock, floor and mig-extender, run in turn on the same cluster; the ratios "
                         "reported are the medians of the rounds' (a shared 2-core machine drifts by +-20%% "
                         "between runs)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds each scheduler may take")
    ap.add_argument("--extender-threads", type=int, default=None,
                    help="gunicorn threads of mig-extender serve and the floor (default: the product's default)")
    ap.add_argument("--kubelet-in-window", action="store_true",
                    help="let the fake kubelet start pods while binds are measured (default: it holds them "
                         "until the window ends; see the docstring)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.pods > args.nodes * 8 * sum(PER_GPU.values()) // 2:
        sys.exit("--pods must leave room: at most half the slices of --nodes")
    try:
        binaries = find_binaries()
    except BinariesUnavailable as exc:
        sys.exit(f"e2e control plane unavailable: {exc}")
    cluster = E2ECluster.start(binaries=binaries, verbosity=1)
    extender = floor = None
    rounds: list[dict[str, dict]] = []
    try:
        for i in range(args.nodes):
            cluster.fake_kubelet.add_node(f"bench-{i:03d}", "A100-40GB", {r: n * 8 for r, n in PER_GPU.items()},
                                          gpu_count=8, pods=500)
        extender, floor = start_extenders(cluster, args.extender_threads)
        state = cluster.state_dir
        arms = {
            "stock": ("bench-stock", stock_config(state / "bench-stock.yaml", "bench-stock"), extender),
            "floor": ("bench-floor", mig_config(state / "bench-floor.yaml", "bench-floor", floor.url,
                                                cluster.scheduler_kubeconfig), floor),
            "mig-extender": ("bench-mig", mig_config(state / "bench-mig.yaml", "bench-mig", extender.url,
                                                     cluster.scheduler_kubeconfig), extender),
        }
        for _ in range(args.repeat):
            rounds.append({label: run_one(cluster, label, scheduler, cfg, args.pods, args.timeout, proc,
                                          args.kubelet_in_window)
                           for label, (scheduler, cfg, proc) in arms.items()})
        # where the extender's share goes: its own mean time per verb over all runs (server side, /metrics)
        seconds = "mig_extender_request_duration_seconds"
        calls = {v: int(extender.metric(f"{seconds}_count", verb=v)) for v in ("filter", "prioritize", "bind")}
        mean_ms = {v: round(1000 * extender.metric(f"{seconds}_sum", verb=v) / max(n, 1), 2) for v, n in calls.items()}
    finally:
        for proc in (extender, floor):
            if proc is not None:
                proc.stop()
        cluster.stop(remove_state=True)
    ratios = summarise(rounds)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "nodes": args.nodes, "pods": args.pods, "rounds": rounds, "ratios": ratios,
              "ratio_mig_extender_to_stock": ratios["mig-extender / stock"]["median"],
              "extender_calls": calls, "extender_mean_ms": mean_ms}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for n, arms_run in enumerate(rounds, 1):
        for r in arms_run.values():
            print(f"{n}. {r['scheduler']:>13}: {r['bound']}/{r['pods']} pods bound, {r['pods_per_s']} pods/s "
                  f"(first to last bind {r['bind_span_s']} s; last bind {r['from_scheduler_start_s']} s after start)")
            print(f"   {'':>13}  CPU ms per pod {r['cpu_ms_per_pod_total']}: "
                  + ", ".join(f"{k} {v}" for k, v in r["cpu_ms_per_pod"].items()))
    print(f"mig-extender time per call (server side, mean ms): {mean_ms}, calls: {calls}")
    for name, value in ratios.items():
        print(f"ratio {name:<21} per round: {value['per_round']}; median {value['median']}")
    print(f"({result['machine']}, {result['date']}, {args.nodes} nodes, {args.pods} pods)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
