"""A grounding row's placeholders filled in its family's convention (sft/family/boxes.py): each `<ref-object>` by
the next object name, each `<bbox>` by the next box in the family's frame, computed from the size of the image the
collator loaded and, for a frame of processed pixels, the size the processor resizes it to. The filled text is what
the chat template renders, so the labels supervise the boxes exactly as written here.
"""

from __future__ import annotations

import json
import re

from sft.data.messages import parts_of
from sft.data.objects import BOX, REF
from sft.family.boxes import BoxConvention, written_box
from sft.labels.video_batch import split_visuals

PLACEHOLDER = re.compile(f"({re.escape(REF)}|{re.escape(BOX)})")


def fill_objects(messages: list[dict], objects: str | None, visuals: list, convention: BoxConvention,
                 processing_class=None) -> list[dict]:
    """`messages` with their placeholders filled from `objects` (the row's JSON), in order across the conversation."""
    if not objects:
        return messages
    found = json.loads(objects)
    images = split_visuals(visuals)[0]
    refs, boxes = iter(found["ref"]), iter(zip(found["bbox"], found["image_id"]))

    def filled(piece: str) -> str:
        if piece == REF:
            return convention.ref.format(ref=next(refs))
        if piece == BOX:
            box, image_id = next(boxes)
            return written_box(convention, box, images[image_id].size, processing_class)
        return piece

    return [{**message, "content": [{**part, "text": "".join(map(filled, PLACEHOLDER.split(part["text"])))}
                                    if part["type"] == "text" else part for part in parts_of(message["content"])]}
            for message in messages]


def convention_tokens(convention: BoxConvention, special_tokens: list[str]) -> set[str]:
    """The special tokens the convention writes itself (Qwen2-VL's `<|box_start|>`, ...): the toolkit writes them
    into a grounding row, and a row that writes the family's grounding markup by hand means the same by them, so
    they are not refused as data (a grounding row's own text is checked before they are written)."""
    markup = convention.ref + convention.box + convention.point
    return {token for token in special_tokens if token in markup}
