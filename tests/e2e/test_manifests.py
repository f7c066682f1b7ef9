"""The deployment artefacts against a real API server, a real kube-scheduler and the real components.

- every manifest passes the API server's own validation (server-side dry run), including the restricted
  Pod Security admission of namespace mig-extender; the namespace, CRD, ServiceAccounts and RBAC are
  applied for real (and removed afterwards, unless they were there before);
- the CRD stores exactly what the code writes and rejects what it must;
- each ServiceAccount, with a TokenRequest token of its own, is allowed what its component does and
  denied what the contract forbids (SelfSubjectAccessReview), and each component starts, syncs and
  takes its Lease under that identity;
- kube-scheduler loads the committed configuration as the mig-scheduler ServiceAccount, becomes
  healthy, takes its Lease and serves /metrics through delegated authentication;
- the documented plain-Secret procedure (patch the caBundle, apply again) keeps the caBundle.

Must not: leave anything behind in the shared cluster, or run a webhook that intercepts other tests' pods.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from mig_extender.cluster.rulestore_kube import KubeRuleStore
from mig_extender.core.resources import Owner, PodInfo, ResourceCount
from mig_extender.core.rules import API_GROUP, API_VERSION, PLURAL, Phase, new_rule, rule_status

from .testenv import procs
from .testenv.binaries import REPO_ROOT
from .testenv.cluster import E2ECluster
from .testenv.extender import ExtenderProcess, cli_argv
from .testenv.wait import stays, wait_for

NAMESPACE = "mig-extender"
MANIFESTS = REPO_ROOT / "manifests"
FIELD_MANAGER = "mig-e2e-manifests"
# applied for real: what RBAC checks and the components need, nothing that runs or intercepts
REAL_KINDS = ("Namespace", "CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
              "ClusterRoleBinding")
SCHEDULER_SA, WEBHOOK_SA, RECONCILER_SA = "mig-scheduler", "mig-extender-webhook", "mig-extender-reconciler"
NO_PROXY = {"http": "", "https": ""}
# kube-scheduler serves a self-signed certificate generated in memory: nothing to verify it against
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


# ---- kubectl and the installed base --------------------------------------------------------------------


@dataclass
class Kubectl:
    binary: Path
    kubeconfig: Path

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["NO_PROXY"] = ",".join(filter(None, ("127.0.0.1,localhost", env.get("NO_PROXY"))))
        env["no_proxy"] = env["NO_PROXY"]
        result = subprocess.run([str(self.binary), f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                                capture_output=True, text=True, env=env, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def build(self, directory: Path) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self("kustomize", str(directory)).stdout) if d]


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


@dataclass
class Installed:
    kubectl: Kubectl
    base: list[dict[str, Any]]


@pytest.fixture(scope="module")
def installed(cluster: E2ECluster) -> Iterator[Installed]:
    """The base's namespace, CRD, ServiceAccounts and RBAC applied for real; removed afterwards unless
    they existed before (another test module may have installed the CRD or the namespace)."""
    binary = cluster.control_plane.binaries.kubectl if cluster.control_plane.binaries else None
    if binary is None:
        pytest.fail("no kubectl beside the control plane binaries (hack/build-k8s.sh builds one)")
    kubectl = Kubectl(binary, cluster.kubeconfig)
    base = kubectl.build(MANIFESTS)
    real = [d for d in base if d["kind"] in REAL_KINDS]
    existing = set(kubectl("get", "-f", "-", "--ignore-not-found", "-o", "name", stdin=dump(real)).stdout.split())
    kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=dump(real))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/migsubstitutions.mig-extender.io")
    try:
        yield Installed(kubectl, base)
    finally:
        created = [d for d in real if _object_name(d) not in existing]
        if created:
            kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true", "--timeout=120s", stdin=dump(created),
                    check=False)


def _object_name(doc: dict[str, Any]) -> str:
    """What `kubectl get -o name` prints for `doc`."""
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    kind = doc["kind"].lower()
    return f"{kind}.{group}/{doc['metadata']['name']}" if group else f"{kind}/{doc['metadata']['name']}"


@pytest.fixture(scope="module")
def custom(cluster: E2ECluster) -> Iterator[client.CustomObjectsApi]:
    with cluster.api_client() as api:
        yield client.CustomObjectsApi(api)


@pytest.fixture(scope="module")
def coordination(cluster: E2ECluster) -> Iterator[client.CoordinationV1Api]:
    with cluster.api_client() as api:
        yield client.CoordinationV1Api(api)


def delete_lease(coordination: client.CoordinationV1Api, namespace: str, name: str) -> None:
    with contextlib.suppress(ApiException):
        coordination.delete_namespaced_lease(name, namespace)


def sa_kubeconfig(cluster: E2ECluster, name: str) -> Path:
    """A kubeconfig with a TokenRequest token of ServiceAccount mig-extender/`name` (which must exist)."""
    return cluster.service_account_kubeconfig(NAMESPACE, name, create=False)


# ---- every manifest passes the API server's validation -------------------------------------------------


def test_base_passes_server_side_dry_run_without_warnings(installed: Installed) -> None:
    result = installed.kubectl("apply", "-k", str(MANIFESTS), "--server-side", "--dry-run=server",
                               f"--field-manager={FIELD_MANAGER}")
    assert "Warning" not in result.stderr, result.stderr  # e.g. "would violate PodSecurity restricted"
    applied = {line.split()[0] for line in result.stdout.splitlines() if "(server dry run)" in line}
    for name in ("deployment.apps/mig-scheduler", "deployment.apps/mig-extender-webhook",
                 "deployment.apps/mig-extender-reconciler", "service/mig-extender-webhook",
                 "mutatingwebhookconfiguration.admissionregistration.k8s.io/mig-extender",
                 "poddisruptionbudget.policy/mig-scheduler"):
        assert name in applied, result.stdout


def test_pods_of_the_deployments_are_admitted_as_restricted(installed: Installed) -> None:
    """Deployments only get Pod Security warnings; their pods are what is enforced, so dry-run those too."""
    pods = []
    for deployment in (d for d in installed.base if d["kind"] == "Deployment"):
        template = deployment["spec"]["template"]
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"{deployment['metadata']['name']}-dry", "namespace": NAMESPACE,
                                  "labels": template["metadata"]["labels"],
                                  "annotations": template["metadata"].get("annotations") or {}},
                     "spec": template["spec"]})
    # the ConfigMap the scheduler pod mounts has a hashed name; dry-run pods do not need it to exist
    result = installed.kubectl("apply", "--dry-run=server", "-f", "-", stdin=dump(pods))
    assert "Warning" not in result.stderr, result.stderr


def test_cert_manager_overlay_differs_from_the_base_only_by_cert_manager(installed: Installed) -> None:
    overlay = installed.kubectl.build(MANIFESTS / "overlays" / "cert-manager")
    extra = [d for d in overlay if d["apiVersion"].startswith("cert-manager.io/")]
    assert sorted(d["kind"] for d in extra) == ["Certificate", "Issuer"]
    core = [d for d in overlay if d not in extra]
    hooks = [d for d in core if d["kind"] == "MutatingWebhookConfiguration"]
    inject = {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/mig-extender-webhook"}
    assert hooks[0]["metadata"]["annotations"] == inject
    assert len(core) == len(installed.base)
    # cert-manager's own kinds need its CRDs, which this cluster does not have; the rest must pass
    result = installed.kubectl("apply", "--server-side", "--dry-run=server", f"--field-manager={FIELD_MANAGER}",
                               "-f", "-", stdin=dump(core))
    assert "Warning" not in result.stderr, result.stderr


def test_monitoring_component_builds_and_its_dashboard_configmap_is_accepted(installed: Installed) -> None:
    """manifests/monitoring/ through kubectl's kustomize: the Prometheus Operator objects (whose CRDs this
    cluster lacks, so only built) and the dashboard ConfigMap, which the API server must accept."""
    docs = installed.kubectl.build(MANIFESTS / "monitoring")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "PodMonitor", "PodMonitor", "PodMonitor", "PrometheusRule"]
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in docs)
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["mig-extender.json"])["uid"] == "mig-extender"
    result = installed.kubectl("apply", "--server-side", "--dry-run=server", f"--field-manager={FIELD_MANAGER}",
                               "-f", "-", stdin=dump([configmap]))
    assert "(server dry run)" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("variant, slice_", [("", "nvidia.com/mig-1g.5gb"), ("h100-80gb", "nvidia.com/mig-1g.10gb"),
                                             ("h200-141gb", "nvidia.com/mig-1g.18gb")])
def test_samples_pass_server_side_dry_run(installed: Installed, namespace: str, variant: str, slice_: str) -> None:
    """The walkthrough workloads (and their H100/H200 variants, built by kubectl's own kustomize), moved
    into this test's namespace (mig-demo is not created here)."""
    docs = installed.kubectl.build(MANIFESTS / "samples" / variant)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == ["mig-demo"]
    workloads = [d for d in docs if d["kind"] != "Namespace"]
    for doc in workloads:
        doc["metadata"]["namespace"] = namespace
    assert sorted(d["metadata"]["name"] for d in workloads) == ["infer-a", "infer-b", "infer-bare", "infer-exact"]
    for doc in workloads:
        spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
        assert [r for r in spec["containers"][0]["resources"]["limits"] if r.startswith("nvidia.com/")] == [slice_]
    result = installed.kubectl("apply", "--server-side", "--dry-run=server", f"--field-manager={FIELD_MANAGER}",
                               "-f", "-", stdin=dump(workloads))
    assert result.stdout.count("(server dry run)") == 4, result.stdout


# ---- the CRD stores what the code writes ----------------------------------------------------------------


def _owner(cluster: E2ECluster, namespace: str) -> Owner:
    """A real ReplicaSet (no replicas) to own the rule: the garbage collector deletes a rule whose owner
    does not exist, which is the point of the owner reference."""
    rs = cluster.apps.create_namespaced_replica_set(namespace, {
        "metadata": {"name": "infer-b-7d9f"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "infer-b"}},
                 "template": {"metadata": {"labels": {"app": "infer-b"}},
                              "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:0"}]}}}})
    return Owner("ReplicaSet", rs.metadata.name, rs.metadata.uid, "apps/v1")


