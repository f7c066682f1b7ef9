"""The deployment artefacts agree with the code: Dockerfile, manifests/ and scheduler-config/, read as files.

No cluster, no kubectl, no Docker: each check reads the committed YAML or text and compares it with what
it must match in the code (the scheduler-config generator, the CLI parser, the rule phases, the MIG
catalog, the package metadata) or with another artefact (a Service and its webhook, a PDB and its pods).
tests/e2e/test_manifests.py applies the same files to a real API server and a real kube-scheduler.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mig_extender import cli
from mig_extender.core import schedconfig
from mig_extender.core.resources import ANN_SUBSTITUTE, LABEL_SCHEDULER_OPT_IN, MAX_MIG_COUNT
from mig_extender.core.rules import Phase

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
NAMESPACE = "mig-extender"
PART_OF = ("app.kubernetes.io/part-of", "mig-extender")
IMAGE = "mig-extender"
NON_ROOT_UID = 65532


# ---- loading ----------------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def resources_of(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization lists, following directories; patches are not applied."""
    docs: list[dict[str, Any]] = []
    for entry in kustomization(directory).get("resources") or []:
        target = (directory / entry).resolve()
        docs += resources_of(target) if target.is_dir() else load_docs(target)
    return docs


@cache
def base() -> tuple[dict[str, Any], ...]:
    return tuple(resources_of(BASE))


def objects(kind: str, docs: Any = None) -> list[dict[str, Any]]:
    return [d for d in (base() if docs is None else docs) if d["kind"] == kind]


