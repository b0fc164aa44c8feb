"""Video budgets: the recipe's `video_fps`, `video_max_frames` and `video_max_pixels`, set on the processor's video
processor when it loads (as sft/family/image_budget.py sets image budgets), so the collator, `sft preview`,
generation and the processor saved with a run (`sft predict`) all sample and resize a clip the same way.

The frame budget (how many frames a clip gives, sft.data.video.frame_indices) is the toolkit's own sampling, kept under
names of its own on the video processor; the pixel budget bounds one frame through the family table's
`video_budget` setting (VIDEO_SETTERS below). A family that takes no video refuses every key in one line, as does a
family whose frames have one fixed size (video_max_pixels) or that takes a fixed frame count (video_fps).
"""

from __future__ import annotations

from dataclasses import dataclass

from sft.data.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES, FPS_SETTING, MAX_FRAMES_SETTING
from sft.errors import UserError
from sft.family.families import Family
from sft.family.image_budget import ImageBudget, pixels, soft_tokens


@dataclass(frozen=True)
class VideoBudget:
    """The recipe's video_fps / video_max_frames / video_max_pixels (None: the default, or the processor's size)."""

    fps: float | None = None
    max_frames: int | None = None
    max_pixels: int | None = None

    def keys(self) -> list[str]:
        """The recipe keys that are set."""
        return [key for key, value in (("video_fps", self.fps), ("video_max_frames", self.max_frames),
                                       ("video_max_pixels", self.max_pixels)) if value is not None]


def _pixels(vp, max_pixels: int, name: str) -> None:
    """Qwen-VL: size = {shortest_edge: min_pixels, longest_edge: max_pixels} of one frame, as for an image (a frame
    smaller than min_pixels is scaled up: the budget wins over it)."""
    pixels(vp, ImageBudget(max_pixels=max_pixels), name, kind="video")


def _soft_tokens(vp, max_pixels: int, name: str) -> None:
    """Gemma 4: max_soft_tokens of one frame, as for an image."""
    soft_tokens(vp, ImageBudget(max_pixels=max_pixels), name, kind="video")


def _fixed_size(vp, max_pixels: int, name: str) -> None:
    raise UserError(f"video_max_pixels: {name}'s video processor makes every frame the one size its vision tower "
                    f"takes ({type(vp).__name__}: one tile a frame), so no setting changes a frame's tokens; lower "
                    "video_max_frames instead, or remove the key")


VIDEO_SETTERS = {"pixels": _pixels, "soft_tokens": _soft_tokens, "fixed_size": _fixed_size}
VIDEO_BUDGETS = tuple(VIDEO_SETTERS)  # the values of Family.video_budget


def video_refusal(processing_class, family: Family) -> str | None:
    """Why this family (with this processor) takes no video, or None when it does."""
    if not family.video_inputs:
        return f"family {family.name} takes no video: {family.video_refusal}"
    if getattr(processing_class, "video_processor", None) is None:
        return (f"family {family.name} takes no video with this checkpoint: its {type(processing_class).__name__} "
                "has no video processor")
    return None


def apply_video_budget(processing_class, family: Family, budget: VideoBudget | None) -> None:
    """Keep the frame budget on the processor's video processor (defaults where the recipe sets none) and set the
    pixel budget through the family's setting, or refuse a key in one line."""
    budget = budget or VideoBudget()
    refusal = video_refusal(processing_class, family)
    if refusal:
        if budget.keys():
            raise UserError(f"{budget.keys()[0]}: {refusal}; remove the key")
        return
    if budget.fps is not None and not budget.fps > 0:
        raise UserError(f"video_fps must be a positive number of frames a second, got {budget.fps!r}")
    for key, value in (("video_max_frames", budget.max_frames), ("video_max_pixels", budget.max_pixels)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{key} must be a positive whole number, got {value!r}")
    if family.video_fixed_frames and budget.fps is not None:
        raise UserError(f"video_fps: {family.name}'s processor stacks a batch's clips into one tensor, so every clip "
                        "is sampled to exactly video_max_frames frames, whatever its length; remove video_fps")
    vp = processing_class.video_processor
    # A processor saved by a run keeps that run's budget (sft predict loads it); a recipe key replaces it.
    for setting, value, default in ((FPS_SETTING, budget.fps, DEFAULT_FPS),
                                    (MAX_FRAMES_SETTING, budget.max_frames, DEFAULT_MAX_FRAMES)):
        if value is not None or getattr(vp, setting, None) is None:
            setattr(vp, setting, default if value is None else value)
    if budget.max_pixels is not None:
        VIDEO_SETTERS[family.video_budget](vp, budget.max_pixels, family.name)
