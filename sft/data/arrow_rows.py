"""Rows kept lazily in Arrow: any source's checked rows written once by `datasets` (memory-mapped, never all in RAM).

Rows from any source (sft/data/sources.py) are written to an Arrow file by `datasets`. Images are stored as
`Image(decode=False)` entries: a path stays a path, embedded bytes stay bytes in the mapped file, and nothing is
decoded until the collator loads a batch. Measuring the rows against max_length is the labels stage's
(sft/labels/fit.py).
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, Features, Image, List, Value

from sft.data.rows import RowError, iter_rows
from sft.data.sources import DatasetSplit, Source, file_source
from sft.errors import UserError

# `stored_images`, not `images`: TRL's SFTTrainer takes a dataset with an `images` column for a vision dataset
# and refuses it with a text model (trl 1.16.0, sft_trainer.py "appears to be vision-related").
FEATURES = Features({
    "where": Value("string"),
    "row": Value("int64"),
    # `reasoning`: a reply's reasoning_content; `tool_calls`: its calls as JSON; `name`, `tool_call_id`: a tool
    # message's function and call (sft/data/tools.py).
    "messages": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}],
                  "reasoning": Value("string"), "tool_calls": Value("string"), "name": Value("string"),
                  "tool_call_id": Value("string")}],
    "stored_images": List(Image(decode=False)),
    "stored_videos": List(Value("string")),  # paths; frames are decoded per batch by the collator (sft/data/video.py)
    "objects": Value("string"),  # a grounding row's boxes as JSON (sft/data/objects.py), else None
    "tools": Value("string"),  # the row's tool schemas as JSON (sft/data/tools.py), else None
    "template_kwargs": Value("string"),  # its chat_template_kwargs as JSON, else None
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
