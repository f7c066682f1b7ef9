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


# -- operator knobs of the loop guard, restores and requeues -------------------------------------------


def test_loop_guard_restore_and_requeue_defaults_are_the_cores() -> None:
    """Settings adds knobs, not defaults: each is PlanSettings' or RequeueSettings' own."""
    from mig_extender.core.planner import PlanSettings
    from mig_extender.core.requeue import RequeueSettings

    assert Settings().plan == PlanSettings()
    assert Settings().requeue_settings == RequeueSettings()


@pytest.mark.parametrize("argv, environ, aging", [
    pytest.param([], {}, 300.0, id="default"),
    pytest.param(["--aging", "1800"], {}, 1800.0, id="flag"),
    pytest.param(["--aging", "inf"], {}, float("inf"), id="never"),
    pytest.param([], {"MIG_EXTENDER_AGING": "900"}, 900.0, id="environment"),
    pytest.param(["--aging", "60"], {"MIG_EXTENDER_AGING": "900"}, 60.0, id="flag-over-environment"),
])
def test_serve_aging_reaches_the_planner(argv: list[str], environ: dict[str, str], aging: float) -> None:
    """Aging is decided where substitutes are chosen, the extender's filter: a serve knob (issue 17's
    trade between the first wait's tail and useful utilisation, bench/README.md)."""
    from mig_extender import cli

    args = cli._parser().parse_args(["serve", "--snapshot", "s.json", *argv])
    assert cli._serve_settings(args, environ=environ).plan.aging == aging


def test_reconcile_aging_reaches_its_planner_too() -> None:
    """Defect: the reconciler also decides with aging (its explain step calls choose_substitute to tell a
    pod that cannot be restarted which substitute it would get), but ``reconcile --aging`` did not exist:
    with ``serve --aging inf`` (docs/repartition.md) the reconciler kept 300 s and told pods of a
    substitute the extender would never give them."""
    from mig_extender import cli

    args = cli._parser().parse_args(["reconcile", "--kubeconfig", "k", "--aging", "inf"])
    assert cli._reconcile_settings(args, environ={}).plan.aging == float("inf")
    args = cli._parser().parse_args(["reconcile", "--kubeconfig", "k"])
    assert cli._reconcile_settings(args, environ={"MIG_EXTENDER_AGING": "900"}).plan.aging == 900.0


@pytest.mark.parametrize("argv, plan, requeue", [
    pytest.param(["reconcile", "--restart-limit", "3", "--restart-window", "1800"],
                 {"restart_limit": 3, "restart_window": 1800.0}, {}, id="loop-guard"),
    pytest.param(["reconcile", "--restore-policy", "always", "--restore-young", "0"],
                 {"restore_needs_taker": False, "restore_young": 0.0}, {}, id="restore-policy"),
    pytest.param(["reconcile", "--restore-policy", "TAKER"], {"restore_needs_taker": True}, {},
                 id="restore-policy-case"),
    pytest.param(["reconcile", "--requeue-after", "5", "--requeue-max-delay", "60", "--requeues-per-pass", "0"],
                 {}, {"after": 5.0, "max_delay": 60.0, "per_pass": 0}, id="requeue"),
    pytest.param(["reconcile", "--requeue-schedulers", "gpu-scheduler, default-scheduler"], {},
                 {"schedulers": frozenset({"gpu-scheduler", "default-scheduler"})}, id="requeue-schedulers"),
])
def test_reconcile_flags_reach_plan_and_requeue_settings(argv: list[str], plan: dict, requeue: dict) -> None:
    from mig_extender import cli
    from mig_extender.core.planner import PlanSettings
    from mig_extender.core.requeue import RequeueSettings

    settings = cli._reconcile_settings(cli._parser().parse_args(["reconcile", "--kubeconfig", "k", *argv[1:]]),
                                       environ={})
    assert settings.plan == replace(PlanSettings(), **plan)
    assert settings.requeue_settings == replace(RequeueSettings(), **requeue)


def test_serve_takes_the_loop_guard_its_filter_reads() -> None:
    """The filter refuses a substitute that would restart a lineage past the limit (planner.restart_loop)."""
    from mig_extender import cli

    args = cli._parser().parse_args(["serve", "--snapshot", "s.json", "--restart-limit", "4",
                                     "--restart-window", "600"])
    plan = cli._serve_settings(args, environ={}).plan
    assert (plan.restart_limit, plan.restart_window) == (4, 600.0)


