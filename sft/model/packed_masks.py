"""Packed rows for models whose image tokens attend to each other both ways (Gemma 3, Gemma 4): their attention
masks built here, in real token indices.

transformers builds a packed batch's masks from its restarting positions, but evaluates the image-block overlay
(`blockwise_overlay`) and the sliding window at positions it remapped per example, so from the second example on an
image block is looked up at the first example's indices: that example's image loses its bidirectional attention and
its text may see later tokens. Here every piece is laid over real token indices, as the family's own
`create_masks_for_vision_model` composes them for one row:

    same example  AND  (causal  OR  same image block)          full-attention layers (Gemma 3)
    same example  AND  causal                                   full-attention layers (Gemma 4)
    same example  AND  window  AND  (causal  OR  same block)    sliding-window layers

(window: the key at most `sliding_window - 1` tokens before the query), and handed to the model as its mask mapping
(`{"full_attention": ..., "sliding_attention": ...}`, which its forward takes as it is), by a hook on the model's
forward that sees the packed batch's positions and token types. A batch with an attention mask (any unpacked batch)
is left to the model.
"""

from __future__ import annotations

import torch

from sft.errors import UserError
from sft.family.families import Family


def image_blocks(types: torch.Tensor, image_types: tuple[int, ...]) -> torch.Tensor:
    """Each token's image block (a number per run of image tokens), -1 for other tokens: the family's
    get_block_sequence_ids_for_mask, on one sequence."""
    is_image = torch.isin(types, torch.tensor(image_types, device=types.device))
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:-1]
    return torch.where(is_image, torch.cumsum(starts.int(), 0) - 1, -1)


def packed_masks(positions: torch.Tensor, blocks: torch.Tensor | None, window: int | None,
                 full_blocks: bool) -> dict[str, torch.Tensor]:
    """Boolean masks (1, 1, tokens, tokens), True where a query may attend to a key."""
    index = torch.arange(positions.shape[0], device=positions.device)
    example = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long, device=positions.device),
                                      (positions[1:] != positions[:-1] + 1).long()]), 0)
    same = example[:, None] == example[None, :]
    causal = index[None, :] <= index[:, None]
    both_ways = causal if blocks is None else causal | ((blocks[:, None] == blocks[None, :]) & (blocks[:, None] >= 0))
    full = same & (both_ways if full_blocks else causal)
    sliding = same & both_ways & (index[None, :] > index[:, None] - window) if window else full
    return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}


def build_masks_when_packed(model, family: Family) -> None:
    """Give `model` the masks above on every packed batch (a forward pre-hook); refused in one line for an attention
    implementation that takes no mask (flash attention drops the image blocks anyway)."""
    if getattr(model, "_sft_packed_masks", False):  # once a model
        return
    config = model.config.get_text_config()
    implementation = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if implementation not in ("sdpa", "eager"):
        raise UserError(f"packing: family {family.name} needs its image-block masks, which attention "
                        f"{implementation!r} does not take; set attn_implementation: sdpa (or eager)")
    blocks_on = family.packing_blocks.bidirectional(config)

    def hook(module, args, kwargs):
        positions, types = kwargs.get("position_ids"), kwargs.get(family.packing_blocks.type_ids)
        if positions is None or kwargs.get("attention_mask") is not None or positions.shape[0] != 1:
            return None
        blocks = image_blocks(types[0], family.packing_blocks.image_types) if blocks_on and types is not None \
            else None
        masks = packed_masks(positions[0], blocks, getattr(config, "sliding_window", None),
                             family.packing_blocks.full_layers)
        if implementation == "eager":  # an additive mask: 0 where allowed, the dtype's minimum elsewhere
            dtype = getattr(module, "dtype", torch.float32)  # the first floating parameter's (not an int8 weight)
            masks = {name: torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min) for name, mask in masks.items()}
        return args, {**kwargs, "attention_mask": masks}

    model.register_forward_pre_hook(hook, with_kwargs=True)
    model._sft_packed_masks = True
