"""The package layers: ``workload`` below ``calibration`` below ``harness``, nothing imported upwards, no cycles.

Every import statement counts, including those inside functions, since a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("workload", "calibration", "harness")  # each may import only the ones before it
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def test_no_layer_imports_a_layer_above_it() -> None:
    modules = project_modules()
    upward = []
    for name, path in modules.items():
        rank = LAYERS.index(name.split(".")[0])
        upward += [f"{name} imports {target}" for target in sorted(imports_of(path, modules))
                   if LAYERS.index(target.split(".")[0]) > rank]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ is imported with each of its submodules; it holds no imports here, so plain edges suffice.
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_walker_sees_a_deferred_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: an import inside a function is found."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from harness.cli import main\n    return main\n")
    assert imports_of(source, {"harness.cli": source}) == {"harness.cli"}


def test_modules_stay_small() -> None:
    large = [f"{name}: {n} lines" for name, path in project_modules().items()
             if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not large, "\n".join(large)
