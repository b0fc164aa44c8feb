"""Data sources: a file or a `datasets` dataset read as plain row dicts, each with the place it came from.

A source only reads; what a row means (its shape, its images) is sft/data/rows.py's job. Places: `file:line` for JSON
lines, `file:row N` (1-based) for tables (.json array, .parquet, .csv, .arrow) and `name[split]:row N` for a
dataset. Tables and datasets are read through `datasets` in Arrow batches, so an embedded image stays the
`{bytes, path}` it is stored as (never decoded here) and only one batch is in memory at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sft.errors import UserError

MAX_LINE_BYTES = 8 * 2**20  # a longer line is refused without being held in memory
TABLE_FORMATS = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
SUFFIXES = (".jsonl", *TABLE_FORMATS)
BATCH_ROWS = 256  # rows per Arrow batch read from a table (a batch of embedded images, not the file)


@dataclass
class Problem:
    """A row that could not even be read as a dict (bad JSON, bad UTF-8, a line too long)."""

    where: str
    number: int
    message: str


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Source:
    """Rows from one file or one dataset split: `rows()` yields (where, number, dict) or a Problem."""

    name: str  # the file or `dataset[split]`, as error messages name it
    image_root: Path | None  # the folder relative image paths resolve against by default
    column_map: dict[str, str] | None = None  # a `datasets` entry's own column_map (sft/data/mixture.py)

    def rows(self) -> Iterator[tuple[str, int, dict] | Problem]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Changes when the rows change (keys the `datasets` cache of the normalised rows)."""
        raise NotImplementedError


