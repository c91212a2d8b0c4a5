"""The shape of the package: imports point down the layers, no module imports itself round a circle, no function
is longer than a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medverl"
MAX_FUNCTION_LINES = 80
# A part may import its own modules and those of lower layers, never a sibling's or an upper one's.
LAYERS = {
    "medverl": 0, "errors": 0, "verl_pins": 0,
    "arguments": 1, "registry": 1, "http": 1, "stages": 1,
    "prompts": 2, "rewards": 2, "models": 2,
    "data": 3,
    "qc": 4, "training": 4, "cpu": 4, "eval": 4,
    "pipeline": 5, "cli": 6, "__main__": 7,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The medverl modules a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("medverl") and name in MODULES:
                found.add(name)
                break
    return found


GRAPH = {module: _imports(path) - {module} for module, path in MODULES.items()}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    part = _part(module)
    assert part in LAYERS, f"{module}: add its part {part!r} to LAYERS"
    upward = [target for target in sorted(GRAPH[module])
              if _part(target) != part and LAYERS[_part(target)] >= LAYERS[part] and _part(target) != "medverl"]
    assert not upward, f"{module} (layer {LAYERS[part]}) imports {upward}: a sibling or an upper layer"


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components of the module graph: each must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other: {cycles}"


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
