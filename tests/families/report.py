"""A training run per tiny family on the element task (image → water / fire), scored by generation.

    .venv/bin/python -m tests.families.report [--packing | --padding_free | --video] [case ...]   # one line a family

`train_elements` and `assert_learns` are what the family contract runs (tests/test_family_contract.py), `train_clips`
the same task on clips (tests/test_family_video.py, `--video`); run as a module it prints each family's first →
last training loss and eval accuracy, the figures the issue notes report.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from sft.config.recipe import load_recipe
from sft.run.train import main as train
from tests.conftest import write_jsonl, write_video
from tests.families.registry import BY_NAME, VIDEO, VISION, Case, build
from tests.test_training import ELEMENTS, recipe_for


def train_elements(case: Case, model_dir: Path, root: Path, epochs: int = 12, **keys) -> dict:
    """Train `model_dir` (of `case`) on 8 element rows (image → water / fire) for `epochs`; eval by generation on 4
    more. Rows get the case's system turn when it needs one; `keys` are more recipe keys (e.g. packing=True)."""
    recipe = recipe_for(root, model_dir, with_images=True, max_length=1024, num_train_epochs=epochs,
                        learning_rate=5e-3, eval_strategy="no", logging_steps=4, **keys)
    if case.system:
        for data in (root / "train.jsonl", root / "val.jsonl"):
            rows = [json.loads(text) for text in data.read_text(encoding="utf-8").splitlines()]
            data.write_text("".join(json.dumps({**row, "system": case.system}) + "\n" for row in rows),
                            encoding="utf-8")
    return train(load_recipe(recipe))


def train_clips(case: Case, model_dir: Path, root: Path, epochs: int = 24, **keys) -> dict:
    """`train_elements` with a clip in place of the image: 4 solid-colour frames (blue: water, red: fire), 2 a
    second, sampled by the recipe's frame budget (video_max_frames 4)."""
    recipe = recipe_for(root, model_dir, with_images=False, max_length=1024, num_train_epochs=epochs,
                        learning_rate=5e-3, eval_strategy="no", logging_steps=4, **({"video_max_frames": 4} | keys))
    for data, count in ((root / "train.jsonl", 8), (root / "val.jsonl", 4)):
        rows = []
        for index in range(count):
            label = list(ELEMENTS)[index % 2]
            write_video(root / f"{label}.mp4", ELEMENTS[label])
            rows.append({"prompt": "What element is shown?", "target": label, "video": f"{label}.mp4"}
                        | ({"system": case.system} if case.system else {}))
        write_jsonl(data, rows)
    return train(load_recipe(recipe))


def line(name: str, metrics: dict) -> str:
    return (f"REPORT {name}: loss {metrics['first_loss']:.3f} -> {metrics['last_loss']:.3f}, "
            f"eval_accuracy {metrics['eval_accuracy']:.2f}")


def assert_learns(name: str, metrics: dict) -> None:
    """What the family contract requires of `train_elements`: the loss falls to a fifth and every eval image is
    named right by generation (which needs the images to reach the model, the generation prompt to be the training
    one and generation to stop at the turn's closing token)."""
    print(line(name, metrics))
    assert metrics["last_loss"] < 0.2 * metrics["first_loss"]
    assert metrics["eval_accuracy"] == 1.0


# The element run packed: all 8 rows fit one 1024-token sequence, so a step is one pack and twice the epochs keep
# the step count near the unpacked run's (8 rows / 4 a step x 12 epochs); padding_free keeps batches of 4 rows.
PACKED_RUNS = {"packing": {"packing": True, "per_device_train_batch_size": 1, "epochs": 24},
               "padding_free": {"padding_free": True}}


def main(names: list[str]) -> None:
    logging.disable(logging.WARNING)
    mode = names.pop(0).lstrip("-") if names and names[0] in ("--packing", "--padding_free", "--video") else None
    for case in [BY_NAME[name] for name in names] or (VIDEO if mode == "video" else VISION):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            run = train_clips if mode == "video" else train_elements
            metrics = run(case, build(case, Path(folder) / "model"), Path(folder), **PACKED_RUNS.get(mode, {}))
            print(f"{line(case.name, metrics)} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
