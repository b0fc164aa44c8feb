"""What a run writes beside the adapter: the manifest (how to reproduce it) and the loss curve."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from sft.sources import sha256_of

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed")
SECRET_KEYS = ("hub_token", "push_to_hub_token", "token")


def _versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _plain(value):
    """JSON-safe copy: enums and paths become strings; secrets are never written."""
    if isinstance(value, dict):
        return {k: ("<hidden>" if k in SECRET_KEYS and v else _plain(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(getattr(value, "value", value))


def write_manifest(recipe, output_dir: str | Path, fit_reports: list, metrics: dict, base_config=None) -> Path:
    """`run_manifest.json`: resolved recipe, base model, package versions, git commit, sha256 of each data file."""
    data_files = {name: getattr(recipe.data, name) for name in ("train_file", "eval_file")}
    manifest = {
        "recipe_file": str(recipe.path) if recipe.path else None,
        "recipe": {"data": _plain(asdict(recipe.data)), "model": _plain(asdict(recipe.model)),
                   "training": _plain(recipe.training.to_dict())},
        "base_model": {"path": recipe.model.model_name_or_path,
                       "architectures": getattr(base_config, "architectures", None),
                       "model_type": getattr(base_config, "model_type", None)},
        "versions": _versions(),
        "git_commit": _git_commit(),
        "data_files": {name: {"path": path, "sha256": sha256_of(path)} for name, path in data_files.items() if path},
        "rows": {report.name: dict(report.counts) for report in fit_reports},
        "metrics": _plain(metrics),
    }
    path = Path(output_dir) / "run_manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def plot_loss(log_history: list[dict], path: str | Path) -> Path | None:
    """Training (and eval) loss against step, as a PNG; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if not train and not evals:
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for points, label in ((train, "train loss"), (evals, "eval loss")):
        if points:
            axes.plot(*zip(*points), marker="o" if label == "eval loss" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def losses(log_history: list[dict]) -> tuple[float | None, float | None]:
    """First and last logged training loss."""
    values = [e["loss"] for e in log_history if "loss" in e]
    return (values[0], values[-1]) if values else (None, None)
