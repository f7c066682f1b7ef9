"""A user mistake on the command line is one line on stderr and exit code 2, before gunicorn starts (issue 16).

Each case runs the real ``mig-extender`` process (``python -m mig_extender.cli``) in a clean environment: no
$KUBECONFIG, $HOME an empty directory, not in a pod. ``{tmp}`` in a case is a scratch directory holding the
files below; ``{port}`` a port some other socket is listening on, ``{free}`` one nothing listens on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = str(ROOT / "examples/cluster-snapshot.json")
FILES = {
    "notjson.json": "this is not json",
    "array.json": "[1, 2, 3]",
    "empty-object.json": "{}",
    "bad-kubeconfig": "not: [yaml",
    "kubeconfig": """apiVersion: v1
kind: Config
current-context: test
contexts: [{name: test, context: {cluster: test, user: test}}]
clusters: [{name: test, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: test, user: {token: not-a-real-token}}]
""",
}
NO_CLUSTER = ("no cluster to watch: not in a pod, $KUBECONFIG is not set and {tmp}/home/.kube/config does not "
              "exist; give --kubeconfig PATH")


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on now (not 8888: the README's quick start may be running beside the tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
           and not k.startswith("MIG_EXTENDER_")}
    return {**env, "HOME": str(tmp / "home"), "PYTHONPATH": str(ROOT), **extra}


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI; the subprocess timeout is the "does not hang retrying" guard (no wall-clock assert: the
    guide keeps timing out of tests, and a loaded CI machine made a 10 s bound flaky)."""
    done = subprocess.run([sys.executable, "-m", "mig_extender.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)
    return done.returncode, done.stderr


def dns_label_error(command: str, flag: str, got: str) -> str:
    """What a name the API server refuses (no DNS-1123 label) is answered with."""
    return (f"mig-extender {command}: {flag} must be a DNS label (lowercase letters, digits, '-', at most 63), "
            f"got {got!r}")


def url_error(got: str) -> str:
    """What a --url kube-scheduler could not call is answered with."""
    return f"mig-extender scheduler-config: --url must be http(s)://HOST[:PORT][/PATH], got {got!r}"


CASES = [
    pytest.param(["serve", "--snapshot", "/nonexistent.json"],
                 "mig-extender serve: --snapshot /nonexistent.json: no such file", id="snapshot-missing"),
    pytest.param(["serve", "--snapshot", "{tmp}/notjson.json"],
                 "mig-extender serve: --snapshot {tmp}/notjson.json: not JSON (Expecting value at line 1 column 1)",
                 id="snapshot-not-json"),
    pytest.param(["serve", "--snapshot", "{tmp}/array.json"],
                 "mig-extender serve: --snapshot {tmp}/array.json: not a v1 List with an 'items' array "
                 "(write one with kubectl get nodes,pods -A -o json)", id="snapshot-array"),
    pytest.param(["serve", "--snapshot", "{tmp}/empty-object.json"],
                 "mig-extender serve: --snapshot {tmp}/empty-object.json: not a v1 List with an 'items' array "
                 "(write one with kubectl get nodes,pods -A -o json)", id="snapshot-empty-object"),
    pytest.param(["serve", "--kubeconfig", "/nonexistent"],
                 "mig-extender serve: --kubeconfig /nonexistent: no such file", id="kubeconfig-missing"),
    pytest.param(["serve", "--kubeconfig", "{tmp}/bad-kubeconfig"],
                 "mig-extender serve: --kubeconfig {tmp}/bad-kubeconfig: not a usable kubeconfig (while parsing a "
                 "flow sequence)", id="kubeconfig-not-yaml"),
    pytest.param(["serve", "--in-cluster"],
                 "mig-extender serve: --in-cluster: not running in a pod (KUBERNETES_SERVICE_HOST is not set); "
                 "outside a cluster give --kubeconfig PATH", id="in-cluster-outside"),
    pytest.param(["reconcile", "--in-cluster"],
                 "mig-extender reconcile: --in-cluster: not running in a pod (KUBERNETES_SERVICE_HOST is not set); "
                 "outside a cluster give --kubeconfig PATH", id="reconcile-in-cluster-outside"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--log-level", "LOUD"],
                 "mig-extender serve: --log-level must be one of debug, info, warning, error, critical, got 'LOUD'",
                 id="log-level"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--threads", "0"],
                 "mig-extender serve: --threads must be >= 1, got 0", id="threads-zero"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--threads", "many"],
                 "mig-extender serve: --threads must be an integer, got 'many'", id="threads-not-a-number"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--rule-ttl", "0", "--threads", "0"],
                 "mig-extender serve: --rule-ttl must be > 0 seconds, got 0; --threads must be >= 1, got 0",
                 id="every-error-at-once"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--restores-per-pass", "-1"],
                 "mig-extender reconcile: --restores-per-pass must be >= 0 (0 turns restores off), got -1",
                 id="restores-negative"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--preemptions-per-pass", "0"],
                 "mig-extender reconcile: --preemptions-per-pass must be >= 1 (--no-preemption turns it off), "
                 "got 0", id="preemptions-per-pass-zero"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--repartition", "on"],
                 "mig-extender reconcile: --repartition=on needs --mig-configs FILE: the MIG manager's config names "
                 "are all it can set", id="repartition-on-without-names"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--repartition", "yes"],
                 "mig-extender reconcile: --repartition must be one of off, advise, on, got 'yes'",
                 id="repartition-mode"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--repartition", "advise", "--mig-configs",
                  "{tmp}/bad-kubeconfig"],
                 "mig-extender reconcile: --mig-configs {tmp}/bad-kubeconfig: not YAML", id="mig-configs-not-yaml"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--mig-configs", "{tmp}/array.json"],
                 "mig-extender reconcile: --mig-configs {tmp}/array.json: no mig-configs", id="mig-configs-empty"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--restart-limit", "0"],
                 "mig-extender reconcile: --restart-limit must be >= 1 (0 would refuse every substitution as a "
                 "restart loop: serve --no-substitution turns substitution off, reconcile --restores-per-pass 0 "
                 "restores), got 0", id="restart-limit-zero"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--restart-limit", "two"],
                 "mig-extender serve: --restart-limit must be an integer, got 'two'", id="restart-limit-not-a-number"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--aging", "-5"],
                 "mig-extender serve: --aging must be >= 0 seconds (inf: never), got -5", id="aging-negative"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--aging", "soon"],
                 "mig-extender serve: --aging must be a number of seconds, got 'soon'", id="aging-not-a-number"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--restart-window", "-60"],
                 "mig-extender serve: --restart-window must be > 0 seconds, got -60", id="restart-window-negative"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--restore-policy", "never"],
                 "mig-extender reconcile: --restore-policy must be one of taker, always, got 'never'",
                 id="restore-policy"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--restore-young", "-1", "--requeue-after", "0"],
                 "mig-extender reconcile: --restore-young must be >= 0 seconds, got -1; --requeue-after must be > 0 "
                 "seconds (0 would requeue every pass), got 0", id="restore-young-and-requeue-after"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--requeue-max-delay", "5"],
                 "mig-extender reconcile: --requeue-max-delay must be >= --requeue-after (10 s), got 5",
                 id="requeue-max-delay-below-after"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--requeues-per-pass", "-1"],
                 "mig-extender reconcile: --requeues-per-pass must be >= 0 (0 turns requeues off), got -1",
                 id="requeues-per-pass-negative"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--policy", "fastest"],
                 "mig-extender serve: --policy must be one of pack, spread, got 'fastest'", id="policy"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--bind", "127.0.0.1:{port}"],
                 "mig-extender serve: --bind 127.0.0.1:{port}: address already in use", id="port-in-use"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--bind", "127.0.0.1:{free}", "--metrics-bind", "127.0.0.1:{port}"],
                 "mig-extender serve: --metrics-bind 127.0.0.1:{port}: address already in use",
                 id="metrics-port-in-use"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--tls-cert", "/nope.crt", "--tls-key", "/nope.key"],
                 "mig-extender serve: --tls-cert /nope.crt: no such file", id="tls-cert-missing"),
    pytest.param(["serve", "--snapshot", SNAPSHOT, "--tls-cert", "{tmp}/notjson.json", "--tls-key",
                  "{tmp}/notjson.json"],
                 "mig-extender serve: --tls-cert {tmp}/notjson.json / --tls-key {tmp}/notjson.json: not a PEM "
                 "certificate and its key", id="tls-not-pem"),
    pytest.param(["serve"], "mig-extender serve: " + NO_CLUSTER + ", or --snapshot FILE to serve a saved "
                 "`kubectl get nodes,pods -A -o json`", id="serve-no-cluster"),
    pytest.param(["webhook", "--plain-http"], "mig-extender webhook: " + NO_CLUSTER + ", or --no-cluster to "
                 "serve with no rules (local experiments)", id="webhook-no-cluster"),
    pytest.param(["reconcile"], "mig-extender reconcile: " + NO_CLUSTER, id="reconcile-no-cluster"),
    pytest.param(["certs", "--out", "/proc/nope"],
                 "mig-extender certs: cannot write to --out /proc/nope: No such file or directory", id="certs-out"),
    pytest.param(["certs", "--days", "0"], "mig-extender certs: --days must be >= 1, got 0", id="certs-days"),
    # names the API server refuses (a DNS-1123 label): the certificate would name a Service that cannot exist,
    # the reconciler would write its Lease and Events into a namespace that cannot exist, on every pass
    pytest.param(["certs", "--service", ""],
                 dns_label_error("certs", "--service", ""), id="certs-service-empty"),
    pytest.param(["certs", "--namespace", "Bad_NS"],
                 dns_label_error("certs", "--namespace", "Bad_NS"), id="certs-namespace-invalid"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--namespace", ""],
                 dns_label_error("reconcile", "--namespace", ""), id="reconcile-namespace-empty"),
    # a value read from a file or a ConfigMap keeps its newline: the API server refuses that name too
    pytest.param(["certs", "--namespace", "mig-extender\n"],
                 dns_label_error("certs", "--namespace", "mig-extender\n"), id="certs-namespace-newline"),
    pytest.param(["scheduler-config", "--namespace", "kube_system"],
                 dns_label_error("scheduler-config", "--namespace", "kube_system"), id="scheduler-config-namespace"),
    pytest.param(["scheduler-config", "--variant", "third"],
                 "mig-extender scheduler-config: --variant must be one of second, default, got 'third'", id="variant"),
    # a configuration kube-scheduler cannot use: every extender call fails at run time (a URL with no
    # scheme), or its client falls back to client-go's 5 qps (0) or fails validation (a negative burst)
    pytest.param(["scheduler-config", "--url", "notaurl"],
                 url_error("notaurl"), id="scheduler-config-url"),
    pytest.param(["scheduler-config", "--url", "http://"],
                 url_error("http://"), id="scheduler-config-url-no-host"),
    # a port kube-scheduler cannot dial fails every extender call at run time, as a missing host does
    pytest.param(["scheduler-config", "--url", "http://127.0.0.1:99999"],
                 url_error("http://127.0.0.1:99999"), id="scheduler-config-url-port-range"),
    pytest.param(["scheduler-config", "--url", "http://ext:http/"],
                 url_error("http://ext:http/"), id="scheduler-config-url-port-name"),
    pytest.param(["scheduler-config", "--url", "http://[::1:8888"],
                 url_error("http://[::1:8888"), id="scheduler-config-url-ipv6-unclosed"),
    pytest.param(["scheduler-config", "--qps", "0"],
                 "mig-extender scheduler-config: --qps must be at least 1, got 0", id="scheduler-config-qps-0"),
    pytest.param(["scheduler-config", "--qps", "-5"],
                 "mig-extender scheduler-config: --qps must be at least 1, got -5", id="scheduler-config-qps-negative"),
    pytest.param(["scheduler-config", "--out", "/proc/nope/x"],
                 "mig-extender scheduler-config: cannot write --out /proc/nope/x: No such file or directory",
                 id="scheduler-config-out"),
    pytest.param(["profiles", "--gpu", "V100"],
                 "mig-extender profiles: unknown GPU 'V100'; give a model (A100-40GB, ", id="profiles-unknown-gpu"),
    pytest.param(["reconcile", "--kubeconfig", "{tmp}/kubeconfig", "--metrics-bind", "nope"],
                 "mig-extender reconcile: --metrics-bind must be HOST:PORT, got 'nope'", id="reconcile-metrics-bind"),
    pytest.param(["explain", "default/x", "--timeout", "-1"],
                 "mig-extender explain: --timeout must be > 0 seconds, got -1", id="explain-timeout-negative"),
    pytest.param(["simulate", "--nodes", "1", "--duration", "60", "--policies", "stock", "--jobs", "1", "--plot",
                  "{tmp}/nope/sim.png"],
                 "mig-extender simulate: --plot {tmp}/nope/sim.png: cannot write it (no directory {tmp}/nope)",
                 id="simulate-plot-unwritable"),
    pytest.param(["simulate", "--nodes", "1", "--duration", "60", "--policies", "stock", "--jobs", "1", "--plot",
                  "{tmp}"],
                 "mig-extender simulate: --plot {tmp}: cannot write it (a directory)", id="simulate-plot-directory"),
    pytest.param(["simulate", "--nodes", "1", "--duration", "60", "--policies", "stock", "--jobs", "-1"],
                 "mig-extender simulate: --jobs must be >= 0 (0: one per core), got -1", id="simulate-jobs-negative"),
]


@pytest.mark.parametrize("args, message", CASES)
def test_user_mistake_is_one_line_and_exit_2(tmp: Path, busy_port: int, free_port: int, args: list[str],
                                             message: str) -> None:
    fill = {"tmp": str(tmp), "port": str(busy_port), "free": str(free_port)}
    code, stderr = run([a.format(**fill) for a in args], clean_env(tmp))
    assert (code, stderr.count("\n")) == (2, 1), stderr
    assert stderr.startswith(message.format(**fill)), stderr


def test_kubeconfig_from_the_environment_is_checked_like_the_flag(tmp: Path) -> None:
    code, stderr = run(["serve"], clean_env(tmp, KUBECONFIG="/nonexistent"))
    assert (code, stderr) == (2, "mig-extender serve: $KUBECONFIG /nonexistent: no such file\n")


def test_serve_without_flags_watches_the_kubeconfig_kubectl_would_use(tmp: Path) -> None:
    """Not the silent empty mode: $KUBECONFIG is used, and /readyz says the caches are not synced (its API
    server does not answer) instead of 'ok' over zero nodes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mig_extender.cli", "serve", "--bind", f"127.0.0.1:{port}"],
                            env=clean_env(tmp, KUBECONFIG=str(tmp / "kubeconfig")), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        deadline, answer = time.monotonic() + 30, None
        while time.monotonic() < deadline and answer is None:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)  # the worker boots
            except requests.ConnectionError:
                time.sleep(0.2)
        assert answer is not None and answer.status_code == 503 and "not synced" in answer.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert f"kubeconfig {tmp / 'kubeconfig'} ($KUBECONFIG)" in out, out[-3000:]


def test_startup_log_says_what_is_served_in_plain_words(tmp: Path) -> None:
    """The log names the source and counts what it read; no 'objects moved out of the collector's reach'."""
    import json

    items = json.loads(Path(SNAPSHOT).read_text())["items"]
    nodes = [o for o in items if o["kind"] == "Node"]
    mig_nodes = [n for n in nodes if any(r.startswith("nvidia.com/mig-") for r in n["status"]["allocatable"])]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mig_extender.cli", "serve", "--snapshot", SNAPSHOT,
                             "--bind", f"127.0.0.1:{port}"], env=clean_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        time.sleep(1.0)  # the synced line comes from a thread that polls every 0.5 s
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert f"serving the cluster saved in {SNAPSHOT}: {len(nodes)} nodes" in out, out
    assert f"inventory synced: {len(nodes)} nodes ({len(mig_nodes)} with MIG slices, 0 with an unrecognised GPU)" \
        in out, out
    assert "collector" not in out, out