# ---- JSON lines: streamed line by line, each line named by its number ------------------------------------------
def _lines(handle) -> Iterator[bytes | None]:
    """The file's lines; None in place of a line longer than MAX_LINE_BYTES (its rest is skipped)."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = handle.readline(MAX_LINE_BYTES)
            yield None
        else:
            yield line


class JsonLinesFile(Source):
    """A JSONL file (or a .json file of JSON lines), read as a stream: one bad line does not hide the others."""

    def __init__(self, path: Path):
        self.path, self.name, self.image_root = path, str(path), path.parent

    def fingerprint(self) -> str:
        return sha256_of(self.path)

    def rows(self) -> Iterator[tuple[str, int, dict] | Problem]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(_lines(handle), start=1):
                where = f"{self.path}:{number}"
                if raw is None:
                    yield Problem(where, number, f"line longer than {MAX_LINE_BYTES // 2**20} MiB; not read")
                    continue
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM may open the file
                except UnicodeDecodeError as exc:
                    yield Problem(where, number, f"not valid UTF-8 (byte {exc.start + 1})")
                    continue
                if not line.strip():
                    continue  # blank lines (and CRLF ends) are fine
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Problem(where, number, f"not JSON ({exc.msg}, column {exc.colno})")
                    continue
                if not isinstance(row, dict):
                    yield Problem(where, number, f"not a JSON object (got {type(row).__name__})")
                    continue
                yield where, number, row


# ---- tables and datasets: read by `datasets`, rows numbered from 1 ----------------------------------------------
def _undecoded_images(feature):
    """The feature with every `Image` left undecoded (read as its stored `{bytes, path}`), all else unchanged."""
    from datasets import Features, Image

    if isinstance(feature, Image):
        return Image(mode=feature.mode, decode=False)
    if isinstance(feature, dict):
        return (Features if isinstance(feature, Features) else dict)(
            {key: _undecoded_images(value) for key, value in feature.items()})
    if dataclasses.is_dataclass(feature) and hasattr(feature, "feature"):  # List, LargeList
        return dataclasses.replace(feature, feature=_undecoded_images(feature.feature))
    return feature


def _arrow_rows(dataset, place: str) -> Iterator[tuple[str, int, dict]]:
    """Rows of a `datasets.Dataset` in Arrow batches, decoded by its features except images (`{bytes, path}`,
    nothing decoded) and with `None` values dropped: a table gives every row every column, and an absent key is
    what tells the row shapes apart."""
    features = _undecoded_images(dataset.features)
    number = 0
    for batch in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
            row = features.decode_example(row)  # e.g. the Json parts of a JSON file's mixed `content`
            yield f"{place}:row {number}", number, {k: v for k, v in row.items() if v is not None}


class TableFile(Source):
    """A .json array, .parquet, .csv or .arrow file, loaded by `datasets` into its memory-mapped cache."""

    def __init__(self, path: Path, builder: str):
        self.path, self.builder, self.name, self.image_root = path, builder, str(path), path.parent

    def fingerprint(self) -> str:
        return sha256_of(self.path)

    def rows(self) -> Iterator[tuple[str, int, dict]]:
        from datasets import load_dataset

        try:
            dataset = load_dataset(self.builder, data_files=str(self.path), split="train")
        except Exception as exc:  # noqa: BLE001 - any reader failure (pyarrow, pandas, json) is the file's problem
            raise UserError(f"{self.path}: cannot read as {self.builder}: {_first_line(exc)}") from None
        yield from _arrow_rows(dataset, str(self.path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class DatasetSplit(Source):
    """One split of `dataset_name`: a `save_to_disk` folder, a folder of data files, or a Hub id."""

    def __init__(self, dataset_name: str, split: str, config: str | None = None, **options):
        # options: load_dataset's data_dir / data_files, from a `datasets` entry naming a Hub id (sft/data/mixture.py)
        self.dataset_name, self.split, self.config, self.options = dataset_name, split, config, options
        self.name = f"{dataset_name}[{split}]"
        folder = Path(dataset_name)
        self.image_root = folder if folder.is_dir() else None
        self._dataset = None

    def load(self):
        """The split as a `datasets.Dataset` (loaded once); a missing split or an unreachable name is one line."""
        if self._dataset is None:
            splits = _load_splits(self.dataset_name, self.config, **self.options)
            if self.split not in splits:
                raise UserError(f"{self.dataset_name}: no split {self.split!r}; it has {', '.join(splits)} "
                                "(set dataset_train_split / dataset_test_split)")
            self._dataset = splits[self.split]
        return self._dataset

    def fingerprint(self) -> str:
        return self.load()._fingerprint

    def rows(self) -> Iterator[tuple[str, int, dict]]:
        yield from _arrow_rows(self.load(), self.name)


def _load_splits(dataset_name: str, config: str | None, **options) -> dict:
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    folder = Path(dataset_name)
    saved = folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file())
    try:
        if saved:  # written by save_to_disk: Arrow files read in place
            loaded = load_from_disk(str(folder))
            return {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)
        loaded = load_dataset(str(folder) if folder.is_dir() else dataset_name, config, **options)
        return dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
    except ConnectionError:  # offline, or the Hub is unreachable, and the dataset is not in the cache
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true") else ""
        raise UserError(f"dataset_name {dataset_name!r}: not a local folder, and not reachable on the Hub{offline} "
                        f"nor in the local cache; download it first (huggingface-cli download --repo-type dataset "
                        f"{dataset_name}) or name a local folder") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (not found, bad config, unreadable files)
        kind = "folder" if folder.is_dir() else "a local folder nor a Hub dataset"
        raise UserError(f"dataset_name {dataset_name!r}: cannot load as {kind}: {_first_line(exc)}") from None


def file_source(path: str | Path) -> Source:
    """The source that reads `path` by its suffix; a .json file holding JSON lines is streamed like .jsonl."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and not _starts_with_array(path)):
        return JsonLinesFile(path)
    if suffix in TABLE_FORMATS:
        return TableFile(path, TABLE_FORMATS[suffix])
    if suffix in ("", ".txt", ".ndjson"):
        return JsonLinesFile(path)  # no telling suffix: read as JSON lines, as before
    raise UserError(f"{path}: unknown data file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _starts_with_array(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def split_sources(data) -> list[tuple[str, Source]]:
    """The recipe's (name, source) pairs: `train` and, when there is one, `eval` (a file or a dataset split)."""
    if data.train_file:
        sources = [("train", file_source(data.train_file))]
    else:
        sources = [("train", DatasetSplit(data.dataset_name, data.dataset_train_split, data.dataset_config))]
    if data.eval_file:
        sources.append(("eval", file_source(data.eval_file)))
    elif data.dataset_name and data.dataset_test_split:
        sources.append(("eval", DatasetSplit(data.dataset_name, data.dataset_test_split, data.dataset_config)))
    return sources