def _rule(cluster: E2ECluster, namespace: str, pod: str = "infer-b-7d9f-abcde") -> Any:
    info = PodInfo(namespace=namespace, name=pod, uid=str(uuid.uuid4()), owner=_owner(cluster, namespace))
    return new_rule(info, ResourceCount("nvidia.com/mig-1g.5gb", 1), ResourceCount("nvidia.com/mig-2g.10gb", 1),
                    "gpu-node-1", time.time(), 300.0)


def test_crd_round_trips_a_rule_written_by_the_extender_identity(
    cluster: E2ECluster, installed: Installed, custom: client.CustomObjectsApi, namespace: str
) -> None:
    rule = _rule(cluster, namespace)
    with cluster.api_client(sa_kubeconfig(cluster, SCHEDULER_SA)) as api:
        stored = KubeRuleStore(api).record(rule)
    assert stored.resource_version and stored.phase is Phase.RECORDED

    obj = custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, rule.name)
    assert obj["spec"]["podName"] == rule.pod_name and obj["spec"]["podUID"] == rule.pod_uid
    assert obj["spec"]["original"] == {"resource": "nvidia.com/mig-1g.5gb", "count": 1}
    assert obj["spec"]["substitute"] == {"resource": "nvidia.com/mig-2g.10gb", "count": 1}
    assert obj["spec"]["owner"]["kind"] == "ReplicaSet" and obj["spec"]["nodeName"] == "gpu-node-1"
    # the status subresource kept every field the code wrote (times are compared by the code's own parse)
    assert set(obj["status"]) == set(rule_status(rule)) and obj["status"]["phase"] == "Recorded"
    assert obj["status"]["message"] == rule.message

    table = installed.kubectl("get", "migsub", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "POD", "ORIGINAL", "SUBSTITUTE", "NODE", "AGE"]
    assert table[1].split()[:6] == [rule.name, "Recorded", rule.pod_name, "nvidia.com/mig-1g.5gb",
                                    "nvidia.com/mig-2g.10gb", "gpu-node-1"]


