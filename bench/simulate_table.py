"""The policy comparison of bench/README.md: `mig-extender simulate` on the standard scenarios.

Synthetic (100 nodes x 8 A100-40GB, all-balanced, mix 1g/2g/3g = 0.5/0.3/0.2, exponential lifetimes
of mean 30 min, 4 h) at load 0.7, 0.9 and 1.1 and with a burst of 1,500 1g pods at 0.9; the Alibaba
trace (100 nodes, demand layout) at 0.7, 0.9 and 1.1. Prints one markdown table per scenario, or
everything as JSON. Every number comes from the same code path as the command.

    python bench/simulate_table.py [--json] [--only syn-0.9,ali-0.7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mig_extender.sim.report import ROWS, fmt  # noqa: E402
from mig_extender.sim.runner import SimConfig, prepare, run_all  # noqa: E402

SCENARIOS: dict[str, SimConfig] = {
    "syn-0.7": SimConfig(load=0.7),
    "syn-0.9": SimConfig(load=0.9),
    "syn-1.1": SimConfig(load=1.1),
    "syn-0.9-burst-1g": SimConfig(load=0.9, burst="1g:1500"),
    "ali-0.7": SimConfig(workload="alibaba", load=0.7),
    "ali-0.9": SimConfig(workload="alibaba", load=0.9),
    "ali-1.1": SimConfig(workload="alibaba", load=1.1),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    out: dict[str, dict] = {}
    for name in names:
        cfg = SCENARIOS[name]
        prep = prepare(cfg)
        results = run_all(prep, cfg.policies, cfg.mech)
        out[name] = {"header": prep.header, "results": {p: r.metrics for p, r in results.items()}}
        if args.json:
            continue
        policies = list(results)
        print(f"\n#### {name}\n")
        print("\n".join(f"- {line}" for line in prep.header))
        print("\n| metric | " + " | ".join(policies) + " |")
        print("|---|" + "---:|" * len(policies))
        for metric, label, kind in ROWS:
            print(f"| {label.strip()} | " + " | ".join(fmt(results[p].metrics.get(metric), kind) for p in policies)
                  + " |")
    if args.json:
        print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                          "scenarios": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
