"""What the HTML pages share: the package's Jinja templates (sft/pages/templates/) rendered with autoescape on, and one
self-contained file written in place.

Every value from the data reaches a page through a template expression, so it is escaped: a row holding `<script>`
shows as text. The page's own script is the one thing marked safe (it is the package's file, never data), and the
page's Content-Security-Policy lets only that script run (by its hash) and load nothing from outside (images are
data URIs): a page opens offline, and text that escaped escaping still could not run.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup


def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("sft.pages", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["thousands"] = lambda value: f"{value:,}" if isinstance(value, int) else value
    environment.filters["score"] = lambda value: f"{value:.3g}" if isinstance(value, int | float) else "–"
    return environment


def page_script(name: str) -> tuple[Markup, str]:
    """The package's script `name` (sft/pages/templates/) as markup to inline, and its CSP source ('sha256-...')."""
    text = resources.files("sft.pages").joinpath("templates", name).read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return Markup(text), f"'sha256-{digest}'"  # Markup: the package's own file, not data


def render_page(page: str, script: str, /, **context) -> str:
    """The template `page` with its script `script` inlined, as one HTML string."""
    code, script_hash = page_script(script)
    return _environment().get_template(page).render(script=code, script_hash=script_hash, **context)


def write_page(path: str | Path, html: str) -> Path:
    """Write `html` to `path` through a temporary file beside it, so a reader never sees half a page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.partial")
    staged.write_text(html, encoding="utf-8")
    staged.replace(path)
    return path
