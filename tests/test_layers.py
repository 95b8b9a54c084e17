"""The project's layers import one way only (common <- models, dataloaders <- tools <- scripts), with no cycle
between the modules of tools/, and no function is longer than 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "models", "dataloaders", "tools")
# What each package may import from the project (besides itself).
ALLOWED = {
    "common": set(),
    "models": {"common"},
    "dataloaders": {"common"},
    "tools": {"common", "models", "dataloaders"},
}
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}  # train_*, test_*, option_* at the top: nothing imports them
MAX_FUNCTION_LINES = 60


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (absolute imports: the project uses no
    relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in SCRIPTS or top in ("tests", "benchmarks"):
                wrong.append(f"{module_name(path)} imports {name}")
            elif top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{module_name(path)} imports {name}")
    assert not wrong, "\n".join(wrong)


def tools_graph() -> dict[str, set[str]]:
    modules = {module_name(p) for p in (ROOT / "tools").glob("*.py") if p.stem != "__init__"}
    return {m: {n for n in imported_modules(ROOT / (m.replace(".", "/") + ".py")) if n in modules} - {m}
            for m in modules}


def test_the_modules_of_tools_import_each_other_without_a_cycle():
    graph, done, stack = tools_graph(), set(), []

    def visit(module: str) -> None:
        if module in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(module):] + [module]))
        if module in done:
            return
        stack.append(module)
        for other in sorted(graph[module]):
            visit(other)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert "tools.engine" in graph and "tools.epoch" in graph["tools.engine"]  # the graph was really read


def test_the_layer_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tools.engine import train_and_evaluate\n")
    assert "tools.engine" in imported_modules(bad)


def test_no_function_is_longer_than_60_lines():
    long = []
    folders = [*PACKAGES, "tests", "benchmarks"]
    paths = [p for folder in folders for p in (ROOT / folder).rglob("*.py")] + list(ROOT.glob("*.py"))
    for path in sorted(paths):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)
