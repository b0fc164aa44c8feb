"""Packed rows through linear-attention layers (Qwen3.5's Gated DeltaNet): each example's slice runs alone.

A linear-attention layer carries a causal-convolution state (kernel 4) and a recurrent state along the sequence, so
in a packed sequence each example would start from the state the example before it left. transformers' torch path
takes no sequence boundaries (the `cu_seqlens` it forwards reach only flash-linear-attention's and causal-conv1d's
CUDA kernels, and its torch fallbacks drop them), so here each such layer runs once per example of a packed batch.
The boundaries are read, by a hook on the model's forward, from the text positions a packed batch carries (they
restart at 0 for each example, sft/labels/packing.py); the layers never see the vision tower's inputs, and a batch
with an attention mask or no restart (any unpacked batch) runs the layers as they are.
"""

from __future__ import annotations

import torch


class Boundaries:
    """The packed examples' token offsets of the current forward ([0, ..., total]), or None."""

    def __init__(self):
        self.offsets: list[int] | None = None

    def read(self, module, args, kwargs) -> None:
        """Forward pre-hook of the model: the offsets of a packed batch's examples (batch of one, no mask)."""
        positions = kwargs.get("position_ids")
        self.offsets = None
        if positions is None or kwargs.get("attention_mask") is not None:
            return
        batch = positions.shape[1] if positions.dim() == 3 else positions.shape[0]
        if batch != 1:
            return
        text = positions[0, 0] if positions.dim() == 3 else positions[0]  # M-RoPE: (4, 1, tokens), row 0 the text's
        restarts = (torch.nonzero(text[1:] != text[:-1] + 1).flatten() + 1).tolist()
        if restarts:
            self.offsets = [0, *restarts, text.shape[0]]


def run_per_example(model, class_names: tuple[str, ...]) -> int:
    """Make every layer of `model` whose class is named in `class_names` run once per packed example; returns how
    many layers now do (0: none of that class)."""
    if getattr(model, "_sft_per_example_layers", None) is not None:  # once a model
        return model._sft_per_example_layers
    boundaries = Boundaries()
    wrapped = 0
    for module in model.modules():
        if type(module).__name__ in class_names:
            module.forward = _per_example(module.forward, boundaries)
            wrapped += 1
    if wrapped:
        model.register_forward_pre_hook(boundaries.read, with_kwargs=True)
    model._sft_per_example_layers = wrapped
    return wrapped


def _per_example(forward, boundaries: Boundaries):
    def each(hidden_states, *args, **kwargs):
        offsets = boundaries.offsets
        if offsets is None or hidden_states.shape[0] != 1 or hidden_states.shape[1] != offsets[-1] or \
                kwargs.get("cache") is not None:
            return forward(hidden_states, *args, **kwargs)
        return torch.cat([forward(hidden_states[:, start:end], *args, **kwargs)
                          for start, end in zip(offsets[:-1], offsets[1:])], dim=1)
    return each
