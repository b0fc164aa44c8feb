"""The documentation: a README that fits on a screen, pages under docs/, every relative link resolving (file and
heading), and a layout page that names every module of the package."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = [line.lstrip("#").strip() for line in path.read_text(encoding="utf-8").splitlines()
                if re.match(r"#{1,6} ", line)]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """`file: target` for each relative link of `path` whose file or heading does not exist."""
    broken = []
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not checked (no network here)
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists() or anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{path.relative_to(root)}: {target}")
    return broken


def test_the_readme_fits_in_200_lines_and_points_at_at_least_5_docs_pages():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(readme) if target.startswith("docs/")}
    assert len(linked) >= 5
    assert {path.name for path in (REPO / "docs").glob("*.md")} <= linked  # every page is in the index


def test_every_relative_link_in_the_readme_and_docs_resolves():
    assert [broken for page in PAGES for broken in broken_links(page)] == []


def test_the_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Two words\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#two-words) [no](a.md#three) [gone](c.md) [web](https://x.org/y) [self](#nothing)\n",
                    encoding="utf-8")
    assert broken_links(page, tmp_path) == ["b.md: a.md#three", "b.md: c.md", "b.md: #nothing"]


def test_the_layout_page_names_every_module_of_the_package():
    layout = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    modules = [path.relative_to(REPO).as_posix() for path in (REPO / "sft").rglob("*.py")
               if path.name != "__init__.py"]
    assert [module for module in modules if f"`{module}`" not in layout] == []
