"""architecture.md's module map agrees with the package's import graph.

The map (the code block under "## Module map") draws every module of ``colorize_batch/``
top to bottom, and the file says "Imports go down the map": a module is drawn above every
module it imports. A module's position is the line of the block that starts with its file
name (``cli.py  ...``).

Imports are read from the source with ``ast``: ``from . import x``, ``from .x import y``,
``import colorize_batch.x`` and ``from colorize_batch.x import y`` all count, and so do lazy
imports (inside a function, e.g. the CLI's per-command imports, or under ``if TYPE_CHECKING:``,
for the type checker only): a module drawn above one it only imports lazily would still mislead a
reader. ``from . import __version__`` (a name of the package, not a submodule) is an import of
``__init__.py``, which every submodule's import runs first anyway.

An import that goes up the map is allowed only if it is listed in ``ALLOWED_UPWARD`` with its
reason, is lazy (never run at import time), and closes a cycle that no order could draw.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "colorize_batch"
ARCHITECTURE = ROOT / "architecture.md"
MAP_LINE = re.compile(r"^(\w+\.py)\s")

# (importer, imported) -> why the edge goes up the map.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("__init__", "api"): (
        "the package's __getattr__ imports the Python API on first use of colorize / "
        "ColorizeSession; every module (encoding.py by name, for __version__) imports the "
        "package first, so __init__ sits at the bottom and this lazy edge closes the cycle "
        "__init__ -> api -> stages -> encoding -> __init__"
    ),
}


def package_modules() -> set[str]:
    return {path.stem for path in PACKAGE.glob("*.py")}


def module_map() -> list[str]:
    """Module names in the order architecture.md's module map draws them, top first."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Module map", 1)[1]
    block = section.split("```", 2)[1]
    return [match.group(1)[: -len(".py")] for line in block.splitlines() if (match := MAP_LINE.match(line))]


def _imported(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The package's modules one import statement names."""
    if isinstance(node, ast.Import):
        parts = [alias.name.split(".") for alias in node.names]
        return {p[1] for p in parts if p[0] == "colorize_batch" and len(p) > 1 and p[1] in modules}
    if node.level == 0:
        if node.module is None or node.module.split(".")[0] != "colorize_batch":
            return set()
        dotted = node.module.split(".")[1:]
    elif node.level == 1:
        dotted = node.module.split(".") if node.module else []
    else:
        return set()
    if dotted:
        return {dotted[0]} if dotted[0] in modules else {"__init__"}
    # `from . import a, b`: submodules, or names of the package itself (its __init__).
    return {alias.name if alias.name in modules else "__init__" for alias in node.names}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, modules: set[str]) -> dict[str, bool]:
    """Each package module `path` imports -> whether every import of it is lazy.

    Lazy: not run when `path` is imported (inside a function, or under ``if TYPE_CHECKING:``).
    """
    found: dict[str, bool] = {}

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in _imported(node, modules) - {path.stem}:
                found[name] = found.get(name, True) and lazy
        elif _type_checking_only(node):
            assert isinstance(node, ast.If)
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, lazy)
            return
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


def import_graph() -> dict[str, dict[str, bool]]:
    modules = package_modules()
    return {path.stem: imports_of(path, modules) for path in sorted(PACKAGE.glob("*.py"))}


def reaches(graph: dict[str, dict[str, bool]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return False


def cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (import cycles), sorted."""
    groups: list[list[str]] = []
    placed: set[str] = set()
    for name in sorted(graph):
        if name in placed:
            continue
        group = sorted(other for other in graph if reaches(graph, name, other) and reaches(graph, other, name))
        placed.update(group)
        if len(group) > 1:
            groups.append(group)
    return groups


def test_the_graph_reader_sees_lazy_and_package_imports() -> None:
    graph = import_graph()
    assert graph["cli"]["runner"] is True  # imported inside the `run` command only
    assert graph["runner"]["local_engine"] is False
    assert graph["encoding"]["__init__"] is False  # from . import __version__
    assert graph["__main__"] == {"cli": False}
    assert graph["encoding"]["recombination"] is True  # under `if TYPE_CHECKING:`


def test_every_module_is_drawn_once() -> None:
    drawn = module_map()
    assert len(drawn) == len(set(drawn)), f"drawn twice: {sorted({m for m in drawn if drawn.count(m) > 1})}"
    assert set(drawn) == package_modules(), (
        f"missing from the map: {sorted(package_modules() - set(drawn))}; "
        f"in the map but not in the package: {sorted(set(drawn) - package_modules())}"
    )


def test_the_map_states_its_direction() -> None:
    assert "Imports go down the map" in ARCHITECTURE.read_text(encoding="utf-8")


def test_import_cycles_are_only_the_allowed_ones() -> None:
    graph = import_graph()
    remaining = {name: {dep: lazy for dep, lazy in deps.items() if (name, dep) not in ALLOWED_UPWARD} for name, deps in graph.items()}
    assert cycles(remaining) == [], f"import cycles: {cycles(remaining)}"
    for (importer, imported), reason in ALLOWED_UPWARD.items():
        assert reason
        assert graph[importer].get(imported) is True, f"{importer} -> {imported} is not (only) a lazy import"
        assert reaches(graph, imported, importer), f"{importer} -> {imported} closes no cycle: draw it instead"


@pytest.mark.parametrize("importer", sorted(package_modules()))
def test_no_module_is_drawn_above_one_it_imports(importer: str) -> None:
    position = {name: index for index, name in enumerate(module_map())}
    if importer not in position:
        pytest.fail(f"{importer}.py is not in the module map")
    upward = [
        f"{importer}.py (entry {position[importer] + 1} of the map) imports {dep}.py "
        f"(entry {position[dep] + 1}){' lazily' if lazy else ''}"
        for dep, lazy in sorted(import_graph()[importer].items())
        if dep in position and position[dep] < position[importer] and (importer, dep) not in ALLOWED_UPWARD
    ]
    assert upward == [], "modules drawn below a module they import:\n" + "\n".join(upward)