def test_flags_not_given_leave_the_environment_in_force() -> None:
    from mig_extender import cli

    args = cli._parser().parse_args(["reconcile", "--kubeconfig", "k", "--restart-window", "1200"])
    settings = cli._reconcile_settings(args, environ={"MIG_EXTENDER_RESTART_LIMIT": "5",
                                                      "MIG_EXTENDER_RESTART_WINDOW": "99"})
    assert (settings.plan.restart_limit, settings.plan.restart_window) == (5, 1200.0)


def test_finished_rules_are_kept_as_long_as_the_loop_guard_counts_them() -> None:
    """The guard counts restarts from finished rules: deleting them sooner than --restart-window would
    let a lineage be restarted again inside the window."""
    assert Settings().rule_retention == Settings().retention
    assert replace(Settings(), restart_window=7200.0).rule_retention == 7200.0
    assert replace(Settings(), retention=9000.0, restart_window=7200.0).rule_retention == 9000.0


@pytest.mark.parametrize("changes, message", [
    pytest.param({"restart_limit": 0}, "--restart-limit must be >= 1 (0 would refuse every substitution as a "
                 "restart loop: serve --no-substitution turns substitution off, reconcile --restores-per-pass 0 "
                 "restores), got 0", id="restart-limit-zero"),
    pytest.param({"restart_window": 0.0}, "--restart-window must be > 0 seconds, got 0", id="restart-window"),
    pytest.param({"restore_policy": "never"}, "--restore-policy must be one of taker, always, got 'never'",
                 id="restore-policy"),
    pytest.param({"restore_young": -1.0}, "--restore-young must be >= 0 seconds, got -1", id="restore-young"),
    pytest.param({"aging": -1.0}, "--aging must be >= 0 seconds (inf: never), got -1", id="aging-negative"),
    pytest.param({"aging": float("nan")}, "--aging must be >= 0 seconds (inf: never), got nan", id="aging-nan"),
    pytest.param({"requeue_after": 0.0}, "--requeue-after must be > 0 seconds (0 would requeue every pass), "
                 "got 0", id="requeue-after-zero"),
    pytest.param({"requeue_max_delay": 5.0}, "--requeue-max-delay must be >= --requeue-after (10 s), got 5",
                 id="requeue-max-delay-below-after"),
    pytest.param({"requeues_per_pass": -1}, "--requeues-per-pass must be >= 0 (0 turns requeues off), got -1",
                 id="requeues-per-pass"),
    pytest.param({"requeue_schedulers": " , "}, "--requeue-schedulers must name at least one scheduler "
                 "(--requeues-per-pass 0 turns requeues off), got ' , '", id="requeue-schedulers-empty"),
])
def test_invalid_loop_guard_restore_and_requeue_settings(changes: dict, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        replace(Settings(), **changes).validate()
    assert str(info.value) == message


def test_reconciler_built_by_the_process_carries_requeue_loop_guard_and_retention() -> None:
    """The requeue settings used to be RequeueSettings() inside Reconciler whatever the flags said."""
    from mig_extender.cluster.inventory import ClusterInventory
    from mig_extender.cluster.rulestore import MemoryRuleStore
    from mig_extender.components.metrics import Metrics
    from mig_extender.process import new_reconciler

    settings = replace(Settings(), requeue_after=5.0, requeue_max_delay=40.0, requeues_per_pass=3,
                       restart_limit=3, restart_window=7200.0).validate()
    reconciler = new_reconciler(settings, ClusterInventory(), MemoryRuleStore(), actions=None, metrics=Metrics(),
                                is_leader=lambda: True, dra=None)
    assert reconciler.requeue == settings.requeue_settings
    assert reconciler.plan == settings.plan
    assert reconciler.retention == 7200.0


@pytest.mark.parametrize("argv, environ, namespace", [
    pytest.param([], {"MIG_EXTENDER_NAMESPACE": "gpu-ops"}, "gpu-ops", id="environment"),
    pytest.param(["--namespace", "lease-ns"], {"MIG_EXTENDER_NAMESPACE": "gpu-ops"}, "lease-ns", id="flag-wins"),
    pytest.param([], {}, "mig-extender", id="default"),
])
def test_reconcile_takes_its_lease_namespace_from_the_environment_unless_the_flag_is_given(
        argv: list[str], environ: dict[str, str], namespace: str) -> None:
    """The only process that uses the namespace read the flag's default over MIG_EXTENDER_NAMESPACE: a Lease
    written where the deployment's namespace (the usual downward-API value) is not."""
    from mig_extender import cli

    args = cli._parser().parse_args(["reconcile", "--kubeconfig", "k", *argv])
    assert cli._reconcile_settings(args, environ=environ).namespace == namespace
