"""What a run writes beside the adapter: the manifest (how to reproduce it) and the loss and metric curves."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from sft.data.sources import sha256_of
from sft.eval.metrics import METRICS

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed",
            "sacrebleu", "rouge-score")

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


def write_manifest(recipe, output_dir: str | Path, fit_reports: list, metrics: dict, base_config=None,
                   evaluation: dict | None = None, model_setup: dict | None = None,
                   datasets: list | None = None) -> Path:
    """`run_manifest.json`: resolved recipe, base model, package versions, git commit, sha256 of each data file,
    how the run was evaluated (`evaluation`: metrics, why they were chosen, the held-out split if any), what was
    trained (`model_setup`: the family and how it was found, the LoRA modules, what stayed unquantized) and, for a
    `datasets` mixture, each source's files (sha256), sizing and rows kept and dropped (sft.data.mixture.Mixture)."""
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
        "datasets": _plain(datasets),
        "model_setup": _plain(model_setup),
        "auto_choices": _plain(recipe.auto_choices),  # what the plan chose for `auto` keys, and why
        "rows": {report.name: dict(report.counts) for report in fit_reports},
        "metrics": _plain(metrics),
        "evaluation": _plain(evaluation),
    }
    path = Path(output_dir) / "run_manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def eval_metric_points(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Each generation metric (`eval_exact_match`, `eval_rouge_l`, ...: sft/eval/metrics.py) as (step, value) points, in
    log order. TRL's token-level eval values (entropy, mean_token_accuracy, num_tokens) stay in trainer_state.json."""
    keys = [f"eval_{name}" for name in METRICS]
    points: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key in keys:
            if key in entry:
                points.setdefault(key, []).append((entry["step"], entry[key]))
    return points


def plot_loss(log_history: list[dict], path: str | Path) -> Path | None:
    """Training and eval loss against step, and beside it one panel per eval metric (each on its own scale: chrF
    and BLEU run to 100, accuracy and ROUGE to 1), as a PNG; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    metrics = eval_metric_points(log_history)
    if not train and not evals:
        return None
    panels = 1 + len(metrics)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    loss_axes = axes[0][0]
    for points, label in ((train, "train loss"), (evals, "eval loss")):
        if points:
            loss_axes.plot(*zip(*points), marker="o" if label == "eval loss" else None, label=label)
    for row in axes:
        for panel_axes in row:
            panel_axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss")
    loss_axes.legend()
    for panel, (key, points) in enumerate(metrics.items(), start=1):
        metric_axes = axes[panel // columns][panel % columns]
        metric_axes.plot(*zip(*points), marker="o")
        metric_axes.set_xlabel("step")
        metric_axes.set_title(key)
    for panel in range(panels, rows * columns):
        axes[panel // columns][panel % columns].axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def losses(log_history: list[dict]) -> tuple[float | None, float | None]:
    """First and last logged training loss."""
    values = [e["loss"] for e in log_history if "loss" in e]
    return (values[0], values[-1]) if values else (None, None)
