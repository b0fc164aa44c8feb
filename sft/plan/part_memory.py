"""What each part's choice costs in memory, for `sft plan` (sft/plan/estimate.py): the trainable parameters of each
part, the state a `full` part adds, and the activations a trainable vision tower keeps. Estimates from the architecture
on the meta device, like the rest of the plan.

- `full` part: fp32 weights (the trainer keeps every trainable parameter in fp32: sft/run/trainer.py), fp32 gradients
  and AdamW's two fp32 moments — 16 bytes a parameter; beside LoRA the part is a PEFT modules_to_save copy, so the
  frozen original stays too;
- trainable vision tower (lora or full): its activations for each image of the micro-batch (34·h bytes a patch a
  layer without checkpointing, the layer input 2·h with it, as the language model's), one image a row; a frozen
  tower keeps none (nothing before it needs a gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sft.family.families import Family
from sft.family.parts import PARTS, Parts, parameter_counts, part_of

ASSUMED_IMAGE_PIXELS = 1024 * 1024  # an image's pixels when neither the config nor image_max_pixels bounds them


@dataclass
class PartCosts:
    params: dict[str, int]  # part -> parameters
    trainable: dict[str, int]  # part -> parameters that train (LoRA adapters for a lora part)
    full_state_bytes: float  # what the full parts add beyond their weights as loaded
    vision_patches: int  # patches an image the trainable vision tower keeps activations for (0: tower frozen)
    vision_layers: int
    vision_hidden: int
    why_patches: str = ""


def vision_patches(vision_config, image_max_pixels: int | None, visual_tokens: int | None = None) -> tuple[int, str]:
    """Patches the vision tower sees for one row, and where the figure comes from: a fixed-size tower's config;
    else (Qwen-VL) the most visual tokens a measured row has, each `spatial_merge_size`² patches; else
    image_max_pixels or an assumed image."""
    patch = getattr(vision_config, "patch_size", 14)
    size = getattr(vision_config, "image_size", None)
    if isinstance(size, int):
        tiles = getattr(vision_config, "max_num_tiles", 1) or 1
        return tiles * (size // patch) ** 2, f"{tiles} x {size}px tiles of {patch}px patches"
    merge = getattr(vision_config, "spatial_merge_size", None)
    if visual_tokens and merge:
        return visual_tokens * merge**2, (f"{visual_tokens} visual tokens (the most a measured row has) x "
                                          f"{merge * merge} patches each")
    pixels = image_max_pixels or ASSUMED_IMAGE_PIXELS
    why = "image_max_pixels" if image_max_pixels else "an assumed 1024 x 1024 image; set image_max_pixels"
    return pixels // patch**2, f"{pixels:,} px ({why}) in {patch}px patches"


def part_costs(model: torch.nn.Module, config, family: Family, parts: Parts, targets, lora_r: int,
               weight_bytes: float, image_max_pixels: int | None = None,
               visual_tokens: int | None = None) -> PartCosts:
    """The plan's figures for `parts` on the meta-device `model` (`targets`: LoRA's layers; `weight_bytes`: what a
    kept weight takes as loaded)."""
    params = parameter_counts(model, family)
    lora = dict.fromkeys(PARTS, 0)
    for name, layer in targets:
        lora[part_of(name, family)] += lora_r * (layer.in_features + layer.out_features)
    trainable = {part: params[part] if parts.choice(part) == "full" else lora[part] if parts.choice(part) == "lora"
                 else 0 for part in PARTS}
    full = sum(params[part] for part in parts.set_to("full"))
    state = full * (16 if parts.uses_peft else 16 - weight_bytes)
    vision = getattr(config, "vision_config", None)
    if vision is None or parts.vision_tower == "frozen":
        return PartCosts(params, trainable, state, 0, 0, 0)
    patches, why = vision_patches(vision, image_max_pixels, visual_tokens)
    layers = (getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", 0)) + (
        getattr(vision, "num_global_layers", 0) or 0)
    return PartCosts(params, trainable, state, patches, layers, vision.hidden_size, why)
