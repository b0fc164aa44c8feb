"""What each evaluation generated, to look at: `eval_predictions/<step-N|final>.jsonl` beside the run, a few rows in
the console, and a table in W&B or text in TensorBoard when `report_to` names them."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PROMPT_PREVIEW_CHARS = 200  # the end of the prompt: the question, after any system text
SHOWN_ROWS = 3  # rows printed to the console and sent to the trackers each evaluation
COLUMNS = ("row", "prompt", "prediction", "reference", "scores")


def prompt_preview(prompt: str, limit: int = PROMPT_PREVIEW_CHARS) -> str:
    """The prompt's last `limit` characters on one line ("…" marks a cut)."""
    flat = re.sub(r"\s+", " ", prompt).strip()
    return flat if len(flat) <= limit else "…" + flat[-limit:]


def prediction_records(rows: list[dict], prompts: list[str], predictions: list[str], references: list[str | None],
                       per_row_scores: list[dict[str, float]], reasonings: list[str] | None = None,
                       box_rows: list[dict | None] | None = None) -> list[dict]:
    """One record per eval row: its number in its file, prompt preview, prediction, reference and scores, what the
    model thought before answering where it did (`reasoning`: the prediction is the answer after it), and a
    grounding row's boxes (sft/eval/boxes.py: generated and reference boxes in original pixels, their IoU)."""
    reasonings, box_rows = reasonings or [""] * len(rows), box_rows or [None] * len(rows)
    return [{"row": row["row"], "prompt": prompt_preview(prompt), "prediction": prediction, "reference": ref,
             "scores": scores, **({"reasoning": thought} if thought else {}), **(boxes or {})}
            for row, prompt, prediction, ref, scores, thought, boxes in zip(rows, prompts, predictions, references,
                                                                           per_row_scores, reasonings, box_rows)]


def write_predictions(path: str | Path, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _scores_text(scores: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.3g}" for name, value in scores.items())


def console_text(records: list[dict], path: Path, limit: int = SHOWN_ROWS) -> str:
    """A few records as short lines, and where the rest are."""
    lines = [f"[sft] eval predictions: {len(records)} rows in {path}; first {min(limit, len(records))}:"]
    for record in records[:limit]:
        lines.append(f"  row {record['row']}: {record['prompt'][-80:]!r}")
        lines.append(f"    prediction {record['prediction'][:200]!r}")
        lines.append(f"    reference  {(record['reference'] or '')[:200]!r}  ({_scores_text(record['scores'])})")
    return "\n".join(lines)


def markdown_table(records: list[dict], limit: int = SHOWN_ROWS) -> str:
    """Records as a Markdown table (TensorBoard renders text summaries as Markdown)."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for record in records[:limit]:
        values = [record["row"], record["prompt"], record["prediction"], record["reference"] or "",
                  _scores_text(record["scores"])]
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines)


def report_predictions(records: list[dict], path: Path, step: int, report_to: list[str], callbacks: list) -> None:
    """Print a few records; log them to W&B (a table) and TensorBoard (text) when the run reports to them."""
    print(console_text(records, path), file=sys.stderr, flush=True)
    shown = records[:SHOWN_ROWS]
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:  # WandbCallback starts the run at on_train_begin; `sft predict` has none
            table = wandb.Table(columns=list(COLUMNS),
                                data=[[r["row"], r["prompt"], r["prediction"], r["reference"],
                                       _scores_text(r["scores"])] for r in shown])
            wandb.log({"eval/predictions": table, "train/global_step": step})
    if "tensorboard" in report_to:
        from transformers.integrations import TensorBoardCallback

        for callback in callbacks:
            # TensorBoardCallback opens its writer at on_train_begin; reuse it so the text lands in the same run.
            writer = getattr(callback, "tb_writer", None) if isinstance(callback, TensorBoardCallback) else None
            if writer is not None:
                writer.add_text("eval/predictions", markdown_table(shown), step)
                writer.flush()
