"""The rows every family's tests feed the collator, and how their supervised text is read back."""

from __future__ import annotations

from pathlib import Path

from sft.collator import IGNORE_INDEX
from tests.conftest import write_image

SHAPES = {
    "instruction": [{"role": "user", "content": "Define the construction term.\n\nrebar"},
                    {"role": "assistant", "content": "A steel bar used to reinforce concrete."}],
    "prompt_completion": [{"role": "user", "content": "What element is shown?"},
                          {"role": "assistant", "content": "water"}],
    "multi_turn": [{"role": "system", "content": "Answer briefly."},
                   {"role": "user", "content": "What element is shown?"}, {"role": "assistant", "content": "fire"},
                   {"role": "user", "content": "And a beam?"}, {"role": "assistant", "content": "A load carrier."}],
}
# An image in each user turn: the first reply's span lies before the second image.
TWO_IMAGE_TURNS = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What element?"}]},
                   {"role": "assistant", "content": "fire"},
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]},
                   {"role": "assistant", "content": "water"}]
LONG_PROMPT = "Formwork is a temporary mould for concrete. " * 30


def row(tmp_path: Path, messages: list[dict], images: int = 0, where: str = "t.jsonl:1") -> dict:
    """A collator row (as sft.dataset stores it) with `images` copies of one 50 x 36 image."""
    paths = [str(write_image(tmp_path / "img.png", size=(36, 50)))] * images
    return {"where": where, "row": 1, "messages": messages, "stored_images": paths}


def supervised_text(collator, batch, index: int = 0) -> str:
    """The supervised tokens of row `index`, decoded in order, special tokens kept."""
    ids = batch["input_ids"][index][batch["labels"][index] != IGNORE_INDEX]
    return collator.tokenizer.decode(ids, skip_special_tokens=False)
