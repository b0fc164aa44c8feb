"""Grounding conventions: how a family writes an object's name and its box (or point), and in which frame.

A family table entry names its convention (`Family.boxes`); a recipe may choose one with `box_convention` (for a
family without a native one, `norm1000` is the documented default). The frames, as each family's own code and
docs define them (docs/grounding.md has the sources):
- `norm1000`: 0-1000 of the image (Qwen2-VL, Qwen3-VL, Qwen3.5, InternVL): round(v / size * 1000);
- `processed_pixels`: absolute pixels of the image after the processor resized it (Qwen2.5-VL's smart_resize, with
  the run's image budget): round(v / size * processed size), at most processed size - 1;
- `loc1023`: PaliGemma's 1024 location bins, y before x: round(v / size * 1023) (big_vision's training code).
Rounding is Python's round() of the scaled value, as ms-swift's `Template.normalize_bbox` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Formatter

from sft.errors import UserError


@dataclass(frozen=True)
class BoxConvention:
    name: str
    frame: str  # "norm1000", "processed_pixels" or "loc1023"
    ref: str  # how an object's name is written; {ref} is the name
    box: str  # how a box is written; {x1} {y1} {x2} {y2} in the frame
    point: str  # how a point is written; {x} {y}


CONVENTIONS = {convention.name: convention for convention in (
    BoxConvention("qwen2_vl", "norm1000", "<|object_ref_start|>{ref}<|object_ref_end|>",
                  "<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>", "<|box_start|>({x},{y})<|box_end|>"),
    BoxConvention("qwen2_5_vl", "processed_pixels", "{ref}", "[{x1}, {y1}, {x2}, {y2}]", "[{x}, {y}]"),
    BoxConvention("qwen3_vl", "norm1000", "{ref}", "[{x1}, {y1}, {x2}, {y2}]", "[{x}, {y}]"),
    BoxConvention("internvl", "norm1000", "<ref>{ref}</ref>", "<box>[[{x1}, {y1}, {x2}, {y2}]]</box>",
                  "<box>[[{x}, {y}]]</box>"),
    BoxConvention("paligemma", "loc1023", "{ref}", "<loc{y1:04d}><loc{x1:04d}><loc{y2:04d}><loc{x2:04d}>",
                  "<loc{y:04d}><loc{x:04d}>"),
    BoxConvention("norm1000", "norm1000", "{ref}", "[{x1}, {y1}, {x2}, {y2}]", "[{x}, {y}]"),  # the default
)}


def convention_named(name: str | None, family_name: str) -> BoxConvention:
    """The convention a row's boxes are written in; refused in one line when the family has none and none is chosen."""
    if name is None:
        raise UserError(f"family {family_name} has no grounding convention in the table; set box_convention to one "
                        f"of {', '.join(CONVENTIONS)} (norm1000: `[x1, y1, x2, y2]` in 0-1000, the default)")
    if name not in CONVENTIONS:
        raise UserError(f"box_convention {name!r} is not one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def processed_size(processing_class, width: int, height: int) -> tuple[int, int]:
    """(width, height) the image processor resizes a width x height image to: Qwen's smart_resize with the
    processor's own factor and pixel bounds (an image budget set them); other processors resize to no pixel frame
    this module writes."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    ip = processing_class.image_processor  # its size: Qwen's pixel counts, as sft/family/image_budget.py sets them
    low, high = ip.size["shortest_edge"], ip.size["longest_edge"]
    resized_height, resized_width = smart_resize(height, width, factor=ip.patch_size * ip.merge_size,
                                                 min_pixels=low, max_pixels=high)
    return resized_width, resized_height


def scaled(convention: BoxConvention, values: list[float], size: tuple[int, int], processing_class=None) -> list[int]:
    """Coordinates `values` (x, y, ... in pixels of an image of `size` = (width, height)) in the convention's frame."""
    width, height = size
    if convention.frame == "processed_pixels":
        new_width, new_height = processed_size(processing_class, width, height)
        return [min(round(v / width * new_width), new_width - 1) if i % 2 == 0 else
                min(round(v / height * new_height), new_height - 1) for i, v in enumerate(values)]
    scale = 1000 if convention.frame == "norm1000" else 1023
    return [round(v / (width if i % 2 == 0 else height) * scale) for i, v in enumerate(values)]


def written_box(convention: BoxConvention, values: list[float], size: tuple[int, int], processing_class=None) -> str:
    """One box ([x1, y1, x2, y2]) or point ([x, y]) in pixels of its image, as the convention writes it."""
    frame = scaled(convention, values, size, processing_class)
    if len(frame) == 2:
        return convention.point.format(x=frame[0], y=frame[1])
    return convention.box.format(x1=frame[0], y1=frame[1], x2=frame[2], y2=frame[3])


def _pattern(template: str, dropped: set[str]) -> re.Pattern:
    """A convention's box or point template as a regex of its numbers, without the tokens decoding drops."""
    pieces = []
    for literal, field, _, _ in Formatter().parse(template):
        for token in dropped:
            literal = literal.replace(token, "")
        pieces.append(re.escape(literal) + (rf"\s*(?P<{field}>\d+)\s*" if field else ""))
    return re.compile("".join(pieces))


def read_boxes(convention: BoxConvention, text: str, size: tuple[int, int], processing_class=None,
               dropped: set[str] | frozenset = frozenset()) -> list[list[float]]:
    """Every box the convention writes in `text` (a generated answer), back in pixels of an image of `size`: the
    inverse of written_box. `dropped`: the convention's special tokens, which decoding leaves out."""
    return [box for box, _ in read_placed_boxes(convention, text, size, processing_class, dropped)]


def read_points(convention: BoxConvention, text: str, size: tuple[int, int], processing_class=None,
                dropped: set[str] | frozenset = frozenset()) -> list[list[float]]:
    """Every point the convention writes in `text`, back in pixels of an image of `size` (none inside a box:
    PaliGemma writes a point as two of a box's four bins)."""
    boxes = [span for _, span in read_placed_boxes(convention, text, size, processing_class, dropped)]
    return [point for point, (start, end) in read_placed_boxes(convention, text, size, processing_class, dropped,
                                                                 points=True)
            if not any(a < end and start < b for a, b in boxes)]


def read_placed_boxes(convention: BoxConvention, text: str, size: tuple[int, int], processing_class=None,
                      dropped: set[str] | frozenset = frozenset(),
                      points: bool = False) -> list[tuple[list[float], tuple[int, int]]]:
    """`read_boxes` (`points`: `read_points`), each with the (start, end) of its text in `text` (where its label is
    looked for)."""
    width, height = size
    if convention.frame == "processed_pixels":
        new_width, new_height = processed_size(processing_class, width, height)
        scale_x, scale_y = width / new_width, height / new_height
    else:
        steps = 1000 if convention.frame == "norm1000" else 1023
        scale_x, scale_y = width / steps, height / steps
    if points:
        return [([float(match["x"]) * scale_x, float(match["y"]) * scale_y], match.span())
                for match in _pattern(convention.point, set(dropped)).finditer(text)]
    return [([float(match[f"x{i}"]) * scale_x if axis == "x" else float(match[f"y{i}"]) * scale_y
              for i in (1, 2) for axis in "xy"], match.span())
            for match in _pattern(convention.box, set(dropped)).finditer(text)]


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two boxes [x1, y1, x2, y2]."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)
