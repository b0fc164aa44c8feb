"""`sft predict`: greedy replies for every row of a data file (.jsonl, .json, .parquet, .csv, .arrow), from a run
dir (base + adapter) or a merged model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from sft.config.recipe import DataArguments
from sft.data.arrow_rows import raise_on_errors
from sft.data.rows import RowError, iter_rows
from sft.errors import UserError
from sft.eval.boxes import box_scores
from sft.eval.generation import generate, max_reply_tokens, reference
from sft.eval.metrics import default_metrics, score
from sft.family.image_budget import match_model_to_processor
from sft.labels.labelling import make_collator
from sft.model.loading import processor_and_family
from sft.outputs.export import load_base, load_with_adapter


def load_for_inference(path: str | Path):
    """(model, processing class, date_string, family) from a run dir or a merged folder; the family is found as the
    run found it (its recorded `family:` key, else the model type, else the processor class), with the run's
    `box_convention`."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        model, _ = load_with_adapter(path)
    elif (path / "config.json").is_file():  # a merged folder, or a full fine-tune's run
        model, _ = load_base(str(path))
        model.eval()
    else:
        raise UserError(f"{path}: neither a run dir (adapter_config.json) nor a model folder (config.json)")
    recorded = _manifest(path).get("recipe", {}).get("data", {})
    named, date_string = recorded.get("family"), recorded.get("date_string")
    processing_class, family = processor_and_family(str(path), model.config, family_name=named)
    if recorded.get("box_convention"):  # the run's choice of how grounding boxes are written (sft/family/boxes.py)
        family = replace(family, boxes=recorded["box_convention"])
    match_model_to_processor(model, processing_class)  # the grids the run's image budget left (LLaVA-NeXT)
    return model, processing_class, date_string or DataArguments.date_string, family


def _manifest(path: str | Path) -> dict:
    manifest_path = Path(path) / "run_manifest.json"
    return json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}


def default_data(path: str | Path) -> tuple[str, str | None, dict | None]:
    """The eval rows' file (with its image_root and column_map) recorded in the manifest of a run or merged folder:
    its eval_file, or its train_file when the eval rows were held out of it (`held_out_rows` says which)."""
    data = _manifest(path).get("recipe", {}).get("data", {})
    file = data.get("eval_file") or (data.get("train_file") if held_out_rows(path) else None)
    if not file:
        raise UserError(f"{path}: no DATA given and no eval_file or eval_split_size recorded in its "
                        "run_manifest.json")
    return file, data.get("image_root"), data.get("column_map")


def held_out_rows(path: str | Path) -> list[int] | None:
    """Row numbers of the train_file rows that the run held out for evaluation (eval_split_size), if it did."""
    split = (_manifest(path).get("evaluation") or {}).get("split") or {}
    return split.get("row_numbers")


def thinking_of(path: str | Path) -> dict:
    """The run's enable_thinking and supervise_empty_thinking: its prompts are asked in the mode it trained in."""
    data = _manifest(path).get("recipe", {}).get("data", {})
    return {key: data[key] for key in ("enable_thinking", "supervise_empty_thinking") if key in data}


def recorded_metrics(path: str | Path) -> list[str] | None:
    """The generation metrics the run was evaluated with, as its manifest records them."""
    return (_manifest(path).get("evaluation") or {}).get("metrics") or None


def predict(path: str | Path, data: str | Path, out: str | Path | None = None, batch_size: int = 8,
            max_new_tokens: int | None = None, image_root: str | None = None,
            column_map: dict | None = None, rows: list[int] | None = None, metrics: list[str] | None = None) -> dict:
    """Write `{row, prediction, reference}` per row to `out` (JSONL); score the rows that have a reference.

    `rows` keeps only those row numbers of `data`. `metrics` default to the ones the run was evaluated with (its
    manifest), else to what fits the references (sft.eval.metrics.default_metrics), so the numbers match training's.
    """
    items = list(iter_rows(data, image_root, column_map, require_reply=False))
    raise_on_errors([item for item in items if isinstance(item, RowError)])
    if rows is not None:
        wanted = set(rows)
        items = [item for item in items if item["row"] in wanted]
    if not items:
        raise UserError(f"{data}: no rows")
    model, processing_class, date_string, family = load_for_inference(path)
    collator = make_collator(processing_class, family, date_string=date_string, **thinking_of(path))
    references = [reference(item, collator) for item in items]  # once: a grounding row loads its images
    max_new_tokens = max_new_tokens or max(max_reply_tokens(collator, references, rows=items), 32)
    generated = generate(model, collator, items, batch_size=batch_size, max_new_tokens=max_new_tokens)
    predictions = [g.reply for g in generated]
    boxes, box_rows = box_scores(collator, items, predictions)  # grounding rows: boxes in original pixels, IoU
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as handle:
            for item, g, ref, box_row in zip(items, generated, references, box_rows):
                handle.write(json.dumps({"row": item["row"], "prediction": g.reply, "reference": ref,
                                         **({"reasoning": g.reasoning} if g.reasoning else {}), **(box_row or {})},
                                        ensure_ascii=False) + "\n")
    scored = [(p, r) for p, r in zip(predictions, references) if r is not None]
    if metrics:
        why = "given"
    elif recorded_metrics(path):
        metrics, why = recorded_metrics(path), "the run's eval metrics"
    else:
        metrics, why = default_metrics([r for _, r in scored])
    overall = {**(score(metrics, *map(list, zip(*scored))).overall if scored else {}), **boxes}
    return {"rows": len(items), "scored": len(scored), "metrics": overall, "metrics_why": why,
            "accuracy": overall.get("accuracy"), "predictions": predictions}
