"""A run's evaluations as its report shows them: `eval_predictions/*.jsonl` (sft/eval/predictions.py) in step order,
each prediction against its reference with the differences marked, and the rows whose prediction changed since
the evaluation before."""

from __future__ import annotations

import json
import re
from difflib import SequenceMatcher
from pathlib import Path

SHOWN_ROWS = 500  # rows a report table draws per evaluation; the JSONL beside it keeps them all
WORDS = re.compile(r"\s+|\w+|[^\w\s]")  # words, runs of space and single marks: what a difference is made of


def evaluation_files(run: str | Path) -> list[tuple[str, Path]]:
    """(name, path) of each evaluation's predictions: `step-N` by step, then `final`."""
    folder = Path(run) / "eval_predictions"
    steps = [path for path in folder.glob("step-*.jsonl") if path.stem[5:].isdigit()]
    ordered = [(path.stem, path) for path in sorted(steps, key=lambda path: int(path.stem[5:]))]
    return ordered + ([("final", folder / "final.jsonl")] if (folder / "final.jsonl").is_file() else [])


def read_records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def marked_difference(reference: str | None, prediction: str) -> list[dict]:
    """The prediction as segments `{kind, text}` against the reference, word by word: `same`, `extra` (in the
    prediction, not the reference) or `missing` (reference text the prediction lacks)."""
    if reference is None:
        return [{"kind": "same", "text": prediction}]
    theirs, ours = WORDS.findall(reference), WORDS.findall(prediction)
    segments: list[dict] = []

    def add(kind: str, words: list[str]) -> None:
        if not words:
            return
        if segments and segments[-1]["kind"] == kind:
            segments[-1]["text"] += "".join(words)
        else:
            segments.append({"kind": kind, "text": "".join(words)})

    for operation, i1, i2, j1, j2 in SequenceMatcher(None, theirs, ours, autojunk=False).get_opcodes():
        if operation == "equal":
            add("same", ours[j1:j2])
        else:
            add("missing", theirs[i1:i2])
            add("extra", ours[j1:j2])
    return segments


def _change(before: dict | None, record: dict, metric: str | None) -> str | None:
    """How this row's prediction moved since the evaluation before: None if it did not change."""
    if before is None or before.get("row") != record["row"] or before["prediction"] == record["prediction"]:
        return None
    old, new = (before.get("scores") or {}).get(metric), (record.get("scores") or {}).get(metric)
    if old is None or new is None or old == new:
        return "changed"
    return "better" if new > old else "worse"


def evaluations(run: str | Path) -> list[dict]:
    """Each evaluation with its rows (the first SHOWN_ROWS), mean scores and the rows changed since the one before.
    Rows are matched by position: every evaluation of a run scores the same eval rows in the same order."""
    found, previous = [], []
    for name, path in evaluation_files(run):
        records = read_records(path)
        metrics = list(dict.fromkeys(metric for record in records for metric in record.get("scores") or {}))
        primary = metrics[0] if metrics else None
        rows = []
        for index, record in enumerate(records):
            change = _change(previous[index] if index < len(previous) else None, record, primary)
            if index < SHOWN_ROWS or change:
                rows.append({**record, "index": index + 1, "change": change, "shown": index < SHOWN_ROWS,
                             "was": previous[index]["prediction"] if change else None,
                             "segments": marked_difference(record.get("reference"), record["prediction"])})
        means = {metric: sum((r.get("scores") or {}).get(metric, 0.0) for r in records) / len(records)
                 for metric in metrics} if records else {}
        found.append({"name": name, "file": path.name, "total": len(records), "metrics": metrics, "means": means,
                      "rows": [row for row in rows if row["shown"]],
                      "changed": [{key: row[key] for key in ("index", "row", "change", "shown")}
                                  for row in rows if row["change"]]})
        previous = records
    for before, after in zip(found, found[1:]):
        before["next"], after["previous"] = after["name"], before["name"]
    return found
