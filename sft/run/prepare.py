"""Prepare data, the second stage of `sft train`: the rows of each split read, held out, measured against max_length
and counted, the packs laid out, and the eval metrics chosen — all before any weights load.

train_file or dataset_name[dataset_train_split]; eval_file, dataset_name[dataset_test_split], a held-out share of
the training rows (eval_split_size), or a `datasets` mixture's per-source eval rows (sft/data/mixture.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from sft.config.recipe import Recipe
from sft.data.arrow_rows import load_rows
from sft.data.eval_split import split_rows
from sft.data.mixture import Mixture, load_mixture
from sft.data.sources import split_sources
from sft.errors import UserError
from sft.eval.generation import reference
from sft.eval.metrics import bleu_tokenizer, check_metric_for_best_model, default_metrics
from sft.labels.fit import FitReport, fit_to_length
from sft.labels.labelling import Labeller
from sft.labels.packing import EpochPacks, PackedBatches, planned_epochs, refuse_unpackable
from sft.run.decide import RunSetup
from sft.run.log import log


@dataclass
class RunData:
    train_rows: Dataset  # measured rows that fit max_length
    train_set: Dataset  # what the trainer iterates: those rows, or every epoch's packs (sft/labels/packing.py)
    batches: Labeller | PackedBatches  # the collator, or packs of rows laid end to end
    packing: str | None  # what packing did, for the log and the manifest (None: unpacked)
    eval_rows: Dataset | None
    eval_split: dict | None  # the held-out share, when eval rows came from the training rows
    reports: list[FitReport]  # kept/dropped/truncated per split
    mixture: Mixture | None
    eval_metrics: list[str]  # generation metrics at eval ([]: none)
    metrics_why: str


def read_splits(recipe: Recipe) -> tuple[Dataset, Dataset | None, dict | None, Mixture | None]:
    """Train rows, eval rows (or None), the held-out share's facts, and the mixture of a `datasets` list."""
    data, seed = recipe.data, recipe.training.seed
    if data.datasets:  # several sources, each sized by fraction or weight, eval rows per source
        mixture = load_mixture(data, seed)
        return mixture.train, mixture.eval, mixture.eval_split, mixture
    sources = dict(split_sources(data))
    train_rows = load_rows(sources["train"], data.image_root, data.column_map)
    eval_rows = load_rows(sources["eval"], data.image_root, data.column_map) if "eval" in sources else None
    if not data.eval_split_size:
        return train_rows, eval_rows, None, None
    where = sources["train"].name
    train_rows, eval_rows, eval_split = split_rows(train_rows, data.eval_split_size, data.eval_split_seed, where)
    log(f"eval split: {eval_split['eval_rows']} of {len(train_rows) + len(eval_rows)} rows of "
        f"{where} held out (eval_split_size {data.eval_split_size:g}, seed {data.eval_split_seed})")
    return train_rows, eval_rows, eval_split, None


def prepare_split(recipe: Recipe, collator: Labeller, name: str, rows, mixture: Mixture | None = None):
    """Rows of one split, measured against max_length; prints the kept/dropped/truncated counts (and, for a
    `datasets` mixture, each source's)."""
    kept, report = fit_to_length(rows, collator, recipe.training.max_length, recipe.data.truncation, name,
                                 num_proc=recipe.training.dataset_num_proc)
    log(report.measured)
    log(str(report))
    for line in mixture.fitted(name, kept) if mixture else ():
        log(line)
    return kept, report


def check_fit(report: FitReport, kept_rows: int, limit: float) -> None:
    """Refuse to train on data that mostly does not fit, or that supervises nothing."""
    if kept_rows == 0:
        raise UserError(f"{report.name}: no row fits max_length; nothing would be supervised")
    if report.dropped_fraction > limit:
        raise UserError(f"{report.name}: {report.counts['dropped']} of {report.total} rows "
                        f"({report.dropped_fraction:.1%}) do not fit max_length, more than max_dropped_fraction "
                        f"{limit:.0%}; raise max_length, set truncation: shorten_prompt, or clean the data")


def choose_eval_metrics(recipe: Recipe, eval_rows) -> tuple[list[str], str]:
    """The generation metrics of this run and why (the recipe's `eval_metrics`, or what fits the references)."""
    if eval_rows is None or not recipe.data.eval_generation:
        return [], "no generation at eval"
    if recipe.data.eval_metrics:
        return list(recipe.data.eval_metrics), "eval_metrics in the recipe"
    metrics, why = default_metrics([reference(row) for row in eval_rows])
    return metrics, f"chosen from the data: {why}; set eval_metrics to choose"


def settle_eval_metrics(recipe: Recipe, eval_rows) -> tuple[list[str], str]:
    """The eval metrics, said; refused before weights load if metric_for_best_model needs another."""
    metrics, why = choose_eval_metrics(recipe, eval_rows)
    best = recipe.training.metric_for_best_model
    if metrics:
        bleu = f"; BLEU tokenize {bleu_tokenizer([reference(r) for r in eval_rows])}" if "bleu" in metrics else ""
        log(f"eval metrics: {', '.join(metrics)} ({why}{bleu})")
        check_metric_for_best_model(best, metrics)
    elif eval_rows is not None and best not in (None, "loss", "eval_loss"):
        # Kept as before this check existed (runs shorter than an epoch never evaluate); Trainer names it if one does.
        log(f"notice: eval_generation is off, so no evaluation reports metric_for_best_model {best!r}")
    return metrics, why


def prepare_data(setup: RunSetup) -> RunData:
    """Every split read, measured and counted; the training rows packed when the recipe packs."""
    recipe, collator, family = setup.recipe, setup.processing.collator, setup.processing.family
    args, limit = recipe.training, recipe.data.max_dropped_fraction
    train_rows, eval_rows, eval_split, mixture = read_splits(recipe)
    train_rows, train_report = prepare_split(recipe, collator, "train", train_rows, mixture)
    check_fit(train_report, len(train_rows), limit)
    train_set, batches, packing = train_rows, collator, None
    if setup.packing:  # packs of rows laid end to end (sft/labels/packing.py); evaluation and generation stay unpacked
        refuse_unpackable(family, args, image_rows=sum(count > 0 for count in train_rows["image_count"]))
        lengths = train_rows["length"]
        first = EpochPacks(lengths, args.max_length, setup.packing, args.seed, 1)
        packs = EpochPacks(lengths, args.max_length, setup.packing, args.seed,
                           planned_epochs(args, len(first)))
        train_set, batches = packs.dataset(), PackedBatches(collator, train_rows, family, packs)
        packing = f"{setup.packing}: {packs.summary(args.per_device_train_batch_size)}"
        log(packing)
    reports = [train_report]
    if eval_rows is not None:
        eval_rows, eval_report = prepare_split(recipe, collator, "eval", eval_rows, mixture)
        check_fit(eval_report, len(eval_rows), limit)
        reports.append(eval_report)
    eval_metrics, why = settle_eval_metrics(recipe, eval_rows)
    return RunData(train_rows, train_set, batches, packing, eval_rows, eval_split, reports, mixture, eval_metrics, why)
