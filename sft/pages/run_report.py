"""`output_dir/report.html`, a run's report (written when training ends; `sft report RUN` for any earlier run): the
recipe and the plan's choices, loss and metric curves, each evaluation's predictions beside the rows' images, and the
versions and data checksums. Everything comes from what the run wrote: `run_manifest.json`, `trainer_state.json`
and `eval_predictions/` (sft/outputs/manifest.py, sft/eval/predictions.py), and the eval rows read again for images.
"""

from __future__ import annotations

import json
from pathlib import Path

from sft.data.rows import RowError, iter_rows
from sft.data.sources import DatasetSplit, file_source, sha256_of
from sft.errors import UserError
from sft.eval.history import evaluations
from sft.outputs.manifest import eval_metric_points
from sft.pages.html_page import render_page, write_page
from sft.pages.svg_charts import line_chart
from sft.pages.thumbnails import stored_pictures, thumbnails

# The recipe keys a reader looks for first; the report lists every resolved key below them.
KEY_SETTINGS = {
    "model": ("model_name_or_path", "load_in_8bit", "load_in_4bit", "use_peft", "lora_r", "lora_alpha",
              "lora_dropout", "lora_target_modules"),
    "data": ("train_file", "eval_file", "dataset_name", "eval_split_size", "truncation", "eval_metrics"),
    "training": ("max_length", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "gradient_checkpointing",
                 "bf16", "packing", "metric_for_best_model", "seed", "output_dir"),
}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def key_settings(recipe: dict) -> list[tuple[str, object]]:
    """(key, value) of the KEY_SETTINGS the recorded recipe holds, set ones only."""
    return [(key, recipe[section][key]) for section, keys in KEY_SETTINGS.items() for key in keys
            if recipe.get(section, {}).get(key) not in (None, False, [], "")]


def what_trained(manifest: dict) -> list[dict]:
    """Per part: its choice, parameters (all and trainable) and learning rate, as the manifest records them."""
    setup = manifest.get("model_setup") or {}
    rates = setup.get("learning_rates") or {}
    default_rate = manifest.get("recipe", {}).get("training", {}).get("learning_rate")
    params, trainable = setup.get("params") or {}, setup.get("trainable_params") or {}
    return [{"part": part, "choice": choice, "params": params.get(part), "trainable": trainable.get(part),
             "learning_rate": None if choice == "frozen" else rates.get(part, default_rate)}
            for part, choice in (setup.get("parts") or {}).items()]


def curves(run: Path) -> list[dict]:
    """Loss (train and eval), each generation metric and the learning rate against step, from trainer_state.json."""
    history = _read_json(run / "trainer_state.json").get("log_history", [])

    def points(key: str) -> list[tuple[float, float]]:
        return [(entry["step"], entry[key]) for entry in history if isinstance(entry.get(key), int | float)]

    charts = [line_chart("loss", {"train loss": points("loss"), "eval loss": points("eval_loss")})]
    charts += [line_chart(key, {key: values}) for key, values in eval_metric_points(history).items()]
    charts.append(line_chart("learning rate", {"learning_rate": points("learning_rate")}))
    return [chart for chart in charts if chart]


def _eval_source(manifest: dict):
    """The source the run's eval rows came from, or a note saying why they cannot be read again."""
    data, files = manifest.get("recipe", {}).get("data", {}), manifest.get("data_files") or {}
    held_out = ((manifest.get("evaluation") or {}).get("split") or {}).get("row_numbers")
    if data.get("datasets"):
        return None, "rows of a datasets mixture are not matched to their images here"
    name = "eval_file" if data.get("eval_file") else "train_file" if held_out and data.get("train_file") else None
    if name:
        path, recorded = data[name], (files.get(name) or {}).get("sha256")
        if not Path(path).is_file():
            return None, f"{path} is not here (make the report from the folder the run was trained in)"
        if recorded and sha256_of(path) != recorded:
            return None, f"{path} changed since the run (its sha256 differs from the manifest's)"
        return file_source(path), None
    split = data.get("dataset_test_split") or (data.get("dataset_train_split") if held_out else None)
    if data.get("dataset_name") and split:
        return DatasetSplit(data["dataset_name"], split, data.get("dataset_config")), None
    return None, None


def eval_pictures(manifest: dict, wanted: set[int]) -> tuple[dict[int, dict], str | None]:
    """Thumbnails of the eval rows numbered `wanted` (those with images), read again from the run's eval data, and
    a note when they cannot be."""
    source, note = _eval_source(manifest)
    if source is None or not wanted:
        return {}, note
    data, pictures, seen = manifest["recipe"]["data"], {}, set()
    try:
        for item in iter_rows(source, data.get("image_root"), data.get("column_map")):
            if isinstance(item, RowError) or item["row"] not in wanted:
                continue
            seen.add(item["row"])
            if item["stored_images"]:
                pictures[item["row"]] = thumbnails(stored_pictures(item))
            if seen == wanted:
                break
    except UserError as exc:
        return pictures, f"images of the eval rows: {exc}"
    return pictures, None


def data_files(manifest: dict) -> list[dict]:
    """Each data file with its recorded sha256, and whether the file here still has it (None: not here)."""
    return [{"name": name, "path": entry.get("path"), "sha256": entry.get("sha256"),
             "same": (sha256_of(entry["path"]) == entry.get("sha256")) if Path(entry.get("path") or "").is_file()
             else None} for name, entry in (manifest.get("data_files") or {}).items()]


def run_report(run: str | Path) -> dict:
    """The report's content for the run folder `run`."""
    run = Path(run)
    manifest = _read_json(run / "run_manifest.json")
    if not manifest:
        raise UserError(f"{run}: no run_manifest.json (not a finished run of sft train)")
    setup, recipe = manifest.get("model_setup") or {}, manifest.get("recipe", {})
    history = evaluations(run)
    pictures, pictures_note = eval_pictures(manifest, {row["row"] for e in history for row in e["rows"]})
    return {"title": f"Run report: {run.name}", "run": str(run), "manifest": manifest, "setup": setup,
            "parts": what_trained(manifest), "settings": key_settings(recipe), "recipe": recipe,
            "lora_leaves": sorted({name.rsplit(".", 1)[-1] for name in setup.get("lora_modules") or []}),
            "auto_choices": manifest.get("auto_choices") or {}, "curves": curves(run), "evaluations": history,
            "pictures": pictures, "pictures_note": pictures_note, "data_files": data_files(manifest)}


def write_report(run: str | Path) -> Path:
    """Write `run/report.html` and return its path."""
    return write_page(Path(run) / "report.html", render_page("report.html", "report.js", **run_report(run)))
