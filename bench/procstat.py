"""Reading /proc for the benchmarks: a process's children, CPU time and resident memory.

The benchmarks start ``mig-extender`` under gunicorn, whose state lives in its one worker (a child of
the arbiter they started), so memory and CPU are read per process and the worker found by parentage.
Every function answers 0 or [] for a process that is gone, rather than failing a long run at its end.
"""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
