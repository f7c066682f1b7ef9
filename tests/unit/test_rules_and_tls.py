"""MigSubstitution round trips, generated certificates and the reloading TLS context."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from mig_extender.certs import generate
from mig_extender.core.resources import Owner, PodInfo, ResourceCount
from mig_extender.core.rules import Phase, new_rule, rule_from_object, rule_to_object
from mig_extender.web.tls import ReloadingContext

RS_OWNER = Owner("ReplicaSet", "web", "rs-1", "apps/v1")


def a_rule(owner: Owner | None = RS_OWNER):
    pod = PodInfo("team-a", "web-x", "uid-x", owner=owner)
    return new_rule(pod, ResourceCount("nvidia.com/mig-1g.5gb", 1), ResourceCount("nvidia.com/mig-2g.10gb", 1),
                    "gpu-a", 1795458139.25, 300.0)


@pytest.mark.parametrize("phase", list(Phase))
def test_rule_round_trips_through_the_object(phase: Phase) -> None:
    rule = replace(a_rule(), phase=phase, applied_pod="web-y", bound_pod="uid-y", restore_node="gpu-b",
                   resource_version="42", updated=1795458200.5, restart_at=1795458141.75,
                   claimed_until=1795458171.5, restore_attempts=2, retry_restore_at=1795458300.5)
    assert rule_from_object(rule_to_object(rule)) == rule


def test_object_as_created_without_status_reads_as_recorded() -> None:
    obj = rule_to_object(a_rule())
    obj.pop("status")
    obj["metadata"]["creationTimestamp"] = "2026-11-23T18:22:19Z"
    rule = rule_from_object(obj)
    assert rule.phase is Phase.RECORDED and rule.created == pytest.approx(1795458139, abs=1)
    assert rule.expires == pytest.approx(a_rule().expires)


def test_workload_owns_its_rules_but_a_bare_pod_does_not() -> None:
    assert rule_to_object(a_rule())["metadata"]["ownerReferences"][0]["uid"] == "rs-1"
    assert "ownerReferences" not in rule_to_object(a_rule(owner=None))["metadata"]


@pytest.mark.parametrize("mangle", [lambda o: o["spec"].pop("original"), lambda o: o["spec"].update(original=5),
                                    lambda o: o["status"].update(phase="Bogus"), lambda o: o.pop("metadata")])
def test_malformed_objects_raise_value_error(mangle) -> None:
    obj = rule_to_object(a_rule())
    mangle(obj)
    with pytest.raises(ValueError):
        rule_from_object(obj)


def test_certs_have_the_service_names_and_a_private_key_file(tmp_path: Path) -> None:
    bundle = generate(tmp_path, "svc", "ns")
    leaf = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "svc.ns.svc" in names and "localhost" in names
    assert os.stat(tmp_path / "tls.key").st_mode & 0o777 == 0o600
    assert bundle and "PRIVATE" not in (tmp_path / "ca.crt").read_text()


def test_certs_command_prints_only_the_public_bundle(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mig_extender.cli", "certs", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert "PRIVATE" not in out.stdout + out.stderr and len(out.stdout.strip()) > 100


def test_tls_context_reloads_changed_files_and_keeps_the_old_pair_on_garbage(tmp_path: Path) -> None:
    generate(tmp_path, "svc", "ns")
    ctx = ReloadingContext(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    assert ctx.check() is False
    generate(tmp_path, "svc", "ns")  # rotation
    os.utime(tmp_path / "tls.crt", ns=(1, 2_000_000_000_000_000_000))
    assert ctx.check() is True and ctx.reloads == 1
    (tmp_path / "tls.crt").write_text("garbage")
    assert ctx.check() is False and isinstance(ctx.context, ssl.SSLContext)


def test_debug_rules_show_the_mark_and_the_claim_as_times() -> None:
    """/debug/rules (Rule.to_dict) writes every time the way the MigSubstitution status does."""
    out = replace(a_rule(), restart_at=1795458141.0).claimed(1795458142.0, 30.0).to_dict()
    assert (out["restart_at"], out["claimed_until"]) == ("2026-11-23T18:22:21Z", "2026-11-23T18:22:52Z")
    assert a_rule().to_dict()["restart_at"] == ""
