"""Imports go one way: core <- cluster <- components <- web <- process/cli, and sim -> core only.

Every import in the package (top-level or inside a function) is resolved to its absolute module name and
checked against the layer it lands in, so a wrong import fails CI instead of waiting for a reviewer.
The third-party rules say the same from the other side: only the cluster layer talks to Kubernetes,
only the web layer and the process wiring know Flask or gunicorn, and the core knows none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mig_extender"
RANK = {"core": 0, "cluster": 1, "components": 2, "web": 3, "top": 4}
FRAMEWORKS = {"flask", "werkzeug", "kubernetes", "cachetools", "gunicorn", "requests", "prometheus_client",
              "orjson", "cryptography", "urllib3"}
ALLOWED_FRAMEWORKS = {  # per layer: the third-party packages its modules may import themselves
    "core": set(),
    "sim": set(),
    "cluster": {"kubernetes", "cachetools", "orjson", "urllib3"},
    "components": {"cachetools", "prometheus_client"},
    "web": {"flask", "werkzeug", "orjson"},
    "top": {"gunicorn", "cryptography"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in {"core", "cluster", "components", "web", "sim"}:
        return parts[1]
    return "top"


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of everything ``path`` imports, relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # "from . import x": x may be a module
                    found.update(f"{target}.{a.name}" for a in node.names)
                else:
                    found.add(target)
            else:
                found.add(node.module or "")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer_package_or_on_top() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "cli", "process", "certs", "catalogtable"}, "a new top-level module: give it a layer"


def upward_imports(path: Path, root: Path = ROOT) -> list[str]:
    here = layer_of(module_name(path, root))
    wrong = []
    for target in imports_of(path, root):
        if not target.startswith("mig_extender.") or target == "mig_extender.__init__":
            continue
        there = layer_of(target)
        if here == "sim":
            ok = there in {"sim", "core"}
        elif there == "sim":
            ok = here == "top"  # the CLI runs the simulator
        else:
            ok = RANK[there] <= RANK[here]
        if not ok:
            wrong.append(f"{target} ({there})")
    return wrong


def misplaced_frameworks(path: Path, root: Path = ROOT) -> set[str]:
    here = layer_of(module_name(path, root))
    used = {t.split(".")[0] for t in imports_of(path, root)} & FRAMEWORKS
    return used - (FRAMEWORKS if here == "top" else ALLOWED_FRAMEWORKS[here])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_only(path: Path) -> None:
    assert not upward_imports(path), f"{module_name(path)} imports upward or sideways: {upward_imports(path)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_third_party_frameworks_stay_in_their_layer(path: Path) -> None:
    assert not misplaced_frameworks(path), f"{module_name(path)} imports {misplaced_frameworks(path)}"


def test_only_the_cluster_layer_talks_to_kubernetes() -> None:
    users = {module_name(p) for p in MODULES if any(t.split(".")[0] == "kubernetes" for t in imports_of(p))}
    assert users and all(layer_of(u) == "cluster" for u in users), users


@pytest.mark.parametrize(("where", "source", "upward", "frameworks"), [
    pytest.param("core/probe.py", "from ..web.app import create_app\nimport flask\n",
                 ["mig_extender.web.app (web)"], {"flask"}, id="core-imports-web-and-flask"),
    pytest.param("cluster/probe.py", "from ..components import extender\n",
                 ["mig_extender.components (components)"], set(), id="cluster-imports-components"),
    pytest.param("sim/probe.py", "from ..cluster.inventory import ClusterInventory\n",
                 ["mig_extender.cluster.inventory (cluster)"], set(), id="sim-imports-cluster"),
    pytest.param("web/probe.py", "from ..core.planner import filter_pod\nfrom kubernetes import client\n",
                 [], {"kubernetes"}, id="web-imports-core-ok-but-not-kubernetes"),
])
def test_the_checker_reports_what_it_should(tmp_path: Path, where: str, source: str, upward: list[str],
                                            frameworks: set[str]) -> None:
    """The rules can fail: probes in a scratch copy of the package layout are judged like real modules."""
    probe = tmp_path / "mig_extender" / where
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    assert upward_imports(probe, tmp_path) == upward
    assert misplaced_frameworks(probe, tmp_path) == frameworks
