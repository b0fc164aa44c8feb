"""Checks every family's tests run the same way: a row too long for max_length, one training step, the tensors of a
batch, and the LoRA parameter count a plan should report."""

from __future__ import annotations

import pytest
import torch

from sft.errors import UserError
from sft.family.families import Family
from sft.labels.fit import measure
from sft.labels.labelling import make_collator


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


# Tensors with one entry a token: they match input_ids in batch and length.
PER_TOKEN = ("attention_mask", "labels", "token_type_ids", "mm_token_type_ids")


def assert_tensors_match_input_ids(batch, processor, family: Family, images_per_row: list[int],
                                   videos_per_row: list[int] | None = None) -> None:
    """Every tensor the processor made belongs to this batch of rows: exactly the family table's `extra_inputs`
    (plus its pixel tensor) when there are images and its `video_inputs` when there are videos, a subset of the
    extra inputs without; per-token tensors of input_ids' shape; per-image (per-video) tensors one entry an image
    (video); image- and video-token markers on exactly the image and video placeholder tokens."""
    size, length = batch["input_ids"].shape
    base = {"input_ids", "attention_mask", "labels"}
    videos_per_row = videos_per_row or [0] * len(images_per_row)
    video_keys = set(family.video_inputs) if any(videos_per_row) else set()
    assert video_keys <= set(batch)
    if any(images_per_row):
        assert set(batch) == base | {family.pixel_input, *family.extra_inputs} | video_keys
    else:
        assert set(batch) - base - video_keys <= set(family.extra_inputs)
    for key in PER_TOKEN:
        if key in batch:
            assert batch[key].shape == (size, length), key
    if "cross_attention_mask" in batch:  # Mllama: a row of tile masks a text token
        assert batch["cross_attention_mask"].shape[:2] == (size, length)
    if "image_sizes" in batch:  # one (height, width) an image
        assert batch["image_sizes"].shape == (sum(images_per_row), 2)
    if "mm_token_type_ids" in batch:  # non-zero on exactly the image and video placeholders (Qwen's M-RoPE, Gemma 4)
        placeholders = batch["input_ids"] == processor.image_token_id
        if any(videos_per_row):
            placeholders |= batch["input_ids"] == processor.video_token_id
        assert torch.equal(batch["mm_token_type_ids"] != 0, placeholders)
    if "image_grid_thw" in batch:  # Qwen: one (t, h, w) patch grid an image; its patches, merged 2 x 2, as tokens
        grid = batch["image_grid_thw"]
        assert grid.shape == (sum(images_per_row), 3)
        assert batch["pixel_values"].shape[0] == int(grid.prod(dim=1).sum())
        merge = processor.image_processor.merge_size ** 2
        patches = iter(grid.prod(dim=1).tolist())
        tokens = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
        assert tokens == [sum(next(patches) // merge for _ in range(n)) for n in images_per_row]


def lora_count(r: int, layers: int, hidden: int, q_out: int, kv_out: int) -> int:
    """LoRA parameters on q/k/v/o: each adds r x (in + out)."""
    return layers * r * ((hidden + q_out) + 2 * (hidden + kv_out) + (q_out + hidden))


def assert_video_tensors_match(batch, processor, family: Family, frames_per_video: list[int],
                               videos_per_row: list[int]) -> None:
    """Per-video tensors one entry a video, and the video tokens of each row what its clips' grids or frames make."""
    size = batch["input_ids"].shape[0]
    if "video_grid_thw" in batch:  # Qwen: one (t, h, w) patch grid a clip, t its frames in pairs; merged 2 x 2
        grid = batch["video_grid_thw"]
        vp = processor.video_processor
        assert grid.shape == (len(frames_per_video), 3)
        assert grid[:, 0].tolist() == [-(-frames // vp.temporal_patch_size) for frames in frames_per_video]
        assert batch["pixel_values_videos"].shape[0] == int(grid.prod(dim=1).sum())
        patches = iter(grid.prod(dim=1).tolist())
        tokens = (batch["input_ids"] == processor.video_token_id).sum(dim=1).tolist()
        assert tokens == [sum(next(patches) // vp.merge_size ** 2 for _ in range(n)) for n in videos_per_row]
    if "second_per_grid_ts" in batch:  # Qwen2.5-VL: seconds a temporal patch spans, one a clip
        assert batch["second_per_grid_ts"].shape == (len(frames_per_video),)
    if "num_frames_per_video" in batch:  # Gemma 4: frames flattened, split back by their counts
        assert batch["num_frames_per_video"].tolist() == frames_per_video
        assert batch["pixel_values_videos"].shape[0] == sum(frames_per_video)
    if family.video_frames_as_images:  # SmolVLM2: one row of tiles and frames a row
        assert batch["pixel_values"].shape[0] == size == batch["pixel_attention_mask"].shape[0]
    if "pixel_values_videos" in batch and batch["pixel_values_videos"].dim() == 5:  # LLaVA-OneVision: (clips, frames)
        assert tuple(batch["pixel_values_videos"].shape[:2]) == (len(frames_per_video), max(frames_per_video))
