"""The rows every family's tests feed the collator, and how their supervised text is read back."""

from __future__ import annotations

from pathlib import Path

from sft.labels.collator import IGNORE_INDEX
from tests.conftest import write_image, write_video

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
    """A collator row (as sft.data.arrow_rows stores it) with `images` copies of one 50 x 36 image."""
    paths = [str(write_image(tmp_path / "img.png", size=(36, 50)))] * images
    return {"where": where, "row": 1, "messages": messages, "stored_images": paths}


# A video in the first user turn, an image in the second: the first reply's span lies before the image.
VIDEO_THEN_IMAGE = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What element?"}]},
                    {"role": "assistant", "content": "water"},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]},
                    {"role": "assistant", "content": "fire"}]
# An image in the first user turn, a video in the second: the first reply's span lies before the video.
IMAGE_THEN_VIDEO = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What element?"}]},
                    {"role": "assistant", "content": "fire"},
                    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And this one?"}]},
                    {"role": "assistant", "content": "water"}]


def video_row(tmp_path: Path, messages: list[dict], frames: tuple[int, ...] = (4,), images: int = 0,
              where: str = "t.jsonl:1") -> dict:
    """A collator row with a clip of each of `frames` frames (2 a second, 32 x 32) and `images` images."""
    videos = [str(write_video(tmp_path / f"clip{count}.mp4", frames=count)) for count in frames]
    return {**row(tmp_path, messages, images, where), "stored_videos": videos}


def supervised_text(collator, batch, index: int = 0) -> str:
    """The supervised tokens of row `index`, decoded in order, special tokens kept."""
    ids = batch["input_ids"][index][batch["labels"][index] != IGNORE_INDEX]
    return collator.tokenizer.decode(ids, skip_special_tokens=False)
