"""Box answers scored: a grounding row's generated boxes read back in its family's convention (sft/family/boxes.py),
in pixels of the original image, against the boxes its last reply places: mean IoU (`box_iou`) and the share of
reference boxes found at IoU >= 0.5 (`box_acc50`); a row that answers with points gets its generated points read
back (not scored: no metric is standard for them). A reference box with a name (its row's `ref`) is paired with the
first unpaired generated box labelled with that name (the name written next to it: in the text since the box before,
else up to the box after); the rest are paired in the order they are written. A reference box with no generated box
scores 0.
"""

from __future__ import annotations

import json

from sft.data.messages import text_of
from sft.data.objects import BOX, image_size
from sft.family.boxes import convention_named, iou, read_placed_boxes, read_points
from sft.labels.labelling import Labeller

BOX_METRICS = ("box_iou", "box_acc50")


def reference_boxes(example: dict, points: bool = False) -> list[tuple[list[float], int, str | None]] | None:
    """(box in pixels, image index, name) of each `<bbox>` box in the row's last reply (the name when the row names
    each box, `ref` as long as `bbox`); `points`: its points instead. None for a row whose reply has none."""
    messages = example["messages"]
    if not example.get("objects") or messages[-1]["role"] != "assistant":
        return None
    found = json.loads(example["objects"])
    names = found["ref"] if len(found["ref"]) == len(found["bbox"]) else [None] * len(found["bbox"])
    before, count = sum(text_of(m).count(BOX) for m in messages[:-1]), text_of(messages[-1]).count(BOX)
    return [(found["bbox"][i], found["image_id"][i], names[i]) for i in range(before, before + count)
            if len(found["bbox"][i]) == (2 if points else 4)] or None


def _frame(collator: Labeller, example: dict, references: list) -> tuple:
    """The convention a generation writes in and the size of the image its first reference lies in."""
    size = image_size(example["stored_images"][references[0][1]])
    return convention_named(collator.family.boxes, collator.family.name), size


def generated_points(collator: Labeller, example: dict, text: str, references: list) -> list[list[float]]:
    """The points of a generated answer in pixels of the image its first reference point is in (not scored)."""
    convention, size = _frame(collator, example, references)
    return read_points(convention, text, size, collator.processing_class, collator.replies.toolkit_tokens)


def generated_boxes(collator: Labeller, example: dict, text: str,
                    references: list) -> list[tuple[list[float], str | None]]:
    """The boxes of a generated answer in pixels of the row's image (the one its first reference box is in), each
    with the reference name written next to it (None: none of them)."""
    convention, size = _frame(collator, example, references)
    placed = read_placed_boxes(convention, text, size, collator.processing_class, collator.replies.toolkit_tokens)
    names = sorted({name for _, _, name in references if name}, key=len, reverse=True)
    labelled = []
    for k, (box, (start, end)) in enumerate(placed):
        before = text[placed[k - 1][1][1] if k else 0:start]
        after = text[end:placed[k + 1][1][0] if k + 1 < len(placed) else len(text)]
        label = max(((before.rfind(n), n) for n in names if n in before), default=(-1, None))[1] or \
            min(((after.find(n), n) for n in names if n in after), default=(-1, None))[1]
        labelled.append((box, label))
    return labelled


def paired(references: list[tuple[list[float], int, str | None]],
           generated: list[tuple[list[float], str | None]]) -> list[list[float] | None]:
    """The generated box paired with each reference box: by name first, then in order (None: none left)."""
    free = list(range(len(generated)))
    pairs: list[int | None] = [None] * len(references)
    for i, (_, _, name) in enumerate(references):
        match = next((k for k in free if name is not None and generated[k][1] == name), None)
        if match is not None:
            pairs[i] = match
            free.remove(match)
    for i in range(len(references)):
        if pairs[i] is None and free:
            pairs[i] = free.pop(0)
    return [generated[k][0] if k is not None else None for k in pairs]


def box_scores(collator: Labeller, examples: list[dict], predictions: list[str]) -> tuple[dict, list[dict | None]]:
    """Overall box metrics over the rows with reference boxes, and per row its generated boxes and scores."""
    per_row, ious = [], []
    for example, text in zip(examples, predictions):
        references, points = reference_boxes(example), reference_boxes(example, points=True)
        if references is None:
            per_row.append(None if points is None else {
                "points": [[round(v, 1) for v in point]
                           for point in generated_points(collator, example, text, points)],
                "reference_points": [[round(v, 1) for v in point] for point, _, _ in points]})
            continue
        generated = generated_boxes(collator, example, text, references)
        row = [iou(box, match) if match is not None else 0.0
               for (box, _, _), match in zip(references, paired(references, generated))]
        ious += row
        per_row.append({"boxes": [[round(v, 1) for v in box] for box, _ in generated],
                        "box_labels": [label for _, label in generated],
                        "reference_boxes": [[round(v, 1) for v in box] for box, _, _ in references],
                        "reference_labels": [name for _, _, name in references],
                        "box_image": references[0][1],  # the image the boxes are read in (its first reference's)
                        "box_iou": sum(row) / len(row), "box_acc50": sum(v >= 0.5 for v in row) / len(row)})
    overall = {"box_iou": sum(ious) / len(ious), "box_acc50": sum(v >= 0.5 for v in ious) / len(ious)} if ious else {}
    return overall, per_row