@pytest.mark.parametrize("url", [
    pytest.param("http://[::1]:8888", id="ipv6"),
    pytest.param("https://mig-extender.gpu-ops.svc:8888/extender", id="path"),
    pytest.param("http://mig-extender", id="no-port"),
])
def test_scheduler_config_takes_every_url_kube_scheduler_can_call(tmp: Path, url: str) -> None:
    code, stderr = run(["scheduler-config", "--url", url, "--out", str(tmp / "config.yaml")], clean_env(tmp))
    assert (code, stderr) == (0, "")
    assert f"urlPrefix: {url}\n" in (tmp / "config.yaml").read_text()


@pytest.mark.parametrize("command", [
    pytest.param(["serve", "--snapshot", SNAPSHOT], id="serve"),
    pytest.param(["webhook", "--no-cluster", "--plain-http"], id="webhook"),
])
def test_a_bad_namespace_from_the_environment_is_named_as_the_environment_variable(tmp: Path,
                                                                                   command: list[str]) -> None:
    """serve and webhook have no --namespace: an error telling the user to fix one sends them nowhere."""
    code, stderr = run(command, clean_env(tmp, MIG_EXTENDER_NAMESPACE="GPU_Ops"))
    assert (code, stderr) == (2, f"mig-extender {command[0]}: MIG_EXTENDER_NAMESPACE must be a DNS label "
                                 "(lowercase letters, digits, '-', at most 63), got 'GPU_Ops'\n")
