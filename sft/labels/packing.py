"""Packing (`packing: true`) and padding-free batches (`padding_free: true`), with TRL's meanings, for image rows
and text rows alike.

Rows are measured before training (sft.labels.fit.fit_to_length writes each row's `length` after image expansion).
`packing` groups them into packs of at most `max_length` tokens (a row is never split), afresh every epoch: best fit
in an order shuffled by the seed and the epoch (`EpochPacks`), so that a pack is not a bucket of equal-length rows
and the same packs do not come back every epoch (TRL's best-fit-decreasing made both, and a packed run learnt
worse); `padding_free` leaves each row its own pack. Either way a micro-batch goes through the family's
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

import bisect
import inspect
import math
import random

import torch
from datasets import Dataset

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
                        "completion or an image is never cut); set packing_strategy: bfd (the toolkit packs whole "
                        "rows by best fit in a shuffled order, afresh each epoch)")
    tokens = args.per_device_train_batch_size * (args.max_length or 0)
    if family.packing_max_tokens and tokens > family.packing_max_tokens:
        raise UserError(f"{mode}: family {family.name} is exact only up to {family.packing_max_tokens} tokens a "
                        f"sequence; per_device_train_batch_size x max_length is {tokens}; lower either")


def best_fit(order: list[int], lengths: list[int], max_length: int) -> list[list[int]]:
    """Rows taken in `order`, each into the open pack it fills best (the least room left that still holds it), a new
    pack when none does. In a shuffled order a pack holds rows of every length as they come, where best-fit
    *decreasing* (TRL's `bfd`) sorts them first and so packs equal lengths, often equal answers, together."""
    rooms: list[tuple[int, int]] = []  # (room left, pack), sorted
    packs: list[list[int]] = []
    for row in order:
        at = bisect.bisect_left(rooms, (lengths[row], -1))
        if at == len(rooms):
            packs.append([row])
            bisect.insort(rooms, (max_length - lengths[row], len(packs) - 1))
        else:
            room, pack = rooms.pop(at)
            packs[pack].append(row)
            bisect.insort(rooms, (room - lengths[row], pack))
    return packs


class EpochPacks:
    """The training set as packs made afresh every epoch: the rows in an order shuffled by the seed and the epoch,
    each epoch's packs by `best_fit` (`padding_free`: one row each). Every epoch has the same number of packs (that
    of the epoch that needs most; another splits its fullest packs to match), so Trainer's steps an epoch stay put.
    `dataset()` holds every planned epoch's packs, epoch after epoch (SFTTrainer takes only a `datasets` Dataset);
    `EpochSampler` asks for one epoch's, so the packs depend on the seed and the epoch only, and a resumed run packs
    as the interrupted one did."""

    def __init__(self, lengths: list[int], max_length: int, mode: str, seed: int, epochs: int):
        self.lengths, self.max_length, self.mode, self.seed = list(lengths), max_length, mode, seed
        epochs = 1 if mode == "padding_free" else max(1, epochs)  # a row a pack: every epoch's are the same
        made = [self.packed(epoch) for epoch in range(epochs)]
        self.size = max(len(packs) for packs in made)
        self.by_epoch = [self.evened(packs) for packs in made]

    def packed(self, epoch: int) -> list[list[int]]:
        if self.mode == "padding_free":
            return [[row] for row in range(len(self.lengths))]
        order = list(range(len(self.lengths)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return best_fit(order, self.lengths, self.max_length)

    def evened(self, packs: list[list[int]]) -> list[list[int]]:
        """`packs` split until there are `self.size`: the one holding most rows, in two halves, each time."""
        packs = list(packs)
        while len(packs) < self.size:
            fullest = max(range(len(packs)), key=lambda k: len(packs[k]))
            half = len(packs[fullest]) // 2
            packs[fullest:fullest + 1] = [packs[fullest][:half], packs[fullest][half:]]
        return packs

    def __len__(self) -> int:
        return self.size

    def epoch(self, epoch: int) -> list[dict]:
        """The epoch's packs (past the planned epochs: theirs again, in turn), each with its tokens."""
        return [{"pack": members, "length": sum(self.lengths[row] for row in members)}
                for members in self.by_epoch[epoch % len(self.by_epoch)]]

    def dataset(self) -> Dataset:
        """Every planned epoch's packs in one `datasets` Dataset: row `epoch * len(self) + k` is pack k."""
        items = [item for epoch in range(len(self.by_epoch)) for item in self.epoch(epoch)]
        return Dataset.from_dict({"pack": [item["pack"] for item in items],
                                  "length": [item["length"] for item in items]})

    def summary(self, batch: int) -> str:
        """Rows and tokens a step holds on average, and how full the packs are (the run log and manifest say it)."""
        tokens, rows = sum(self.lengths), len(self.lengths)
        per_batch = min(batch, self.size) / self.size  # the share of all packs one micro-batch holds
        fill = f"; packs {tokens / (self.size * self.max_length):.1%} full" if self.mode == "packing" else ""
        return (f"{rows} rows in {self.size} sequences, packed afresh each epoch; a micro-batch of {batch} holds "
                f"{rows * per_batch:.1f} rows and {tokens * per_batch:.0f} tokens on average{fill}")


def planned_epochs(args, packs: int) -> int:
    """The epochs a run goes through: num_train_epochs, or as many as max_steps needs (one more for rounding)."""
    if args.max_steps and args.max_steps > 0:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        return -(-args.max_steps * per_step // max(1, packs)) + 1
    return max(1, math.ceil(args.num_train_epochs))


class EpochSampler(torch.utils.data.Sampler):
    """The rows of `EpochPacks.dataset()` that hold the epoch's packs, in an order shuffled by the seed and the epoch
    (Trainer calls `set_epoch`)."""

    def __init__(self, packs: EpochPacks, seed: int):
        self.size, self.epochs, self.seed, self.epoch = len(packs), len(packs.by_epoch), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        first = (self.epoch % self.epochs) * self.size
        return iter([first + k for k in torch.randperm(self.size, generator=generator).tolist()])


class PackedBatches:
    """The training collator with packing: items that are packs are laid end to end; plain rows (evaluation) go
    through the labeller unchanged."""

    def __init__(self, labeller, rows: Dataset, family: Family, packs: EpochPacks | None = None):
        self.labeller, self.rows, self.family = labeller, rows, family
        self.packs = packs  # the packs of each epoch (the trainer's sampler asks for one epoch's)
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
