"""No import cycle among diffkit's modules (plugins and CLI included), counting every import:
module level, inside functions and under `if TYPE_CHECKING:` alike, so no cycle hides behind a
late import."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# installed names of the source folders (pyproject maps plugins/ and cli/ into the package)
PACKAGES = {"diffkit": "diffkit", "plugins": "diffkit.plugins", "cli": "diffkit.cli"}


def module_files(root: Path, packages: Mapping[str, str]) -> dict[str, Path]:
    """Installed module name -> source file, for every `.py` under each folder of `packages`."""
    found = {}
    for folder, package in packages.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The known modules one import statement loads (a `from M import name` loads M.name if it is
    a module, else M itself)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in known)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for alias in node.names:
            if f"{base}.{alias.name}" in known:
                yield f"{base}.{alias.name}"
            elif base in known:
                yield base


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere in its source (functions, TYPE_CHECKING too)."""
    known = set(files)
    graph = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            edges.update(_imported(node, module, is_package, known))
        graph[module] = edges - {module}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_no_import_cycle_in_diffkit() -> None:
    """Every module of diffkit, its plugins and its CLI: the import graph is acyclic."""
    files = module_files(ROOT, PACKAGES)
    assert len(files) > 100
    graph = import_graph(files)
    assert "diffkit.core.process" in graph["diffkit.core.model"]  # the scan sees real edges
    assert cycles(graph) == []


def test_cycle_finder_sees_function_level_and_type_only_imports(tmp_path: Path) -> None:
    """A cycle closed by an import inside a function, or under TYPE_CHECKING, is still a cycle."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import g\n")
    (package / "b.py").write_text("def g():\n    from pkg import a\n")
    (package / "c.py").write_text("from . import d\n")
    (package / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import x\n"
    )
    (package / "e.py").write_text("import pkg.a\n")
    graph = import_graph(module_files(tmp_path, {"pkg": "pkg"}))
    assert graph["pkg.e"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]
