"""Command lines of the control-plane components, and where their files live. Pure.

One place to read (and review) every flag the test cluster runs with, separate from the code that
starts and stops processes (controlplane.py).

Must not: start processes, write files or talk to the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .binaries import Binaries

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # first address of SERVICE_CIDR: the in-cluster `kubernetes` Service
ISSUER = "https://kubernetes.default.svc.cluster.local"
# The controllers a Deployment/Job/StatefulSet, GC, PDBs and namespaces need (those of the reference
# cluster.sh), plus resourceclaim-controller: it creates a pod's ResourceClaims from its
# ResourceClaimTemplates (without it such a pod stays Pending, no claim generated; DRA tests need it).
# node-lifecycle is deliberately off: fake nodes would otherwise be tainted whenever a
# lease renewal is late, which makes scheduling flaky under load.
CONTROLLERS = (
    "replicaset-controller,deployment-controller,job-controller,cronjob-controller,statefulset-controller,"
    "daemonset-controller,replicationcontroller-controller,garbage-collector-controller,"
    "serviceaccount-controller,serviceaccount-token-controller,namespace-controller,"
    "pod-garbage-collector-controller,disruption-controller,endpoints-controller,endpointslice-controller,"
    "ttl-after-finished-controller,root-ca-certificate-publisher-controller,resourcequota-controller,"
    "clusterrole-aggregation-controller,resourceclaim-controller"
)


class PortsLike(Protocol):
    etcd: int
    etcd_peer: int
    apiserver: int


@dataclass(frozen=True)
class Layout:
    """Paths inside one cluster's state directory."""

    state_dir: Path

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kubeconfigs(self) -> Path:
        return self.state_dir / "kubeconfigs"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def serving_cert(self) -> tuple[Path, Path]:
        return self.pki / "serving.crt", self.pki / "serving.key"

    @property
    def tokens_file(self) -> Path:
        return self.pki / "tokens.csv"

    def kubeconfig(self, identity: str) -> Path:
        return self.kubeconfigs / f"{identity}.kubeconfig"


def etcd_argv(binaries: Binaries, layout: Layout, ports: PortsLike) -> list[str]:
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    client_url = f"http://127.0.0.1:{ports.etcd}"
    argv = [
        str(binaries.etcd),
        "--name=mig-e2e",
        f"--data-dir={layout.state_dir / 'etcd-data'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=mig-e2e={peer}",
        "--initial-cluster-state=new",
        "--log-level=warn",
        # A lone member still waits one election timeout (default 1 s) before it leads: shorten it.
        "--heartbeat-interval=20",
        "--election-timeout=200",
    ]
    if not binaries.etcd_version.startswith("3.4"):
        argv.append("--unsafe-no-fsync")  # a throw-away cluster: durability buys nothing, fsync costs
    return argv


def apiserver_argv(binaries: Binaries, layout: Layout, ports: PortsLike, verbosity: int) -> list[str]:
    cert, key = layout.serving_cert
    argv = [
        str(binaries.kube("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={layout.state_dir / 'apiserver-certs'}",
        f"--tls-cert-file={cert}",
        f"--tls-private-key-file={key}",
        # three ways in: static tokens (built-in identities), client certificates (any user a test
        # invents), ServiceAccount tokens (TokenRequest)
        f"--client-ca-file={layout.ca_file}",
        f"--token-auth-file={layout.tokens_file}",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={layout.pki / 'sa.pub'}",
        f"--service-account-signing-key-file={layout.pki / 'sa.key'}",
        # A front-proxy CA, only so that the controller-manager and schedulers find one in
        # extension-apiserver-authentication instead of logging an error every few seconds.
        f"--requestheader-client-ca-file={layout.ca_file}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--endpoint-reconciler-type=none",  # no kube-proxy, no endpoints to reconcile
        "--allow-privileged=true",
        "--profiling=false",
        f"--v={verbosity}",
    ]
    if binaries.etcd_lacks_progress_notify:
        argv.append("--feature-gates=WatchList=false")
    return argv


def _serving_flags(layout: Layout, port: int, kubeconfig: Path) -> list[str]:
    cert, key = layout.serving_cert
    return [
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={cert}",
        f"--tls-private-key-file={key}",
        # delegated authn/authz, so /metrics answers the admin token (and not anonymous callers)
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
    ]


def controller_manager_argv(binaries: Binaries, layout: Layout, port: int, verbosity: int) -> list[str]:
    kubeconfig = layout.kubeconfig("kube-controller-manager")
    return [
        str(binaries.kube("kube-controller-manager")),
        f"--kubeconfig={kubeconfig}",
        *_serving_flags(layout, port, kubeconfig),
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={layout.pki / 'sa.key'}",
        f"--root-ca-file={layout.ca_file}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--controllers={CONTROLLERS}",
        "--profiling=false",
        f"--v={verbosity}",
    ]


def scheduler_argv(binaries: Binaries, layout: Layout, config: Path, port: int, verbosity: int) -> list[str]:
    return [
        str(binaries.kube("kube-scheduler")),
        f"--config={config}",
        *_serving_flags(layout, port, layout.kubeconfig("kube-scheduler")),
        "--leader-elect=false",
        f"--v={verbosity}",
    ]


def default_scheduler_config(kubeconfig: Path) -> dict[str, object]:
    """The stock profile (`default-scheduler`) with only what a second scheduler beside it needs."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": False},
    }
