"""The chaos soak (issue 15): churn and faults against the full product for N minutes, invariants checked
continuously; prints pod lifecycles, faults, violations and each component's memory.

Starts its own e2e control plane (etcd, kube-apiserver, controllers, a fake kubelet; see tests/e2e/README.md)
and the full stack on it (extender, webhook over HTTPS, two leader-elected reconcilers, a scheduler with
the extender), then runs tests/e2e/soak with the given seed. Exits 1 on any violation, 2 when it could not
run (no control plane). Unless --no-repartition, the reconcilers repartition (tests/e2e/soak/repartition.py:
opted-in nodes served by a fake MIG manager, demand only a change serves, a MIG manager that wedges).

    python bench/soak.py --minutes 30 --seed 1 [--json] [--history soak.jsonl] [--faults kill-extender,...]

RSS: every component process (a gunicorn arbiter plus its worker counted together) is sampled every 5 s.
A component killed by a fault comes back as a new process; its growth is read on the longest-lived one,
from its first sample after the warm-up (a fifth of the run, at most 5 minutes) to its last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout and its tests/ package, not an installed copy

from procstat import children, rss_kb  # noqa: E402

from tests.e2e.soak.faults import FAULTS  # noqa: E402
from tests.e2e.soak.repartition import WedgeMigManager  # noqa: E402
from tests.e2e.soak.runner import SoakPlan, SoakRun, component_pids, describe_plan  # noqa: E402
from tests.e2e.testenv.binaries import BinariesUnavailable, find_binaries  # noqa: E402
from tests.e2e.testenv.cluster import E2ECluster  # noqa: E402
from tests.e2e.testenv.stack import Stack  # noqa: E402

SAMPLE_S = 5.0
ALL_FAULTS = (*FAULTS, WedgeMigManager())


class RssSampler:
    """Samples the RSS of the product's processes (and the control plane's, for scale) in a thread."""

    def __init__(self, cluster: E2ECluster, stack: Stack) -> None:
        self.cluster, self.stack = cluster, stack
        self.samples: list[tuple[float, str, int, int]] = []  # (t, component, pid, rss kB)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            pids = dict(component_pids(self.stack))
            for name in ("kube-apiserver", "etcd"):
                proc = self.cluster.control_plane.processes.get(name)
                if proc is not None:
                    pids[name] = [proc.pid]
            t = time.monotonic() - self.started
            for component, roots in pids.items():
                for pid in roots:
                    total = rss_kb(pid) + sum(rss_kb(child) for child in children(pid))
                    if total:
                        self.samples.append((t, component, pid, total))

    def growth(self, warmup: float) -> list[dict]:
        """Per component, its longest-lived process: RSS after warm-up and at its last sample."""
        by_proc: dict[tuple[str, int], list[tuple[float, int]]] = {}
        for t, component, pid, rss in self.samples:
            by_proc.setdefault((component, pid), []).append((t, rss))
        best: dict[str, tuple[tuple[str, int], list[tuple[float, int]]]] = {}
        for key, series in by_proc.items():
            span = series[-1][0] - series[0][0]
            if key[0] not in best or span > best[key[0]][1][-1][0] - best[key[0]][1][0][0]:
                best[key[0]] = (key, series)
        out = []
        for component, ((_, pid), series) in sorted(best.items()):
            after = [s for s in series if s[0] - series[0][0] >= warmup] or series[-1:]
            warm, end = after[0][1], series[-1][1]
            incarnations = sum(1 for c, _ in by_proc if c == component)
            # every incarnation after its own warm-up: a process killed by a fault and its successors must
            # not creep up from one to the next either (the longest-lived one may live minutes only)
            warm_all = [rss for (c, _), ser in by_proc.items() if c == component
                        for t, rss in ser if t - ser[0][0] >= warmup]
            out.append({"component": component, "pid": pid, "incarnations": incarnations,
                        "peak_mib": round(max(warm_all or [end]) / 1024, 1),
                        "lived_s": round(series[-1][0] - series[0][0]), "warm_mib": round(warm / 1024, 1),
                        "end_mib": round(end / 1024, 1), "growth_pct": round(100 * (end - warm) / warm, 1)})
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="minutes of churn and faults (then settle, check)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=5, help="nodes at the start (churn keeps 3-8)")
    ap.add_argument("--rate", type=float, default=3.0, help="churn actions per second")
    ap.add_argument("--fault-every", type=float, default=20.0, help="mean seconds between faults")
    ap.add_argument("--faults", default="", help=f"comma-separated subset of {[f.name for f in ALL_FAULTS]}")
    ap.add_argument("--no-repartition", action="store_true",
                    help="no opted-in nodes, no fake MIG manager, the repartitioner off (as before it was soaked)")
    ap.add_argument("--history", default="", help="history file (JSON lines); default: in a temp dir, kept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = tuple(n for n in args.faults.split(",") if n)
    unknown = set(names) - {f.name for f in ALL_FAULTS}
    if unknown or args.minutes <= 0:
        sys.exit(f"--faults: unknown {sorted(unknown)}" if unknown else "--minutes must be > 0")
    try:
        binaries = find_binaries()
    except BinariesUnavailable as exc:
        print(f"e2e control plane unavailable: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    history = (Path(args.history) if args.history
               else Path(tempfile.mkdtemp(prefix="mig-soak-")) / f"soak-{args.seed}.jsonl")
    plan = SoakPlan(seed=args.seed, seconds=60 * args.minutes, nodes=args.nodes, actions_per_second=args.rate,
                    fault_every=args.fault_every, faults=names, quiet_every=60.0, settle=120.0,
                    repartition=not args.no_repartition)
    cluster = E2ECluster.start(binaries=binaries, verbosity=1)
    stack = Stack(cluster, Path(tempfile.mkdtemp(prefix="soak-stack-", dir=cluster.state_dir)))
    sampler: RssSampler | None = None
    try:
        stack.start()
        sampler = RssSampler(cluster, stack).start()
        result = SoakRun(cluster, stack, plan, history).run()
    finally:
        if sampler is not None:
            sampler.stop()
        stack.stop_all()
        cluster.stop(remove_state=False)
    memory = sampler.growth(warmup=min(300.0, plan.seconds / 5)) if sampler else []
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
        "plan": describe_plan(plan), "lifecycles": result.lifecycles, "pods_created": result.pods_created,
        "actions": dict(result.actions), "skipped": result.skipped, "refused": result.failed,
        "faults": dict(result.faults), "repartitions": result.repartitions, "quiet_points": result.quiet_points,
        "settled": result.converged,
        "violations": {k: {"count": result.verdict.counts[k], "first": v.render(args.seed)}
                       for k, v in result.verdict.first.items()},
        "harness_errors": result.harness_errors, "rss": memory, "history": str(history),
        "state_dir": str(cluster.state_dir),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(result.report()))
        print(f"component logs: {cluster.state_dir / 'logs'}")
        print("RSS (MiB) of each component's longest-lived process, after warm-up -> end:")
        for row in memory:
            print(f"  {row['component']:<16} {row['warm_mib']:>7} -> {row['end_mib']:>7}  ({row['growth_pct']:+.1f}%, "
                  f"lived {row['lived_s']} s, {row['incarnations']} process(es); peak of all after warm-up "
                  f"{row['peak_mib']})")
    return 1 if result.verdict.total else 0


if __name__ == "__main__":
    sys.exit(main())
