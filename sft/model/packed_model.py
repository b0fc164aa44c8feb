"""A model made ready for packed batches, as its family's table entry says (sft/labels/packing.py lays the rows out):
Qwen's M-RoPE positions from the model's own get_rope_index, Gemma's image-block masks built in real token indices
(sft/model/packed_masks.py), and Qwen3.5's linear-attention layers run once per example
(sft/model/linear_attention.py). Training and the exactness tests ready a model through this one function."""

from __future__ import annotations

from sft.labels.packing import PackedBatches
from sft.model.linear_attention import run_per_example
from sft.model.packed_masks import build_masks_when_packed


def ready_for_packing(model, batches: PackedBatches) -> str | None:
    """Ready `model` for `batches` (whose family decides what is needed); a line for the run log, or None."""
    family = batches.family
    if family.packing == "mrope":
        batches.rope_index = model.model.get_rope_index  # Qwen's M-RoPE positions of each packed example
    if family.packing_blocks:  # Gemma's image blocks: the packed masks in real token indices
        build_masks_when_packed(model, family)
    if family.linear_attention:  # Qwen3.5's Gated DeltaNet: each packed example through it alone
        return (f"packed examples run one at a time through {run_per_example(model, family.linear_attention)} "
                "linear-attention layers")
    return None
