"""Packing (`packing: true`) and padding-free batches (`padding_free: true`), with TRL's meanings, for image rows
and text rows alike.

Rows are measured before training (sft.labels.fit.fit_to_length writes each row's `length` after image expansion).
`packing` groups them into packs of at most `max_length` tokens with TRL's best-fit-decreasing binning (a row is
never split); `padding_free` leaves each row its own pack. Either way a micro-batch goes through the family's
labeller as one processor call (so every image tensor is what an unpacked batch gets), then its rows are laid end to
end in one sequence without padding: no attention_mask, and position_ids restarting at 0 for each example, from
which transformers builds a block-diagonal causal mask (masking_utils.find_packed_sequence_indices). How a family
reads those positions is its table field `packing`: `positions` (1-D), `mrope` (Qwen's text row plus the three
M-RoPE rows from the model's get_rope_index), or none (refused before weights load, with the table's reason).

TRL's own packing cannot be used here: it packs tokenized text only and refuses a custom collator when padding-free
(trl 1.16.0: "Passing a custom data collator is not supported when using padding-free"), so the recipe keys are
read here and turned off before SFTTrainer sees them.
"""

from __future__ import annotations

import inspect

import torch
from datasets import Dataset, are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from trl.data_utils import pack_dataset

from sft.errors import UserError
from sft.family.families import Family
from sft.labels.token_labels import IGNORE_INDEX

# Tensors with one entry per token: concatenated without their padding. Every other tensor (pixel values, image
# grids and sizes) is per image and already in row order.
PER_TOKEN = ("input_ids", "labels", "token_type_ids", "mm_token_type_ids")


def packing_mode(args) -> str | None:
    """`packing`, `padding_free` or None, from TRL's keys on the recipe's SFTConfig."""
    return "packing" if args.packing else "padding_free" if args.padding_free else None


def refuse_unpackable(family: Family, args, image_rows: int = 0) -> None:
    """One line before weights load when the family cannot train packed rows exactly (or not with `image_rows`
    rows holding images), or the strategy is not one that keeps rows whole."""
    mode = packing_mode(args)
    if mode is None:
        return
    if family.packing is None:
        raise UserError(f"{mode}: not exact for family {family.name}: {family.packing_refusal}; train without it")
    if image_rows and not family.packing_images:
        raise UserError(f"{mode}: not exact for family {family.name} on rows with images ({image_rows} here): "
                        f"{family.packing_refusal}; train without it (text rows alone pack exactly)")
    if not args.max_length:
        raise UserError(f"{mode}: needs max_length (the tokens a row may have, and a packed sequence per row)")
    if args.packing and args.packing_strategy != "bfd":
        raise UserError(f"packing_strategy {args.packing_strategy!r}: only 'bfd' keeps every row whole (a "
                        "completion or an image is never cut); set packing_strategy: bfd")
    tokens = args.per_device_train_batch_size * (args.max_length or 0)
    if family.packing_max_tokens and tokens > family.packing_max_tokens:
        raise UserError(f"{mode}: family {family.name} is exact only up to {family.packing_max_tokens} tokens a "
                        f"sequence; per_device_train_batch_size x max_length is {tokens}; lower either")


def pack_rows(rows: Dataset, max_length: int, mode: str) -> Dataset:
    """The training set as packs: `pack` (indices into `rows`) and `length` (their tokens), by TRL's BFD binning
    for `packing`, one row each for `padding_free`."""
    lengths = rows["length"]
    if mode == "padding_free":
        return Dataset.from_dict({"pack": [[i] for i in range(len(rows))], "length": lengths})
    # TRL's pack_dataset bins list columns by their length: a list of a row's index, as long as the row, comes out
    # of a bin as the indices of its rows in order.
    spans = Dataset.from_dict({"members": [[i] * n for i, n in enumerate(lengths)]})
    shown = not are_progress_bars_disabled()
    disable_progress_bars()  # binning takes milliseconds; its progress bar would only add a line to the log
    try:
        packed = pack_dataset(spans, max_length, "bfd")
    finally:
        if shown:
            enable_progress_bars()
    packs = [list(dict.fromkeys(members)) for members in packed["members"]]
    return Dataset.from_dict({"pack": packs, "length": [sum(n) for n in packed["seq_lengths"]]})


def pack_summary(packs: Dataset, batch: int) -> str:
    """Rows and tokens a step holds on average (the run log and the manifest say it)."""
    rows, tokens = sum(len(pack) for pack in packs["pack"]), sum(packs["length"])
    per_batch = min(batch, len(packs)) / len(packs)  # the share of all packs one micro-batch holds
    return (f"{rows} rows in {len(packs)} sequences; a micro-batch of {batch} holds {rows * per_batch:.1f} rows and "
            f"{tokens * per_batch:.0f} tokens on average")


class PackedBatches:
    """The training collator with packing: items that are packs are laid end to end; plain rows (evaluation) go
    through the labeller unchanged."""

    def __init__(self, labeller, rows: Dataset, family: Family):
        self.labeller, self.rows, self.family = labeller, rows, family
        self.rope_index = None  # set to the model's get_rope_index for an `mrope` family once it is loaded

    def __getattr__(self, name):  # the Labeller interface (generation, previews) is the labeller's
        if name == "labeller":  # not set yet (unpickling in a dataloader worker)
            raise AttributeError(name)
        return getattr(self.labeller, name)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if "pack" not in examples[0]:
            return self.labeller(examples)
        columns = self.rows[[i for example in examples for i in example["pack"]]]  # one Arrow read for all rows
        # Text rows placed when measured batch from their stored ids (the labeller's from_row_ids), others render.
        return self.concatenate(self.labeller([dict(zip(columns, values)) for values in zip(*columns.values())]))

    def concatenate(self, batch) -> dict[str, torch.Tensor]:
        """The padded batch as one sequence: per-token tensors without padding, per-example position ids."""
        mask = batch["attention_mask"].bool()
        size = tuple(batch["input_ids"].shape)
        out = {}
        for key, value in batch.items():
            if key == "attention_mask":
                continue
            if key in PER_TOKEN:
                out[key] = value[mask].unsqueeze(0)
            elif torch.is_tensor(value) and tuple(value.shape[:2]) == size:
                raise UserError(f"{self.family.name}: the processor's {key} has one entry per token and no rule "
                                "for packing it; train without packing")
            else:
                out[key] = value
        lengths = mask.sum(dim=1).tolist()
        starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
        if (out["labels"][0, starts] != IGNORE_INDEX).any():  # the contract guarantees it; else learnt across rows
            raise UserError("a row's first token is supervised; it cannot be packed after another row")
        # transformers builds the block-diagonal mask only without a KV cache; a model whose config has use_cache on
        # would make one in its forward and then attend across examples.
        out["use_cache"] = False
        text_positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
        out["position_ids"] = text_positions if self.family.packing != "mrope" else \
            torch.cat([text_positions.unsqueeze(0), self.mrope_positions(batch, mask)], dim=0)  # text row + M-RoPE's
        return out

    def mrope_positions(self, batch, mask) -> torch.Tensor:
        """Qwen's three M-RoPE rows for each example (the model's own get_rope_index on the padded batch, where every
        row starts at 0), without the padding: shape (3, 1, tokens)."""
        if self.rope_index is None:
            raise UserError(f"{self.family.name}: packed rows need the model's get_rope_index; none was set")
        wanted = inspect.signature(self.rope_index).parameters
        kwargs = {key: value for key, value in batch.items() if key in wanted}
        positions, _ = self.rope_index(**kwargs)
        return positions[:, mask].unsqueeze(1)
