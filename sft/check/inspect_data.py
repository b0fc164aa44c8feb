"""`sft check` and `sft preview`: what every row becomes before any weights load."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from itertools import chain

from datasets import Dataset

from sft.config.recipe import Recipe
from sft.data.mixture import data_sources, load_mixture
from sft.data.rows import RowError, iter_rows
from sft.data.sources import Source
from sft.errors import UserError
from sft.family.image_budget import dropped_for_images, visual_summary
from sft.labels.collator import IGNORE_INDEX
from sft.labels.fit import measure, reasoning_note
from sft.labels.labelling import Labeller
from sft.labels.packing import EpochPacks, packing_mode
from sft.labels.template_inputs import row_context
from sft.labels.token_labels import token_kinds

GREEN, DIM, RESET = "\033[32m", "\033[2m", "\033[0m"
KIND_COLOURS = {"reasoning": "\033[35m", "call": "\033[33m", "tool_result": "\033[36m"}


def inspect_rows(recipe: Recipe, collator: Labeller, source: Source | str, limit: int | None = None,
                 with_labels: bool = True, label_limit: int | None = None) -> Iterator[tuple[dict, dict] | RowError]:
    """Each row of `source` (or a data file) measured (and, `with_labels`, encoded: only the first `label_limit`
    rows when given) as training will see it, or its error."""
    seen = 0
    for item in iter_rows(source, recipe.data.image_root, recipe.data.column_map):
        if limit is not None and seen >= limit:
            return
        seen += 1
        if isinstance(item, RowError):
            yield item
            continue
        try:
            fit = measure(item, collator, recipe.training.max_length, recipe.data.truncation)
            labelled = with_labels and (label_limit is None or seen <= label_limit)
            encoded = collator.encode({**item, "messages": fit["messages"], "objects": fit["objects"]}) \
                if labelled else None
        except UserError as exc:
            message = str(exc)
            prefix = f"{item['where']}: "
            yield RowError(item["where"], message[len(prefix):] if message.startswith(prefix) else message)
            continue
        yield item, {"fit": fit, "encoded": encoded}


def sources_of_split(recipe: Recipe, split: str) -> list[Source]:
    """The sources of one split (`train` or `eval`): one, or each entry's of a `datasets` mixture."""
    sources = [source for name, source in data_sources(recipe.data) if name == split]
    if not sources:
        raise UserError(f"the recipe has no {split} data (eval_file, dataset_test_split or a datasets test_split)")
    return sources


def mixture_lines(recipe: Recipe, statuses: dict[str, str], split: str = "train") -> list[str]:
    """For a `datasets` recipe, the lines training logs of the mixture, from rows measured here (`statuses`: each
    row's place -> ok/truncated/dropped): per entry, rows read, held out, in the mixture with the fraction or weight
    that sized it, kept and dropped. Empty for a single source."""
    if not recipe.data.datasets:
        return []
    mixture = load_mixture(recipe.data, recipe.training.seed)  # the same rows, sizes and seed as training
    rows = mixture.train if split == "train" else mixture.eval
    if rows is None:
        return []
    columns = rows.select_columns(["source", "where"]).to_dict()
    fits = [(source, statuses[where]) for source, where in zip(columns["source"], columns["where"])]
    kept = [(source, status) for source, status in fits if status != "dropped"]
    return mixture.fitted(split, Dataset.from_dict({"source": [source for source, _ in kept],
                                                    "status": [status for _, status in kept]}))


def check(recipe: Recipe, collator: Labeller, measured: dict | None = None) -> int:
    """Validate every row of every data source; print each problem and a summary. Returns the exit code.
    `measured` gets the train rows' longest kept length and most visual tokens (for the plan: sft.plan.estimate)."""
    failed, statuses, bad_rows = False, {}, 0
    for name, source in data_sources(recipe.data):  # a `datasets` mixture: each entry's split and test_split
        counts, errors, supervised, visual = Counter(), 0, 0, []
        max_length = recipe.training.max_length
        for result in inspect_rows(recipe, collator, source, with_labels=False):
            if isinstance(result, RowError):
                print(result, file=sys.stderr)
                errors += 1
                continue
            fit = result[1]["fit"]
            counts[fit["status"]] += 1
            counts["reasoning_rows"] += bool(fit["dropped_reasoning"])
            if recipe.data.datasets:
                statuses[result[0]["where"]] = fit["status"]
            counts["image_dropped"] += dropped_for_images(fit["status"], fit["length"], fit["image_tokens"], max_length)
            supervised += fit["supervised_tokens"]
            visual += [fit["image_tokens"]] if fit["image_count"] else []
            if measured is not None and name == "train" and fit["status"] != "dropped":
                measured["longest"] = max(measured.get("longest", 0), fit["length"])
                measured["visual_tokens"] = max(measured.get("visual_tokens", 0), fit["image_tokens"])
        total = sum(counts[status] for status in ("ok", "truncated", "dropped")) + errors
        bad_rows += errors
        image_dropped = counts["image_dropped"]
        print(f"{name} {source.name}: {total} rows, {counts['ok']} ok, {counts['truncated']} prompt-shortened, "
              f"{counts['dropped']} dropped ({counts['dropped'] - image_dropped} text too long for max_length "
              f"{max_length}; {image_dropped} dropped: image tokens, their text alone fits), "
              f"{errors} bad; {supervised} supervised tokens" + (f"; {visual_summary(visual)}" if visual else "")
              + reasoning_note(counts["reasoning_rows"]))
        dropped_share = counts["dropped"] / total if total else 0.0
        if errors or total == 0 or dropped_share > recipe.data.max_dropped_fraction:
            failed = True
    if recipe.data.datasets and not bad_rows:  # a bad row stops the mixture from loading (it is named above)
        for split in ("train", "eval"):
            for line in mixture_lines(recipe, statuses, split):
                print(f"mixture {line}")
    return 1 if failed else 0


