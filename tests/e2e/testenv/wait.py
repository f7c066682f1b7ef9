"""Polling helpers for tests: wait for a condition with a deadline and a useful failure message.

Must not: hide the last observed state; a timeout says what was seen, not just "timed out".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """An AssertionError, so pytest shows it as a failed expectation."""


def wait_for(
    probe: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Call `probe` until it returns something truthy and return that; exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}; last saw: {last!r}")
        time.sleep(interval)


def stays(probe: Callable[[], bool], *, duration: float, interval: float = 0.2, what: str = "condition") -> None:
    """Assert `probe()` holds on every poll for `duration` seconds (for "stays Pending"-style checks)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert probe(), f"{what} stopped holding"
        time.sleep(interval)
