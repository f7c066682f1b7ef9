"""Upgrade and restore latency on the real control plane, step by step (issue 19).

The walkthrough of docs/install.md on the e2e plane (tests/e2e/testenv/stack.py: the rule CRD, the
extender with rules in the API, a kube-scheduler, the webhook behind a MutatingWebhookConfiguration, the
leader-elected reconciler, the fake kubelet): one node with 2 x 1g.5gb, 1 x 2g.10gb, 1 x 3g.20gb;
Deployments infer-a and infer-b take both 1g.5gb; infer-b is scaled to 2, so its new replica finds
1g.5gb sold out and is upgraded to 2g.10gb. Then infer-a is deleted and the replica restored.

A watch on the namespace's pods and MigSubstitutions records when each step was seen (loopback, so the
watch lags by milliseconds; the API's own timestamps have whole seconds only):

    pending   the new replica created (Pending, its profile sold out)
    filter    the scheduler's verdict on it (PodScheduled=False, after the extender's /filter)
    rule      the MigSubstitution recorded by the extender
    restart   the pending pod evicted by the reconciler (deletionTimestamp)
    admit     its replacement created, rewritten by the webhook (one API call: create and admission)
    bind      the replacement bound to the reserved node (the extender's /bind)
    running   the replacement Running (the fake kubelet)

Prints each step's median delay after the previous one and the median totals (pending -> running for
the upgrade, infer-a deleted -> restored replica Running for the restore) over ``--runs`` runs.

    python bench/upgrade_latency.py [--runs 5] [--json]

Needs the e2e binaries (tests/e2e/README.md). A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout and its tests/ package, not an installed copy

from mig_extender.cluster.informer import Informer  # noqa: E402
from tests.e2e.testenv.cluster import E2ECluster  # noqa: E402
from tests.e2e.testenv.stack import GROUP, NS_LABEL, PLURAL, SCHEDULER, VERSION, Stack  # noqa: E402
from tests.e2e.testenv.wait import wait_for  # noqa: E402
from tests.e2e.testenv.workloads import make_pod  # noqa: E402

MIG_5, MIG_10 = "nvidia.com/mig-1g.5gb", "nvidia.com/mig-2g.10gb"
NODE = {MIG_5: 2, MIG_10: 1, "nvidia.com/mig-3g.20gb": 1}
STEPS = ("pending", "filter", "rule", "restart", "admit", "bind", "running")


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    pod = make_pod(name, resources={MIG_5: "1"}, scheduler_name=SCHEDULER, labels={"app": name})
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod["spec"]}}}


class Recorder:
    """First time each step was seen, from watch events (wall clock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pods: dict[str, dict[str, Any]] = {}   # name -> last object seen
        self.first: dict[tuple[str, str], float] = {}  # (pod or rule name, what) -> time
        self.rules: list[str] = []

    def mark(self, who: str, what: str) -> None:
        self.first.setdefault((who, what), time.time())

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self.lock:
            self.pods[name] = pod
            self.mark(name, "added")
            if pod["metadata"].get("deletionTimestamp"):
                self.mark(name, "terminating")
            if pod["spec"].get("nodeName"):
                self.mark(name, "bound")
            if (pod.get("status") or {}).get("phase") == "Running":
                self.mark(name, "running")
            for cond in (pod.get("status") or {}).get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    self.mark(name, "unschedulable")

    def on_rule(self, kind: str, rule: dict[str, Any]) -> None:
        name = rule["metadata"]["name"]
        with self.lock:
            if name not in self.rules:
                self.rules.append(name)
            self.mark(name, "added")
            self.mark(name, str((rule.get("status") or {}).get("phase") or "Recorded"))

    def at(self, who: str, what: str) -> float | None:
        with self.lock:
            return self.first.get((who, what))


def watch(stack: Stack, ns: str, rec: Recorder) -> list[Informer]:
    pods = Informer("bench-pods", functools.partial(stack.core.list_namespaced_pod, ns), rec.on_pod,
                    lambda items: [rec.on_pod("ADDED", p) for p in items]).start()
    rules = Informer("bench-rules", functools.partial(stack.custom.list_namespaced_custom_object, GROUP, VERSION, ns,
                                                      PLURAL), rec.on_rule,
                     lambda items: [rec.on_rule("ADDED", r) for r in items]).start()
    pods.synced.wait(30)
    rules.synced.wait(30)
    return [pods, rules]


def running(rec: Recorder, app: str, resource: str) -> list[str]:
    with rec.lock:
        return [n for n, p in rec.pods.items() if p["metadata"].get("labels", {}).get("app") == app
                and not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") == "Running"
                and resource in (p["spec"]["containers"][0]["resources"].get("limits") or {})]


def one_run(stack: Stack, cluster: E2ECluster, run: int) -> dict[str, float]:
    ns = cluster.create_namespace(prefix="latency", labels={NS_LABEL: "true"})
    node = f"lat-{run}-{uuid.uuid4().hex[:4]}"
    cluster.fake_kubelet.add_node(node, "A100-40GB", NODE)
    rec = Recorder()
    informers = watch(stack, ns, rec)
    try:
        for app in ("infer-a", "infer-b"):
            stack.apps.create_namespaced_deployment(ns, deployment(app))
        wait_for(lambda: running(rec, "infer-a", MIG_5) and running(rec, "infer-b", MIG_5), timeout=60,
                 what="infer-a and infer-b Running")
        before = set(rec.pods)
        stack.apps.patch_namespaced_deployment_scale("infer-b", ns, {"spec": {"replicas": 2}})
        (upgraded,) = wait_for(lambda: running(rec, "infer-b", MIG_10), timeout=90, what="upgraded replica Running")
        pending = next(n for n in sorted(rec.pods, key=lambda n: rec.at(n, "added") or 0) if n not in before
                       and n != upgraded)
        rule = rec.rules[0]
        times = {"pending": rec.at(pending, "added"), "filter": rec.at(pending, "unschedulable"),
                 "rule": rec.at(rule, "added"), "restart": rec.at(pending, "terminating"),
                 "admit": rec.at(upgraded, "added"), "bind": rec.at(upgraded, "bound"),
                 "running": rec.at(upgraded, "running")}
        freed = time.time()
        stack.apps.delete_namespaced_deployment("infer-a", ns, propagation_policy="Background")
        wait_for(lambda: len(running(rec, "infer-b", MIG_5)) == 2 and not running(rec, "infer-b", MIG_10),
                 timeout=90, what="both infer-b replicas Running on 1g.5gb")
        restored = max(rec.at(n, "running") or 0 for n in running(rec, "infer-b", MIG_5))
        out = {step: t for step, t in times.items() if t is not None}
        out["restore_total"] = restored - freed
        return out
    finally:
        for informer in informers:
            informer.stop()
        cluster.delete_namespace(ns)
        cluster.fake_kubelet.remove_node(node)


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median delay of each step after the one before it (steps seen in every run), and the totals."""
    out: dict[str, float] = {}
    for prev, step in itertools.pairwise(STEPS):
        deltas = [r[step] - r[prev] for r in runs if step in r and prev in r]
        if deltas:
            out[f"{prev} -> {step}"] = statistics.median(deltas)
    out["upgrade: pending -> running"] = statistics.median(r["running"] - r["pending"] for r in runs)
    out["restore: freed -> running"] = statistics.median(r["restore_total"] for r in runs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cluster = E2ECluster.start(Path(tempfile.mkdtemp(prefix="mig-latency-")), verbosity=1)
    try:
        stack = Stack(cluster, Path(tempfile.mkdtemp(prefix="mig-latency-stack-"))).start()
        try:
            runs = [one_run(stack, cluster, i) for i in range(args.runs)]
        finally:
            stack.stop_all()
    finally:
        cluster.stop(remove_state=True)
    summary = summarise(runs)
    if args.json:
        print(json.dumps({"runs": runs, "median_s": summary}, indent=2))
        return 0
    print(f"median over {len(runs)} runs (seconds; each step after the one before it):")
    for what, seconds in summary.items():
        print(f"  {what:<30}{seconds:>7.2f}")
    print("per run, upgrade pending -> running: " + ", ".join(f"{r['running'] - r['pending']:.2f}" for r in runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
