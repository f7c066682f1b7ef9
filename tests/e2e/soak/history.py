"""The soak's history: every action, fault, recovery and observation, with the time it happened.

Jepsen-style: the run is judged from this record, and a violation is reported with the entries that led
to it. Everything goes to a JSON-lines file as it happens (a run killed half-way still leaves its history);
the last few thousand entries are also kept in memory for the context of a violation.

Must not: decide anything; it records.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

KEEP_IN_MEMORY = 20_000


@dataclass(frozen=True)
class Entry:
    """One line of the history. ``t``: seconds since the run started (monotonic clock)."""

    t: float
    kind: str  # action, skip, error, fault, recover, observe, check, violation, phase
    name: str
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        detail = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.t:8.2f}s {self.kind:<9} {self.name} {detail}".rstrip()

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "kind": self.kind, "what": self.name, **self.detail}


class History:
    """Thread-safe: the driver, the pod watch and fault threads all record into one history."""

    def __init__(self, path: Path | None, seed: int) -> None:
        self.seed = seed
        self.started = time.monotonic()
        self.path = path
        self._lock = threading.Lock()
        self._recent: deque[Entry] = deque(maxlen=KEEP_IN_MEMORY)
        self._file: TextIO | None = path.open("w", encoding="utf-8") if path is not None else None
        self.counts: Counter[str] = Counter()

    def now(self) -> float:
        """Seconds since the run started: the ``t`` of an entry recorded now."""
        return time.monotonic() - self.started

    def record(self, kind: str, name: str, /, **detail: Any) -> Entry:
        entry = Entry(self.now(), kind, name, detail)
        with self._lock:
            self._recent.append(entry)
            self.counts[f"{kind}:{name}"] += 1
            if self._file is not None:
                self._file.write(json.dumps(entry.to_json(), default=str) + "\n")
        return entry

    def recent(self, count: int = 40, kinds: tuple[str, ...] = ()) -> list[Entry]:
        """The last ``count`` entries (of ``kinds``, when given), oldest first."""
        with self._lock:
            entries = [e for e in self._recent if not kinds or e.kind in kinds]
        return entries[-count:]

    def mentioning(self, text: str, count: int = 20) -> list[Entry]:
        """The last ``count`` entries whose name or details mention ``text`` (a pod, node or rule name)."""
        with self._lock:
            hits = [e for e in self._recent if text in e.name or any(text in str(v) for v in e.detail.values())]
        return hits[-count:]

    def total(self, kind: str) -> int:
        with self._lock:
            return sum(n for key, n in self.counts.items() if key.startswith(f"{kind}:"))

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
