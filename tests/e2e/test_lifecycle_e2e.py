"""The substitution life cycle on the real control plane: rule store, webhook, reconciler, restore.

This module runs its own complete stack, isolated from the other e2e modules: the rule CRD, an
extender keeping rules as MigSubstitution objects, a kube-scheduler with its own profile name (so it
never competes with the session's mig-scheduler), the webhook over HTTPS behind a real
MutatingWebhookConfiguration (failurePolicy Ignore), and the leader-elected reconciler. Pods opt in
through the namespace label the webhook configuration selects.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from mig_extender.resources import ANN_ORIGINAL, ANN_RULE, ANN_SUBSTITUTE

from .testenv import procs
from .testenv.binaries import REPO_ROOT
from .testenv.cluster import E2ECluster
from .testenv.extender import ExtenderProcess, cli_argv
from .testenv.wait import stays, wait_for
from .testenv.workloads import make_pod

SCHEDULER = "mig-lifecycle"
NS_LABEL = "mig-e2e/lifecycle"
MIG_5 = "nvidia.com/mig-1g.5gb"
MIG_10 = "nvidia.com/mig-2g.10gb"
WALKTHROUGH_NODE = {MIG_5: 2, MIG_10: 1, "nvidia.com/mig-3g.20gb": 1}
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

    # -- components -----------------------------------------------------------------------------

    def apply_crd(self) -> None:
        crd = yaml.safe_load((REPO_ROOT / "manifests/crd.yaml").read_text())
        ext = client.ApiextensionsV1Api(self.api)
        with contextlib.suppress(ApiException):
            ext.create_custom_resource_definition(crd)

        def established() -> bool:
            got = ext.read_custom_resource_definition(crd["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or [])

        wait_for(established, timeout=30, what="MigSubstitution CRD established")
        with contextlib.suppress(ApiException):
            self.core.create_namespace({"metadata": {"name": "mig-extender"}})

    def start_extender(self) -> None:
        self.extender = ExtenderProcess(
            self.cluster.kubeconfig,
            self.cluster.log_path("lifecycle-extender"),
            args=("--rule-store", "kube", "--log-level", "debug"),
        )
        self.extender.start()

    def stop_extender(self) -> None:
        if self.extender is not None:
            self.extender.stop()

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
                    "sideEffects": "None",
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

    def start_reconciler(self, identity: str = "reconciler-1") -> None:
        port = procs.free_port()
        argv = cli_argv(
            "reconcile",
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            "--metrics-bind",
            f"127.0.0.1:{port}",
            "--identity",
            identity,
            "--log-level",
            "debug",
        )
        self._start(f"lifecycle-{identity}", argv, lambda: self._get(f"http://127.0.0.1:{port}/readyz", False))

    def stop_reconciler(self, identity: str = "reconciler-1") -> None:
        self._stop(f"lifecycle-{identity}")
        with contextlib.suppress(ApiException):  # hand the Lease over at once (a crash would wait 15 s)
            client.CoordinationV1Api(self.api).delete_namespaced_lease("mig-extender-reconciler", "mig-extender")

    def stop_all(self) -> None:
        self.cluster.stop_scheduler("lifecycle-scheduler")
        for name in list(self.procs):
            self._stop(name)
        self.stop_extender()
        with contextlib.suppress(ApiException):
            client.AdmissionregistrationV1Api(self.api).delete_mutating_webhook_configuration("mig-lifecycle")
        self.api.close()

    def _run(self, argv: list[str]) -> str:
        import subprocess

        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout

    def _start(self, name: str, argv: list[str], ready: Any) -> None:
        proc = procs.start(name, argv, self.cluster.log_path(name), cwd=REPO_ROOT, die_with_parent=True)
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


@pytest.fixture(scope="module")
def stack(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(cluster, tmp_path_factory.mktemp("lifecycle"))
    try:
        s.apply_crd()
        s.start_extender()
        s.start_scheduler()
        s.start_webhook()
        s.start_reconciler()
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def ns(cluster: E2ECluster, stack: Stack) -> Iterator[str]:
    name = cluster.create_namespace(prefix="lifecycle", labels={NS_LABEL: "true"})
    yield name
    cluster.delete_namespace(name)


def deployment(name: str, replicas: int = 1, mig: str = MIG_5, annotations: dict | None = None) -> dict[str, Any]:
    pod = make_pod(name, resources={mig: "1"}, scheduler_name=SCHEDULER, labels={"app": name})
    template = {"metadata": {"labels": {"app": name}, "annotations": annotations or {}}, "spec": pod["spec"]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template},
    }


def running_with(stack: Stack, ns: str, app: str, resource: str) -> list[Any]:
    return [
        p
        for p in stack.pods(ns, f"app={app}")
        if p.status.phase == "Running" and resource in (p.spec.containers[0].resources.limits or {})
    ]


def test_walkthrough_scale_up_is_upgraded_and_restored_when_capacity_frees(
    stack: Stack, ns: str, fleet: Any, cluster: E2ECluster, e2e_report: Any
) -> None:
    node = fleet.add("a", "A100-40GB", WALKTHROUGH_NODE)
    mark = cluster.fake_kubelet.checkpoint()
    stack.apps.create_namespaced_deployment(ns, deployment("infer-a"))
    stack.apps.create_namespaced_deployment(ns, deployment("infer-b"))
    wait_for(
        lambda: running_with(stack, ns, "infer-a", MIG_5) and running_with(stack, ns, "infer-b", MIG_5),
        timeout=60,
        what="infer-a and infer-b Running on 1g.5gb",
    )

    scaled = time.monotonic()
    stack.apps.patch_namespaced_deployment_scale("infer-b", ns, {"spec": {"replicas": 2}})
    (upgraded,) = wait_for(
        lambda: running_with(stack, ns, "infer-b", MIG_10),
        timeout=90,
        what="the new infer-b replica Running on 2g.10gb",
    )
    upgrade_seconds = time.monotonic() - scaled
    assert upgraded.spec.node_name == node
    assert upgraded.metadata.annotations[ANN_ORIGINAL] == f"{MIG_5}=1"
    (rule,) = stack.rules(ns)
    assert rule["status"]["phase"] == "Applied" and rule["spec"]["substitute"]["resource"] == MIG_10
    assert upgraded.metadata.annotations[ANN_RULE] == rule["metadata"]["name"]
    assert rule["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"

    freed = time.monotonic()
    stack.apps.delete_namespaced_deployment("infer-a", ns, propagation_policy="Foreground")
    wait_for(
        lambda: len(running_with(stack, ns, "infer-b", MIG_5)) == 2 and not running_with(stack, ns, "infer-b", MIG_10),
        timeout=90,
        what="both infer-b replicas Running on 1g.5gb",
    )
    restore_seconds = time.monotonic() - freed
    wait_for(lambda: [r["status"]["phase"] for r in stack.rules(ns)] == ["Restored"], timeout=15,
             what="the rule Restored")
    wanted = {"MigUpgrading", "MigSubstituted", "MigRestoring", "MigRestored"}
    wait_for(lambda: wanted <= {reason for _, reason in stack.events(ns)}, timeout=15,
             what=f"Events {sorted(wanted)} on the pods")
    cluster.fake_kubelet.assert_no_overcommit(mark)
    e2e_report(f"walkthrough: scaled -> upgraded pod Running {upgrade_seconds:.1f} s; "
               f"capacity freed -> restored pod Running {restore_seconds:.1f} s")


def test_bare_pod_is_upgraded_under_its_own_name(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("b", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.core.create_namespaced_pod(ns, make_pod("holder", resources={MIG_5: "1"}, scheduler_name=SCHEDULER))
    wait_for(
        lambda: stack.core.read_namespaced_pod("holder", ns).status.phase == "Running",
        timeout=60,
        what="holder Running",
    )
    stack.core.create_namespaced_pod(ns, make_pod("solo", resources={MIG_5: "1"}, scheduler_name=SCHEDULER))
    first_uid = stack.core.read_namespaced_pod("solo", ns).metadata.uid

    def upgraded() -> Any:
        pod = stack.core.read_namespaced_pod("solo", ns)
        limits = pod.spec.containers[0].resources.limits or {}
        return pod if pod.status.phase == "Running" and MIG_10 in limits else None

    pod = wait_for(upgraded, timeout=90, what="bare pod solo recreated and Running on 2g.10gb")
    assert pod.metadata.uid != first_uid and pod.metadata.annotations[ANN_ORIGINAL] == f"{MIG_5}=1"
    (rule,) = stack.rules(ns)
    assert "ownerReferences" not in rule["metadata"] and "mig-extender.io/recreate" not in (
        rule["metadata"].get("annotations") or {}
    )


def test_opted_out_pod_is_never_touched(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("c", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.core.create_namespaced_pod(ns, make_pod("holder", resources={MIG_5: "1"}, scheduler_name=SCHEDULER))
    wait_for(
        lambda: stack.core.read_namespaced_pod("holder", ns).status.phase == "Running",
        timeout=60,
        what="holder Running",
    )
    pod = make_pod("shy", resources={MIG_5: "1"}, scheduler_name=SCHEDULER)
    pod["metadata"]["annotations"] = {ANN_SUBSTITUTE: "false"}
    uid = stack.core.create_namespaced_pod(ns, pod).metadata.uid
    stays(
        lambda: (p := stack.core.read_namespaced_pod("shy", ns)).status.phase == "Pending" and p.metadata.uid == uid,
        duration=6,
        what="opted-out pod stays Pending, same uid",
    )
    assert stack.rules(ns) == []


def test_webhook_down_does_not_stop_pod_creation(stack: Stack, cluster: E2ECluster) -> None:
    """failurePolicy Ignore against the real API server: a webhook nobody answers admits the pod."""
    label = "mig-e2e/dead-webhook"
    stack.register_webhook("mig-dead", f"https://127.0.0.1:{procs.free_port()}/mutate", "", label)
    dead_ns = cluster.create_namespace(prefix="deadhook", labels={label: "true"})
    try:
        started = time.monotonic()
        created = stack.core.create_namespaced_pod(dead_ns, make_pod("p", resources={MIG_5: "1"}))
        assert created.metadata.uid and time.monotonic() - started < 10
        assert ANN_RULE not in (created.metadata.annotations or {})
    finally:
        client.AdmissionregistrationV1Api(stack.api).delete_mutating_webhook_configuration("mig-dead")
        cluster.delete_namespace(dead_ns)


def test_extender_restart_between_rule_and_recreation_loses_nothing(stack: Stack, ns: str, fleet: Any) -> None:
    fleet.add("d", "A100-40GB", {MIG_5: 1, MIG_10: 1})
    stack.stop_reconciler()  # freeze the life cycle right after the rule is recorded
    try:
        stack.apps.create_namespaced_deployment(ns, deployment("first"))
        wait_for(lambda: running_with(stack, ns, "first", MIG_5), timeout=60, what="first Running")
        stack.apps.create_namespaced_deployment(ns, deployment("second"))
        (rule,) = wait_for(lambda: stack.rules(ns), timeout=60, what="a rule for the second deployment")
        stack.stop_extender()
        stack.start_extender()  # a new process: its rules can only come from the API
        stack.start_scheduler()  # the new extender listens on a new port
        names = {r["name"] for r in stack.extender.rules()}
        assert rule["metadata"]["name"] in names
    finally:
        stack.start_reconciler()
    wait_for(
        lambda: running_with(stack, ns, "second", MIG_10),
        timeout=90,
        what="second Running on 2g.10gb after the restart",
    )