def one(kind: str, name: str, docs: Any = None) -> dict[str, Any]:
    found = [d for d in objects(kind, docs) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def pod_meta(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["metadata"] if workload["kind"] == "Pod" else workload["spec"]["template"]["metadata"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in all_containers(pod_spec(workload)) if c["name"] == name)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """matchLabels only (all our selectors are)."""
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


DEPLOYMENTS = ["mig-scheduler", "mig-extender-webhook", "mig-extender-reconciler"]


# ---- Dockerfile ----------------------------------------------------------------------------------------


@cache
def dockerfile() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """(global ARG defaults, stages as lists of (INSTRUCTION, arguments)), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif stages:
            stages[-1].append((instruction, rest.strip()))
    return args, stages


def _from(stage: list[tuple[str, str]]) -> str:
    return stage[0][1]


def test_dockerfile_base_image_is_a_slim_python_pinned_by_full_version() -> None:
    args, stages = dockerfile()
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"
    assert all(_from(s).split()[0] == "${PYTHON_IMAGE}" for s in stages), [_from(s) for s in stages]
    python_requires = configparser.ConfigParser()
    python_requires.read(ROOT / "setup.cfg")
    minimum = re.search(r">=\s*3\.(\d+)", python_requires["options"]["python_requires"])
    assert minimum and int(image.split(":")[1].split(".")[1]) >= int(minimum.group(1))


def test_dockerfile_builds_a_wheel_of_this_checkout_in_the_builder() -> None:
    _, stages = dockerfile()
    builder = stages[0]
    assert _from(builder).lower().endswith("as builder")
    runs = " ".join(rest for ins, rest in builder if ins == "RUN")
    assert re.search(r"pip wheel .*--wheel-dir[ =]/wheels \.(\s|$)", runs), runs
    assert ("COPY", ". .") in builder


def test_dockerfile_final_stage_installs_only_the_wheels_and_keeps_no_build_tools() -> None:
    _, stages = dockerfile()
    final = stages[-1]
    runs = [rest for ins, rest in final if ins == "RUN"]
    text = " ".join(runs)
    assert re.search(r"--mount=type=bind,from=builder,source=/wheels,target=/wheels", text), text
    assert re.search(r"pip install --no-index --find-links[ =]/wheels mig-extender", text), text
    for tool in ("apt-get", "apt ", "apk ", "gcc", "build-essential", "pip wheel", "curl", "wget"):
        assert tool not in text, f"final stage runs {tool}"
    assert not [rest for ins, rest in final if ins in ("COPY", "ADD")], "the final stage copies nothing in"
    assert "pip uninstall --yes pip" in text


def test_dockerfile_runs_as_a_numeric_non_root_user_that_the_pods_name_too() -> None:
    _, stages = dockerfile()
    users = [rest for ins, rest in stages[-1] if ins == "USER"]
    assert users, "the final stage must set USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER must be numeric (runAsNonRoot cannot check a name): {users[-1]}"
    assert int(match.group(1)) == NON_ROOT_UID and int(match.group(2) or NON_ROOT_UID) == NON_ROOT_UID
    for name in DEPLOYMENTS:
        assert pod_spec(one("Deployment", name))["securityContext"]["runAsUser"] == NON_ROOT_UID


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    _, stages = dockerfile()
    entrypoints = [rest for ins, rest in stages[-1] if ins == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["mig-extender"]
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "mig-extender = mig_extender.cli:main" in setup["options.entry_points"]["console_scripts"]


def test_license_file_is_the_license_the_package_declares() -> None:
    """Issue 16: setup.cfg and the image label say Apache-2.0; the text was missing."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["license"] == "Apache-2.0"
    assert "LICENSE" in setup["metadata"]["license_files"].split()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text.splitlines()[1] and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_dockerignore_admits_exactly_what_the_package_build_reads() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "an allow-list: exclude everything first"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"setup.cfg", "setup.py", "mig_extender"} <= allowed
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    for field in ("long_description", "license_files"):
        value = setup["metadata"].get(field, "")
        for name in re.findall(r"file:\s*(\S+)", value):
            assert name in allowed, f"setup.cfg reads {name}; .dockerignore must let it in"


# ---- scheduler configuration ---------------------------------------------------------------------------

GENERATED = [
    pytest.param("scheduler-config/mig-scheduler.yaml", {"variant": "second"}, id="scheduler-config-second"),
    pytest.param("scheduler-config/default-scheduler-with-extender.yaml", {"variant": "default"},
                 id="scheduler-config-default"),
    pytest.param("manifests/base/config/mig-scheduler.yaml", {"variant": "second"}, id="manifests-configmap"),
]


@pytest.mark.parametrize(("path", "kwargs"), GENERATED)
def test_committed_scheduler_config_is_exactly_the_generator_output(path: str, kwargs: dict[str, Any]) -> None:
    expected = schedconfig.render(url="http://127.0.0.1:8888", leader_elect=True, namespace=NAMESPACE, **kwargs)
    assert (ROOT / path).read_text() == expected, (
        f"{path} is stale: regenerate it (commands in scheduler-config/README.md)")


def scheduler_config() -> dict[str, Any]:
    return yaml.safe_load((BASE / "config" / "mig-scheduler.yaml").read_text())


def test_mig_scheduler_deployment_loads_the_generated_config() -> None:
    generator = kustomization(BASE)["configMapGenerator"]
    entry = next(g for g in generator if g["name"] == "mig-scheduler-config")
    assert entry["namespace"] == NAMESPACE
    assert entry["files"] == ["mig-scheduler.yaml=config/mig-scheduler.yaml"]
    deployment = one("Deployment", "mig-scheduler")
    spec = pod_spec(deployment)
    scheduler = container(deployment, "kube-scheduler")
    mount = next(m for m in scheduler["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == "mig-scheduler-config"
    assert f"--config={mount['mountPath']}/mig-scheduler.yaml" in scheduler["args"]
    assert scheduler_config()["profiles"][0]["schedulerName"] == schedconfig.SCHEDULER_NAME


def test_kube_scheduler_image_is_the_version_the_e2e_control_plane_runs() -> None:
    gomod = (ROOT / "hack" / "k8s" / "go.mod").read_text()
    version = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", gomod, re.M).group(1)
    image = container(one("Deployment", "mig-scheduler"), "kube-scheduler")["image"]
    assert image == f"registry.k8s.io/kube-scheduler:{version}"


def test_extender_sidecar_listens_where_the_scheduler_config_calls_it() -> None:
    url = scheduler_config()["extenders"][0]["urlPrefix"]
    args = container(one("Deployment", "mig-scheduler"), "extender")["args"]
    bind = args[args.index("--bind") + 1]
    assert url == f"http://{bind}"
    assert bind.startswith("127.0.0.1:"), "the extender's /bind must not be reachable from outside the pod"


def test_scheduler_leader_election_lease_is_one_the_service_account_may_renew() -> None:
    election = scheduler_config()["leaderElection"]
    assert election["leaderElect"] is True
    assert one("Deployment", "mig-scheduler")["spec"]["replicas"] >= 2
    role = one("Role", "mig-scheduler-leader-election")
    assert role["metadata"]["namespace"] == election["resourceNamespace"]
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": [election["resourceName"]], "verbs": ["get", "update"]}]


# ---- RBAC ----------------------------------------------------------------------------------------------

BUILT_IN_ROLES = {
    "mig-scheduler": {("ClusterRole", "system:kube-scheduler", ""), ("ClusterRole", "system:volume-scheduler", ""),
                      ("Role", "extension-apiserver-authentication-reader", "kube-system")},
    "mig-extender-webhook": set(),
    "mig-extender-reconciler": set(),
}
EVENTS = {("", "events", "", v) for v in ("create", "patch")} | {("events.k8s.io", "events", "", v)
                                                                 for v in ("create", "patch")}
RULES = {("mig-extender.io", "migsubstitutions", "", v) for v in ("get", "list", "watch")}
RULE_WRITES = {("mig-extender.io", "migsubstitutions", "", v) for v in ("create", "update", "patch")}
RULE_STATUS = {("mig-extender.io", "migsubstitutions/status", "", v) for v in ("get", "update", "patch")}
READ = ("get", "list", "watch")


def _lease(name: str) -> set[tuple[str, str, str, str]]:
    return {("coordination.k8s.io", "leases", "", "create"), ("coordination.k8s.io", "leases", name, "get"),
            ("coordination.k8s.io", "leases", name, "update")}


# (apiGroup, resource, resourceName, verb) per ServiceAccount and scope ("" = cluster-wide), from our own
# Roles and ClusterRoles only (the built-in ones are in BUILT_IN_ROLES).
EXPECTED_PERMISSIONS = {
    "mig-scheduler": {
        "": {("", "nodes", "", v) for v in READ} | {("", "pods", "", v) for v in READ}
        | {("", "pods/binding", "", "create")} | RULES | RULE_WRITES | RULE_STATUS | EVENTS,
        NAMESPACE: _lease("mig-scheduler"),
    },
    "mig-extender-webhook": {  # reads, and the claim: one status update of a rule (never on a dryRun request)
        "": RULES | {("mig-extender.io", "migsubstitutions/status", "", "update")}
        | {("", "namespaces", "", v) for v in READ} | {("resource.k8s.io", "resourceclaimtemplates", "", "list")},
    },
    "mig-extender-reconciler": {
        "": {("", "pods", "", v) for v in (*READ, "create", "delete")} | {("", "pods/eviction", "", "create")}
        | {("", "pods/status", "", "patch"), ("policy", "poddisruptionbudgets", "", "list")}
        | {("", "nodes", "", v) for v in READ} | {("batch", "jobs", "", "get")}
        | {("", "nodes", "", "patch")}  # repartitioning: nvidia.com/mig.config and the change record
        | RULES | RULE_WRITES | {("mig-extender.io", "migsubstitutions", "", "delete")} | RULE_STATUS | EVENTS
        | {("", "namespaces", "", "list"), ("resource.k8s.io", "resourceslices", "", "list")}
        | {("resource.k8s.io", "resourceclaims", "", "list")}
        | {("resource.k8s.io", "resourceclaimtemplates", "", v) for v in ("list", "create", "delete")},
        NAMESPACE: _lease("mig-extender-reconciler"),
    },
}


def _expand(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [""]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, name, verb))
    return out


def permissions(account: str) -> tuple[dict[str, set[tuple[str, str, str, str]]], set[tuple[str, str, str]]]:
    """(our rules by scope, built-in roles referenced) for ServiceAccount mig-extender/`account`."""
    ours: dict[str, set[tuple[str, str, str, str]]] = {}
    builtin: set[tuple[str, str, str]] = set()
    for binding in objects("ClusterRoleBinding") + objects("RoleBinding"):
        if {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace", "")
        defined = [r for r in objects(ref["kind"]) if r["metadata"]["name"] == ref["name"]
                   and r["metadata"].get("namespace", "") == (scope if ref["kind"] == "Role" else "")]
        if defined:
            ours.setdefault(scope, set()).update(_expand(defined[0]["rules"]))
        else:
            builtin.add((ref["kind"], ref["name"], scope))
    return ours, builtin


@pytest.mark.parametrize("account", sorted(EXPECTED_PERMISSIONS))
def test_service_account_has_exactly_the_permissions_it_needs(account: str) -> None:
    ours, builtin = permissions(account)
    assert builtin == BUILT_IN_ROLES[account]
    for scope in set(ours) | set(EXPECTED_PERMISSIONS[account]):
        got, want = ours.get(scope, set()), EXPECTED_PERMISSIONS[account].get(scope, set())
        assert got == want, f"{account} in {scope or 'all namespaces'}: extra {got - want}, missing {want - got}"


def test_rbac_has_no_wildcards_no_secrets_and_no_admin_roles() -> None:
    for role in objects("ClusterRole") + objects("Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in (rule.get(field) or []), f"{role['metadata']['name']}: wildcard in {field}"
            assert "secrets" not in rule["resources"], role["metadata"]["name"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), role["metadata"]["name"]
            assert not rule.get("nonResourceURLs")
    for binding in objects("ClusterRoleBinding") + objects("RoleBinding"):
        assert binding["roleRef"]["name"] not in ("cluster-admin", "admin", "edit", "view")
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
            assert subject["name"] in EXPECTED_PERMISSIONS


def test_every_workload_runs_as_its_own_service_account() -> None:
    accounts = {d["metadata"]["name"] for d in objects("ServiceAccount")}
    assert accounts == set(EXPECTED_PERMISSIONS)
    used = {pod_spec(one("Deployment", name))["serviceAccountName"] for name in DEPLOYMENTS}
    assert used == accounts


# ---- CRD -----------------------------------------------------------------------------------------------


def crd() -> dict[str, Any]:
    return one("CustomResourceDefinition", "migsubstitutions.mig-extender.io")


def crd_schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_crd_is_the_one_the_code_reads_and_writes() -> None:
    from mig_extender.core import rules

    spec = crd()["spec"]
    (version,) = spec["versions"]
    assert (spec["group"], version["name"], spec["names"]["kind"], spec["names"]["plural"]) == (
        rules.API_GROUP, rules.API_VERSION, rules.KIND, rules.PLURAL)
    assert spec["names"]["singular"] == "migsubstitution" and spec["names"]["shortNames"] == ["migsub"]
    assert spec["scope"] == "Namespaced"
    assert version["served"] and version["storage"] and version["subresources"] == {"status": {}}


def test_the_crd_is_in_one_file() -> None:
    """Issue 16: manifests/crd.yaml was a second copy (a symlink: two identical files in a tarball or on
    Windows). The install (kustomize) and the test control plane read manifests/base/crd.yaml."""
    files = [p for p in MANIFESTS.rglob("*.yaml")
             if any(d.get("kind") == "CustomResourceDefinition" for d in load_docs(p))]
    assert files == [BASE / "crd.yaml"] and not files[0].is_symlink()


def test_crd_printer_columns() -> None:
    (version,) = crd()["spec"]["versions"]
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == [("Phase", ".status.phase"), ("Pod", ".spec.podName"),
                       ("Original", ".spec.original.resource"), ("Substitute", ".spec.substitute.resource"),
                       ("Node", ".spec.nodeName"), ("Age", ".metadata.creationTimestamp")]


def test_crd_schema_has_the_contract_fields() -> None:
    props = crd_schema()["properties"]
    spec, status = props["spec"]["properties"], props["status"]["properties"]
    assert set(spec) == {"podName", "podUID", "owner", "original", "substitute", "nodeName", "expiresAt",
                         "preemption"}
    assert set(spec["owner"]["properties"]) == {"kind", "name", "uid", "apiVersion"}
    assert set(spec["preemption"]["properties"]) == {"victims"}  # issue 14: a preemption hold's victims
    assert "preemption" not in props["spec"]["required"]
    assert "owner" not in props["spec"]["required"]
    assert set(status) == {"phase", "appliedPod", "boundPod", "restoreNode", "restoredPod", "message",
                           "createdAt", "updatedAt", "expiresAt", "restartAt", "claimedUntil", "restoreAttempts",
                           "retryRestoreAt", "unrewrittenAt", "restoreAfter"}
    assert status["phase"]["enum"] == [p.value for p in Phase]
    for key in ("createdAt", "updatedAt", "expiresAt", "restartAt", "claimedUntil", "retryRestoreAt", "unrewrittenAt",
                "restoreAfter"):
        assert status[key]["format"] == "date-time"
    for side in ("original", "substitute"):
        count = spec[side]["properties"]["count"]
        assert (count["type"], count["minimum"], count["maximum"]) == ("integer", 1, MAX_MIG_COUNT)


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", sub
        yield from _walk(sub, f"{path}.{name}")


def test_crd_schema_describes_every_field() -> None:
    missing = [p for p, s in _walk(crd_schema()) if "description" not in s
               and p not in (".apiVersion", ".kind", ".metadata")]
    assert not missing


def test_crd_resource_pattern_accepts_the_whole_catalog_and_nothing_else() -> None:
    pattern = crd_schema()["properties"]["spec"]["properties"]["original"]["properties"]["resource"]["pattern"]
    catalog = schedconfig.all_mig_resources()
    assert catalog and all(re.search(pattern, r) for r in catalog), [r for r in catalog if not re.search(pattern, r)]
    for bad in ("nvidia.com/gpu", "nvidia.com/mig-1g.5gb+me", "nvidia.com/mig-0g.5gb", "mig-1g.5gb", ""):
        assert not re.search(pattern, bad), bad


# ---- workloads -----------------------------------------------------------------------------------------

CONTRACT_ARGS = {
    ("mig-scheduler", "extender"): ["serve", "--in-cluster", "--bind", "127.0.0.1:8888", "--metrics-bind",
                                   "0.0.0.0:9091"],
    ("mig-extender-webhook", "webhook"): ["webhook", "--in-cluster", "--bind", "0.0.0.0:8443",
                                          "--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key"],
    ("mig-extender-reconciler", "reconciler"): ["reconcile", "--in-cluster", "--namespace", NAMESPACE,
                                                "--metrics-bind", "0.0.0.0:9090"],
}


def _version() -> str:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup["metadata"]["version"]


@pytest.mark.parametrize(("deployment", "name"), list(CONTRACT_ARGS), ids=[d for d, _ in CONTRACT_ARGS])
def test_component_command_lines_are_the_cli_contract(deployment: str, name: str) -> None:
    c = container(one("Deployment", deployment), name)
    assert c["image"] == f"{IMAGE}:{_version()}"
    assert "command" not in c, "the image's ENTRYPOINT is mig-extender"
    assert c["args"] == CONTRACT_ARGS[(deployment, name)]
    parser = cli._parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if c["args"][0] not in subcommands:
        pytest.skip(f"`mig-extender {c['args'][0]}` is not implemented yet")
    parser.parse_args(c["args"])  # exits (SystemExit 2) on an unknown flag or a bad value


def test_image_tag_is_set_once_in_the_kustomization() -> None:
    assert kustomization(BASE)["images"] == [{"name": IMAGE, "newName": IMAGE, "newTag": _version()}]


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_is_hardened(name: str) -> None:
    spec = pod_spec(one("Deployment", name))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert all("hostPath" not in v for v in spec.get("volumes") or [])
    for c in all_containers(spec):
        sc = c["securityContext"]
        assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}, c["name"]


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_has_requests_limits_and_probes(name: str) -> None:
    for c in all_containers(pod_spec(one("Deployment", name))):
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, (c["name"], kind)
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            spec = c[probe]
            target = spec["httpGet"]["path"] if "httpGet" in spec else " ".join(spec["exec"]["command"])
            assert path in target, (c["name"], probe, target)


def test_python_containers_get_a_writable_tmp() -> None:
    """gunicorn keeps worker heartbeat files in the temp dir, and the root filesystem is read-only."""
    for name in DEPLOYMENTS:
        deployment = one("Deployment", name)
        for c in all_containers(pod_spec(deployment)):
            if c["image"].startswith(f"{IMAGE}:"):
                assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], (name, c["name"])
        assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod_spec(deployment)["volumes"])


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_replicas_spread_and_are_covered_by_a_pdb(name: str) -> None:
    deployment = one("Deployment", name)
    labels = pod_meta(deployment)["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert selects(deployment["spec"]["selector"], labels)
    spread = pod_spec(deployment)["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {s["topologyKey"] for s in spread}
    assert all(selects(s["labelSelector"], labels) for s in spread)
    pdbs = [p for p in objects("PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1


def test_every_component_is_scraped_on_an_address_that_serves_only_metrics() -> None:
    for name in DEPLOYMENTS:
        deployment = one("Deployment", name)
        annotations = pod_meta(deployment).get("annotations") or {}
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        spec = pod_spec(deployment)
        containers = spec["containers"] + (spec.get("initContainers") or [])  # the extender is a native sidecar
        ports = {p["containerPort"] for c in containers for p in c.get("ports") or []}
        assert int(annotations["prometheus.io/port"]) in ports


def test_every_object_and_pod_says_it_is_part_of_mig_extender() -> None:
    for doc in base():
        assert doc["metadata"]["labels"].get(PART_OF[0]) == PART_OF[1], (doc["kind"], doc["metadata"]["name"])
    for name in DEPLOYMENTS:
        assert pod_meta(one("Deployment", name))["labels"][PART_OF[0]] == PART_OF[1]


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = one("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# ---- webhook -------------------------------------------------------------------------------------------


def webhook() -> dict[str, Any]:
    (hook,) = one("MutatingWebhookConfiguration", "mig-extender")["webhooks"]
    return hook


def test_webhook_configuration_is_the_contract() -> None:
    hook = webhook()
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    # NoneOnDryRun: the webhook claims a rule in the API (a status write), except for a dryRun request
    assert (hook["failurePolicy"], hook["timeoutSeconds"], hook["sideEffects"], hook["reinvocationPolicy"]) == (
        "Ignore", 3, "NoneOnDryRun", "Never")
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["namespaceSelector"] == {"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": ["kube-system", "kube-public", "kube-node-lease", NAMESPACE]}]}
    assert hook["objectSelector"] == {"matchExpressions": [{"key": PART_OF[0], "operator": "NotIn",
                                                            "values": [PART_OF[1]]}]}
    assert "caBundle" not in hook["clientConfig"], "patched in at install time (docs/install.md)"


def test_webhook_service_reaches_the_webhook_pods_on_their_https_port() -> None:
    ref = webhook()["clientConfig"]["service"]
    assert ref["path"] == "/mutate"
    service = one("Service", ref["name"])
    assert service["metadata"]["namespace"] == ref["namespace"] == NAMESPACE
    (port,) = service["spec"]["ports"]
    assert port["port"] == ref["port"]
    deployment = one("Deployment", "mig-extender-webhook")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_meta(deployment)["labels"])
    c = container(deployment, "webhook")
    (named,) = [p for p in c["ports"] if p["name"] == port["targetPort"]]
    assert c["args"][c["args"].index("--bind") + 1].endswith(f":{named['containerPort']}")
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"


def test_webhook_mounts_the_tls_secret_the_docs_and_cert_manager_create() -> None:
    deployment = one("Deployment", "mig-extender-webhook")
    c = container(deployment, "webhook")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "tls")
    secret = volume["secret"]["secretName"]
    assert secret == "mig-extender-webhook-tls"
    assert c["args"][c["args"].index("--tls-cert") + 1] == f"{mount['mountPath']}/tls.crt"
    assert c["args"][c["args"].index("--tls-key") + 1] == f"{mount['mountPath']}/tls.key"
    overlay = resources_of(MANIFESTS / "overlays" / "cert-manager")
    certificate = one("Certificate", "mig-extender-webhook", overlay)
    assert certificate["spec"]["secretName"] == secret
    service = webhook()["clientConfig"]["service"]
    assert f"{service['name']}.{service['namespace']}.svc" in certificate["spec"]["dnsNames"]
    issuer = certificate["spec"]["issuerRef"]
    assert one(issuer["kind"], issuer["name"], overlay)["metadata"]["namespace"] == NAMESPACE
    install = (ROOT / "docs" / "install.md").read_text()
    assert f"create secret tls {secret}" in install


def test_cert_manager_overlay_injects_the_ca_of_its_certificate() -> None:
    overlay = MANIFESTS / "overlays" / "cert-manager"
    (patch,) = kustomization(overlay)["patches"]
    assert patch["target"]["kind"] == "MutatingWebhookConfiguration" and patch["target"]["name"] == "mig-extender"
    annotations = yaml.safe_load(patch["patch"])["metadata"]["annotations"]
    assert annotations == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/mig-extender-webhook"}
    assert kustomization(overlay)["resources"][0] == "../../base"


def test_default_install_is_the_base_and_leaves_the_samples_out() -> None:
    assert kustomization(MANIFESTS)["resources"] == ["base"]
    assert not [d for d in base() if d["metadata"].get("namespace") == "mig-demo" or d["kind"] == "Pod"]


# ---- samples and docs ----------------------------------------------------------------------------------


@cache
def samples() -> tuple[dict[str, Any], ...]:
    return tuple(resources_of(MANIFESTS / "samples"))


@pytest.mark.parametrize("name", ["infer-a", "infer-b"])
def test_walkthrough_deployments_ask_for_one_1g_5gb_on_mig_scheduler(name: str) -> None:
    deployment = one("Deployment", name, samples())
    assert deployment["spec"]["replicas"] == 1
    spec = pod_spec(deployment)
    assert spec["schedulerName"] == schedconfig.SCHEDULER_NAME
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.5gb"] == 1


def test_bare_pod_sample_relies_on_the_namespace_opt_in() -> None:
    pod = one("Pod", "infer-bare", samples())
    assert "schedulerName" not in pod["spec"]
    namespace = kustomization(MANIFESTS / "samples" / "base")["namespace"]
    assert one("Namespace", namespace, samples())["metadata"]["labels"][LABEL_SCHEDULER_OPT_IN] == "true"


def test_opt_out_sample_carries_the_annotation_on_its_pods() -> None:
    deployment = one("Deployment", "infer-exact", samples())
    assert pod_meta(deployment)["annotations"][ANN_SUBSTITUTE] == "false"


def patched(directory: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization whose patches are JSON patches with a kind target, applied."""
    import jsonpatch

    docs = [json.loads(json.dumps(d)) for d in resources_of(directory)]
    for entry in kustomization(directory).get("patches") or []:
        ops = yaml.safe_load(entry["patch"])
        docs = [jsonpatch.apply_patch(d, ops) if d["kind"] == entry["target"]["kind"] else d for d in docs]
    return docs


@pytest.mark.parametrize("variant, gpu", [("h100-80gb", "H100-80GB"), ("h200-141gb", "H200-141GB")])
def test_gpu_variants_of_the_samples_ask_for_that_gpus_smallest_slice(variant: str, gpu: str) -> None:
    """Issue 16: samples for H100/H200 nodes, not only A100-40GB: the same workloads, each asking for one
    slice of the GPU's smallest profile (as the A100-40GB ones ask for 1g.5gb)."""
    from mig_extender.core.catalog import model

    smallest = min((p for p in model(gpu).profiles if not p.media_extensions),
                   key=lambda p: (p.compute_slices, p.memory_gb)).resource
    base_docs, docs = samples(), patched(MANIFESTS / "samples" / variant)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [(d["kind"], d["metadata"]["name"]) for d in base_docs]
    for doc, original in zip(docs, base_docs, strict=True):
        if doc["kind"] == "Namespace":
            continue
        limits = all_containers(pod_spec(doc))[0]["resources"]["limits"]
        before = dict(all_containers(pod_spec(original))[0]["resources"]["limits"])
        assert limits == {**{k: v for k, v in before.items() if not k.startswith("nvidia.com/")}, smallest: 1}
        assert pod_meta(doc).get("annotations") == pod_meta(original).get("annotations")


def test_install_doc_covers_every_step() -> None:
    text = (ROOT / "docs" / "install.md").read_text()
    for needle in ("mig.strategy=mixed", "docker build -t", "mig-extender certs", "kubectl apply -k manifests/",
                   "caBundle", f"{LABEL_SCHEDULER_OPT_IN}=true", "kubectl apply -k manifests/samples/",
                   "kubectl get migsubstitutions -A", "describe pod <pod-name>", "manifests/overlays/cert-manager/",
                   "kubectl apply -k manifests/monitoring/", "manifests/samples/h100-80gb/", "--rule-ttl"):
        assert needle in text, needle
