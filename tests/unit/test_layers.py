"""Imports go one way: the pure core never imports flask, kubernetes, cachetools or the HTTP layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mig_extender"
PURE = ["core/catalog", "core/resources", "core/rules", "core/snapshot", "core/planner", "cluster/inventory",
        "core/schedconfig", "catalogtable"]
FORBIDDEN = {"flask", "werkzeug", "kubernetes", "cachetools", "gunicorn", "requests", "prometheus_client"}
EDGES = {"web", "process", "cli", "kube", "rulestore_kube", "webhook", "reconciler", "extender"}


def imports_of(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: keep the last part of the module name
                found.add(f".{(node.module or '').split('.')[-1]}")
            else:
                found.add((node.module or "").split(".")[0])
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_framework(module: str) -> None:
    imported = imports_of(module)
    assert not imported & FORBIDDEN, f"{module} imports {imported & FORBIDDEN}"
    assert not {f".{e}" for e in EDGES} & imported, f"{module} imports an edge module"


def test_only_kube_modules_import_kubernetes() -> None:
    users = {p.stem for p in PACKAGE.rglob("*.py") if "kubernetes" in imports_of(str(p.relative_to(PACKAGE))[:-3])}
    assert users <= {"kube", "rulestore_kube"}, users
