"""The object the e2e tests hold: a control plane, its fake kubelet and a few namespace helpers.

Must not: know about mig-extender (extender.py starts it), or assert anything.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .binaries import Binaries
from .controlplane import ControlPlane
from .fakekubelet import FakeKubelet
from .procs import ManagedProcess
from .wait import wait_for

log = logging.getLogger("testenv.cluster")


class E2ECluster:
    def __init__(self, control_plane: ControlPlane, fake_kubelet: FakeKubelet | None) -> None:
        self.control_plane = control_plane
        self._fake_kubelet = fake_kubelet
        self._api = control_plane.api_client()
        self.core = client.CoreV1Api(self._api)
        self.apps = client.AppsV1Api(self._api)

    @classmethod
    def start(
        cls,
        state_dir: Path | None = None,
        *,
        binaries: Binaries | None = None,
        die_with_parent: bool = True,
        kubelet: bool = True,
        verbosity: int = 2,
    ) -> E2ECluster:
        """Start a control plane (in a fresh temp dir unless given) and, unless kubelet=False, a fake kubelet."""
        state_dir = state_dir or Path(tempfile.mkdtemp(prefix="mig-e2e-"))
        plane = ControlPlane(state_dir, binaries, verbosity=verbosity, die_with_parent=die_with_parent)
        plane.start()
        fake: FakeKubelet | None = None
        try:
            if kubelet:
                fake = FakeKubelet(plane.kubeconfig)
                fake.start()
            return cls(plane, fake)
        except BaseException:
            if fake is not None:
                fake.stop()
            plane.stop()
            raise

    def stop(self, *, remove_state: bool = False) -> None:
        if self._fake_kubelet is not None:
            self._fake_kubelet.stop()
        self._api.close()
        self.control_plane.stop(remove_state=remove_state)

    # ---- what tests use most -------------------------------------------------------------------------
    @property
    def fake_kubelet(self) -> FakeKubelet:
        if self._fake_kubelet is None:
            raise RuntimeError("this cluster was started without a fake kubelet")
        return self._fake_kubelet

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def scheduler_kubeconfig(self) -> Path:
        return self.control_plane.scheduler_kubeconfig

    @property
    def server(self) -> str:
        return self.control_plane.server

    @property
    def state_dir(self) -> Path:
        return self.control_plane.state_dir

    @property
    def startup_seconds(self) -> float:
        return self.control_plane.startup_seconds or 0.0

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A new kubernetes.client.ApiClient (admin by default); close it when done."""
        return self.control_plane.api_client(kubeconfig)

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        return self.control_plane.user_kubeconfig(user, groups)

    def service_account_kubeconfig(self, namespace: str, name: str, **kwargs: Any) -> Path:
        return self.control_plane.service_account_kubeconfig(namespace, name, **kwargs)

    def start_mig_scheduler(self, config_path: Path) -> ManagedProcess:
        """(Re)start the second scheduler ("mig-scheduler") from a KubeSchedulerConfiguration file."""
        return self.control_plane.start_mig_scheduler(config_path)

    def stop_mig_scheduler(self) -> None:
        self.control_plane.stop_mig_scheduler()

    def start_scheduler(self, name: str, config_path: Path) -> ManagedProcess:
        """(Re)start any further kube-scheduler; `name` names its process and `logs/<name>.log`."""
        return self.control_plane.start_scheduler(name, config_path)

    def stop_scheduler(self, name: str) -> None:
        self.control_plane.stop_scheduler(name)

    def restart_apiserver(self, down: float) -> None:
        """Take kube-apiserver away for ``down`` seconds, then bring it back on the same address."""
        self.control_plane.stop_apiserver()
        time.sleep(down)
        self.control_plane.start_apiserver()

    def stop_apiserver(self) -> None:
        self.control_plane.stop_apiserver()

    def start_apiserver(self) -> None:
        self.control_plane.start_apiserver()

    def log_path(self, component: str) -> Path:
        return self.control_plane.logs_dir / f"{component}.log"

    # ---- namespaces ----------------------------------------------------------------------------------
    def create_namespace(self, prefix: str = "e2e", labels: dict[str, str] | None = None) -> str:
        """A fresh namespace, returned once pods can be created in it (its default ServiceAccount exists)."""
        name = f"{prefix[:40].rstrip('-')}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
        wait_for(
            lambda: self.core.read_namespaced_service_account("default", name),
            timeout=30,
            what=f"ServiceAccount {name}/default",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete every pod now (grace 0) so none is scheduled onto a later test's nodes, then the namespace."""
        try:
            self.core.delete_collection_namespaced_pod(name, grace_period_seconds=0, _preload_content=False)
            self.core.delete_namespace(name, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
