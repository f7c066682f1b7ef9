"""Presenting a simulation: the side-by-side table, the JSON object and the optional PNG plot.

Must not: compute metrics (stats.py does) or need matplotlib unless a plot is asked for (it is the
optional extra ``mig-extender[plot]``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .stats import RunResult

# (metric, row label, format); the table shows these, --json shows every metric
ROWS: tuple[tuple[str, str, str], ...] = (
    ("placed_fraction", "pods placed", "pct"),
    ("pending_pod_seconds", "pending pod-seconds", "int"),
    ("time_to_run_p50", "time to run p50 (s)", "f1"),
    ("time_to_run_p99", "time to run p99 (s)", "f1"),
    ("requested_utilisation", "requested / capacity", "pct"),
    ("utilisation", "allocated / capacity", "pct"),
    ("waste_slice_fraction", "allocated beyond request", "pct"),
    ("restarts", "restarts (upgrades+restores)", "int"),
    ("upgrades", "  upgrades", "int"),
    ("restores", "  restores", "int"),
    ("restore_delay_p50", "restore delay p50 (s)", "f1"),
    ("waiting_at_end", "never placed, waiting at end", "int"),
    ("in_restart_at_end", "placed, in restart at end", "int"),
    ("stranded_slices", "stranded free slices at end", "int"),
    ("preemptions", "preemptions", "int"),
    ("preempted", "  pods preempted", "int"),
    ("repartitions", "GPUs repartitioned", "int"),
    ("repartitions_per_gpu_hour", "  per GPU per hour", "f3"),
    ("sim_seconds", "simulation run time (s)", "f1"),
)
# per priority class (runs with --priorities): (metric of by_class[class], row label, format)
CLASS_ROWS: tuple[tuple[str, str, str], ...] = (
    ("time_to_run_p50", "time to run p50 (s)", "f1"),
    ("time_to_run_p99", "time to run p99 (s)", "f1"),
    ("preempted", "pods preempted", "int"),
)


class PlotUnavailable(RuntimeError):
    """--plot without matplotlib installed."""


def fmt(value: Any, kind: str) -> str:
    """One metric as the tables show it: ``pct`` (fraction -> %), ``int`` (thousands), else 1 decimal."""
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * float(value):.1f}%"
    if kind == "int":
        return f"{round(float(value)):,}"
    if kind == "f3":
        return f"{float(value):.3f}"
    return f"{float(value):,.1f}"


def table(results: Mapping[str, RunResult], header: Sequence[str] = ()) -> str:
    policies = list(results)
    cols = [max(12, len(p)) for p in policies]
    lines = list(header)
    rows = [(label, [results[p].metrics.get(metric) for p in policies], kind) for metric, label, kind in ROWS]
    rows += _class_rows(results, policies)
    rows += profile_rows(results, policies)
    width = max(len(label) for label, _, _ in rows)
    lines.append("")
    lines.append(" " * width + "  " + "  ".join(p.rjust(c) for p, c in zip(policies, cols, strict=True)))
    for label, values, kind in rows:
        cells = [fmt(v, kind).rjust(c) for v, c in zip(values, cols, strict=True)]
        lines.append(label.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines) + "\n"


def _class_rows(results: Mapping[str, RunResult], policies: Sequence[str]) -> list[tuple[str, list[Any], str]]:
    """Rows per priority class (highest first, as the runs report them); none without classes."""
    classes: list[str] = []
    for p in policies:
        classes += [k for k in results[p].metrics.get("by_class") or {} if k not in classes]
    rows = []
    for klass in classes:
        for metric, label, kind in CLASS_ROWS:
            values = [((results[p].metrics.get("by_class") or {}).get(klass) or {}).get(metric) for p in policies]
            rows.append((f"[{klass}] {label}", values, kind))
    return rows


# per requested profile: (metric of by_profile[profile], row label, format)
PROFILE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("time_to_run_p50", "time to run p50 (s)", "f1"),
    ("time_to_run_p99", "time to run p99 (s)", "f1"),
)


def profile_rows(results: Mapping[str, RunResult] | Mapping[str, Mapping[str, Any]],
                 policies: Sequence[str]) -> list[tuple[str, list[Any], str]]:
    """Rows per requested profile (smallest first); ``results``: RunResults or their metrics."""
    def metrics(p: str) -> Mapping[str, Any]:
        r = results[p]
        return r.metrics if isinstance(r, RunResult) else r

    profiles: list[str] = []
    for p in policies:
        profiles += [k for k in metrics(p).get("by_profile") or {} if k not in profiles]
    rows = []
    for profile in profiles:
        for metric, label, kind in PROFILE_ROWS:
            values = [((metrics(p).get("by_profile") or {}).get(profile) or {}).get(metric) for p in policies]
            rows.append((f"[{profile}] {label}", values, kind))
    return rows


def as_json(results: Mapping[str, RunResult]) -> str:
    return json.dumps({p: r.metrics for p, r in results.items()}, indent=2, sort_keys=False) + "\n"


def plot(results: Mapping[str, RunResult], path: str, title: str = "") -> None:
    """Running pods and utilisation over time, one line per policy, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'mig-extender[plot]'") from exc
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    end = max((r.timeline[-1][0] for r in results.values() if r.timeline), default=0.0)
    unit, scale = ("h", 3600.0) if end > 7200 else ("min", 60.0)
    for policy, result in results.items():
        if not result.timeline:
            continue
        t = [p[0] / scale for p in result.timeline]
        top.plot(t, [p[1] for p in result.timeline], label=policy)
        bottom.plot(t, [100 * p[2] for p in result.timeline], label=policy)
    top.set_ylabel("pods running")
    bottom.set_ylabel("compute slices allocated (%)")
    bottom.set_xlabel(f"time ({unit})")
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