def test_crd_takes_every_transition_the_reconciler_identity_writes(
    cluster: E2ECluster, installed: Installed, custom: client.CustomObjectsApi, namespace: str
) -> None:
    with cluster.api_client(sa_kubeconfig(cluster, SCHEDULER_SA)) as api:
        rule = KubeRuleStore(api).record(_rule(cluster, namespace))
    now = time.time()
    with cluster.api_client(sa_kubeconfig(cluster, RECONCILER_SA)) as api:
        store = KubeRuleStore(api)
        for change in (lambda r: r.applied("infer-b-7d9f-fghij", now, 300.0),
                       lambda r: r.bound(str(uuid.uuid4()), "infer-b-7d9f-fghij", "gpu-node-1", now),
                       lambda r: r.restoring("gpu-node-2", now, 120.0),
                       lambda r: r.restore_deferred(now, 30.0, "PDB refused the eviction"),
                       lambda r: r.restoring("gpu-node-2", now + 31, 120.0),
                       lambda r: r.bound(str(uuid.uuid4()), "infer-b-7d9f-klmno", "gpu-node-2", now)):
            rule = store.update(change(rule))
        assert rule.phase is Phase.RESTORED and store.fetch(namespace, rule.name) == rule
        assert rule.restore_attempts == 1 and rule.retry_restore_at == pytest.approx(now + 30.0, abs=1e-3)
        store.delete(rule)
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, rule.name)
    assert gone.value.status == 404


