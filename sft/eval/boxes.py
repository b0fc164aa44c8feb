"""Box answers scored: a grounding row's generated boxes read back in its family's convention (sft/family/boxes.py),
in pixels of the original image, against the boxes its last reply places: mean IoU (`box_iou`) and the share of
reference boxes found at IoU >= 0.5 (`box_acc50`). Boxes are paired in the order they are written; a reference box
with no generated box scores 0.
"""

from __future__ import annotations

import json

from sft.data.messages import text_of
from sft.data.objects import BOX, image_size
from sft.family.boxes import convention_named, iou, read_boxes
from sft.labels.labelling import Labeller

BOX_METRICS = ("box_iou", "box_acc50")


def reference_boxes(example: dict) -> list[tuple[list[float], int]] | None:
    """(box in pixels, image index) of each `<bbox>` in the row's last reply; None for a row whose reply has none."""
    messages = example["messages"]
    if not example.get("objects") or messages[-1]["role"] != "assistant":
        return None
    found = json.loads(example["objects"])
    before, count = sum(text_of(m).count(BOX) for m in messages[:-1]), text_of(messages[-1]).count(BOX)
    return [(found["bbox"][i], found["image_id"][i]) for i in range(before, before + count)] or None


def generated_boxes(collator: Labeller, example: dict, text: str) -> list[list[float]]:
    """The boxes of a generated answer in pixels of the row's image (the one its first reference box is in)."""
    references = reference_boxes(example) or [([], 0)]
    size = image_size(example["stored_images"][references[0][1]])
    convention = convention_named(collator.family.boxes, collator.family.name)
    return read_boxes(convention, text, size, collator.processing_class, collator.replies.toolkit_tokens)


def box_scores(collator: Labeller, examples: list[dict], predictions: list[str]) -> tuple[dict, list[dict | None]]:
    """Overall box metrics over the rows with reference boxes, and per row its generated boxes and scores."""
    per_row, ious = [], []
    for example, text in zip(examples, predictions):
        references = reference_boxes(example)
        if references is None:
            per_row.append(None)
            continue
        boxes = generated_boxes(collator, example, text)
        row = [iou(box, boxes[i]) if i < len(boxes) else 0.0 for i, (box, _) in enumerate(references)]
        ious += row
        per_row.append({"boxes": [[round(v, 1) for v in box] for box in boxes],
                        "reference_boxes": [[round(v, 1) for v in box] for box, _ in references],
                        "box_iou": sum(row) / len(row), "box_acc50": sum(v >= 0.5 for v in row) / len(row)})
    overall = {"box_iou": sum(ious) / len(ious), "box_acc50": sum(v >= 0.5 for v in ious) / len(ious)} if ious else {}
    return overall, per_row
