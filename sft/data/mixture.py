"""`datasets`: several sources in one run, each sized by TRL's `fraction` or the toolkit's `weight`.

Each entry (sft/data/mixture_entry.py) is read by the source the toolkit uses for that kind of data alone
(sft/data/sources.py: a data file, a `save_to_disk` folder, a folder of data files, a Hub id), its places named
`datasets[i] (name): row N` (`line N` for JSON lines), and normalised by sft/data/rows.py like any row, so any row shape
mixes with any other. Every row carries its entry's index in a `source` column, so the rows each entry gives the
run, and those dropped as too long, are counted per entry (log and manifest). Sizes, chosen before any row is
measured (changing max_length or the model moves no row in or out):
- fraction, exactly as TRL 1.16's `get_dataset`: shares normalised to sum to one; the mixture is the largest that
  repeats no row, and each entry keeps its first round(share x size) rows;
- weight: round(rows x weight) rows: every row as many whole times as fit, then a sample of the rest ranked by
  sha256(seed, entry, position), the same rows for the same `seed` on any machine (as eval_split.py ranks).
Eval rows per entry come from its `test_split`, or are held out of it by eval_split_size before it is sized, so a
repeated row is never in both.
"""

from __future__ import annotations

import glob
import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset, Features, Value, concatenate_datasets

from sft.data.arrow_rows import FEATURES, raise_on_errors, read_errors
from sft.data.eval_split import split_rows
from sft.data.mixture_entry import MixtureEntry
from sft.data.rows import RowError, iter_rows
from sft.data.sources import SUFFIXES, DatasetSplit, Problem, Source, file_source, split_sources
from sft.errors import UserError

BUILDERS = ("json", "parquet", "csv", "arrow")  # `datasets` builders of the files the toolkit reads itself
MIXED_FEATURES = Features({**FEATURES, "source": Value("int32")})  # `source`: the entry's index in `datasets`


class EntrySource(Source):
    """One split of one entry: its files (or dataset split) read in order, `columns` kept, places named by entry."""

    def __init__(self, index: int, entry: MixtureEntry, parts: list[Source]):
        self.index, self.parts, self.columns = index, parts, entry.columns
        self.name = f"datasets[{index}] ({', '.join(part.name for part in parts)})"
        self.image_root = Path(entry.image_root) if entry.image_root else parts[0].image_root
        self.column_map = entry.column_map

    def fingerprint(self) -> str:
        return hashlib.sha256("|".join(part.fingerprint() for part in self.parts).encode()).hexdigest()

    def rows(self):
        for part in self.parts:
            for item in part.rows():
                where = item.where if isinstance(item, Problem) else item[0]
                place = where[len(part.name) + 1:] if where.startswith(f"{part.name}:") else where
                where = f"datasets[{self.index}] ({part.name}): {'line ' + place if place.isdigit() else place}"
                if isinstance(item, Problem):
                    yield Problem(where, item.number, item.message)
                else:
                    row = item[2] if self.columns is None else {k: v for k, v in item[2].items() if k in self.columns}
                    yield where, item[1], row

    def record(self) -> list[dict]:
        """What the manifest says of its data: each file's sha256 (as `data_files`), or the dataset's fingerprint."""
        return [{"path": str(part.path), "sha256": part.fingerprint()} if hasattr(part, "path")
                else {"dataset": part.name, "fingerprint": part.fingerprint()} for part in self.parts]


def _local_files(base: Path, files, label: str) -> list[Source]:
    sources = []
    for name in [files] if isinstance(files, str) else files:
        pattern = str(base / name)
        matches = sorted(glob.glob(pattern)) if any(c in name for c in "*?[") else [pattern]
        if not matches:
            raise UserError(f"{label}: no file matches data_files {name!r}")
        sources += [file_source(match) for match in matches]
    return sources


