"""The package's import graph has no cycle: a module's dependencies can be read without coming back to it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nlilab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    """nlilab module -> the nlilab modules it imports (a package's __init__ counts as the package)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else ast.walk(tree)
        found = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nlilab"):
                for alias in node.names:  # `from nlilab.x import y` imports nlilab.x.y when that is a module
                    found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                              else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("nlilab")}
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), \
            f"{path}: relative import (the package imports absolutely, so this graph sees every edge)"
        graph[name] = {m for m in found if m in modules and m != name and m != "nlilab"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path of module names, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node], _ = "open", stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_nlilab_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["nlilab.data.nli"] = graph["nlilab.data.nli"] | {"nlilab.params"}  # the old data -> params edge
    cycle = find_cycle(graph)
    assert cycle and cycle[0] == cycle[-1] and "nlilab.params" in cycle
