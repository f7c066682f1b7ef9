"""Settings validation speaks flags, and the cluster is found where kubectl would find it (issue 16)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mig_extender.cluster.client import default_kubeconfig, in_a_pod
from mig_extender.components.settings import Settings, SettingsError


@pytest.mark.parametrize("changes, message", [
    pytest.param({"threads": 0}, "--threads must be >= 1, got 0", id="threads"),
    pytest.param({"rule_ttl": -1.0}, "--rule-ttl must be > 0 seconds, got -1", id="rule-ttl"),
    pytest.param({"restore_ttl": 0.0}, "--restore-ttl must be > 0 seconds, got 0", id="restore-ttl"),
    pytest.param({"retention": 0.0}, "MIG_EXTENDER_RETENTION must be > 0 seconds, got 0", id="env-only-setting"),
    pytest.param({"log_level": "loud"}, "--log-level must be one of debug, info, warning, error, critical, "
                                        "got 'loud'", id="log-level"),
    pytest.param({"threads": 0, "max_body_bytes": 10}, "--threads must be >= 1, got 0; "
                 "MIG_EXTENDER_MAX_BODY_BYTES must be >= 1024, got 10", id="all-errors-at-once"),
    pytest.param({"preemptions_per_pass": 0}, "--preemptions-per-pass must be >= 1 (--no-preemption turns it "
                 "off), got 0", id="preemptions-per-pass"),
    pytest.param({"preemption_margin": -1.0}, "--preemption-margin must be >= 0 seconds, got -1",
                 id="preemption-margin"),
    pytest.param({"snapshot": "a.json", "kubeconfig": "k"}, "give at most one of --snapshot, --kubeconfig, "
                                                            "--in-cluster", id="two-sources"),
])
def test_invalid_settings_are_named_by_their_flag(changes: dict, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        replace(Settings(), **changes).validate()
    assert str(info.value) == message


def test_log_level_is_case_insensitive() -> None:
    assert replace(Settings(), log_level="DEBUG").validate().log_level == "DEBUG"


@pytest.mark.parametrize("env, token, why", [
    pytest.param({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, True, "", id="in-a-pod"),
    pytest.param({}, True, "not running in a pod (KUBERNETES_SERVICE_HOST is not set)", id="no-service-env"),
    pytest.param({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, False,
                 "no service account token at {token}", id="no-token"),
])
def test_in_a_pod_checks_what_client_go_checks(tmp_path: Path, env: dict, token: bool, why: str) -> None:
    path = tmp_path / "token"
    if token:
        path.write_text("t")
    assert in_a_pod(env, path) == why.format(token=path)


def test_default_kubeconfig_is_kubeconfig_env_then_home(tmp_path: Path) -> None:
    assert default_kubeconfig({}, tmp_path) == ("", f"$KUBECONFIG is not set and {tmp_path}/.kube/config does not "
                                                    "exist")
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("{}")
    assert default_kubeconfig({}, tmp_path) == (str(tmp_path / ".kube" / "config"), "~/.kube/config")
    assert default_kubeconfig({"KUBECONFIG": "/a:/b"}, tmp_path) == ("/a:/b", "$KUBECONFIG")


def test_preemption_settings_are_nested_with_their_defaults_given_once() -> None:
    from mig_extender.core.preemption import PreemptionSettings

    assert Settings().preemption_settings == PreemptionSettings()
    off = replace(Settings(), preemption=False, preemptions_per_pass=2, preemption_margin=5.0).preemption_settings
    assert off == PreemptionSettings(enabled=False, per_pass=2, reservation_margin=5.0)
