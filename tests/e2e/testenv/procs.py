"""Start, identify, wait for and stop the processes of the test control plane.

Every process gets its own session (so its process group is its PID) and a record of its kernel
start time. Stopping signals that process group only while the PID still belongs to the process we
started (PID + start time from /proc match): a recycled PID is never signalled, and nothing is ever
found by name. Records are JSON-serialisable so `python -m tests.e2e.testenv down` can stop a cluster
that another Python process started.

Must not: know anything about Kubernetes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
POLL_S = 0.1


class StartupError(RuntimeError):
    """A component exited or never became ready; the message carries the tail of its log."""

    def __init__(self, message: str, *, port_clash: bool = False) -> None:
        super().__init__(message)
        self.port_clash = port_clash


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now.

    The port is released before the component binds it, so another program could take it in between;
    callers retry on "address already in use" (see StartupError.port_clash) instead of holding sockets.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_ticks(pid: int) -> int | None:
    """Kernel start time of `pid` (clock ticks since boot), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRecord:
    """What identifies a started process across Python processes."""

    name: str
    pid: int
    start_ticks: int
    log: str
    argv: tuple[str, ...] = field(default=())

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),  # type: ignore[arg-type]
            start_ticks=int(data["start_ticks"]),  # type: ignore[arg-type]
            log=str(data["log"]),
            argv=tuple(data.get("argv") or ()),  # type: ignore[arg-type]
        )


class ManagedProcess:
    """One started component. Holds the Popen (when this Python process started it) to reap it."""

    def __init__(self, record: ProcessRecord, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.record = record
        self.popen = popen

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def log(self) -> Path:
        return Path(self.record.log)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.record.alive()

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout` s; only if it is still ours."""
        if not self.alive():
            self._reap()
            return
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not self.record.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.record.pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and self.alive():
                time.sleep(0.05)
            if not self.alive():
                break
        self._reap()

    def kill(self) -> None:
        """SIGKILL the process group at once: a crash, for fault tests (nothing gets to clean up)."""
        if self.record.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.record.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=1)


def _die_with_parent() -> None:
    """Runs in the child: SIGKILL it when the thread that forked it dies.

    A safety net for a pytest that is itself SIGKILLed (no finalizer, no atexit). Only for processes
    started from the main thread of a long-lived process; never for `testenv up`, whose cluster must
    outlive the command.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> ManagedProcess:
    """Start `argv` in a new session, stdout+stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    ticks = _start_ticks(popen.pid)
    record = ProcessRecord(name, popen.pid, ticks if ticks is not None else -1, str(log), tuple(argv))
    return ManagedProcess(record, popen)


def wait_ready(proc: ManagedProcess, ready: Callable[[], bool], timeout: float) -> float:
    """Poll `ready()` until true; raise StartupError if the process exits or `timeout` passes.

    Returns the seconds waited. `ready` must be cheap and must not raise for "not yet".
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if ready():
            return time.monotonic() - started
        if not proc.alive():
            tail = proc.log_tail()
            raise StartupError(
                f"{proc.name} exited with {proc.exit_code()} while starting; {proc.log}:\n{tail}",
                port_clash="address already in use" in tail,
            )
        if time.monotonic() > deadline:
            raise StartupError(f"{proc.name} not ready after {timeout:.0f} s; {proc.log}:\n{proc.log_tail()}")
        time.sleep(POLL_S)
