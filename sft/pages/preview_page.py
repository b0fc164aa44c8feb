"""`sft preview RECIPE --html PATH`: the labelled rows beside their images, as one self-contained HTML page.

Rows go through the same path as `sft check` and `sft preview` (sft/check/inspect_data.py: measured against max_length,
shortened or dropped, then encoded by the collator), so the highlighted tokens are exactly the ones training
supervises. The header counts every row of the split; the first `limit` rows are drawn, paged in the browser.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sft.check.inspect_data import inspect_rows, kinds_of, mixture_lines, sources_of_split
from sft.config.recipe import Recipe
from sft.data.rows import RowError
from sft.family.image_budget import dropped_for_images
from sft.labels.labelling import Labeller
from sft.labels.template_inputs import row_context
from sft.pages.html_page import render_page, write_page
from sft.pages.svg_charts import histogram
from sft.pages.thumbnails import row_pictures, thumbnails, with_boxes
from sft.pages.token_pieces import supervised_runs, token_runs

HTML_ROWS = 500  # rows drawn by default: ~1-5 MB for rows of a few hundred tokens with an image each (docs/pages.md)
PAGE_ROWS = 50  # rows a browser page shows at once
MAX_ERRORS_SHOWN = 50


def template_source(recipe: Recipe, collator: Labeller) -> dict:
    """Where the chat template the rows were rendered with came from, and its text."""
    family = collator.family
    if not getattr(collator, "needs_chat_template", True):
        return {"where": f"none: {family.name} rows go through its processor's prefix/suffix call", "text": None}
    text = getattr(collator.processing_class, "chat_template", None) or collator.tokenizer.chat_template
    model = recipe.model.model_name_or_path
    if recipe.training.chat_template_path:
        where = f"chat_template_path {recipe.training.chat_template_path}"
    else:
        files = [Path(model, name) for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")]
        where = next((f"the checkpoint's {file}" for file in files if file.is_file()), f"the checkpoint's ({model})")
    return {"where": where, "text": text if isinstance(text, str) else str(text)}


def closing_token(collator: Labeller, first: tuple[list[dict], dict] | None) -> str:
    """What closes each supervised reply, as the label contract places it (`first`: the first row's messages and
    template context)."""
    if first is not None and collator.inserts_eos(*first):
        return (f"{collator.tokenizer.eos_token} (the tokenizer's EOS, inserted after each reply: the template "
                "closes the turn with no special token)")
    if not getattr(collator, "needs_chat_template", True):
        return f"{collator.tokenizer.eos_token} (the processor appends it to the answer)"
    return collator.family.closing or "the template's own (no closing token in the family table)"


def fit_reason(fit: dict, max_length: int | None) -> str | None:
    """Why a row was dropped or shortened, in the words `sft check` uses; None for a row that fits."""
    if fit["status"] == "truncated":
        return f"prompt shortened to fit max_length {max_length} (truncation: shorten_prompt)"
    if fit["status"] != "dropped":
        return None
    if dropped_for_images(fit["status"], fit["length"], fit["image_tokens"], max_length):
        return f"dropped: image tokens (its text alone fits max_length {max_length})"
    return f"dropped: text too long for max_length {max_length}"


def boxed_thumbnails(collator: Labeller, row: dict) -> dict:
    """The row's thumbnails, a grounding row's boxes drawn on them."""
    pictures = row_pictures(collator, row)
    drawn = thumbnails(pictures)
    return {**drawn, "shown": with_boxes(drawn["shown"], pictures, row.get("objects"))}


def row_view(collator: Labeller, row: dict, fit: dict, encoded, reason: str | None) -> dict:
    """What the page draws of one row: its place, status, counts, pictures and tokens."""
    return {"where": row["where"], "row": row["row"], "status": fit["status"], "reason": reason,
            "length": len(encoded.input_ids), "prompt_tokens": encoded.prompt_tokens,
            "supervised_tokens": encoded.supervised_tokens, "spans": len(supervised_runs(encoded.labels)),
            "pictures": boxed_thumbnails(collator, row),
            "runs": token_runs(collator.tokenizer, encoded.input_ids, encoded.labels, kinds_of(collator, encoded))}


def preview_page(recipe: Recipe, collator: Labeller, limit: int | None = None, split: str = "train") -> dict:
    """The page's content: header facts over every row of the split, and the first `limit` rows drawn."""
    limit = HTML_ROWS if limit is None else limit
    max_length = recipe.training.max_length
    sources = sources_of_split(recipe, split)
    counts, reasons, lengths, errors, rows, first_messages, statuses = Counter(), Counter(), [], [], [], None, {}
    for source in sources:
        for result in inspect_rows(recipe, collator, source, label_limit=max(0, limit - counts["seen"])):
            counts["seen"] += 1
            if isinstance(result, RowError):
                counts["bad"] += 1
                errors.append(str(result))
                continue
            row, info = result
            fit = info["fit"]
            if recipe.data.datasets:  # each row's fit, for the mixture's counts
                statuses[row["where"]] = fit["status"]
            first_messages = first_messages or (fit["messages"], row_context(row))
            counts[fit["status"]] += 1
            counts["supervised"] += fit["supervised_tokens"]
            lengths.append(fit["length"])
            reason = fit_reason(fit, max_length)
            reasons[reason] += bool(reason)
            if info["encoded"] is not None:
                rows.append(row_view(collator, row, fit, info["encoded"], reason))
    return {"title": f"{Path(recipe.path).stem if recipe.path else 'recipe'}: {split} rows",
            "recipe": str(recipe.path) if recipe.path else None, "split": split,
            "sources": [source.name for source in sources], "family": collator.family,
            "mixture": mixture_lines(recipe, statuses, split) if recipe.data.datasets and not counts["bad"] else [],
            "template": template_source(recipe, collator), "closing": closing_token(collator, first_messages),
            "completion_only_loss": collator.completion_only_loss, "max_length": max_length,
            "counts": counts, "reasons": [(reason, n) for reason, n in reasons.most_common() if reason],
            "errors": errors[:MAX_ERRORS_SHOWN], "more_errors": max(0, len(errors) - MAX_ERRORS_SHOWN),
            "histogram": histogram(lengths, max_length), "rows": rows, "page_rows": PAGE_ROWS,
            "kinds": sorted({run["kind"] for r in rows for run in r["runs"] if run["kind"]})}


def write_preview_page(recipe: Recipe, collator: Labeller, path: str | Path, limit: int | None = None,
                       split: str = "train") -> tuple[Path, dict]:
    """Write the page to `path`; returns it and the page's counts (`bad`: rows that could not be read)."""
    content = preview_page(recipe, collator, limit, split)
    return write_page(path, render_page("preview.html", "preview.js", **content)), content["counts"]
