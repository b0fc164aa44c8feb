"""A batch's images and video clips through the processor's one call.

The collator holds each row's visuals as one list, its images then its clips (sft.data.video.Clip), and counts both
markers in the template's rendering; here they become the processor's `images` (per row) and `videos` (flat, in row
order, already sampled). One family needs more: SmolVLM2's processor returns a clip's frames as `pixel_values`, the
tensor its images use, one entry a clip padded to the batch's longest, so a batch holding both would lose the
images' (transformers 5.23 keeps the last one written), and it writes each clip's frame count as that padded length
(so a clip's text would change with the clips beside it). For such a family (`Family.video_frames_as_images`) the
call counts each clip's own frames and the pixels are merged row by row, in the order the template wrote their
markers, as its model reads them.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from sft.data.video import Clip
from sft.family.families import Family


def split_visuals(visuals: list) -> tuple[list, list[Clip]]:
    """A row's visuals (its images, then its clips: the collator's `load_images`) as (images, clips)."""
    return [v for v in visuals if not isinstance(v, Clip)], [v for v in visuals if isinstance(v, Clip)]


def video_kwargs(clips: list[Clip]) -> dict:
    """The processor's video arguments for a batch's clips (flat, in row order): frames already sampled."""
    if not clips:
        return {}
    return dict(videos=[clip.frames for clip in clips], video_metadata=[clip.metadata for clip in clips],
                do_sample_frames=False)


def process_visuals(processing_class, family: Family, texts: list[str], visuals: list[list] | None, **kwargs):
    """The processor's call on `texts` with each row's images and clips (`visuals`, or None: text only)."""
    if not visuals:
        return processing_class(text=texts, images=None, **kwargs)
    split = [split_visuals(row) for row in visuals]
    images = [row_images for row_images, _ in split]
    clips = [clip for _, row_clips in split for clip in row_clips]
    if not (clips and family.video_frames_as_images):
        return processing_class(text=texts, images=images if any(images) else None, **video_kwargs(clips), **kwargs)
    with frames_counted_per_clip(processing_class):
        batch = processing_class(text=texts, images=images if any(images) else None, **video_kwargs(clips), **kwargs)
    return merge_frames_with_images(batch, processing_class, texts, images, clips)


@contextmanager
def frames_counted_per_clip(processing_class):
    """For one call, SmolVLM2's replace_video_token sees each clip's own frames (transformers 5.23 reads the count
    from pixel_values.shape[1], the longest clip of the call); the instance attribute is removed after the call, so
    nothing of it is saved with the processor."""
    original = processing_class.replace_video_token

    def own_count(video_inputs, video_idx, **kwargs):
        frames = len(video_inputs["video_metadata"][video_idx].frames_indices)
        return original({**video_inputs, "pixel_values": video_inputs["pixel_values"][:, :frames]}, video_idx,
                        **kwargs)

    processing_class.replace_video_token = own_count
    try:
        yield
    finally:
        del processing_class.replace_video_token


def merge_frames_with_images(batch, processing_class, texts: list[str], images: list[list], clips: list[Clip]):
    """SmolVLM2: `pixel_values` / `pixel_attention_mask` of one row each, holding every image's tiles and every
    clip's frames in the order of the row's markers, zero-padded to the longest row (its model drops all-zero
    tiles), instead of the processor's one entry a clip."""
    frames, frame_masks = batch["pixel_values"], batch["pixel_attention_mask"]
    tiles = processing_class.image_processor(images, return_row_col_info=True, return_tensors="pt") \
        if any(images) else None
    grids = iter(zip(sum(tiles["rows"], []), sum(tiles["cols"], []))) if tiles is not None else iter(())
    image_token, video_token = processing_class.image_token, processing_class.video_token
    markers = re.compile(f"{re.escape(image_token)}|{re.escape(video_token)}")
    clip_index, rows = 0, []
    for row, text in enumerate(texts):
        pieces, tile = [], 0
        for marker in markers.finditer(text):
            if marker.group() == video_token:
                count = len(clips[clip_index])
                pieces.append((frames[clip_index, :count], frame_masks[clip_index, :count]))
                clip_index += 1
            else:
                grid_rows, grid_cols = next(grids)
                count = grid_rows * grid_cols + 1 if grid_rows * grid_cols else 1  # the tiles and the global image
                pieces.append((tiles["pixel_values"][row, tile:tile + count],
                               tiles["pixel_attention_mask"][row, tile:tile + count]))
                tile += count
        rows.append(pieces)
    longest = max(sum(len(values) for values, _ in pieces) for pieces in rows)
    pixels = frames.new_zeros((len(texts), longest, *frames.shape[2:]))
    masks = frame_masks.new_zeros((len(texts), longest, *frame_masks.shape[2:]))
    for row, pieces in enumerate(rows):
        at = 0
        for values, mask in pieces:
            pixels[row, at:at + len(values)] = values
            masks[row, at:at + len(values)] = mask.to(masks.dtype)
            at += len(values)
    batch["pixel_values"], batch["pixel_attention_mask"] = pixels, masks
    return batch