def test_webhook_identity_reads_the_rules(cluster: E2ECluster, installed: Installed, namespace: str) -> None:
    with cluster.api_client(sa_kubeconfig(cluster, SCHEDULER_SA)) as api:
        rule = KubeRuleStore(api).record(_rule(cluster, namespace))
    with cluster.api_client(sa_kubeconfig(cluster, WEBHOOK_SA)) as api:
        store = KubeRuleStore(api).start()
        try:
            assert store.wait_synced(30)
            assert wait_for(lambda: store.get(namespace, rule.name), timeout=10, what="the rule via the watch")
        finally:
            store.stop()


def _valid_object(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "MigSubstitution", "metadata": {"name": name},
            "spec": {"podName": "p", "podUID": "u", "nodeName": "n", "expiresAt": "2030-01-01T00:00:00Z",
                     "original": {"resource": "nvidia.com/mig-1g.5gb", "count": 1},
                     "substitute": {"resource": "nvidia.com/mig-2g.10gb", "count": 1}}}


INVALID_SPECS = [
    pytest.param({"original": {"resource": "nvidia.com/mig-1g.5gb", "count": 0}}, "count", id="zero-count"),
    pytest.param({"substitute": {"resource": "nvidia.com/gpu", "count": 1}}, "resource", id="not-a-mig-resource"),
    pytest.param({"substitute": {"resource": "nvidia.com/mig-1g.5gb", "count": 1}}, "must differ", id="same-profile"),
    pytest.param({"podUID": ""}, "podUID", id="empty-pod-uid"),
    pytest.param({"expiresAt": "tomorrow"}, "expiresAt", id="bad-time"),
    pytest.param({"owner": {"kind": "ReplicaSet"}}, "owner", id="owner-without-uid"),
]


@pytest.mark.parametrize(("change", "field"), INVALID_SPECS)
def test_crd_rejects_a_malformed_spec(installed: Installed, custom: client.CustomObjectsApi, namespace: str,
                                      change: dict[str, Any], field: str) -> None:
    body = _valid_object("bad")
    body["spec"].update(change)
    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)
    assert rejected.value.status == 422 and field in rejected.value.body


def test_crd_rejects_an_unknown_phase(installed: Installed, custom: client.CustomObjectsApi, namespace: str) -> None:
    created = custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, _valid_object("ok"))
    created["status"] = {"phase": "Upgraded"}
    with pytest.raises(ApiException) as rejected:
        custom.replace_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, PLURAL, "ok", created)
    assert rejected.value.status == 422 and "phase" in rejected.value.body


# ---- RBAC: allowed what each component does, denied the rest ---------------------------------------------

ALL = ""  # every namespace (cluster-wide for cluster-scoped resources)


def check(sa: str, verb: str, resource: str, namespace: str = "team-a", name: str = "",
          allowed: bool = True) -> Any:
    """One SelfSubjectAccessReview case; `resource` is `[group:]plural[/subresource]`."""
    group, _, rest = resource.rpartition(":")
    plural, _, sub = rest.partition("/")
    where = f"in-{namespace}" if namespace else "everywhere"
    ident = "-".join(filter(None, (sa, "can" if allowed else "cannot", verb, rest, name, where)))
    return pytest.param(sa, verb, group, plural, sub, namespace, name, allowed, id=ident)


