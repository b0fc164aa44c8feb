"""Rows measured once against `max_length`: one pass renders every row through the collator to count its tokens, so
a row that does not fit is dropped and counted (or its prompt shortened) before training, never cut mid-answer.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from sft.data.messages import text_of, with_text
from sft.family.image_budget import dropped_for_images, visual_summary, visual_tokens
from sft.labels.cache_key import measured_key
from sft.labels.collator import located
from sft.labels.labelling import Labeller
from sft.labels.video_batch import split_visuals


def _shorten_prompt(collator: Labeller, example: dict, excess: int) -> dict | None:
    """The row with its longest user text cut by about `excess` tokens from its end; None if it cannot shrink."""
    messages = list(example["messages"])
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return None
    longest = max(users, key=lambda i: len(text_of(messages[i])))
    ids = collator.tokenizer(text_of(messages[longest]), add_special_tokens=False)["input_ids"]
    keep = len(ids) - excess
    if keep <= 0:
        return None
    messages[longest] = with_text(messages[longest], collator.tokenizer.decode(ids[:keep]))
    return {**example, "messages": messages}


def measure(example: dict, collator: Labeller, max_length: int | None, mode: str) -> dict:
    """Status (`ok`, `truncated`, `dropped`) and token counts of one row; shortened messages when truncated."""
    images = collator.load_images(example)
    row = example
    with located(example):  # images placed, a grounding row's boxes written (then it has no objects left to write)
        example = {**example, "messages": collator.messages_of(example, images), "objects": None}
    encoded = collator.encode(example, images)
    status = "ok"
    for _ in range(4):  # token counts shift a little after a cut; a few rounds settle it
        if max_length is None or len(encoded.input_ids) <= max_length:
            break
        shorter = _shorten_prompt(collator, example, len(encoded.input_ids) - max_length) \
            if mode == "shorten_prompt" else None
        if shorter is None:
            break
        example, status = shorter, "truncated"
        encoded = collator.encode(example, images)
    if max_length is not None and len(encoded.input_ids) > max_length:
        status = "dropped"
    kept = example if status == "truncated" else row  # as read, unless its prompt was shortened (boxes written)
    return {
        "messages": kept["messages"], "objects": kept.get("objects"), "status": status,
        "length": len(encoded.input_ids),
        "image_count": len(images),  # images and video clips
        "video_frames": sum(len(clip) for clip in split_visuals(images)[1]),
        "image_tokens": visual_tokens(collator.tokenizer, (getattr(collator, "image_token", None),
                                                           getattr(collator, "video_token", None)), encoded.text,
                                      encoded.input_ids) if images else 0,
        # A text row's ids and labels, placed once here for the collator (empty where the processor makes more).
        "row_ids": encoded.input_ids if encoded.tokens_only else [],
        "row_labels": encoded.labels if encoded.tokens_only else [],
        "prompt_tokens": encoded.prompt_tokens, "supervised_tokens": encoded.supervised_tokens,
        "dropped_reasoning": encoded.dropped_reasoning,  # replies whose reasoning the template does not write
    }


@dataclass
class FitReport:
    """How many rows of a split fit `max_length`."""

    name: str
    counts: Counter
    image_dropped: int = 0  # of the dropped rows, those whose text alone fits ("dropped: image tokens")
    visual: str = ""  # the image rows' visual token counts (sft.family.image_budget.visual_summary)
    from_cache: bool = False  # measured by an earlier command with the same key (sft/labels/cache_key.py)
    reasoning_rows: int = 0  # rows with a reply whose reasoning the template does not write

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def dropped_fraction(self) -> float:
        return self.counts["dropped"] / self.total if self.total else 0.0

    @property
    def measured(self) -> str:
        """Whether the rows were measured now or read back from the `datasets` cache."""
        return (f"{self.name}: {self.total} rows measured before (cache)" if self.from_cache
                else f"{self.name}: measured {self.total} rows")

    def __str__(self) -> str:
        c = self.counts
        return (f"{self.name}: {self.total} rows, {c['ok']} kept, {c['truncated']} prompt-shortened, "
                f"{c['dropped']} dropped ({c['dropped'] - self.image_dropped} text too long for max_length; "
                f"{self.image_dropped} dropped: image tokens, their text alone fits)"
                + (f"; {self.visual}" if self.visual else "") + reasoning_note(self.reasoning_rows))


def reasoning_note(rows: int) -> str:
    return (f"; {rows} row(s) with reasoning the chat template does not write (replies before the last user turn: "
            "those replies train without it)") if rows else ""


def read_from_cache(measured: Dataset, started: float) -> bool:
    """Whether `datasets` served the measured rows from its cache: their files are older than this measuring."""
    files = [Path(entry["filename"]) for entry in measured.cache_files]
    return bool(files) and all(file.stat().st_mtime < started for file in files)


def fit_to_length(dataset: Dataset, collator: Labeller, max_length: int | None, mode: str,
                  name: str, num_proc: int | None = None) -> tuple[Dataset, FitReport]:
    """Measure every row, drop or shorten the ones that do not fit, and report the counts."""
    fingerprint = measured_key(dataset._fingerprint, collator, max_length, mode)
    started = time.time()
    measured = dataset.map(
        measure, fn_kwargs=dict(collator=collator, max_length=max_length, mode=mode),
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > 64 else None,
        new_fingerprint=fingerprint, desc=f"measuring {name} rows",
    )
    # Counted a batch at a time: the columns of 200k rows as Python lists would cost tens of MiB (make bench row 4).
    counts, image_dropped, visual, reasoning_rows = Counter(), 0, [], 0
    columns = ["status", "length", "image_tokens", "image_count", "dropped_reasoning"]
    for batch in measured.select_columns(columns).iter(batch_size=10_000):
        counts.update(batch["status"])
        reasoning_rows += sum(1 for dropped in batch["dropped_reasoning"] if dropped)
        image_dropped += sum(dropped_for_images(*fit, max_length)
                             for fit in zip(batch["status"], batch["length"], batch["image_tokens"]))
        visual += [tokens for tokens, count in zip(batch["image_tokens"], batch["image_count"]) if count]
    report = FitReport(name, counts, image_dropped, visual_summary(visual), read_from_cache(measured, started),
                       reasoning_rows)
    kept = measured.filter(lambda status: status != "dropped", input_columns="status",
                           new_fingerprint=fingerprint + "-kept")
    return kept, report
