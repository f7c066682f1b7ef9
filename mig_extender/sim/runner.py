"""``mig-extender simulate``: build the cluster and the job stream once, run every policy on it, report.

Policies run side by side in worker processes (fork; one per core by default), each on the same
seeded stream and a fresh copy of the cluster, so the answer does not depend on ``--jobs``. A
progress bar goes to stderr when it is a terminal (or with ``--progress``). The flags are defined
here (``add_arguments``) so cli.py stays a table of subcommands.

Must not: hold decisions or metrics (engine.py, fluid.py, stats.py) or import flask/kubernetes.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.catalog import ProfileError, model
from ..core.planner import PlanSettings
from . import alibaba, repartition
from .cluster import LAYOUT_NAMES, ClusterSpec, LayoutError, SimCluster
from .engine import POLICIES, Mechanics, run_policy
from .fluid import run_bound
from .report import PlotUnavailable, as_json, plot, table
from .stats import RunResult
from .workload import (
    DEFAULT_MIX,
    Burst,
    Job,
    assign_priorities,
    compute_shares,
    mix_shares,
    parse_mix,
    parse_priorities,
    synthetic,
)

ALL_POLICIES = ("stock", "upgrade", "mig-extender", "mig-extender+preempt", "bound")
KNOWN_POLICIES = (*ALL_POLICIES, "bound-mig", *repartition.POLICIES)  # the default runs ALL_POLICIES
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SimConfig:
    workload: str = "synthetic"
    trace_dir: str = ""
    trace_file: str = alibaba.POD_FILE
    nodes: int = 0                 # 0: 100 (see alibaba.py for why the trace is not replayed on 777)
    gpus_per_node: int = 8
    gpus: tuple[str, ...] = ("A100-40GB",)
    layout: str = ""               # "": all-balanced (synthetic) or demand (alibaba)
    load: float = 0.9
    duration: float = 0.0          # 0: 4 h (synthetic) or the whole rescaled trace (alibaba)
    seed: int = 1
    mix: str = DEFAULT_MIX
    mean_lifetime: float = 1800.0
    lifetime: str = "exp"
    burst: str = ""
    priorities: str = ""           # "high=0.2": 20% of jobs in class high (priority 1000), the rest default (0)
    policies: tuple[str, ...] = ALL_POLICIES
    mech: Mechanics = field(default_factory=Mechanics)
    aging: float | None = None     # the planner's PlanSettings.aging for mig-extender's policies (None: its default)


@dataclass
class Prepared:
    spec: ClusterSpec
    jobs: list[Job]
    duration: float
    demand: dict[int, float]
    header: list[str]
    aging: float | None = None     # SimConfig.aging


def default_trace_dir() -> Path | None:
    for base in (REPO_ROOT, Path.cwd()):
        path = alibaba.default_trace_dir(base)
        if path.is_dir():
            return path
    return None


def prepare(cfg: SimConfig) -> Prepared:
    """The cluster spec and the job stream every policy replays; ValueError on bad settings."""
    try:
        models = tuple(model(name) for name in cfg.gpus)
    except ProfileError as exc:
        raise ValueError(str(exc)) from exc
    if cfg.load <= 0 or cfg.gpus_per_node < 1 or cfg.nodes < 0:
        raise ValueError("--load must be > 0, --gpus-per-node >= 1 and --nodes >= 0")
    shares = [(m, 1.0 / len(models)) for m in models]
    header: list[str] = []
    if cfg.workload == "alibaba":
        trace_dir = Path(cfg.trace_dir) if cfg.trace_dir else default_trace_dir()
        if trace_dir is None:
            raise ValueError("no Alibaba trace found (../shared/data/alibaba-gpu-v2023); give --trace-dir DIR "
                             "holding the CSVs of github.com/alibaba/clusterdata cluster-trace-gpu-v2023/csv")
        nodes = cfg.nodes or alibaba.DEFAULT_NODES
        capacity = nodes * cfg.gpus_per_node * sum(m.compute_slices for m in models) // len(models)
        pods = alibaba.read_pods(trace_dir / cfg.trace_file)
        jobs, factor = alibaba.jobs_from_trace(pods, shares, capacity, cfg.load)
        duration = cfg.duration or math.ceil(jobs[-1].arrival + 1)
        demand = compute_shares(jobs)
        counts = alibaba.summary(jobs)
        header.append(f"workload: Alibaba {cfg.trace_file}, {len(jobs)} GPU pods (the oldest "
                      f"{alibaba.SKIP:.0%} dropped) "
                      f"({', '.join(f'{k} {v}' for k, v in list(counts.items())[:6])}); "
                      f"arrivals compressed {factor:,.0f}x to load {cfg.load}")
        layout = cfg.layout or "demand"
    elif cfg.workload == "synthetic":
        nodes = cfg.nodes or 100
        duration = cfg.duration or 4 * 3600.0
        capacity = nodes * cfg.gpus_per_node * sum(m.compute_slices for m in models) // len(models)
        mix = parse_mix(cfg.mix)
        burst = Burst.parse(cfg.burst) if cfg.burst else None
        jobs = synthetic(shares, capacity, cfg.load, duration, mix, cfg.mean_lifetime, cfg.lifetime, cfg.seed, burst)
        demand = mix_shares(mix, models[0])
        header.append(f"workload: synthetic, {len(jobs)} pods, mix {cfg.mix}, load {cfg.load}, "
                      f"{cfg.lifetime} lifetimes mean {cfg.mean_lifetime:g}s"
                      + (f", burst {cfg.burst}" if burst else ""))
        layout = cfg.layout or "all-balanced"
    else:
        raise ValueError(f"--workload must be synthetic or alibaba, got {cfg.workload!r}")
    classes = parse_priorities(cfg.priorities) if cfg.priorities else ()
    if classes:
        jobs = assign_priorities(jobs, classes, cfg.seed)
        header.append("priority classes: " + ", ".join(f"{c.name} ({c.value}) {c.share:.0%}" for c in classes)
                      + f"; preempted pods hold their slices {cfg.mech.grace_period:g}s")
    spec = ClusterSpec(nodes, cfg.gpus_per_node, models, layout)
    try:
        cluster = SimCluster(spec, demand)
    except LayoutError as exc:
        raise ValueError(str(exc)) from exc
    unknown = [p for p in cfg.policies if p not in KNOWN_POLICIES]
    if unknown or not cfg.policies:
        raise ValueError(f"--policies: unknown {unknown}; choose from {','.join(KNOWN_POLICIES)}")
    per_model = "; ".join(f"{m}: " + ", ".join(f"{n}x " + "+".join(one) if n > 1 else "+".join(one)
                                               for one, n in Counter(ls).items())
                          for m, ls in cluster.layouts.items())
    header.append(f"cluster: {nodes} nodes x {cfg.gpus_per_node} GPUs ({', '.join(cfg.gpus)}), layout {layout} "
                  f"[{per_model}], {cluster.compute_capacity:,} compute slices")
    header.append(f"run: {duration:,.0f} s simulated, seed {cfg.seed}, restart {cfg.mech.restart_delay:g}s, "
                  f"retry {cfg.mech.retry_interval:g}s, reconcile {cfg.mech.reconcile_interval:g}s, "
                  f"{cfg.mech.feasible_nodes} nodes per filter call")
    if cfg.aging is not None:
        if not cfg.aging >= 0:
            raise ValueError(f"--aging must be >= 0 seconds (inf: never), got {cfg.aging:g}")
        header.append(f"policy: mig-extender's aging {cfg.aging:g} s (default {PlanSettings.aging:g})")
    return Prepared(spec, jobs, duration, demand, header, cfg.aging)


def run_one(prep: Prepared, policy: str, mech: Mechanics,
            progress: Callable[[float], None] | None = None) -> RunResult:
    started = time.perf_counter()
    cpu = time.process_time()
    if policy in ("bound", "bound-mig"):
        result = run_bound(SimCluster(prep.spec, prep.demand), prep.jobs, prep.duration, mech.samples, progress,
                           geometry=policy == "bound-mig")
    elif policy in repartition.POLICIES:
        result = repartition.run_policy(prep.spec, prep.jobs, policy, prep.duration, mech, prep.demand, progress,
                                        aging=prep.aging)
    else:
        result = run_policy(prep.spec, prep.jobs, policy, prep.duration, mech, prep.demand, progress,
                            aging=prep.aging)
    result.metrics["sim_seconds"] = round(time.perf_counter() - started, 2)
    result.metrics["sim_cpu_seconds"] = round(time.process_time() - cpu, 2)
    return result


# -- parallel runs (fork: workers inherit the prepared stream instead of unpickling it) ---------

_SHARED: dict[str, Any] = {}


def _worker(index: int, policy: str) -> RunResult:
    bar = _SHARED["progress"]

    def report(fraction: float) -> None:
        bar[index] = fraction

    return run_one(_SHARED["prep"], policy, _SHARED["mech"], report)


class _Bar:
    def __init__(self, policies: Sequence[str], stream: Any) -> None:
        self.policies, self.stream, self.last = policies, stream, 0.0

    def draw(self, fractions: Sequence[float], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        parts = [f"{p} {100 * f:3.0f}%" for p, f in zip(self.policies, fractions, strict=True)]
        self.stream.write("\r\x1b[2K" + "simulating: " + " | ".join(parts))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\x1b[2K")
        self.stream.flush()


def run_all(prep: Prepared, policies: Sequence[str], mech: Mechanics, jobs: int = 0,
            progress: bool = False) -> dict[str, RunResult]:
    """Every policy on ``prep``; results in the order of ``policies``."""
    jobs = jobs or min(len(policies), os.cpu_count() or 1)
    bar = _Bar(policies, sys.stderr) if progress else None
    if jobs <= 1 or len(policies) == 1 or "fork" not in multiprocessing.get_all_start_methods():
        out = {}
        fractions = [0.0] * len(policies)
        for i, policy in enumerate(policies):
            def report(fraction: float, i: int = i) -> None:
                fractions[i] = fraction
                if bar:
                    bar.draw(fractions)
            out[policy] = run_one(prep, policy, mech, report)
        if bar:
            bar.close()
        return out
    ctx = multiprocessing.get_context("fork")
    shared = ctx.Array("d", len(policies), lock=False)
    _SHARED.update(prep=prep, mech=mech, progress=shared)
    try:
        with ctx.Pool(jobs) as pool:
            pending = [pool.apply_async(_worker, (i, p)) for i, p in enumerate(policies)]
            while not all(r.ready() for r in pending):
                if bar:
                    bar.draw(list(shared))
                time.sleep(0.05)
            results = [r.get() for r in pending]
    finally:
        _SHARED.clear()
        if bar:
            bar.close()
    return dict(zip(policies, results, strict=True))


# -- the command ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    d, m = SimConfig(), Mechanics()
    p.add_argument("--workload", choices=("synthetic", "alibaba"), default=d.workload,
                   help="synthetic: a seeded stream drawn from --mix and --load; alibaba: replay --trace-file "
                        "(default: %(default)s)")
    p.add_argument("--trace-dir", metavar="DIR", default="",
                   help="Alibaba cluster-trace-gpu-v2023 CSVs (default: ../shared/data/alibaba-gpu-v2023)")
    p.add_argument("--trace-file", metavar="CSV", default=d.trace_file,
                   help="pod list of the trace to replay (default: %(default)s)")
    p.add_argument("--nodes", type=int, default=0, help="nodes (default 100)")
    p.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node, metavar="G",
                   help="GPUs per node (default: %(default)s)")
    p.add_argument("--gpu", default=",".join(d.gpus), metavar="MODEL[,MODEL]",
                   help="GPU model(s); several alternate by node (see `mig-extender profiles`; default: %(default)s)")
    p.add_argument("--layout", default="", metavar="NAME",
                   help=f"per-GPU MIG layout: {', '.join(LAYOUT_NAMES)} (default all-balanced; alibaba: demand)")
    p.add_argument("--load", type=float, default=d.load,
                   help="offered compute-slice demand / capacity (default: %(default)s)")
    p.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                   help="simulated time (default 4 h; alibaba: the whole rescaled trace)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the random choices: pod stream, priority classes (default: %(default)s)")
    p.add_argument("--policies", default=",".join(ALL_POLICIES),
                   help="comma-separated subset of " + ",".join(KNOWN_POLICIES) + " (default: %(default)s)")
    p.add_argument("--aging", type=float, default=None, metavar="SECONDS",
                   help="mig-extender's aging (serve and reconcile --aging): a pod pending this long outranks "
                        "younger pods queued for a larger type it could take "
                        f"(default: {PlanSettings.aging:g}; inf: never)")
    p.add_argument("--mix", default=d.mix,
                   help="synthetic profile mix PROFILE=WEIGHT,... (1g or 1g.10gb; default: %(default)s)")
    p.add_argument("--mean-lifetime", type=float, default=d.mean_lifetime, metavar="SECONDS",
                   help=f"mean run time of a synthetic pod (default: {d.mean_lifetime:g})")
    p.add_argument("--lifetime", choices=("exp", "lognormal"), default=d.lifetime,
                   help="distribution of synthetic run times (default: %(default)s)")
    p.add_argument("--burst", default="", metavar="PROFILE:COUNT[@SECONDS]",
                   help="extra pods of one profile arriving within 60 s (default: mid-run)")
    p.add_argument("--priorities", default="", metavar="NAME[:PRIORITY]=SHARE,...",
                   help="priority classes, e.g. high=0.2 (20%% of jobs at priority 1000, the rest default 0); "
                        "the report adds time to run per class and preemptions")
    p.add_argument("--grace-period", type=float, default=m.grace_period, metavar="SECONDS",
                   help=f"how long a preempted pod keeps its slices (default: {m.grace_period:g})")
    p.add_argument("--restart-delay", type=float, default=m.restart_delay, metavar="SECONDS",
                   help=f"from a pod's delete to its replacement's creation (default: {m.restart_delay:g})")
    p.add_argument("--retry-interval", type=float, default=m.retry_interval, metavar="SECONDS",
                   help=f"kube-scheduler's retry of a pending pod (default: {m.retry_interval:g})")
    p.add_argument("--reconcile-interval", type=float, default=m.reconcile_interval, metavar="SECONDS",
                   help=f"between reconciler passes (default: {m.reconcile_interval:g})")
    p.add_argument("--feasible-nodes", type=int, default=m.feasible_nodes, metavar="K",
                   help="nodes with a free slice one filter call sees (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=0,
                   help="worker processes (default: one per core, at most one per policy)")
    p.add_argument("--json", action="store_true", help="print one JSON object {policy: {metric: value}}")
    p.add_argument("--plot", metavar="FILE.png", default="",
                   help="pods waiting, restarts and useful utilisation over time, per policy "
                        "(needs the [plot] extra: pip install 'mig-extender[plot]')")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    mech = Mechanics(restart_delay=args.restart_delay, retry_interval=args.retry_interval,
                     reconcile_interval=args.reconcile_interval, feasible_nodes=args.feasible_nodes,
                     grace_period=args.grace_period)
    if (min(mech.restart_delay, mech.retry_interval, mech.grace_period) < 0 or mech.reconcile_interval <= 0
            or mech.feasible_nodes < 1):
        raise ValueError("delays must be >= 0, --reconcile-interval > 0 and --feasible-nodes >= 1")
    return SimConfig(
        workload=args.workload, trace_dir=args.trace_dir, trace_file=args.trace_file, nodes=args.nodes,
        gpus_per_node=args.gpus_per_node, gpus=tuple(g.strip() for g in args.gpu.split(",") if g.strip()),
        layout=args.layout, load=args.load, duration=args.duration, seed=args.seed, mix=args.mix,
        mean_lifetime=args.mean_lifetime, lifetime=args.lifetime, burst=args.burst, priorities=args.priorities,
        policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()), mech=mech, aging=args.aging,
    )


def plot_title(cfg: SimConfig, prep: Prepared) -> str:
    """One short line a reader takes in at a glance: workload, cluster, load, seed (the table has the rest)."""
    what = f"Alibaba {cfg.trace_file}" if cfg.workload == "alibaba" else f"synthetic, mix {cfg.mix}"
    spec = prep.spec
    gpus = "+".join(m.name for m in spec.models)
    return (f"{what}: {spec.nodes} nodes x {spec.gpus_per_node} {gpus}, {spec.layout} layout, "
            f"load {cfg.load:g}, seed {cfg.seed}" + (f", burst {cfg.burst}" if cfg.burst else ""))


def burst_window(cfg: SimConfig, duration: float) -> tuple[float, float] | None:
    """(start, end) of the synthetic burst in seconds, as workload.synthetic places it; None without one."""
    if not cfg.burst or cfg.workload != "synthetic":
        return None
    burst = Burst.parse(cfg.burst)
    start = duration / 2 if burst.at is None else burst.at
    return start, start + burst.window


def plot_path(given: str) -> str:
    """The file --plot writes (matplotlib adds .png to a name without a suffix, so the message names what it
    wrote); ValueError when it cannot be written, found before the run rather than after it."""
    target = Path(given)
    if target.is_dir():
        raise ValueError(f"--plot {given}: cannot write it (a directory)")
    if not target.parent.is_dir():
        raise ValueError(f"--plot {given}: cannot write it (no directory {target.parent})")
    return given if target.suffix else given + ".png"


def main(args: argparse.Namespace) -> int:
    """Run the simulation the flags describe; ValueError (bad flags) is the caller's exit code 2."""
    cfg = config_from_args(args)
    if args.jobs < 0:
        raise ValueError(f"--jobs must be >= 0 (0: one per core), got {args.jobs}")
    if args.plot:
        path = plot_path(args.plot)
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise ValueError("--plot needs matplotlib: pip install 'mig-extender[plot]'") from exc
    prep = prepare(cfg)
    progress = args.progress or sys.stderr.isatty()
    results = run_all(prep, cfg.policies, cfg.mech, args.jobs, progress)
    if args.json:
        sys.stdout.write(as_json(results))
    else:
        sys.stdout.write(table(results, prep.header))
    if args.plot:
        try:
            plot(results, path, plot_title(cfg, prep), burst_window(cfg, prep.duration))
        except PlotUnavailable as exc:
            raise ValueError(str(exc)) from exc
        except OSError as exc:  # e.g. no permission: the table above is already printed
            raise ValueError(f"--plot {args.plot}: cannot write it ({exc.strerror or exc})") from None
        print(f"plot written to {path}", file=sys.stderr)
    return 0


__all__ = ["ALL_POLICIES", "POLICIES", "Prepared", "SimConfig", "add_arguments", "main", "prepare", "run_all"]
