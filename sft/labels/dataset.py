"""Datasets for training: rows kept lazily in Arrow, each measured once against `max_length`.

Rows from any source (sft/data/sources.py) are written to an Arrow file by `datasets` (memory-mapped, never all in RAM).
Images are stored as `Image(decode=False)` entries: a path stays a path, embedded bytes stay bytes in the mapped
file, and nothing is decoded until the collator loads a batch. One pass renders every row through the collator to
count its tokens, so a row that does not fit is dropped and counted (or its prompt shortened) before training,
never cut mid-answer.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, Features, Image, List, Value

from sft.data.messages import text_of, with_text
from sft.data.rows import RowError, iter_rows
from sft.data.sources import DatasetSplit, Source, file_source
from sft.errors import UserError
from sft.family.image_budget import dropped_for_images, image_settings, visual_summary, visual_tokens
from sft.labels.collator import located
from sft.labels.labelling import Labeller
from sft.labels.video_batch import split_visuals

# `stored_images`, not `images`: TRL's SFTTrainer takes a dataset with an `images` column for a vision dataset
# and refuses it with a text model (trl 1.16.0, sft_trainer.py "appears to be vision-related").
FEATURES = Features({
    "where": Value("string"),
    "row": Value("int64"),
    "messages": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}],
    "stored_images": List(Image(decode=False)),
    "stored_videos": List(Value("string")),  # paths; frames are decoded per batch by the collator (sft/data/video.py)
})
MAX_ERRORS_SHOWN = 20


def _source(spec: dict) -> Source:
    return file_source(spec["file"]) if spec.get("file") else \
        DatasetSplit(spec["dataset_name"], spec["split"], spec.get("config"))


def _spec(source: Source) -> dict:
    """The source as plain values: `datasets` hashes the generator's arguments to key its cache."""
    if isinstance(source, DatasetSplit):
        return {"dataset_name": source.dataset_name, "split": source.split, "config": source.config}
    return {"file": str(source.path)}


def _generate(spec: dict, image_root: str | None, column_map: dict | None, fingerprint: str):
    # `fingerprint` is unused here; it keys the `datasets` cache so edited data is read again.
    for item in iter_rows(_source(spec), image_root, column_map):
        if not isinstance(item, RowError):
            yield item


def read_errors(source: Source | str | Path, image_root: str | None, column_map: dict | None) -> list[RowError]:
    """Every bad row of the source (one streaming pass)."""
    return [item for item in iter_rows(source, image_root, column_map) if isinstance(item, RowError)]


def raise_on_errors(errors: list[RowError]) -> None:
    if errors:
        shown = "\n".join(str(e) for e in errors[:MAX_ERRORS_SHOWN])
        more = f"\n... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise UserError(f"{len(errors)} bad row(s):\n{shown}{more}")


def load_rows(source: Source | str | Path, image_root: str | None = None, column_map: dict | None = None) -> Dataset:
    """All rows of a source (or data file) as a lazy Arrow dataset; any bad row stops here, each named."""
    source = source if isinstance(source, Source) else file_source(source)
    raise_on_errors(read_errors(source, image_root, column_map))
    kwargs = dict(spec=_spec(source), image_root=image_root, column_map=column_map, fingerprint=source.fingerprint())
    dataset = Dataset.from_generator(_generate, gen_kwargs=kwargs, features=FEATURES)
    if len(dataset) == 0:
        raise UserError(f"{source.name}: no rows")
    return dataset


# ---- fitting rows into max_length -------------------------------------------------------------------------------
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
    with located(example):
        example = {**example, "messages": collator.messages_of(example, images)}
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
    return {
        "messages": example["messages"], "status": status, "length": len(encoded.input_ids),
        "image_count": len(images),  # images and video clips
        "video_frames": sum(len(clip) for clip in split_visuals(images)[1]),
        "image_tokens": visual_tokens(collator.tokenizer, (getattr(collator, "image_token", None),
                                                           getattr(collator, "video_token", None)), encoded.text,
                                      encoded.input_ids) if images else 0,
        # A text row's ids and labels, placed once here for the collator (empty where the processor makes more).
        "row_ids": encoded.input_ids if encoded.tokens_only else [],
        "row_labels": encoded.labels if encoded.tokens_only else [],
        "prompt_tokens": encoded.prompt_tokens, "supervised_tokens": encoded.supervised_tokens,
    }


@dataclass
class FitReport:
    """How many rows of a split fit `max_length`."""

    name: str
    counts: Counter
    image_dropped: int = 0  # of the dropped rows, those whose text alone fits ("dropped: image tokens")
    visual: str = ""  # the image rows' visual token counts (sft.family.image_budget.visual_summary)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def dropped_fraction(self) -> float:
        return self.counts["dropped"] / self.total if self.total else 0.0

    def __str__(self) -> str:
        c = self.counts
        return (f"{self.name}: {self.total} rows, {c['ok']} kept, {c['truncated']} prompt-shortened, "
                f"{c['dropped']} dropped ({c['dropped'] - self.image_dropped} text too long for max_length; "
                f"{self.image_dropped} dropped: image tokens, their text alone fits)"
                + (f"; {self.visual}" if self.visual else ""))


def fit_to_length(dataset: Dataset, collator: Labeller, max_length: int | None, mode: str,
                  name: str, num_proc: int | None = None) -> tuple[Dataset, FitReport]:
    """Measure every row, drop or shorten the ones that do not fit, and report the counts."""
    # `measured-v5`: the measured columns (image_count, video_frames, image_tokens, row_ids, row_labels); a cache
    # written before lacks them. The image and video processors' settings (budgets) change the rows' lengths.
    # completion_only_loss: the stored row_labels are the replies' or the whole conversation's.
    fingerprint = hashlib.sha256(
        f"{dataset._fingerprint}|{collator.tokenizer.name_or_path}|{max_length}|{mode}|{collator.date_string}|measured-v5"
        f"|{image_settings(collator.processing_class)}"
        f"{'' if collator.completion_only_loss else '|whole-conversation'}".encode()).hexdigest()[:32]
    measured = dataset.map(
        measure, fn_kwargs=dict(collator=collator, max_length=max_length, mode=mode),
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > 64 else None,
        new_fingerprint=fingerprint, desc=f"measuring {name} rows",
    )
    # Counted a batch at a time: the columns of 200k rows as Python lists would cost tens of MiB (make bench row 4).
    counts, image_dropped, visual = Counter(), 0, []
    for batch in measured.select_columns(["status", "length", "image_tokens", "image_count"]).iter(batch_size=10_000):
        counts.update(batch["status"])
        image_dropped += sum(dropped_for_images(*fit, max_length)
                             for fit in zip(batch["status"], batch["length"], batch["image_tokens"]))
        visual += [tokens for tokens, count in zip(batch["image_tokens"], batch["image_count"]) if count]
    report = FitReport(name, counts, image_dropped, visual_summary(visual))
    kept = measured.filter(lambda status: status != "dropped", input_columns="status",
                           new_fingerprint=fingerprint + "-kept")
    return kept, report