MIG = "mig-extender.io:migsubstitutions"
RBAC_CASES = [
    # the extender sidecar and kube-scheduler (ServiceAccount mig-scheduler)
    check(SCHEDULER_SA, "watch", "nodes", ALL),
    check(SCHEDULER_SA, "list", "pods", ALL),
    check(SCHEDULER_SA, "create", "pods/binding"),
    check(SCHEDULER_SA, "create", MIG),
    check(SCHEDULER_SA, "update", MIG + "/status"),
    check(SCHEDULER_SA, "watch", MIG, ALL),
    check(SCHEDULER_SA, "create", "events.k8s.io:events"),
    check(SCHEDULER_SA, "patch", "events"),
    check(SCHEDULER_SA, "update", "coordination.k8s.io:leases", NAMESPACE, "mig-scheduler"),
    check(SCHEDULER_SA, "get", "configmaps", "kube-system", "extension-apiserver-authentication"),
    check(SCHEDULER_SA, "create", "authentication.k8s.io:tokenreviews", ALL),
    check(SCHEDULER_SA, "create", "authorization.k8s.io:subjectaccessreviews", ALL),
    check(SCHEDULER_SA, "list", "storage.k8s.io:storageclasses", ALL),  # system:volume-scheduler
    # kube-scheduler preempts, and the extender shares its ServiceAccount: this right is the scheduler's
    check(SCHEDULER_SA, "delete", "pods"),
    check(SCHEDULER_SA, "create", "pods", allowed=False),
    check(SCHEDULER_SA, "update", "pods", allowed=False),
    check(SCHEDULER_SA, "create", "pods/eviction", allowed=False),
    check(SCHEDULER_SA, "patch", "nodes", ALL, allowed=False),
    check(SCHEDULER_SA, "delete", MIG, allowed=False),
    check(SCHEDULER_SA, "update", "coordination.k8s.io:leases", NAMESPACE, "mig-extender-reconciler", allowed=False),
    check(SCHEDULER_SA, "get", "configmaps", "kube-system", "kube-proxy", allowed=False),
    # the webhook
    check(WEBHOOK_SA, "list", MIG, ALL),
    check(WEBHOOK_SA, "watch", MIG, ALL),
    check(WEBHOOK_SA, "watch", "namespaces", ALL),
    # the webhook's one write is the claim of a rule (an update of its status); no patch, no events
    check(WEBHOOK_SA, "update", MIG + "/status"),
    check(WEBHOOK_SA, "patch", MIG + "/status", allowed=False),
    check(WEBHOOK_SA, "create", "events", allowed=False),
    check(WEBHOOK_SA, "delete", "pods", allowed=False),
    check(WEBHOOK_SA, "create", "pods", allowed=False),
    check(WEBHOOK_SA, "patch", "pods", allowed=False),
    check(WEBHOOK_SA, "create", MIG, allowed=False),
    check(WEBHOOK_SA, "update", MIG, allowed=False),
    check(WEBHOOK_SA, "delete", MIG, allowed=False),
    check(WEBHOOK_SA, "list", "nodes", ALL, allowed=False),
    check(WEBHOOK_SA, "update", "namespaces", ALL, "team-a", allowed=False),
    check(WEBHOOK_SA, "get", "coordination.k8s.io:leases", NAMESPACE, "mig-extender-reconciler", allowed=False),
    # the reconciler
    check(RECONCILER_SA, "watch", "pods", ALL),
    check(RECONCILER_SA, "create", "pods"),
    # restarts are evictions only (issue 13 item 7); preemption deletes its victims as kube-scheduler does
    # (issue 14: DisruptionTarget first, a uid precondition, PDBs honoured through the choice of victims)
    check(RECONCILER_SA, "delete", "pods"),
    check(RECONCILER_SA, "patch", "pods/status"),
    check(RECONCILER_SA, "list", "policy:poddisruptionbudgets", ALL),
    check(RECONCILER_SA, "create", "pods/eviction"),
    check(RECONCILER_SA, "list", "nodes", ALL),
    check(RECONCILER_SA, "get", "batch:jobs"),  # a Job's podFailurePolicy and failure counts
    check(RECONCILER_SA, "update", "batch:jobs", allowed=False),
    check(RECONCILER_SA, "delete", MIG),
    check(RECONCILER_SA, "patch", MIG),
    check(RECONCILER_SA, "update", MIG + "/status"),
    check(RECONCILER_SA, "create", "events.k8s.io:events"),
    check(RECONCILER_SA, "create", "coordination.k8s.io:leases", NAMESPACE),
    check(RECONCILER_SA, "update", "coordination.k8s.io:leases", NAMESPACE, "mig-extender-reconciler"),
    check(RECONCILER_SA, "update", "coordination.k8s.io:leases", NAMESPACE, "mig-scheduler", allowed=False),
    check(RECONCILER_SA, "create", "coordination.k8s.io:leases", "kube-system", allowed=False),
    check(RECONCILER_SA, "patch", "pods", allowed=False),
    check(RECONCILER_SA, "create", "pods/binding", allowed=False),
    check(RECONCILER_SA, "update", "nodes", ALL, allowed=False),
    check(RECONCILER_SA, "create", "policy:poddisruptionbudgets", allowed=False),
    check(RECONCILER_SA, "delete", "deployments", allowed=False),
    # DRA mode (issue 20, docs/dra.md): templates written, claims and slices read, nothing else of DRA touched
    check(RECONCILER_SA, "list", "namespaces", ALL),
    check(RECONCILER_SA, "list", "resource.k8s.io:resourceslices", ALL),
    check(RECONCILER_SA, "list", "resource.k8s.io:resourceclaims", ALL),
    check(RECONCILER_SA, "create", "resource.k8s.io:resourceclaimtemplates"),
    check(RECONCILER_SA, "delete", "resource.k8s.io:resourceclaimtemplates"),
    check(RECONCILER_SA, "update", "resource.k8s.io:resourceclaims", allowed=False),
    check(RECONCILER_SA, "update", "resource.k8s.io:resourceclaimtemplates", allowed=False),
    check(RECONCILER_SA, "create", "resource.k8s.io:resourceslices", ALL, allowed=False),
    check(WEBHOOK_SA, "list", "resource.k8s.io:resourceclaimtemplates"),
    check(WEBHOOK_SA, "create", "resource.k8s.io:resourceclaimtemplates", allowed=False),
    check(SCHEDULER_SA, "watch", "resource.k8s.io:resourceslices", ALL),  # the extender's DRA book
    check(SCHEDULER_SA, "watch", "resource.k8s.io:resourceclaims", ALL),
    # no one reads Secrets, grants rights or impersonates
    *[check(sa, verb, "secrets", ns, allowed=False)
      for sa in (SCHEDULER_SA, WEBHOOK_SA, RECONCILER_SA)
      for verb, ns in (("list", ALL), ("get", NAMESPACE), ("get", "kube-system"), ("watch", ALL))],
    *[check(sa, verb, resource, ALL, allowed=False)
      for sa in (SCHEDULER_SA, WEBHOOK_SA, RECONCILER_SA)
      for verb, resource in (("create", "rbac.authorization.k8s.io:clusterrolebindings"),
                             ("escalate", "rbac.authorization.k8s.io:clusterroles"),
                             ("impersonate", "serviceaccounts"), ("create", "serviceaccounts/token"))],
]


