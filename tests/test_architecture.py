"""The layers hold: no import cycles in backend/, each layer imports only those below it, no TensorFlow on the web."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

BACKEND = REPO_ROOT / "backend"
# Each layer may import itself and the layers listed after it; entry modules at the top level may import anything.
ALLOWED = {
    "web": {"web", "data", "core"},
    "training": {"training", "data", "core"},
    "data": {"data", "core"},
    "core": {"core"},
}
HEAVY = ("tensorflow", "keras", "scipy")


def module_name(path: Path) -> str:
    """Return the dotted module name of a file under backend/."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def backend_imports(path: Path) -> set[str]:
    """Return every backend module a file imports, at the top or inside functions."""
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("backend")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("backend"):
                # `from backend.core import budget` imports the module backend.core.budget.
                found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    modules = {module_name(p) for p in BACKEND.rglob("*.py")}
    return {name for name in found if name in modules and name != module_name(path)}


def import_graph() -> dict[str, set[str]]:
    """Map each backend module to the backend modules it imports (package __init__ files excluded as targets)."""
    files = [p for p in BACKEND.rglob("*.py") if p.name != "gunicorn.conf.py"]
    inits = {module_name(p) for p in files if p.name == "__init__.py"}
    return {module_name(p): backend_imports(p) - inits for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer(module: str) -> str | None:
    """Return the layer a module belongs to, or None for a top-level entry module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def test_no_import_cycles_counting_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 30  # the walk really found the packages
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_each_layer_imports_only_the_layers_below_it():
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if (own := layer(module)) is not None
        for target in targets
        if layer(target) is not None and layer(target) not in ALLOWED[own]
    ]
    assert not wrong, wrong


def test_the_web_tier_loads_no_tensorflow():
    probe = f"import sys, backend.wsgi; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
