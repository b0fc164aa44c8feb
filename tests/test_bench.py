"""`make bench` runs: each of its rows on tiny inputs (no timing is asserted; the bench reports ratios itself).

The bench has no other caller, and it had stopped running twice after changes elsewhere (a collator method's
signature, prepare_split taking rows instead of a path).
"""

from __future__ import annotations

import random
import sys

import numpy as np
from PIL import Image

from tests.conftest import REPO, write_video

sys.path.insert(0, str(REPO / "bench"))
import bench  # noqa: E402


def test_collator_rows_time_ours_trl_and_the_naive_collator(tiny_models, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["idefics3"])
    paths = []
    for index in range(8):
        Image.fromarray(np.full((36, 48, 3), 30 * index, dtype=np.uint8)).save(tmp_path / f"{index}.png")
        paths.append(str(tmp_path / f"{index}.png"))
    for images in (paths, None):
        result = bench.bench_collators(processor, images, repeats=1)
        assert result["ours"] > 0 and result["naive"] > 0 and (result["trl"] or 0) > 0, result


def test_training_row_runs_ours_and_plain_trl(tiny_models, tmp_path):
    result = bench.bench_training(tiny_models["llama"], tmp_path, bench.glossary_rows(16, random.Random(2)), steps=2)
    assert result["ours_tokens_per_s"] > 0 and result["trl_tokens_per_s"] > 0, result


def test_memory_row_builds_the_training_dataset_in_a_fresh_process(tiny_models, tmp_path):
    """One of the memory rows' measurements (the `check` one is `sft check`, tested with the CLI)."""
    Image.new("RGB", (32, 40)).save(tmp_path / "0.png")
    data = bench.write_memory_rows("parquet_image", tmp_path, 4, random.Random(0), tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {tiny_models['mllama']}\ntrain_file: {data}\nmax_length: 1024\n")
    peak_mib, seconds = bench.peak_rss("dataset", recipe)
    assert peak_mib > 0 and seconds > 0


def test_video_memory_row_builds_the_training_dataset_of_video_rows_in_a_fresh_process(family_models, tmp_path):
    for index in range(4):
        write_video(tmp_path / f"{index}.mp4")
    data = bench.write_memory_rows("video", tmp_path, 4, random.Random(0), tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {family_models.folder('qwen2_5_vl')}\ntrain_file: {data}\n"
                      "max_length: 1024\n")
    peak_mib, seconds = bench.peak_rss("dataset", recipe)
    assert peak_mib > 0 and seconds > 0


def test_packing_row_runs_ours_padded_packed_padding_free_and_plain_trl_packed(tiny_models, tmp_path):
    from packing import bench_packing

    Image.new("RGB", (36, 48)).save(tmp_path / "0.png")
    elements = tmp_path / "elements.jsonl"
    elements.write_text("".join(f'{{"image": "{tmp_path / "0.png"}", "prompt": "What?", "target": "{answer}"}}\n'
                                for answer in ["water", "a large fire on the hill"] * 4))  # two lengths: padding
    rows = [bench.as_messages(r) for r in bench.glossary_rows(16, random.Random(3))]
    result = bench_packing(tiny_models, tmp_path / "packing", rows, elements, steps=1, repeats=1)
    assert set(result["text"]) == {"ours padded", "ours packing", "ours padding_free", "plain TRL packing"}
    for runs in result.values():
        assert all(m["supervised_tokens_per_s"] > 0 for m in runs.values()), runs
        assert runs["ours packing"]["padding_share"] == 0.0 < runs["ours padded"]["padding_share"]