@pytest.fixture(scope="module")
def sa_clients(cluster: E2ECluster, installed: Installed) -> Iterator[dict[str, Any]]:
    clients = {sa: cluster.api_client(sa_kubeconfig(cluster, sa)) for sa in (SCHEDULER_SA, WEBHOOK_SA, RECONCILER_SA)}
    yield clients
    for api in clients.values():
        api.close()


@pytest.mark.parametrize(("sa", "verb", "group", "plural", "sub", "namespace", "name", "allowed"), RBAC_CASES)
def test_service_account_permission(sa_clients: dict[str, Any], sa: str, verb: str, group: str, plural: str,
                                    sub: str, namespace: str, name: str, allowed: bool) -> None:
    review = client.AuthorizationV1Api(sa_clients[sa]).create_self_subject_access_review(
        {"spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": plural, "subresource": sub,
                                         "namespace": namespace, "name": name}}})
    assert review.status.allowed is allowed, (review.status.reason, review.status.evaluation_error)


# ---- each component starts under its own identity ----------------------------------------------------------


def _started(name: str, argv: list[str], log: Path, ready_url: str) -> procs.ManagedProcess:
    http = requests.Session()
    http.trust_env = False

    def ready() -> bool:
        try:
            return http.get(ready_url, timeout=2, verify=False).status_code == 200
        except requests.RequestException:
            return False

    process = procs.start(name, argv, log, cwd=REPO_ROOT, die_with_parent=True)
    try:
        procs.wait_ready(process, ready, 60)
    except BaseException:
        process.stop()
        raise
    return process


def _log_problems(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if "forbidden" in line.lower()]


def test_extender_syncs_as_the_mig_scheduler_service_account(cluster: E2ECluster, installed: Installed) -> None:
    log = cluster.log_path("manifests-extender")
    extender = ExtenderProcess(sa_kubeconfig(cluster, SCHEDULER_SA), log, args=("--rule-store", "kube"))
    extender.start()  # returns once /readyz is 200: nodes, pods and rules listed and watched
    try:
        assert extender.get("/debug/inventory")["synced"] is True
        assert not _log_problems(log)
    finally:
        extender.stop()


def test_webhook_syncs_as_its_service_account(cluster: E2ECluster, installed: Installed) -> None:
    port = procs.free_port()
    log = cluster.log_path("manifests-webhook")
    argv = cli_argv("webhook", "--kubeconfig", str(sa_kubeconfig(cluster, WEBHOOK_SA)), "--plain-http",
                    "--bind", f"127.0.0.1:{port}")
    process = _started("manifests-webhook", argv, log, f"http://127.0.0.1:{port}/readyz")
    try:
        assert not _log_problems(log)
    finally:
        process.stop()


