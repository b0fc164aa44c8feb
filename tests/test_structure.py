"""The shape of sft/: no import cycle and no module longer than one reading (250 lines)."""

from __future__ import annotations

import ast

from tests.conftest import REPO

SFT = REPO / "sft"
MAX_LINES = 250


def sft_imports() -> dict[str, set[str]]:
    """module -> the sft modules it imports, at any depth of its code (function-level imports count too)."""
    graph = {}
    for path in SFT.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sft."):
                imported.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("sft.")}
        graph[path.stem] = imported - {path.stem}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for child in sorted(graph.get(module, ())):
            if state.get(child) == "open":
                return path + [child]
            if child not in state and (found := visit(child, path + [child])):
                return found
        state[module] = "done"
        return None

    return next((found for module in sorted(graph) if module not in state
                 for found in [visit(module, [module])] if found), None)


def test_the_import_graph_of_sft_has_no_cycle():
    assert cycle_in(sft_imports()) is None


def test_the_cycle_finder_finds_one():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_sft_module_is_longer_than_250_lines():
    lengths = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in SFT.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}
