"""Write a small element dataset: solid-colour images with a little noise -> water / fire / earth / wind.

Rows look like the users' SmolVLM data: {"image", "prompt", "target"} (read with column_map {completion: target}).
Usage: python scripts/make_elements.py OUT_DIR [--train 64] [--eval 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"water": (40, 90, 220), "fire": (230, 60, 30), "earth": (120, 80, 40), "wind": (220, 220, 230)}
PROMPT = "What element is shown in this picture? Answer with one word."


def write_split(out: Path, name: str, count: int, rng: np.random.Generator) -> Path:
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels = list(COLOURS)
    path = out / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            label = labels[index % len(labels)]
            size = rng.integers(24, 48, size=2)
            pixels = np.clip(np.array(COLOURS[label]) + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8)
            image = f"images/{name}_{index:04d}.png"
            Image.fromarray(pixels).save(out / image)
            handle.write(json.dumps({"image": image, "prompt": PROMPT, "target": label}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for name, count in (("train", args.train), ("val", args.eval)):
        print(write_split(args.out, name, count, rng))


if __name__ == "__main__":
    main()
