"""The wheel built from the repository ships every subpackage and the pages' templates: `sft preview --html` runs
from the installed wheel alone (not the editable checkout), in a folder outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, write_image, write_jsonl, write_recipe


def build_wheel(out: Path) -> Path:
    """`pip wheel` of a copy of the repository's package files, with the venv's setuptools (no download, no build
    isolation); a copy, because setuptools builds in the source folder and would leave build/ in the checkout."""
    source = out / "source"
    shutil.copytree(REPO / "sft", source / "sft", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True)
    return next(out.glob("sft_toolkit-*.whl"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_subpackage_and_the_page_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "sft").rglob("*.py")}
    templates = {path.relative_to(REPO).as_posix() for path in (REPO / "sft" / "pages" / "templates").iterdir()}
    assert modules - names == set()
    assert templates and templates - names == set()


def test_sft_preview_html_runs_from_the_installed_wheel(tmp_path, family_models, wheel):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    work = tmp_path / "work"
    write_image(work / "water.png")
    train = write_jsonl(work / "train.jsonl", [{"prompt": "What element is shown?", "completion": "water",
                                                "image": "water.png"}])
    recipe = write_recipe(work / "recipe.yaml", model_name_or_path=str(family_models.folder("mllama")),
                          train_file=str(train), max_length=96, output_dir=str(work / "run"))
    code = ("import sys, sft; assert sft.__file__.startswith(sys.argv[1]), sft.__file__; from sft.cli import main; "
            "sys.exit(main(['preview', sys.argv[2], '--html', 'page.html']))")
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's copy comes before the editable install
    result = subprocess.run([sys.executable, "-c", code, str(site), str(recipe)], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote page.html: 1 rows, 0 bad" in result.stdout
    page = (work / "page.html").read_text(encoding="utf-8")
    assert "recipe: train rows" in page and "water" in page and "<script" in page  # template, row, inlined script
