"""Reading a run directory and writing folders safely (temporary folder, renamed into place at the end)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sft.errors import UserError

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# What a run saves of its processor/tokenizer (any of these that exist are carried along).
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "processor_config.json", "preprocessor_config.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")


def is_full_run(run: str | Path) -> bool:
    """A run that trained without LoRA (every trained part `full`): it saved the whole model, no adapter."""
    run = Path(run)
    return not (run / "adapter_config.json").exists() and (run / "config.json").is_file() and (
        (run / "run_manifest.json").is_file()) and any(run.glob("model*.safetensors*"))


def latest_run(outputs: str | Path = "outputs") -> Path:
    """The most recently written run under `outputs` (a folder holding an adapter, or a full fine-tune's model)."""
    runs = [p.parent for p in Path(outputs).glob("*/adapter_config.json")]
    runs += [p.parent for p in Path(outputs).glob("*/run_manifest.json") if is_full_run(p.parent)]
    if not runs:
        raise UserError(f"{outputs}: no run with an adapter or a model found; train first or pass RUN=<run dir>")
    return max(runs, key=lambda run: (run / "run_manifest.json").stat().st_mtime
               if (run / "run_manifest.json").exists() else 0)


def read_run(run: str | Path) -> dict:
    """The adapter config and manifest of a run dir; a clear error when it holds no adapter."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run folder")
    missing = [name for name in ADAPTER_FILES if not (run / name).is_file()]
    if missing:
        raise UserError(f"{run}: no adapter here (missing {', '.join(missing)})")
    adapter = json.loads((run / "adapter_config.json").read_text(encoding="utf-8"))
    manifest_path = run / "run_manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    return {"adapter": adapter, "manifest": manifest}


def base_model_path(run: str | Path, info: dict) -> str:
    """The base the adapter was trained on; a local one must still exist."""
    base = info["adapter"].get("base_model_name_or_path")
    if not base:
        raise UserError(f"{run}/adapter_config.json: no base_model_name_or_path")
    local = Path(base)
    looks_local = base.startswith((".", "/", "~")) or local.exists()
    if looks_local and not (local / "config.json").is_file():
        raise UserError(f"{run}: base model {base!r} not found (needs its config.json and weights)")
    return str(local.resolve()) if looks_local else base


def check_architecture(run: str | Path, info: dict, base_config) -> None:
    """Refuse a base whose architecture differs from the one the adapter was trained on."""
    trained = info["manifest"].get("base_model", {}).get("architectures")
    found = getattr(base_config, "architectures", None)
    if trained and found and list(trained) != list(found):
        raise UserError(f"{run}: adapter was trained on {', '.join(trained)} but the base is {', '.join(found)}")


def copy_processor_files(source: Path, target: Path) -> list[str]:
    """The processor/tokenizer files and the run manifest (provenance, `sft predict`'s default data)."""
    copied = []
    for name in (*PROCESSOR_FILES, "run_manifest.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    return copied


@contextmanager
def staged_folder(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it is renamed to `out`, on any failure removed.

    An existing non-empty `out` is refused unless `force`, so nothing is overwritten by accident.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out}: exists and is not empty; choose another OUT or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
