"""Thumbnails of a row's pictures for the HTML pages: each image decoded, downscaled and re-encoded as a small JPEG
data URI, so a page never carries the user's own bytes or a path outside it, and stays small."""

from __future__ import annotations

import base64
import io

THUMBNAIL_PX = 128  # longest side; an image smaller than this keeps its size
JPEG_QUALITY = 80  # ~2-5 KB a thumbnail
MAX_PICTURES = 12  # shown per row; the rest are counted ("+ N more"), so a long clip cannot swell a page
FRAMES_PER_CLIP = 6  # a clip's frames shown, evenly spaced over the frames the collator sampled


def thumbnail(image, label: str, kind: str = "image") -> dict:
    """`{kind, label, uri, width, height, scale}`: the image at most THUMBNAIL_PX on its longest side, as a JPEG data
    URI."""
    small = image.convert("RGB")  # a copy: the caller's image is left as it was
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"kind": kind, "label": label, "uri": uri, "width": small.width, "height": small.height,
            "scale": small.width / image.width}  # original pixels -> thumbnail pixels (boxes are drawn so)


def thumbnails(pictures: list[tuple[str, str, object]]) -> dict:
    """`{shown, more}` for (kind, label, image) triples: the first MAX_PICTURES as thumbnails, and how many more."""
    return {"shown": [thumbnail(image, label, kind) for kind, label, image in pictures[:MAX_PICTURES]],
            "more": max(0, len(pictures) - MAX_PICTURES)}


def _clip_frames(clip, number: int) -> list[tuple[str, str, object]]:
    """Up to FRAMES_PER_CLIP of a clip's sampled frames, evenly spaced, each labelled with its time in the video."""
    from PIL import Image

    frames, metadata = clip.frames, getattr(clip, "metadata", None) or {}
    last = len(frames) - 1
    picked = sorted({round(i * last / (FRAMES_PER_CLIP - 1)) for i in range(FRAMES_PER_CLIP)}) if last >= 0 else []
    indices, fps = metadata.get("frames_indices"), metadata.get("fps")
    pictures = []
    for position in picked:
        when = f" at {indices[position] / fps:.1f} s" if indices and fps else ""
        pictures.append(("frame", f"video {number} frame {position + 1}/{len(frames)}{when}",
                         Image.fromarray(frames[position])))
    return pictures


def row_pictures(collator, row: dict) -> list[tuple[str, str, object]]:
    """What the row's collator loads for it (`load_images`: its images, then its video clips), as (kind, label,
    image): each image, and a few frames of each clip (an item with `frames`, sft/data/video.py's Clip)."""
    pictures, images, clips = [], 0, 0
    for item in collator.load_images(row):
        if hasattr(item, "frames"):
            clips += 1
            pictures += _clip_frames(item, clips)
        else:
            images += 1
            pictures.append(("image", f"image {images}", item))
    return pictures


def stored_pictures(row: dict) -> list[tuple[str, str, object]]:
    """A normalised row's images (`stored_images`, sft/data/rows.py) decoded as the collator decodes them, for a page
    that has no collator (the run report)."""
    from sft.data.rows import load_image

    return [("image", f"image {number}", load_image(image, row["where"]))
            for number, image in enumerate(row.get("stored_images") or [], start=1)]


def with_boxes(shown: list[dict], pictures: list[tuple[str, str, object]], objects: str | None) -> list[dict]:
    """The thumbnails with a grounding row's boxes (sft/data/objects.py: pixels of their image) scaled onto their
    image's thumbnail, each named by its ref when the row has one name a box."""
    if not objects:
        return [dict(picture, boxes=[]) for picture in shown]
    import json

    found = json.loads(objects)
    names = found["ref"] if len(found["ref"]) == len(found["bbox"]) else [None] * len(found["bbox"])
    marked = [dict(picture, boxes=[]) for picture in shown]
    for number, (box, image_id, name) in enumerate(zip(found["bbox"], found["image_id"], names), start=1):
        if image_id >= len(marked) or pictures[image_id][0] != "image":
            continue
        scale = marked[image_id]["scale"]
        if len(box) == 2:  # a point: a small square around it
            box = [box[0] - 2 / scale, box[1] - 2 / scale, box[0] + 2 / scale, box[1] + 2 / scale]
        x1, y1, x2, y2 = (round(v * scale, 1) for v in box)
        marked[image_id]["boxes"].append({"x": x1, "y": y1, "w": round(x2 - x1, 1), "h": round(y2 - y1, 1),
                                          "label": name or f"box {number}"})
    return marked
