"""Video rows (sft/data/video.py, sft/family/video_budget.py): how a row names its videos, deterministic frame sampling,
the frame and pixel budgets, one line per bad video naming its row (good rows never named), `sft preview` showing frames
and visual tokens, and the dataset keeping paths, not frames. Tiny clips written with PyAV; tiny models of
tests/families/registry.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from transformers import AutoConfig

from sft.cli import main
from sft.data.arrow_rows import load_rows
from sft.data.rows import RowError, iter_rows
from sft.data.video import decode_clip, frame_indices
from sft.errors import UserError
from sft.family.video_budget import VideoBudget
from sft.labels.fit import measure
from sft.labels.labelling import make_collator
from sft.model.loading import processor_and_family
from tests.conftest import REPO, write_image, write_jsonl, write_recipe, write_video

QWEN = "qwen2_5_vl"
BLUE = (40, 90, 220)


# ---- sampling ---------------------------------------------------------------------------------------------------
def test_frames_are_sampled_evenly_at_video_fps_at_least_one_at_most_video_max_frames():
    assert frame_indices(8, 4.0, 2.0, 32, exact=False) == [0, 2, 5, 7]  # 2 s at 2 a second
    assert frame_indices(100, 10.0, 2.0, 5, exact=False) == [0, 25, 50, 74, 99]  # 10 s: capped at 5
    assert frame_indices(1, 30.0, 2.0, 32, exact=False) == [0]  # a single frame still gives one
    assert frame_indices(3, 2.0, None, 5, exact=True) == [0, 0, 1, 2, 2]  # a fixed count repeats a short clip's


def test_a_clip_decodes_to_its_sampled_frames_the_same_each_time(tmp_path):
    path = str(write_video(tmp_path / "blue.mp4", BLUE, frames=8, fps=4))
    clip = decode_clip(path, "t.jsonl:1", 2.0, 32, exact=False)
    assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.metadata == dict(total_num_frames=8, fps=4.0, duration=2.0, frames_indices=[0, 2, 5, 7], height=32,
                                 width=32)
    assert np.abs(clip.frames.reshape(-1, 3).mean(0) - BLUE).max() < 8  # the colour survives mpeg4
    assert np.array_equal(decode_clip(path, "t.jsonl:1", 2.0, 32, exact=False).frames, clip.frames)


# ---- how a row names its videos ---------------------------------------------------------------------------------
def test_a_video_part_a_video_column_and_sharegpt_markers_place_the_rows_videos(tmp_path):
    write_video(tmp_path / "a.mp4")
    write_video(tmp_path / "b.mp4")
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Look:"},
                                                   {"type": "video", "video": "a.mp4"}]},
                      {"role": "assistant", "content": "water"}]},
        {"prompt": "What element?", "completion": "fire", "videos": ["a.mp4", "b.mp4"]},
        {"conversations": [{"from": "human", "value": "<video>\nWhat element?"}, {"from": "gpt", "value": "fire"}],
         "video": "b.mp4"},
    ])
    first, second, third = iter_rows(rows)
    assert first["stored_videos"] == [str(tmp_path / "a.mp4")]
    assert [p["type"] for p in first["messages"][0]["content"]] == ["text", "video"]
    assert second["stored_videos"] == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    assert [p["type"] for p in second["messages"][0]["content"]] == ["video", "video", "text"]  # first user turn
    assert third["stored_videos"] == [str(tmp_path / "b.mp4")]
    assert [p["type"] for p in third["messages"][0]["content"]] == ["video", "text"]


def test_the_dataset_keeps_video_paths_and_no_frames(tmp_path):
    write_video(tmp_path / "a.mp4")
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "What?", "completion": "water", "video": "a.mp4"}])
    dataset = load_rows(rows)
    assert dataset.features["stored_videos"].feature.dtype == "string"
    assert dataset[0]["stored_videos"] == [str(tmp_path / "a.mp4")]


def bad_video_rows(tmp_path) -> list[dict]:
    write_video(tmp_path / "good.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video at all" * 20)
    empty = tmp_path / "empty.avi"  # an AVI with a video stream and no frame in it
    import av

    with av.open(str(empty), "w") as container:
        stream = container.add_stream("mpeg4", rate=2)
        stream.width = stream.height = 32
        container.start_encoding()
        container.mux(stream.encode())
    return [
        {"prompt": "What?", "completion": "water", "video": "good.mp4"},
        {"prompt": "What?", "completion": "water", "video": "missing.mp4"},
        {"prompt": "What?", "completion": "water", "video": "corrupt.mp4"},
        {"prompt": "What?", "completion": "water", "video": "empty.avi"},
        {"conversations": [{"from": "human", "value": "<video><video> What?"}, {"from": "gpt", "value": "fire"}],
         "video": "good.mp4"},
        {"prompt": "What?", "completion": "water", "video": "https://example.com/clip.mp4"},
        {"prompt": "What?", "completion": "water", "video": "good.mp4"},
    ]


def test_each_bad_video_is_one_line_naming_its_row_and_good_rows_are_never_named(family_models, tmp_path, capsys):
    data = write_jsonl(tmp_path / "rows.jsonl", bad_video_rows(tmp_path))
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(family_models.folder(QWEN)),
                          train_file=str(data), max_length=512)
    assert main(["check", str(recipe)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(str(data))]
    assert errors == [
        f"{data}:2: video not found: {tmp_path / 'missing.mp4'}",
        f"{data}:3: cannot read video {tmp_path / 'corrupt.mp4'}: Invalid data found when processing input",
        f"{data}:4: video {tmp_path / 'empty.avi'} has zero frames",
        f"{data}:5: 2 <video> markers for 1 video(s): <video> marker 2 has no video left",
        f"{data}:6: video 'https://example.com/clip.mp4' is a URL; download it first (no network at training time)",
    ]


def test_a_video_in_a_family_without_video_is_one_line_naming_the_family(family_models, tmp_path, capsys):
    write_video(tmp_path / "good.mp4")
    write_image(tmp_path / "img.png")
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "What?", "completion": "water", "image": "img.png"},
                                                 {"prompt": "What?", "completion": "water", "video": "good.mp4"}])
    for name, why in (("llava", "family llava takes no video: its processor takes no videos"),
                      ("idefics3", "family idefics3 takes no video with this checkpoint: its Idefics3Processor has "
                                   "no video processor")):
        recipe = write_recipe(tmp_path / f"{name}.yaml", model_name_or_path=str(family_models.folder(name)),
                              train_file=str(data), max_length=512)
        assert main(["check", str(recipe)]) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(str(data))]
        assert errors == [f"{data}:2: {why}"]


# ---- budgets ----------------------------------------------------------------------------------------------------
def video_item(tmp_path, frames: int = 8, fps: int = 4, size=(64, 64)) -> dict:
    path = write_video(tmp_path / f"clip-{frames}-{size[0]}.mp4", frames=frames, fps=fps, size=size)
    return {"where": "t.jsonl:1", "row": 1, "stored_images": [], "stored_videos": [str(path)],
            "messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                         {"role": "assistant", "content": "water"}]}


def measured(folder, item: dict, budget: VideoBudget | None = None) -> dict:
    processor, family = processor_and_family(str(folder), AutoConfig.from_pretrained(folder), video_budget=budget)
    return measure(item, make_collator(processor, family), None, "drop")


def test_video_fps_and_video_max_frames_choose_the_frames_and_video_max_pixels_the_tokens(family_models, tmp_path):
    folder = family_models.folder(QWEN)
    item = video_item(tmp_path)  # 8 frames at 4 a second, 64 x 64
    default = measured(folder, item)
    assert default["video_frames"] == 4  # 2 s at the default 2 a second
    assert measured(folder, item, VideoBudget(fps=1.0))["video_frames"] == 2
    assert measured(folder, item, VideoBudget(max_frames=3))["video_frames"] == 3
    # Qwen: each pair of frames a grid of 28 px patches merged 2 x 2; 64 x 64 px is 2 x 2 merged patches (4 tokens a
    # pair), a 784 px budget leaves one merged patch (28 x 28) a pair.
    assert default["image_tokens"] == 2 * 4
    assert measured(folder, item, VideoBudget(max_pixels=28 * 28))["image_tokens"] == 2 * 1


def test_a_video_budget_is_refused_in_one_line_where_it_cannot_apply(family_models):
    for name, budget, message in (
            ("smolvlm", VideoBudget(max_pixels=10_000), r"^video_max_pixels: idefics3's video processor makes every "
                                                         r"frame the one size its vision tower takes"),
            ("internvl", VideoBudget(fps=1.0), r"^video_fps: internvl3's processor stacks a batch's clips into one "
                                               r"tensor, so every clip is sampled to exactly video_max_frames"),
            ("llava", VideoBudget(max_frames=8), r"^video_max_frames: family llava takes no video: its processor "
                                                 r"takes no videos; remove the key$"),
            (QWEN, VideoBudget(max_pixels=100), r"^video_max_pixels 100 is below one merged patch"),
            ("gemma4", VideoBudget(max_pixels=1000), r"^video_max_pixels 1000 is below the smallest frame gemma4's "
                                                     r"video processor makes \(70 soft tokens of 1024 px\)$"),
            (QWEN, VideoBudget(fps=0.0), r"^video_fps must be a positive number")):
        folder = family_models.folder(name)
        with pytest.raises(UserError, match=message) as refused:
            processor_and_family(str(folder), AutoConfig.from_pretrained(folder), video_budget=budget)
        assert "\n" not in str(refused.value)


def test_the_processor_saved_with_a_run_keeps_its_frame_budget(family_models, tmp_path):
    folder = shutil.copytree(family_models.folder(QWEN), tmp_path / "model")
    processor, _ = processor_and_family(str(folder), AutoConfig.from_pretrained(folder),
                                        video_budget=VideoBudget(fps=1.0, max_frames=3))
    processor.save_pretrained(folder)
    assert measured(folder, video_item(tmp_path, frames=16))["video_frames"] == 3  # 4 s at 1 a second, capped at 3


def test_preview_shows_each_video_rows_frames_and_visual_tokens(family_models, tmp_path, capsys):
    write_video(tmp_path / "a.mp4", frames=4, fps=2, size=(64, 64))
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "What?", "completion": "water", "video": "a.mp4"},
                                                 {"prompt": "What?", "completion": "fire"}])
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(family_models.folder(QWEN)),
                          train_file=str(data), max_length=512)
    assert main(["preview", str(recipe), "--json"]) == 0
    video, text = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (video["video_frames"], video["visual_tokens"], video["supervised_text"]) == (4, 8, "water<|im_end|>")
    assert "video_frames" not in text


def test_the_video_recipe_parses_and_plans_offline():
    from sft.config.recipe import load_recipe
    from sft.plan.estimate import make_plan

    recipe = load_recipe(REPO / "recipes/video_example.yaml")
    assert recipe.data.video_budget == VideoBudget(fps=2.0, max_frames=16, max_pixels=360 * 420)
    assert make_plan(recipe).lora_params > 0


def test_row_errors_keep_reading_after_a_bad_video(tmp_path):
    """One pass names every bad video (iter_rows keeps going)."""
    items = list(iter_rows(write_jsonl(tmp_path / "rows.jsonl", bad_video_rows(tmp_path))))
    assert [isinstance(item, RowError) for item in items] == [False, True, True, True, True, True, False]
