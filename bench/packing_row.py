"""`make bench` row 6 alone (bench/packing.py: ours padded, packed and padding-free against plain TRL packed, 200
steps, two alternated rounds), for a change to packing without the whole bench:

    .venv/bin/python bench/packing_row.py

The rows and models are the ones bench/bench.py gives row 6; the figures print one line each, then the ratios."""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packing import bench_packing  # noqa: E402

from bench import as_messages, glossary_rows  # noqa: E402
from sft.model.tiny import build_tiny  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="sft-bench-packing-"))
    models = {family: build_tiny(family, work / family) for family in ("llama", "idefics3")}
    images = []
    for index in range(8):
        path = work / f"img{index}.png"
        Image.fromarray(np.full((36, 48, 3), 30 * index, dtype=np.uint8)).save(path)
        images.append(str(path))
    elements = work / "elements.jsonl"
    elements.write_text("".join(json.dumps({"image": images[i % 8], "prompt": "What element is shown?",
                                            "target": ("water", "fire")[i % 2]}) + "\n" for i in range(64)))
    text_rows = list(map(as_messages, glossary_rows(256, random.Random(3))))
    result = bench_packing(models, work / "packing", text_rows, elements, steps=200)
    for rows, runs in result.items():
        for name, figures in runs.items():
            print(rows, name, {key: round(value, 4) for key, value in figures.items()})
    text = {name: figures["supervised_tokens_per_s"] for name, figures in result["text"].items()}
    print(f"text ours packing / plain TRL packing: {text['ours packing'] / text['plain TRL packing']:.2f}x")
    print(f"text ours packing / ours padded: {text['ours packing'] / text['ours padded']:.2f}x")


if __name__ == "__main__":
    main()
