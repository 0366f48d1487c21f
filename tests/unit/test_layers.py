"""The package's import graph (read from the source, function-level imports included): no circles, and no
module importing from a layer above its own. Data flows config → data/models/objectives/distributed →
evaluation → training → the entry points."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "adadim_dist"

#: A module may import from its own layer or any lower one.
LAYERS = {
    "config": 0, "_files": 0,
    "objectives": 1, "distributed": 1, "data": 1,
    "models": 2, "theory": 2,
    "evaluation": 3,
    "training": 4,
    "run": 5, "tune": 5, "sweep": 5, "evaluate": 5, "export": 5, "compare": 5, "__main__": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(PACKAGE.parent).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports. ``from pkg import name`` counts as importing ``pkg.name``
    when that is a module (``from . import _ffcv``), else as importing ``pkg``."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def test_every_module_has_a_layer():
    assert {module.split(".")[1] for module in import_graph() if "." in module} <= set(LAYERS)


def test_no_module_imports_from_a_higher_layer():
    upward = sorted(f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
                    if layer(target) > layer(module))
    assert upward == []


def test_no_import_circles():
    graph = import_graph()
    circles = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
