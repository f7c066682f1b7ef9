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
    ("pending_before_first_start", "  of which before the first start", "int"),
    ("time_to_run_p50", "time to run p50 (s)", "f1"),
    ("time_to_run_p99", "time to run p99 (s)", "f1"),
    ("wait_per_pod_p99", "wait per pod p99, every wait (s)", "f1"),
    ("requested_utilisation", "requested / capacity", "pct"),
    ("utilisation", "allocated / capacity", "pct"),
    ("waste_slice_fraction", "allocated beyond request", "pct"),
    ("restarts", "restarts (upgrades+restores)", "int"),
    ("upgrades", "  upgrades", "int"),
    ("restores", "  restores", "int"),
    ("restores_no_taker", "    freeing a slice nobody queued could use", "int"),
    ("reupgrades", "  upgrades of a pod restored before", "int"),
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


# one look per policy, so lines that coincide stay visible: a distinct colour, dash and marker each, drawn
# thinner the later they come (the first one drawn is the widest, underneath)
_STYLES = (("tab:gray", "-"), ("tab:orange", "--"), ("tab:blue", "-"), ("tab:green", "-."), ("tab:purple", ":"),
           ("tab:red", "--"), ("tab:brown", "-."), ("tab:cyan", ":"))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot(results: Mapping[str, RunResult], path: str, title: str = "",
         burst: tuple[float, float] | None = None) -> None:
    """What differs between policies over time, as a PNG: pods waiting (pending or restarting), restarts
    so far and useful utilisation (requested / capacity), one styled line per policy; ``burst``
    (start, end) in seconds is shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'mig-extender[plot]'") from exc
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    end = max((r.timeline[-1][0] for r in results.values() if r.timeline), default=0.0)
    unit, scale = ("h", 3600.0) if end > 7200 else ("min", 60.0)
    panels = ((lambda p: p[3], "pods waiting\n(pending + restarting)"),
              (lambda p: p[5], "restarts so far\n(upgrades + restores)"),
              (lambda p: 100 * p[4], "useful utilisation (%)\n(requested / capacity)"))
    drawn = [(policy, r) for policy, r in results.items() if r.timeline]
    for i, (policy, result) in enumerate(drawn):
        colour, dash = _STYLES[i % len(_STYLES)]
        t = [p[0] / scale for p in result.timeline]
        every = max(len(t) // 12, 1)
        for ax, (value, _) in zip(axes, panels, strict=True):
            ax.plot(t, [value(p) for p in result.timeline], label=policy, color=colour, linestyle=dash,
                    linewidth=max(2.6 - 0.4 * i, 1.0), marker=_MARKERS[i % len(_MARKERS)], markevery=(i, every),
                    markersize=5, alpha=0.9, zorder=2 + i)
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
        if burst is not None:
            ax.axvspan(burst[0] / scale, burst[1] / scale, color="tab:red", alpha=0.12, zorder=1,
                       label="burst" if ax is axes[0] else None)
    axes[-1].set_xlabel(f"time ({unit})")
    axes[0].legend(loc="upper left", fontsize=8, ncol=min(len(drawn) + 1, 6), framealpha=0.9)
    if title:
        fig.suptitle(title, fontsize=10, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
