"""Checks every family's tests run the same way: a row too long for max_length, and one training step."""

from __future__ import annotations

import pytest
import torch

from sft.dataset import measure
from sft.errors import UserError
from sft.families import Family
from sft.labelling import make_collator


def fit_too_long_row(processor, row: dict, family: Family | None = None):
    """The batch of `row` once its prompt is shortened to fit a max_length 40 tokens under its length; on the way,
    the row is dropped by `drop`, and refused in one line naming it when it reaches the collator unshortened."""
    collator = make_collator(processor, family)
    max_length = len(collator.encode(row).input_ids) - 40
    assert measure(row, collator, max_length, "drop")["status"] == "dropped"
    shortened = measure(row, collator, max_length, "shorten_prompt")
    assert shortened["status"] == "truncated" and shortened["length"] <= max_length
    fitted = make_collator(processor, family, max_length=max_length)
    batch = fitted([{**row, "messages": shortened["messages"]}])
    assert batch["input_ids"].shape[1] <= max_length
    with pytest.raises(UserError) as refused:
        fitted([row])
    message = str(refused.value)
    assert message.startswith(f"{row['where']}: ") and "exceed max_length" in message and "\n" not in message
    return batch


def step_gradients(model, batch) -> dict[str, float]:
    """One forward and backward pass: the loss and every gradient finite; each parameter's gradient size by name."""
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads.values())
    sizes = {name: float(g.abs().sum()) for name, g in grads.items()}
    model.zero_grad()
    return sizes