def _coloured(collator: Labeller, ids: list[int], labels: list[int], kinds: list[str | None]) -> str:
    """Supervised tokens green (reasoning magenta, tool calls yellow), tool results cyan, the rest dim."""
    pieces = []
    for token, label, kind in zip(ids, labels, kinds):
        colour = KIND_COLOURS.get(kind) or (GREEN if label != IGNORE_INDEX else DIM)
        pieces.append(f"{colour}{collator.tokenizer.decode([token])}{RESET}")
    return "".join(pieces)


def kinds_of(collator: Labeller, encoded) -> list[str | None]:
    """Each token's kind in an encoded row: reasoning, tool call or tool result (sft/labels/token_labels.py
    token_kinds, from the segments of the rendering the row was encoded from)."""
    return token_kinds(collator.tokenizer, encoded.text, encoded.input_ids, encoded.segments)


def preview(recipe: Recipe, collator: Labeller, limit: int, as_json: bool, split: str = "train",
            colour: bool | None = None) -> int:
    """Show which tokens each row supervises: coloured text on a terminal, JSON lines with `as_json`."""
    sources = sources_of_split(recipe, split)  # a mixture: `limit` rows of each source
    colour = sys.stdout.isatty() if colour is None else colour
    bad, told_eos, kept = 0, False, []
    if not collator.completion_only_loss:
        print("note: completion_only_loss false: the whole conversation is supervised, except padding, image "
              "placeholders and each row's first token (nothing precedes it)", file=sys.stderr)
    for result in chain.from_iterable(inspect_rows(recipe, collator, source, limit) for source in sources):
        if isinstance(result, RowError):
            print(result, file=sys.stderr)
            bad += 1
            continue
        row, info = result
        encoded, fit = info["encoded"], info["fit"]
        if not told_eos and collator.inserts_eos(fit["messages"], row_context(row)):
            told_eos = True
            print(f"note: the chat template closes an assistant turn with no special token; the tokenizer's EOS "
                  f"{collator.tokenizer.eos_token!r} is inserted right after each reply and supervised",
                  file=sys.stderr)
        supervised_ids = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
        record = {"row": row["row"], "status": fit["status"], "prompt_tokens": encoded.prompt_tokens,
                  "supervised_tokens": encoded.supervised_tokens,
                  "supervised_text": collator.tokenizer.decode(supervised_ids, skip_special_tokens=False)}
        if len(sources) > 1:  # row numbers restart in each source of a mixture: say whose row it is
            record["where"] = row["where"]
        if fit["video_frames"]:  # a video row: the frames its clips gave and the tokens its images and clips took
            record |= {"video_frames": fit["video_frames"], "visual_tokens": fit["image_tokens"]}
        if fit["status"] != "dropped":
            kept.append({**record, "tokens": len(encoded.input_ids)})
        if as_json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"--- {row['where']} [{record['status']}] prompt {record['prompt_tokens']} tokens, "
                  f"supervised {record['supervised_tokens']}" + (f"; video {fit['video_frames']} frames, "
                                                                  f"{fit['image_tokens']} visual tokens"
                                                                  if fit["video_frames"] else ""))
            if colour:
                print(_coloured(collator, encoded.input_ids, encoded.labels, kinds_of(collator, encoded)))
            else:
                print(f"supervised: {record['supervised_text']!r}")
    if packing_mode(recipe.training) and kept:
        preview_packs(recipe, kept, as_json)
    return 1 if bad else 0


def preview_packs(recipe: Recipe, records: list[dict], as_json: bool) -> None:
    """How the shown rows would be packed (sft/labels/packing.py): which rows share a sequence, their tokens, and each
    one's supervised text (spans stay per example)."""
    mode = packing_mode(recipe.training)
    packs = EpochPacks([r["tokens"] for r in records], recipe.training.max_length, mode, recipe.training.seed, 1)
    if not as_json:
        print(f"--- {mode}: the {len(records)} rows shown in {len(packs)} sequences in the first epoch (max_length "
              f"{recipe.training.max_length}; packed afresh each epoch)")
    for number, item in enumerate(packs.epoch(0), start=1):
        members, length = item["pack"], item["length"]
        packed = [records[i] for i in members]
        entry = {"pack": number, "rows": [r["row"] for r in packed], "tokens": [r["tokens"] for r in packed],
                 "supervised_text": [r["supervised_text"] for r in packed]}
        if as_json:
            print(json.dumps(entry, ensure_ascii=False))
        else:
            print(f"pack {number}: rows {', '.join(map(str, entry['rows']))} ({' + '.join(map(str, entry['tokens']))}"
                  f" = {length} tokens); supervised: {' | '.join(repr(t) for t in entry['supervised_text'])}")
