"""Grounding rows in ms-swift's format: `<ref-object>` and `<bbox>` placeholders in the messages' text, filled in
order from the row's `objects`: `{ref: [...], bbox: [[x1, y1, x2, y2] or [x, y], ...], bbox_type: real | norm1,
image_id: [...]}` (`real`: pixels of the original image `image_id` names, default image 0; `norm1`: 0-1 of it).

Checked here, one line a problem: placeholders and objects in equal numbers, boxes ordered (x1 <= x2, y1 <= y2),
inside their image, `norm1` values in 0-1, an `image_id` the row has. Boxes are stored in pixels of their original
image (JSON in the `objects` column); the labeller writes each in its family's frame (sft/labels/grounding.py).
"""

from __future__ import annotations

import io
import json
from numbers import Real

from sft.data.messages import text_of
from sft.data.shapes import describe

REF, BOX = "<ref-object>", "<bbox>"
BBOX_TYPES = ("real", "norm1")


def image_size(entry: dict) -> tuple[int, int]:
    """(width, height) of a stored image entry, from its header (nothing decoded)."""
    from PIL import Image

    with Image.open(io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"]) as opened:
        return opened.size


def _list(objects: dict, key: str, name: str) -> list:
    value = objects.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f'"{name}.{key}" must be a list, got {describe(value)}')
    return value


def _box(value, number: int, name: str) -> list[float]:
    if not isinstance(value, list) or len(value) not in (2, 4) or not all(
            isinstance(v, Real) and not isinstance(v, bool) for v in value):
        raise ValueError(f'"{name}.bbox[{number}]" must be [x1, y1, x2, y2] or a point [x, y] of numbers, '
                         f"got {describe(value)}")
    if len(value) == 4 and (value[2] < value[0] or value[3] < value[1]):
        axis = "x2 < x1" if value[2] < value[0] else "y2 < y1"
        raise ValueError(f'"{name}.bbox[{number}]" {value}: {axis}')
    return [float(v) for v in value]


def grounding_objects(row: dict, name: str, messages: list[dict], images: list[dict]) -> str | None:
    """The row's objects as JSON (`ref`, `bbox` in pixels of their image, `image_id`), or None for a row without
    placeholders or objects; ValueError with a short reason for anything that does not add up."""
    texts = [text_of(message) for message in messages]
    refs_wanted, boxes_wanted = sum(t.count(REF) for t in texts), sum(t.count(BOX) for t in texts)
    objects = row.get("objects")
    if objects is None:
        if refs_wanted or boxes_wanted:
            raise ValueError(f"{REF if refs_wanted else BOX} placeholder in the messages but the row has no "
                             f'"{name}"')
        return None
    if not isinstance(objects, dict):
        raise ValueError(f'"{name}" must be a mapping with ref and bbox lists, got {describe(objects)}')
    refs, boxes, ids = _list(objects, "ref", name), _list(objects, "bbox", name), _list(objects, "image_id", name)
    if len(refs) != refs_wanted or len(boxes) != boxes_wanted:
        raise ValueError(f"{refs_wanted} {REF} and {boxes_wanted} {BOX} placeholders, but {len(refs)} refs and "
                         f'{len(boxes)} boxes in "{name}"')
    if not all(isinstance(ref, str) and ref for ref in refs):
        raise ValueError(f'"{name}.ref" must hold non-empty strings')
    kind = objects.get("bbox_type", "real")
    if kind not in BBOX_TYPES:
        raise ValueError(f'"{name}.bbox_type" must be real or norm1, got {describe(kind)}')
    if ids and len(ids) != len(boxes):
        raise ValueError(f'"{name}.image_id" has {len(ids)} entries for {len(boxes)} boxes')
    ids = ids or [0] * len(boxes)
    pixels = []
    for number, (value, image_id) in enumerate(zip(boxes, ids)):
        box = _box(value, number, name)
        if not isinstance(image_id, int) or not 0 <= image_id < len(images):
            raise ValueError(f'"{name}.image_id[{number}]" is {describe(image_id)} but the row has {len(images)} '
                             "image(s)")
        width, height = image_size(images[image_id])
        if kind == "norm1":
            if not all(0 <= v <= 1 for v in box):
                raise ValueError(f'"{name}.bbox[{number}]" {value}: a norm1 value outside 0-1')
            box = [v * (width if i % 2 == 0 else height) for i, v in enumerate(box)]
        elif not all(0 <= v <= (width if i % 2 == 0 else height) for i, v in enumerate(box)):
            raise ValueError(f'"{name}.bbox[{number}]" {value} lies outside image {image_id} ({width} x {height} '
                             "pixels)")
        pixels.append(box)
    return json.dumps({"ref": refs, "bbox": pixels, "image_id": ids})
