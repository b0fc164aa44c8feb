"""The shape of sft/: folders by stage, imports that only go down the stages, no cycle, short modules.

Every module under sft/ is read with `ast` (imports inside functions count too), at any depth.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SFT = REPO / "sft"
MAX_LINES = 250
MAX_MODULES_PER_FOLDER = 12
MIN_STAGE_FOLDERS = 5
# What a stage may never import (each `__init__.py` says the same in words). "config" is the recipe.
FORBIDDEN = {
    "data": {"config", "family", "labels", "model", "plan", "eval", "outputs", "pages", "check", "run"},
    "family": {"config", "labels", "model", "plan", "eval", "outputs", "pages", "check", "run"},
    "labels": {"config", "model", "plan", "eval", "outputs", "pages", "check", "run"},
    "model": {"data", "plan", "eval", "outputs", "pages", "check", "run"},
    "eval": {"config", "model", "plan", "outputs", "pages", "check", "run"},
    "config": {"model", "labels", "plan", "outputs", "pages", "check", "run"},
    "check": {"model", "plan", "outputs", "pages", "run"},
    "plan": {"outputs", "pages", "check", "run"},
    "pages": {"model", "plan", "run"},
    "outputs": {"pages", "check", "run"},
    "run": set(),
}
ENTRY = {"sft.cli", "sft.commands"}  # the command line: nothing else imports it


def module_name(path: Path) -> str:
    """sft/labels/collator.py -> sft.labels.collator; sft/data/__init__.py -> sft.data."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The sft modules `path` imports, as dotted names (a `from sft.x import y` of a submodule y counts as sft.x.y)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sft" and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.split(".")[0] == "sft"}
    return names


def sft_imports() -> dict[str, set[str]]:
    """module -> the sft modules it imports (only names that are modules of the package)."""
    paths = {module_name(path): path for path in SFT.rglob("*.py")}
    return {name: (imports_of(path) & set(paths)) - {name} for name, path in paths.items()}


def stage_of(module: str) -> str:
    """The folder a module lies in (`cli`, `errors`, ... for the package's top-level modules)."""
    return module.split(".")[1] if module.count(".") else "sft"


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
    graph = sft_imports()
    assert len(graph) > 50  # every module was read, at every depth
    assert cycle_in(graph) is None


def test_the_stage_folders_import_each_other_without_a_cycle():
    folders: dict[str, set[str]] = {}
    for module, imported in sft_imports().items():
        folders.setdefault(stage_of(module), set()).update(stage_of(name) for name in imported)
    assert cycle_in({folder: imported - {folder, "sft"} for folder, imported in folders.items()}) is None


def test_the_cycle_finder_finds_one():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_go_one_way_between_the_stage_folders():
    broken = sorted(f"{module} imports {name}" for module, imported in sft_imports().items() for name in imported
                    if name.count(".") and stage_of(name) in FORBIDDEN.get(stage_of(module), ())
                    or name in ENTRY and module not in ENTRY)
    assert broken == []


def test_the_rule_checker_sees_a_forbidden_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from sft.run.train import main\n", encoding="utf-8")
    assert imports_of(path) == {"sft.run.train", "sft.run.train.main"}
    assert "run" in FORBIDDEN[stage_of("sft.labels.collator")]


def test_sft_is_split_into_stage_folders_each_with_a_docstring_and_no_re_exports():
    folders = [path for path in SFT.iterdir() if (path / "__init__.py").is_file()]
    assert len(folders) >= MIN_STAGE_FOLDERS
    assert {folder.name for folder in folders} == set(FORBIDDEN)
    for folder in folders:
        tree = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), folder.name
        assert [type(node).__name__ for node in tree.body] == ["Expr"], f"{folder.name}/__init__.py re-exports"


def test_no_folder_of_sft_holds_more_than_12_modules():
    counts = {str(folder.relative_to(REPO)): len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
              for folder in [SFT, *(p for p in SFT.rglob("*") if p.is_dir() and p.name != "__pycache__")]}
    assert {folder: n for folder, n in counts.items() if n > MAX_MODULES_PER_FOLDER} == {}


def test_no_sft_module_is_longer_than_250_lines():
    lengths = {str(path.relative_to(SFT)): len(path.read_text(encoding="utf-8").splitlines())
               for path in SFT.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_the_train_entry_reads_as_its_stages_in_at_most_30_lines():
    tree = ast.parse((SFT / "run" / "train.py").read_text(encoding="utf-8"))
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    assert main.end_lineno - main.lineno + 1 <= 30
    called = [node.func.id for node in ast.walk(main) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    stages = ["decide", "prepare_data", "build", "fit", "finish"]
    assert [name for name in called if name in stages] == stages