def entry_source(index: int, entry: MixtureEntry, split: str) -> EntrySource:
    """The entry's `split` (its `split` or its `test_split`) as a source, read as the toolkit reads that data."""
    path, label = Path(entry.path), f"datasets[{index}] ({entry.path})"
    local_files = entry.data_files is not None and (entry.path in BUILDERS or path.is_dir())
    if local_files or path.is_file() or path.suffix.lower() in SUFFIXES:
        if entry.name or entry.data_dir or (entry.data_files is not None and not local_files):
            raise UserError(f"{label}: name, data_dir and data_files choose within a dataset folder or Hub id; give "
                            "a data file as path alone, or path: json/parquet/csv/arrow with data_files")
        files = entry.data_files if local_files else str(path)
        if isinstance(files, dict):
            if split not in files:
                raise UserError(f"{label}: data_files has no split {split!r}; it has {', '.join(files)}")
            files = files[split]
        elif split != "train":
            raise UserError(f"{label}: {'data_files without split names hold' if local_files else 'a data file holds'}"
                            f" one split, train, not {split!r}; name the files per split (data_files: {{train: ..., "
                            f"{split}: ...}})")
        parts = _local_files(path if path.is_dir() else Path(), files, label)
    elif path.is_dir():  # a save_to_disk folder or a folder of data files; data_dir a folder inside it
        parts = [DatasetSplit(str(path / entry.data_dir) if entry.data_dir else entry.path, split, entry.name)]
    else:  # a Hub id (or another `datasets` builder): load_dataset(path, name, data_dir=, data_files=), as TRL does
        options = {key: value for key, value in (("data_dir", entry.data_dir), ("data_files", entry.data_files))
                   if value is not None}
        parts = [DatasetSplit(entry.path, split, entry.name, **options)]
    return EntrySource(index, entry, parts)


def data_sources(data) -> list[tuple[str, Source]]:
    """The recipe's (split name, source) pairs: sources.split_sources, or each `datasets` entry's split and
    test_split (what `sft check` and `sft preview` read)."""
    if not data.datasets:
        return split_sources(data)
    pairs = []
    for index, entry in enumerate(data.datasets):
        pairs.append(("train", entry_source(index, entry, entry.split)))
        if entry.test_split:
            pairs.append(("eval", entry_source(index, entry, entry.test_split)))
    return pairs


# ---- reading an entry into the lazy Arrow dataset (as dataset.load_rows, with the `source` column) ---------------
def _generate(entry: dict, index: int, split: str, fingerprint: str):
    # `entry` as plain values keys the `datasets` cache; `fingerprint` (unused here) makes edited data read again.
    for item in iter_rows(entry_source(index, MixtureEntry(**entry), split)):
        if not isinstance(item, RowError):
            yield {**item, "source": index}


def load_entry(index: int, entry: MixtureEntry, split: str) -> tuple[Dataset, EntrySource]:
    """Every row of the entry's `split`; any bad row stops here, named `datasets[i] (file): row N`."""
    try:
        source = entry_source(index, entry, split)
        fingerprint, errors = source.fingerprint(), read_errors(source, None, None)
    except UserError as exc:  # a missing file or split, an unreachable Hub id: said with the entry's keys
        message = str(exc).replace("dataset_train_split / dataset_test_split", "split / test_split")
        label = f"datasets[{index}] ({entry.path})"
        raise UserError(message if message.startswith("datasets[") else f"{label}: {message}") from None
    raise_on_errors(errors)
    kwargs = dict(entry=asdict(entry), index=index, split=split, fingerprint=fingerprint)
    rows = Dataset.from_generator(_generate, gen_kwargs=kwargs, features=MIXED_FEATURES)
    if len(rows) == 0:
        raise UserError(f"{source.name}: no rows")
    return rows, source


# ---- sizes -------------------------------------------------------------------------------------------------------
def mixture_sizes(rows: list[int], fractions: list[float | None], weights: list[float | None]) -> list[int]:
    """Training rows each entry gives: TRL's fraction rule (trl 1.16 `get_dataset`), or rows x weight (default 1)."""
    if fractions and fractions[0] is not None:  # set for every entry or none (sft/data/mixture_entry.py)
        shares = [fraction / sum(fractions) for fraction in fractions]
        total = min(count / share for count, share in zip(rows, shares) if share > 0)
        return [min(count, round(share * total)) for count, share in zip(rows, shares)]
    return [round(count * (1.0 if weight is None else weight)) for count, weight in zip(rows, weights)]


def chosen_positions(rows: int, count: int, seed: int, index: int, first: bool = False) -> list[int]:
    """`count` positions out of `rows`: the first ones (`first`: TRL's fraction), or every position as many whole
    times as fit and then the ones ranked first by sha256(seed, index, position), in file order."""
    if first:
        return list(range(count))
    copies, extra = divmod(count, rows)
    ranked = sorted(range(rows), key=lambda position: hashlib.sha256(f"{seed}:{index}:{position}".encode()).digest())
    return list(range(rows)) * copies + sorted(ranked[:extra])


