"""Image budgets: the recipe's `image_max_pixels` / `image_min_pixels` set on the family's own processor setting.

A budget bounds the resized image: the canvas the processor scales an image to before it cuts it into patches or
tiles (the global or thumbnail tile that SmolVLM, InternVL, Llama 4 and Phi-4 add beside several tiles is not
counted). The family table's `image_budget` field names the setting (IMAGE_BUDGETS below); a family whose processor
makes every image one fixed size, or the generic family, refuses the keys in one line. It is set on the processor
when it loads, before any weights: the collator, `sft preview`, generation and the processor saved with the run
(so `sft predict` and the exported processor) all resize the same way. A budget never raises a setting above the
checkpoint's own (except image_min_pixels, whose purpose that is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sft.errors import UserError
from sft.family.families import Family

# transformers 5.23's Gemma4ImageProcessor accepts only these max_soft_tokens values (it raises on any other).
GEMMA4_SOFT_TOKENS = (70, 140, 280, 560, 1120)


@dataclass(frozen=True)
class ImageBudget:
    """The recipe's image_min_pixels / image_max_pixels (None: the processor's own setting)."""

    min_pixels: int | None = None
    max_pixels: int | None = None

    def __bool__(self) -> bool:
        return self.min_pixels is not None or self.max_pixels is not None

    @property
    def key(self) -> str:
        """The recipe key a refusal names: the one that is set (image_max_pixels when both are)."""
        return "image_max_pixels" if self.max_pixels is not None else "image_min_pixels"


def _min_refused(budget: ImageBudget, why: str) -> None:
    if budget.min_pixels is not None:
        raise UserError(f"image_min_pixels: {why}; only image_max_pixels applies to it")


def _edge_of(pixels: int, unit: int) -> int:
    """The longest edge of a square canvas of at most `pixels`, rounded down to a multiple of `unit`."""
    return math.isqrt(pixels) // unit * unit


# What a pixel setter bounds, for its refusals: the recipe key's prefix, the processor, what one item is. The same
# setters serve a video's frames (sft/family/video_budget.py), with the recipe's video_max_pixels.
KINDS = {"image": ("image", "processor", "image"), "video": ("video", "video processor", "frame")}


def pixels(ip, budget: ImageBudget, name: str, kind: str = "image") -> None:
    """Qwen-VL: size = {shortest_edge: min_pixels, longest_edge: max_pixels}, pixel counts that smart_resize keeps the
    image between, in multiples of patch_size x merge_size."""
    from transformers.image_utils import SizeDict

    key, processor, item = KINDS[kind]
    unit = ip.patch_size * ip.merge_size
    low, high = ip.size["shortest_edge"], ip.size["longest_edge"]
    if budget.max_pixels is not None:
        if budget.max_pixels < unit * unit:
            raise UserError(f"{key}_max_pixels {budget.max_pixels} is below one merged patch of {name}'s {processor} "
                            f"({unit}x{unit} = {unit * unit} px), the smallest {item} it makes")
        high = min(high, budget.max_pixels)
        low = min(low, high)  # smart_resize scales a small image up to min_pixels: the budget wins over it
    if budget.min_pixels is not None:
        low = budget.min_pixels
        if low > high:
            raise UserError(f"image_min_pixels {low} is above the largest image of {name}'s processor ({high} px, "
                            "image_max_pixels or its own max_pixels)")
    ip.size = SizeDict(shortest_edge=low, longest_edge=high)


def _longest_edge(ip, budget: ImageBudget, name: str, unit: int) -> int:
    edge = _edge_of(budget.max_pixels, unit)
    if edge < unit:
        raise UserError(f"image_max_pixels {budget.max_pixels} is below the smallest image {name}'s processor "
                        f"makes ({unit}x{unit} = {unit * unit} px)")
    return min(edge, ip.size["longest_edge"])


def _pixtral(ip, budget: ImageBudget, name: str) -> None:
    """Pixtral (Mistral 3): size.longest_edge, which it scales larger images down to (patch multiples)."""
    from transformers.image_utils import SizeDict

    _min_refused(budget, f"{name}'s processor never scales an image up")
    if budget.max_pixels is not None:
        patch = ip.patch_size["height"] if hasattr(ip.patch_size, "__getitem__") else ip.patch_size
        ip.size = SizeDict(longest_edge=_longest_edge(ip, budget, name, patch))


def _tiled_longest_edge(ip, budget: ImageBudget, name: str) -> None:
    """SmolVLM (Idefics3): size.longest_edge, which every image is scaled to (up or down), then rounded up to whole
    tiles of max_image_size; the edge is a multiple of the tile, so a square canvas stays within the budget."""
    from transformers.image_utils import SizeDict

    _min_refused(budget, f"{name}'s processor already scales every image to its longest_edge")
    if budget.max_pixels is not None:
        ip.size = SizeDict(longest_edge=_longest_edge(ip, budget, name, ip.max_image_size["longest_edge"]))


def _pinpoints(ip, budget: ImageBudget, name: str) -> None:
    """LLaVA-NeXT / OneVision: image_grid_pinpoints, the canvases ([height, width]) an image is fitted to; those
    outside the budget are dropped (the model's config follows, match_model_to_processor)."""
    pinpoints = [list(p) for p in ip.image_grid_pinpoints]
    kept = [p for p in pinpoints if (budget.max_pixels is None or p[0] * p[1] <= budget.max_pixels)
            and (budget.min_pixels is None or p[0] * p[1] >= budget.min_pixels)]
    if not kept:
        bounds = " and ".join(f"{key} {value}" for key, value in (("image_min_pixels", budget.min_pixels),
                                                                   ("image_max_pixels", budget.max_pixels)) if value)
        sizes = ", ".join(f"{h}x{w}" for h, w in pinpoints)
        raise UserError(f"{budget.key}: no grid resolution of {name}'s processor fits {bounds} (its grids: {sizes})")
    ip.image_grid_pinpoints = kept


def _tiles(ip, budget: ImageBudget, name: str, setting: str) -> None:
    """InternVL (max_patches, min_patches), Llama 4 (max_patches), Phi-4 (dynamic_hd): how many tiles of `size` an
    image is cut into; the tiles run independently through the vision tower, so the count is free to change."""
    if getattr(ip, "crop_to_patches", True) is False:  # InternVL without tiling: every image is one tile
        return _fixed_size(ip, budget, name)
    tile = ip.size["height"] * ip.size["width"]
    tile_name = f"{ip.size['height']}x{ip.size['width']}"
    most = getattr(ip, setting)
    if budget.max_pixels is not None:
        most = min(most, budget.max_pixels // tile)
        if most < 1:
            raise UserError(f"image_max_pixels {budget.max_pixels} is below one {tile_name} tile ({tile} px), the "
                            f"smallest image {name}'s processor makes")
        setattr(ip, setting, most)
    if budget.min_pixels is not None:
        if not hasattr(ip, "min_patches"):
            _min_refused(budget, f"{name}'s processor has no least number of tiles")
        least = max(1, math.ceil(budget.min_pixels / tile))
        if least > most:
            raise UserError(f"image_min_pixels {budget.min_pixels} needs {least} {tile_name} tiles, more than the "
                            f"{most} that {name}'s processor allows ({setting})")
        ip.min_patches = least


def soft_tokens(ip, budget: ImageBudget, name: str, kind: str = "image") -> None:
    """Gemma 4: max_soft_tokens, one of GEMMA4_SOFT_TOKENS; the image is scaled (up or down) to at most that many
    pooled patches of (patch_size x pooling_kernel_size)^2 px."""
    _min_refused(budget, f"{name}'s processor already scales every image up to its max_soft_tokens")
    if budget.max_pixels is not None:
        key, processor, item = KINDS[kind]
        per_token = (ip.patch_size * ip.pooling_kernel_size) ** 2
        fitting = [n for n in GEMMA4_SOFT_TOKENS if n * per_token <= budget.max_pixels and n <= ip.max_soft_tokens]
        if not fitting:
            raise UserError(f"{key}_max_pixels {budget.max_pixels} is below the smallest {item} {name}'s {processor} "
                            f"makes ({GEMMA4_SOFT_TOKENS[0]} soft tokens of {per_token} px)")
        ip.max_soft_tokens = fitting[-1]


def _fixed_size(ip, budget: ImageBudget, name: str) -> None:
    size = ip.crop_size if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None) else ip.size
    raise UserError(f"{budget.key}: {name}'s processor makes every image {size['height']}x{size['width']} px, the one "
                    "size its vision tower's position embeddings were trained for, so no setting changes its image "
                    "tokens; remove the key")


def _fixed_tiles(ip, budget: ImageBudget, name: str) -> None:
    tiles = ip.max_image_tiles
    raise UserError(f"{budget.key}: {name}'s processor cuts every image into {ip.size['height']}x{ip.size['width']} "
                    f"tiles, at most {tiles} (max_image_tiles), and its model's aspect-ratio embeddings are indexed by "
                    f"the tilings of exactly {tiles} tiles (vision_config.max_num_tiles), so neither can change; "
                    "remove the key")


SETTERS = {
    "pixels": pixels, "longest_edge": _pixtral, "tiled_longest_edge": _tiled_longest_edge, "pinpoints": _pinpoints,
    "max_patches": lambda ip, budget, name: _tiles(ip, budget, name, "max_patches"),
    "dynamic_hd": lambda ip, budget, name: _tiles(ip, budget, name, "dynamic_hd"),
    "soft_tokens": soft_tokens, "fixed_size": _fixed_size, "fixed_tiles": _fixed_tiles,
}
IMAGE_BUDGETS = tuple(SETTERS)  # the values of Family.image_budget: the setting a budget goes to


def apply_image_budget(processing_class, family: Family, budget: ImageBudget | None) -> None:
    """Set `budget` on the processor's image processor through the family's setting, or refuse it in one line."""
    if not budget:
        return
    for key, value in (("image_min_pixels", budget.min_pixels), ("image_max_pixels", budget.max_pixels)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{key} must be a positive whole number of pixels, got {value!r}")
    ip = getattr(processing_class, "image_processor", None)
    if ip is None:
        raise UserError(f"{budget.key}: {family.name} is a text model (its processor takes no images); remove the key")
    if family.image_budget is None:
        raise UserError(f"{budget.key}: family {family.name} names no image budget setting "
                        f"(sft/family/families.py), so which setting of its {type(ip).__name__} bounds an image is not "
                        "known; set `family:` to a table entry or remove the key")
    SETTERS[family.image_budget](ip, budget, family.name)


def match_model_to_processor(model, processing_class) -> None:
    """LLaVA-NeXT / OneVision models cut each image's features back out by their own config.image_grid_pinpoints:
    after a budget dropped some of the processor's grids, the model must choose among the same ones, or its image
    features and the processor's image tokens disagree. Any other model is left as it is."""
    pinpoints = getattr(getattr(processing_class, "image_processor", None), "image_grid_pinpoints", None)
    if pinpoints is not None and getattr(model.config, "image_grid_pinpoints", None) is not None:
        model.config.image_grid_pinpoints = [list(p) for p in pinpoints]


def visual_tokens(tokenizer, marker: str | tuple | None, text: str, ids: list[int]) -> int:
    """The tokens the processor put in a row for its images (and videos): the row's length less its text's own
    tokens, each image (video) marker the template wrote counting as an image's (the processor replaced it)."""
    text_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    for each in (marker if isinstance(marker, tuple) else (marker,)):
        if each:
            text_tokens -= text.count(each) * len(tokenizer(each, add_special_tokens=False)["input_ids"])
    return len(ids) - text_tokens


def visual_summary(counts: list[int]) -> str:
    """`min a, median b, max c (n image rows)` of the visual token counts of the image rows ('' when none)."""
    if not counts:
        return ""
    ordered = sorted(counts)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return (f"visual tokens per image row: min {ordered[0]}, median {median:g}, max {ordered[-1]} "
            f"({len(ordered)} image rows)")


def dropped_for_images(status: str, length: int, image_tokens: int, max_length: int | None) -> bool:
    """A dropped row whose text alone fits max_length: its image tokens made it too long ("dropped: image tokens")."""
    return status == "dropped" and max_length is not None and length - image_tokens <= max_length


def image_settings(processing_class) -> str:
    """The image (and video) processor's settings as one string (part of a measured dataset's cache key: a budget
    changes the rows' lengths); '' for a text model."""
    processors = (getattr(processing_class, name, None) for name in ("image_processor", "video_processor"))
    return "".join(processor.to_json_string() for processor in processors if processor is not None)
