"""The package has no import cycle, at the level of modules or of its sub-packages.

Every ``import genfield...`` / ``from genfield... import`` counts, including imports inside functions
(a lazy import still ties two modules together), so layering stays honest: ``fields`` and ``forward``
sit below datasets and both routes; ``viz`` (the pictures) sits above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import genfield

ROOT = Path(genfield.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("genfield", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the genfield modules it imports (a ``from pkg import sub`` names the submodule)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                resolved = _resolve(target, modules) if target.startswith("genfield") else None
                if resolved and resolved != name and not name.startswith(resolved + "."):
                    graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between genfield's sub-packages and top-level modules (``genfield.meta``, ...)."""

    def room(name: str) -> str:
        return ".".join(name.split(".")[:2])

    rooms: dict[str, set[str]] = {}
    for name, targets in graph.items():
        if name == "genfield":
            continue
        rooms.setdefault(room(name), set()).update(
            room(t) for t in targets if t != "genfield" and room(t) != room(name)
        )
    return rooms


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_import_cycle():
    assert cycles(import_graph()) == []


def test_forward_maps_import_only_fields_and_errors():
    graph = import_graph()
    allowed = ("genfield.forward", "genfield.fields", "genfield.errors")
    for name, targets in graph.items():
        if name.startswith("genfield.forward"):
            assert all(t.startswith(allowed) for t in targets), (name, targets)


def test_no_subpackage_import_cycle():
    assert cycles(_packages(import_graph())) == []
