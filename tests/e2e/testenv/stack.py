"""The full mig-extender stack on the e2e control plane, for lifecycle and fault tests.

The rule CRD, an extender keeping rules as MigSubstitution objects, a kube-scheduler with its own profile
name (so it never competes with the session's mig-scheduler), the webhook over HTTPS behind a real
MutatingWebhookConfiguration (failurePolicy Ignore) and the leader-elected reconciler; each can be
stopped and started on its own. Pods opt in through the namespace label the webhook selects.

Must not: assert anything (tests do).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import requests
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from . import procs
from .binaries import REPO_ROOT
from .cluster import E2ECluster
from .extender import ExtenderProcess, cli_argv
from .wait import wait_for
from .workloads import make_pod

SCHEDULER = "mig-lifecycle"
NS_LABEL = "mig-e2e/lifecycle"
GROUP, VERSION, PLURAL = "mig-extender.io", "v1alpha1", "migsubstitutions"
NO_PROXY = {"http": "", "https": ""}


class Stack:
    """Starts and stops the components one by one, so tests can kill and restart them."""

    def __init__(self, cluster: E2ECluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.extender: ExtenderProcess | None = None
        self.procs: dict[str, procs.ManagedProcess] = {}
        self.webhook_port = 0
        # environment every reconciler gets unless start_reconciler is given its own (the soak's repartition
        # settings, so reconcilers restarted by faults run as the first ones did)
        self.reconciler_env: dict[str, str] = {}

    def start(self, extender_env: dict[str, str] | None = None) -> Stack:
        """Everything, in dependency order; stop_all() undoes it (also after a failed start)."""
        try:
            self.apply_crd()
            self.start_extender(extender_env)
            self.start_scheduler()
            self.start_webhook()
            self.start_reconciler()
        except BaseException:
            self.stop_all()
            raise
        return self

    def run_holder(self, namespace: str, resource: str, name: str = "holder") -> None:
        """A pod on the stack's scheduler taking one ``resource`` slice, Running."""
        self.core.create_namespaced_pod(namespace, make_pod(name, resources={resource: "1"}, scheduler_name=SCHEDULER))
        wait_for(lambda: self.core.read_namespaced_pod(name, namespace).status.phase == "Running", timeout=60,
                 what=f"{name} Running")

    # -- components -----------------------------------------------------------------------------

    def apply_crd(self) -> None:
        crd = yaml.safe_load((REPO_ROOT / "manifests/base/crd.yaml").read_text())
        ext = client.ApiextensionsV1Api(self.api)
        with contextlib.suppress(ApiException):
            ext.create_custom_resource_definition(crd)

        def established() -> bool:
            got = ext.read_custom_resource_definition(crd["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or [])

        wait_for(established, timeout=30, what="MigSubstitution CRD established")
        with contextlib.suppress(ApiException):
            self.core.create_namespace({"metadata": {"name": "mig-extender"}})

    def start_extender(self, env: dict[str, str] | None = None) -> None:
        self.extender = ExtenderProcess(
            self.cluster.kubeconfig,
            self.cluster.log_path("lifecycle-extender"),
            env=env,
            args=("--rule-store", "kube", "--log-level", "debug"),
        )
        self.extender.start()

    def stop_extender(self) -> None:
        if self.extender is not None:
            self.extender.stop()

    def crash_extender(self) -> None:
        """SIGKILL the extender; ``revive_extender`` brings it back where the scheduler expects it."""
        if self.extender is not None:
            self.extender.crash()

    def revive_extender(self) -> None:
        """Start the extender again on its old port, so the running scheduler's extender URL stays valid."""
        if self.extender is not None:
            self.extender.start(port=self.extender.port)

    def start_scheduler(self) -> None:
        """(Re)start the scheduler, its extender entry pointing at the current extender."""
        config = self.workdir / "scheduler.yaml"
        self._run(cli_argv("scheduler-config", "--url", self.extender.url, "--no-leader-elect", "--scheduler-name",
                           SCHEDULER, "--out", str(config)))
        self.cluster.start_scheduler("lifecycle-scheduler", config)

    def start_webhook(self) -> None:
        certs = self.workdir / "certs"
        bundle = self._run(cli_argv("certs", "--out", str(certs))).strip()
        self.webhook_port = port = procs.free_port()
        argv = cli_argv(
            "webhook",
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            "--bind",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(certs / "tls.crt"),
            "--tls-key",
            str(certs / "tls.key"),
        )
        self._start(
            "lifecycle-webhook", argv, lambda: self._get(f"https://127.0.0.1:{port}/readyz", str(certs / "ca.crt"))
        )
        self.register_webhook("mig-lifecycle", f"https://127.0.0.1:{port}/mutate", bundle, NS_LABEL)

    def register_webhook(self, name: str, url: str, bundle: str, label: str) -> None:
        adm = client.AdmissionregistrationV1Api(self.api)
        body = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": f"{name}.mig-extender.io",
                    "clientConfig": {"url": url, "caBundle": bundle},
                    "rules": [
                        {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
                    ],
                    "failurePolicy": "Ignore",
                    "sideEffects": "NoneOnDryRun",  # as manifests/base/webhook.yaml: the claim is a write
                    "timeoutSeconds": 3,
                    "admissionReviewVersions": ["v1"],
                    "reinvocationPolicy": "Never",
                    "namespaceSelector": {"matchLabels": {label: "true"}},
                }
            ],
        }
        with contextlib.suppress(ApiException):
            adm.delete_mutating_webhook_configuration(name)
        adm.create_mutating_webhook_configuration(body)

    def stop_webhook(self) -> None:
        self._stop("lifecycle-webhook")

    def start_reconciler(self, identity: str = "reconciler-1", env: dict[str, str] | None = None,
                         module: str = "mig_extender.cli", log: str = "") -> None:
        """``env``: extra environment (e.g. MIG_EXTENDER_RESTARTABLE_OWNERS) on top of this process's;
        ``module``: a wrapper running the same CLI (testenv.slowlist); ``log``: a log name of its own (the
        default, lifecycle-<identity>, is shared by every stack and restart of the session)."""
        env = env if env is not None else (self.reconciler_env or None)
        port = procs.free_port()
        argv = cli_argv(
            "reconcile",
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            "--metrics-bind",
            f"127.0.0.1:{port}",
            "--identity",
            identity,
            # the stack's scheduler is not one of the default --requeue-schedulers: without this no parked
            # pod of the stack (nor of the soak) was requeued
            "--requeue-schedulers",
            SCHEDULER,
            "--log-level",
            "debug",
            module=module,
        )
        self._start(f"lifecycle-{identity}", argv, lambda: self._get(f"http://127.0.0.1:{port}/readyz", False),
                    env={**os.environ, **env} if env else None, log=log)

    def stop_reconciler(self, identity: str = "reconciler-1") -> None:
        """A graceful stop (SIGTERM): the reconciler releases its Lease on the way out."""
        self._stop(f"lifecycle-{identity}")

    def kill_reconciler(self, identity: str) -> None:
        """A crash: SIGKILL, the Lease is left to expire."""
        proc = self.procs.pop(f"lifecycle-{identity}", None)
        if proc is not None:
            proc.kill()

    def reconcilers(self) -> list[str]:
        """Identities of the reconcilers this stack started and has not stopped."""
        return [name.removeprefix("lifecycle-") for name in self.procs if name.startswith("lifecycle-reconciler")]

    def lease_holder(self) -> str:
        lease = client.CoordinationV1Api(self.api).read_namespaced_lease("mig-extender-reconciler", "mig-extender")
        return lease.spec.holder_identity or ""

    def stop_all(self) -> None:
        self.cluster.stop_scheduler("lifecycle-scheduler")
        for name in list(self.procs):
            self._stop(name)
        self.stop_extender()
        with contextlib.suppress(ApiException):
            client.AdmissionregistrationV1Api(self.api).delete_mutating_webhook_configuration("mig-lifecycle")
        self.api.close()

    def _run(self, argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout

    def _start(self, name: str, argv: list[str], ready: Any, env: dict[str, str] | None = None,
               log: str = "") -> None:
        proc = procs.start(name, argv, self.cluster.log_path(log or name), env=env, cwd=REPO_ROOT,
                           die_with_parent=True)
        self.procs[name] = proc
        procs.wait_ready(proc, ready, 60)

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop()

    @staticmethod
    def _get(url: str, verify: Any) -> bool:
        try:
            return requests.get(url, verify=verify, timeout=2, proxies=NO_PROXY).status_code == 200
        except requests.RequestException:
            return False

    # -- reads ----------------------------------------------------------------------------------

    def rules(self, namespace: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]

    def pods(self, namespace: str, selector: str = "") -> list[Any]:
        return [
            p
            for p in self.core.list_namespaced_pod(namespace, label_selector=selector).items
            if not p.metadata.deletion_timestamp
        ]

    def events(self, namespace: str) -> list[tuple[str, str]]:
        # raw JSON: the client's models reject events written through core/v1 (no eventTime)
        resp = client.EventsV1Api(self.api).list_namespaced_event(namespace, _preload_content=False)
        return [(e["regarding"]["name"], e.get("reason", "")) for e in json.loads(resp.data)["items"]]
