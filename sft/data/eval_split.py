"""`eval_split_size`: a fixed, seeded share of the training rows held out for evaluation.

A row is held out by the rank of sha256(seed, its position), not by a random generator's stream, so the same file
and seed give the same rows on every run, machine and library version (numpy and `datasets` keep no such promise for
their shuffles). The rows are chosen before any is measured against max_length, so changing max_length or the
model does not move rows between the splits.
"""

from __future__ import annotations

import hashlib

from datasets import Dataset

from sft.errors import UserError


def held_out_count(size: float, total: int, where: str) -> int:
    """Rows that `eval_split_size` asks for out of `total`: a share (rounded, at least 1) or a number."""
    count = max(1, round(size * total)) if size < 1 else int(size)
    if count >= total:
        raise UserError(f"{where}: eval_split_size {size:g} holds out {count} of {total} rows, leaving none to "
                        "train on")
    return count


def held_out_positions(total: int, count: int, seed: int) -> list[int]:
    """The `count` positions (0-based, ascending) out of `total` that seed `seed` holds out."""
    def rank(position: int) -> str:
        return hashlib.sha256(f"{seed}:{position}".encode()).hexdigest()

    return sorted(sorted(range(total), key=rank)[:count])


def split_rows(rows: Dataset, size: float, seed: int, where: str) -> tuple[Dataset, Dataset, dict]:
    """(training rows, eval rows, what the manifest records about the split)."""
    count = held_out_count(size, len(rows), where)
    held = held_out_positions(len(rows), count, seed)
    held_set = set(held)
    train = rows.select([i for i in range(len(rows)) if i not in held_set])
    evaluation = rows.select(held)
    record = {"from": where, "eval_split_size": size, "eval_split_seed": seed, "eval_rows": count,
              "train_rows": len(train), "row_numbers": [int(n) for n in evaluation["row"]]}
    return train, evaluation, record