def test_reconciler_syncs_and_leads_as_its_service_account(
    cluster: E2ECluster, installed: Installed, coordination: client.CoordinationV1Api
) -> None:
    """A real (not dry-run) reconciler: a dry run takes no Lease (issue 13 item 17). No rule exists in the
    cluster at this point, so it has nothing to act on; restores are off to be sure."""
    port = procs.free_port()
    identity = f"e2e-manifests-{uuid.uuid4().hex[:6]}"
    log = cluster.log_path("manifests-reconciler")
    argv = cli_argv("reconcile", "--kubeconfig", str(sa_kubeconfig(cluster, RECONCILER_SA)), "--namespace", NAMESPACE,
                    "--metrics-bind", f"127.0.0.1:{port}", "--identity", identity, "--restores-per-pass", "0")
    process = _started("manifests-reconciler", argv, log, f"http://127.0.0.1:{port}/readyz")
    try:
        wait_for(lambda: coordination.read_namespaced_lease("mig-extender-reconciler", NAMESPACE).spec.holder_identity
                 == identity, timeout=30, what=f"Lease {NAMESPACE}/mig-extender-reconciler held by {identity}")
        assert not _log_problems(log)
    finally:
        process.stop()
        delete_lease(coordination, NAMESPACE, "mig-extender-reconciler")


def test_item17_dry_run_reconciler_syncs_and_writes_nothing_as_its_service_account(
    cluster: E2ECluster, installed: Installed, coordination: client.CoordinationV1Api
) -> None:
    port = procs.free_port()
    identity = f"e2e-dry-{uuid.uuid4().hex[:6]}"
    log = cluster.log_path("manifests-reconciler-dry")
    argv = cli_argv("reconcile", "--kubeconfig", str(sa_kubeconfig(cluster, RECONCILER_SA)), "--namespace", NAMESPACE,
                    "--metrics-bind", f"127.0.0.1:{port}", "--identity", identity, "--dry-run")
    process = _started("manifests-reconciler-dry", argv, log, f"http://127.0.0.1:{port}/readyz")  # synced

    def lease_holder() -> str:
        try:
            return coordination.read_namespaced_lease("mig-extender-reconciler", NAMESPACE).spec.holder_identity or ""
        except ApiException:
            return ""

    try:
        stays(lambda: lease_holder() != identity, duration=5, what="no Lease taken by the dry run")
        assert not _log_problems(log) and "dry run: no write reaches the API server" in log.read_text()
    finally:
        process.stop()


# ---- kube-scheduler loads the committed configuration ------------------------------------------------------


def _run_scheduler(cluster: E2ECluster, config: Path, kubeconfig: Path, name: str) -> tuple[procs.ManagedProcess, int]:
    """kube-scheduler as it runs in the pod: the configuration file, in-cluster-like credentials used for
    everything (API calls, delegated authentication and authorization), HTTPS on a free port."""
    document = yaml.safe_load(config.read_text())
    document["clientConnection"]["kubeconfig"] = str(kubeconfig)
    effective = cluster.state_dir / f"{name}.yaml"
    effective.write_text(yaml.safe_dump(document, sort_keys=False))
    port = procs.free_port()
    binaries = cluster.control_plane.binaries
    assert binaries is not None
    argv = [str(binaries.kube("kube-scheduler")), f"--config={effective}", "--bind-address=127.0.0.1",
            f"--secure-port={port}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--v=2"]
    process = procs.start(name, argv, cluster.log_path(name), die_with_parent=True)

    def healthy() -> bool:
        try:
            response = requests.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2, proxies=NO_PROXY)
            return response.status_code == 200
        except requests.RequestException:
            return False

    try:
        procs.wait_ready(process, healthy, 60)
    except BaseException:
        process.stop()
        raise
    return process, port


def _lease_holder(coordination: client.CoordinationV1Api, namespace: str, name: str) -> str:
    try:
        return coordination.read_namespaced_lease(name, namespace).spec.holder_identity or ""
    except ApiException:
        return ""


