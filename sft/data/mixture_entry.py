"""A recipe's `datasets` list: TRL's mixture entries (trl 1.16 `DatasetConfig`: same keys, same meanings) plus the
toolkit's per-source keys, each entry checked when the recipe loads, every problem one line naming the entry.

TRL's parser hands the YAML list through as dicts (argparse parses only string defaults), as it does for TRL's own
`DatasetMixtureConfig.datasets`; on the command line `--datasets a.jsonl b.parquet` gives one entry per path.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, fields

from trl.scripts.utils import DatasetConfig

from sft.errors import UserError


@dataclass
class MixtureEntry(DatasetConfig):
    """One source of a mixture: TRL's `path`, `name`, `data_dir`, `data_files`, `split`, `columns`, `fraction`, and
    the toolkit's `weight`, `column_map`, `image_root` and `test_split` (docs/data.md: Mixing datasets)."""

    weight: float | None = None  # rows x weight: every row as many whole times as fit, then a seeded sample
    column_map: dict[str, str] | None = None  # standard name -> this source's column, as the recipe's column_map
    image_root: str | None = None  # where this source's relative image paths resolve (default: its file's folder)
    test_split: str | None = None  # this source's split (or data_files key) whose rows are eval rows


KEYS = tuple(f.name for f in fields(MixtureEntry))
TEXT_KEYS = ("name", "data_dir", "split", "image_root", "test_split")


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _strings(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _files(value) -> bool:
    return (isinstance(value, str) and bool(value)) or _strings(value)


def _checked(label: str, item: dict) -> dict:
    """The entry's values, each of the type its key takes; the first wrong one is refused naming the entry."""
    def refuse(key: str, wanted: str):
        raise UserError(f"{label}: {key} must be {wanted}, got {json.dumps(item[key], default=str)}")

    if not isinstance(item.get("path"), str) or not item["path"]:
        raise UserError(f"{label}: path is required (a data file, a dataset folder, a Hub id, or json/parquet/csv/"
                        "arrow with data_files)")
    for key in TEXT_KEYS:
        if key in item and not (isinstance(item[key], str) and item[key]):
            refuse(key, "a non-empty string")
    files = item.get("data_files")
    if files is not None and not (_files(files) or (
            isinstance(files, dict) and files and all(_files(v) for v in files.values()))):
        refuse("data_files", "a file, a list of files, or a map of split name to files")
    if item.get("columns") is not None and not _strings(item["columns"]):
        refuse("columns", "a list of column names")
    for key in ("fraction", "weight"):
        value = item.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            refuse(key, "a number >= 0")
    column_map = item.get("column_map")
    if isinstance(column_map, str):
        try:
            item["column_map"] = column_map = json.loads(column_map)
        except json.JSONDecodeError:
            refuse("column_map", "a map of standard names to this source's columns")
    if column_map is not None and not (isinstance(column_map, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in column_map.items())):
        refuse("column_map", "a map of standard names to this source's columns, e.g. {completion: target}")
    if item.get("test_split") is not None and item["test_split"] == item.get("split", "train"):
        raise UserError(f"{label}: test_split {item['test_split']!r} is its training split (split); eval rows "
                        "must come from another split")
    return item


def _entry(index: int, item) -> MixtureEntry:
    if isinstance(item, DatasetConfig):  # from the command line: `--datasets a.jsonl b.parquet`
        item = {key: value for key, value in asdict(item).items() if value is not None}
    elif isinstance(item, str):
        item = {"path": item}
    if not isinstance(item, dict):
        raise UserError(f"datasets[{index}]: an entry is a mapping (path: ..., split: ..., weight: ...), got "
                        f"{json.dumps(item, default=str)}")
    label = f"datasets[{index}]" + (f" ({item['path']})" if isinstance(item.get("path"), str) else "")
    for key in item:
        if key not in KEYS:
            raise UserError(f"{label}: unknown key {key!r}{_did_you_mean(str(key))}; an entry takes "
                            f"{', '.join(KEYS)}")
    return MixtureEntry(**_checked(label, dict(item)))


def mixture_entries(value) -> list[MixtureEntry]:
    """The recipe's `datasets` value as checked entries; TRL's fraction rule and the sizing keys checked across
    entries."""
    if value is None:
        return []
    if isinstance(value, str | dict | DatasetConfig):  # `datasets: a.jsonl`, one source
        value = [value]
    if not isinstance(value, list | tuple):
        raise UserError(f"datasets must be a list of entries (- path: data/train.jsonl ...), got "
                        f"{json.dumps(value, default=str)}")
    entries = [_entry(index, item) for index, item in enumerate(value)]
    with_fraction = [i for i, entry in enumerate(entries) if entry.fraction is not None]
    if with_fraction and len(with_fraction) < len(entries):
        missing = next(i for i in range(len(entries)) if i not in with_fraction)
        raise UserError(f"datasets: fraction is set for datasets[{with_fraction[0]}] but not for datasets[{missing}]; "
                        "set it for every entry or none (TRL: fractions are the entries' shares of the mixture)")
    if with_fraction and not sum(entry.fraction for entry in entries):
        raise UserError("datasets: every fraction is 0; the mixture would have no rows")
    if with_fraction and any(entry.weight is not None for entry in entries):
        raise UserError("datasets: fraction and weight both set; give one: fraction (TRL's shares of the mixture, "
                        "no row repeated) or weight (each entry's rows x weight, repeated above 1)")
    return entries