@dataclass
class EntryCounts:
    """What one entry gave the run: rows read, held out, in the mixture, and per split how many were kept."""

    name: str
    files: list[dict]
    read: int
    size: str  # how it was sized: `fraction 0.3`, `weight 2` or `all rows`
    mixed: int = 0
    held_out: int = 0
    eval_from: str | None = None
    rows: dict = field(default_factory=dict)  # split -> rows before measuring
    fits: dict = field(default_factory=dict)  # split -> {ok, truncated, dropped} after measuring

    def line(self, split: str) -> str:
        """This entry's rows of `split` and what measuring them kept, as the log prints it."""
        c = self.fits.get(split) or {"ok": self.rows[split], "truncated": 0, "dropped": 0}
        fit = f"{c['ok'] + c['truncated']} kept ({c['truncated']} prompt-shortened), {c['dropped']} dropped as too long"
        if split == "eval":
            return f"{self.name} eval: {self.rows['eval']} rows ({self.eval_from}): {fit}"
        held = f", {self.held_out} held out for eval" if self.held_out else ""
        return f"{self.name}: {self.read} rows read{held}, {self.mixed} in the mixture ({self.size}): {fit}"


@dataclass
class Mixture:
    """The mixed training rows, the eval rows of every entry that has some, and the counts per entry."""

    train: Dataset
    eval: Dataset | None
    eval_split: dict | None  # eval_split_size: what each entry held out (the manifest's evaluation.split)
    counts: list[EntryCounts]

    def fitted(self, split: str, kept: Dataset) -> list[str]:
        """Count per entry the rows of `split` that fit max_length (`kept`: sft.labels.fit.fit_to_length's rows);
        one log line per entry."""
        columns = kept.select_columns(["source", "status"]).to_dict()
        kept_counts = Counter(zip(columns["source"], columns["status"]))
        for index, counts in enumerate(self.counts):
            if split in counts.rows:
                ok, truncated = kept_counts[(index, "ok")], kept_counts[(index, "truncated")]
                counts.fits[split] = {"ok": ok, "truncated": truncated,
                                      "dropped": counts.rows[split] - ok - truncated}
        return [counts.line(split) for counts in self.counts if split in counts.rows]

    def manifest(self) -> list[dict]:
        return [{"name": c.name, "files": c.files, "rows_read": c.read, "held_out": c.held_out, "size": c.size,
                 "train_rows": c.mixed, "eval_from": c.eval_from, "rows": c.fits or c.rows} for c in self.counts]


def load_mixture(data, seed: int) -> Mixture:
    """Every entry read and checked, eval rows set apart per entry, the rest sized by fraction or weight and joined
    in entry order (the trainer's sampler shuffles them)."""
    trains, evals, counts, held_records = [], [], [], []
    for index, entry in enumerate(data.datasets):
        rows, source = load_entry(index, entry, entry.split)
        size = f"fraction {entry.fraction:g}" if entry.fraction is not None else \
            f"weight {entry.weight:g}" if entry.weight is not None else "all rows"
        counts.append(EntryCounts(source.name, source.record(), len(rows), size))
        if data.eval_split_size:
            rows, held, record = split_rows(rows, data.eval_split_size, data.eval_split_seed, source.name)
            counts[-1].held_out, counts[-1].eval_from = len(held), f"eval_split_size {data.eval_split_size:g}"
            evals.append(held)
            held_records.append(record)
        elif entry.test_split:
            held, test_source = load_entry(index, entry, entry.test_split)
            counts[-1].eval_from = f"test_split {entry.test_split}"
            counts[-1].files += [f for f in test_source.record() if f not in counts[-1].files]
            evals.append(held)
        if counts[-1].eval_from:
            counts[-1].rows["eval"] = len(evals[-1])
        trains.append(rows)
    entries = data.datasets
    sizes = mixture_sizes([len(rows) for rows in trains], [e.fraction for e in entries], [e.weight for e in entries])
    first = entries[0].fraction is not None
    chosen = [rows.select(chosen_positions(len(rows), size, seed, index, first))
              for index, (rows, size) in enumerate(zip(trains, sizes))]
    for entry_counts, size in zip(counts, sizes):
        entry_counts.mixed = entry_counts.rows["train"] = size
    if not sum(sizes):
        raise UserError("datasets: the mixture has no training rows (every entry's fraction or weight gives 0)")
    return Mixture(concatenate_datasets(chosen), concatenate_datasets(evals) if evals else None,
                   {"datasets": held_records} if held_records else None, counts)