def test_mig_scheduler_config_runs_as_its_service_account(
    cluster: E2ECluster, installed: Installed, coordination: client.CoordinationV1Api
) -> None:
    config = REPO_ROOT / "manifests" / "base" / "config" / "mig-scheduler.yaml"
    election = yaml.safe_load(config.read_text())["leaderElection"]
    name = "manifests-mig-scheduler"
    process, port = _run_scheduler(cluster, config, sa_kubeconfig(cluster, SCHEDULER_SA), name)
    try:
        assert election["leaderElect"] is True
        where = (election["resourceNamespace"], election["resourceName"])
        wait_for(lambda: _lease_holder(coordination, *where), timeout=30, what=f"Lease {'/'.join(where)} taken")
        url = f"https://127.0.0.1:{port}"
        for path in ("/healthz", "/readyz"):
            assert requests.get(url + path, verify=False, timeout=5, proxies=NO_PROXY).text == "ok"
        # /metrics needs a caller the API server vouches for: delegated authn (TokenReview) and authz (SAR)
        admin = {"Authorization": f"Bearer {cluster.control_plane.token('admin')}"}
        metrics = requests.get(url + "/metrics", headers=admin, verify=False, timeout=5, proxies=NO_PROXY)
        assert metrics.status_code == 200 and "scheduler_" in metrics.text
        anonymous = requests.get(url + "/metrics", verify=False, timeout=5, proxies=NO_PROXY)
        assert anonymous.status_code in (401, 403)
        time.sleep(3)  # a few informer and lease cycles
        assert not _log_problems(cluster.log_path(name)), "kube-scheduler was refused something"
    finally:
        process.stop()
        delete_lease(coordination, election["resourceNamespace"], election["resourceName"])


def test_default_variant_keeps_the_control_plane_lease(
    cluster: E2ECluster, installed: Installed, coordination: client.CoordinationV1Api
) -> None:
    """The control plane's scheduler runs as system:kube-scheduler; with the default variant it must still
    become leader, on the Lease it already uses."""
    config = REPO_ROOT / "scheduler-config" / "default-scheduler-with-extender.yaml"
    election = yaml.safe_load(config.read_text())["leaderElection"]
    namespace = election.get("resourceNamespace", "kube-system")
    lease = election.get("resourceName", "kube-scheduler")
    name = "manifests-default-variant"
    process, _ = _run_scheduler(cluster, config, cluster.scheduler_kubeconfig, name)
    try:
        assert (namespace, lease) == ("kube-system", "kube-scheduler"), f"Lease {namespace}/{lease}"
        wait_for(lambda: _lease_holder(coordination, namespace, lease), timeout=20, what=f"Lease {namespace}/{lease}")
        assert not _log_problems(cluster.log_path(name))
    finally:
        process.stop()
        delete_lease(coordination, namespace, lease)


# ---- the documented caBundle procedure -----------------------------------------------------------------------


def test_patched_ca_bundle_survives_applying_the_manifests_again(installed: Installed, tmp_path: Path) -> None:
    """docs/install.md: `mig-extender certs`, `kubectl patch ... caBundle`, and later `kubectl apply -k` again.
    On a renamed copy that intercepts nothing, so no other test's pods ever reach it."""
    (hook_config,) = [d for d in installed.base if d["kind"] == "MutatingWebhookConfiguration"]
    hook_config["metadata"]["name"] = f"mig-extender-e2e-{uuid.uuid4().hex[:6]}"
    hook_config["webhooks"][0]["objectSelector"] = {"matchLabels": {"mig-e2e-never": "true"}}
    manifest = dump([hook_config])
    kubectl = installed.kubectl
    result = subprocess.run(cli_argv("certs", "--out", str(tmp_path / "certs"), "--service", "mig-extender-webhook",
                                     "--namespace", NAMESPACE), capture_output=True, text=True, cwd=REPO_ROOT,
                            check=True)
    bundle = result.stdout.strip()
    assert base64.b64decode(bundle) == (tmp_path / "certs" / "ca.crt").read_bytes()
    name = f"mutatingwebhookconfiguration/{hook_config['metadata']['name']}"

    def stored_bundle() -> str:
        obj = json.loads(kubectl("get", name, "-o", "json").stdout)
        return obj["webhooks"][0]["clientConfig"].get("caBundle", "")

    kubectl("apply", "-f", "-", stdin=manifest)
    try:
        patch = json.dumps([{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}])
        kubectl("patch", name, "--type=json", "-p", patch)
        assert stored_bundle() == bundle
        kubectl("apply", "-f", "-", stdin=manifest)  # what `kubectl apply -k manifests/` does again
        assert stored_bundle() == bundle
        kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=manifest)
        assert stored_bundle() == bundle
    finally:
        kubectl("delete", name, "--ignore-not-found")
