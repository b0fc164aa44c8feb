"""Grounding rows in ms-swift's format (`<ref-object>`, `<bbox>`, `objects`): each family with a convention supervises
the box in its own frame, within 1 of the value computed from the size the processor actually produced for the image
(Qwen2.5-VL at two image budgets); bad rows are refused in one line naming file:line (sft/data/objects.py,
sft/family/boxes.py, sft/labels/grounding.py)."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from sft.cli import _recipe_and_collator
from sft.cli import main as sft
from sft.data.messages import text_of
from sft.data.rows import RowError, iter_rows
from sft.errors import UserError
from sft.eval.boxes import box_scores
from sft.family.boxes import CONVENTIONS
from sft.family.families import FAMILIES
from sft.labels.collator import IGNORE_INDEX
from tests.conftest import write_image, write_jsonl, write_recipe

WIDTH, HEIGHT = 300, 200
BOX = [30, 40, 130, 100]  # pixels of the 300 x 200 image
ROW = {"messages": [{"role": "user", "content": "Find the <ref-object>."}, {"role": "assistant", "content": "<bbox>"}],
       "image": "scene.png", "objects": {"ref": ["red square"], "bbox": [BOX]}}


def grounding_setup(family_models, tmp_path, case: str, rows: list[dict], **keys):
    write_image(tmp_path / "scene.png", (200, 30, 30), size=(HEIGHT, WIDTH))
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    path = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder(case)),
                        train_file=str(train), max_length=4096, output_dir=str(tmp_path / "run"), **keys)
    return path, train


def supervised_and_size(collator, example) -> tuple[str, tuple[int, int]]:
    """The supervised text of a row and the (width, height) the processor resized its image to (Qwen: from
    image_grid_thw, the processor's own output; other families: the original size, their frames are relative)."""
    encoded = collator.encode(example)
    text = collator.tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels)
                                      if label != IGNORE_INDEX])
    images = collator.load_images(example)
    if "image_grid_thw" in collator.family.extra_inputs:
        processed = collator._process([collator.render(collator.messages_of(example, images))], [images])
        _, grid_h, grid_w = processed["image_grid_thw"][0].tolist()
        patch = collator.processing_class.image_processor.patch_size
        return text, (grid_w * patch, grid_h * patch)
    return text, (WIDTH, HEIGHT)


def expected_frame(convention: str, size: tuple[int, int]) -> list[float]:
    """BOX in the convention's frame, computed here from its definition (not with sft/family/boxes.py)."""
    x1, y1, x2, y2 = BOX
    if convention == "qwen2_5_vl":
        return [x1 / WIDTH * size[0], y1 / HEIGHT * size[1], x2 / WIDTH * size[0], y2 / HEIGHT * size[1]]
    if convention == "paligemma":  # 1023 bins, y first
        return [y1 / HEIGHT * 1023, x1 / WIDTH * 1023, y2 / HEIGHT * 1023, x2 / WIDTH * 1023]
    return [x1 / WIDTH * 1000, y1 / HEIGHT * 1000, x2 / WIDTH * 1000, y2 / HEIGHT * 1000]


# The tiny Qwen processors keep at most 4,096 pixels of an image; the budget case lowers that to two merged patches.
CASES = [("qwen2_vl", {}), ("qwen2_5_vl", {}), ("qwen2_5_vl", {"image_max_pixels": 2 * 28 * 28}),
         ("qwen3_vl", {}), ("qwen3_5_nothink", {}), ("internvl", {}), ("paligemma", {})]


@pytest.mark.parametrize("case, keys", CASES, ids=[f"{case}{'-budget' if keys else ''}" for case, keys in CASES])
def test_a_grounding_row_supervises_the_box_in_the_familys_frame(family_models, tmp_path, case, keys):
    path, train = grounding_setup(family_models, tmp_path, case, [ROW], **keys)
    recipe, collator = _recipe_and_collator(argparse.Namespace(recipe=str(path)), [])
    convention = CONVENTIONS[collator.family.boxes]
    example = next(iter_rows(train))
    supervised, size = supervised_and_size(collator, example)
    numbers = [int(n) for n in re.findall(r"\d+", supervised.replace("<|im_end|>", ""))]
    expected = expected_frame(convention.name, size)
    assert len(numbers) == 4 and all(abs(got - want) <= 1 for got, want in zip(numbers, expected)), (supervised,
                                                                                                   expected)
    filled = " ".join(text_of(m) for m in collator.messages_of(example, collator.load_images(example)))
    assert convention.ref.format(ref="red square") in filled and "<ref-object>" not in filled


def test_the_budget_moves_qwen2_5_vl_boxes_with_the_image(family_models, tmp_path):
    boxes = []
    for keys in ({}, {"image_max_pixels": 2 * 28 * 28}):
        folder = tmp_path / str(len(boxes))
        folder.mkdir()
        path, train = grounding_setup(family_models, folder, "qwen2_5_vl", [ROW], **keys)
        _, collator = _recipe_and_collator(argparse.Namespace(recipe=str(path)), [])
        boxes.append(supervised_and_size(collator, next(iter_rows(train))))
    assert boxes[0][1] != boxes[1][1] and boxes[0][0] != boxes[1][0]  # another size, another box


def test_every_family_names_a_known_convention_or_none():
    assert [family.name for family in FAMILIES if family.boxes is not None and family.boxes not in CONVENTIONS] == []
    assert {family.name for family in FAMILIES if family.boxes} == {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5",
                                                                    "internvl3", "paligemma"}


def test_a_family_without_a_convention_takes_the_recipes_choice_or_refuses(family_models, tmp_path):
    path, train = grounding_setup(family_models, tmp_path, "mllama", [ROW])
    _, collator = _recipe_and_collator(argparse.Namespace(recipe=str(path)), [])
    with pytest.raises(UserError, match=r"train.jsonl:1: family mllama has no grounding convention in the table; set "
                                        r"box_convention to one of"):
        collator.encode(next(iter_rows(train)))
    path = write_recipe(tmp_path / "chosen.yaml", model_name_or_path=str(family_models.folder("mllama")),
                        train_file=str(train), max_length=4096, box_convention="norm1000")
    _, collator = _recipe_and_collator(argparse.Namespace(recipe=str(path)), [])
    encoded = collator.encode(next(iter_rows(train)))
    supervised = collator.tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels)
                                            if label != IGNORE_INDEX])
    assert supervised.startswith("[100, 200, 433, 500]")


def bad(row_change: dict, objects_change: dict | None = None) -> dict:
    objects = {**ROW["objects"], **(objects_change or {})}
    return {**ROW, **row_change, "objects": objects}


@pytest.mark.parametrize("row, message", [
    (bad({}, {"bbox": [BOX, BOX]}), r"1 <ref-object> and 1 <bbox> placeholders, but 1 refs and 2 boxes"),
    (bad({}, {"ref": []}), r"1 <ref-object> and 1 <bbox> placeholders, but 0 refs and 1 boxes"),
    (bad({}, {"bbox": [[130, 40, 30, 100]]}), r'"objects.bbox\[0\]" \[130, 40, 30, 100\]: x2 < x1'),
    (bad({}, {"bbox": [[30, 100, 130, 40]]}), r'"objects.bbox\[0\]" \[30, 100, 130, 40\]: y2 < y1'),
    (bad({}, {"bbox": [[30, 40, 330, 100]]}), r"lies outside image 0 \(300 x 200 pixels\)"),
    (bad({}, {"bbox": [[0.1, 0.2, 1.5, 0.5]], "bbox_type": "norm1"}), r"a norm1 value outside 0-1"),
    (bad({}, {"image_id": [1]}), r'"objects.image_id\[0\]" is 1 but the row has 1 image\(s\)'),
    (bad({}, {"bbox_type": "pixels"}), r'"objects.bbox_type" must be real or norm1'),
    ({k: v for k, v in ROW.items() if k != "objects"}, r'<ref-object> placeholder in the messages but the row has '
                                                        r'no "objects"'),
])
def test_a_bad_grounding_row_is_refused_in_one_line_naming_its_place(tmp_path, row, message):
    write_image(tmp_path / "scene.png", size=(HEIGHT, WIDTH))
    train = write_jsonl(tmp_path / "train.jsonl", [ROW, row])
    items = list(iter_rows(train))
    assert not isinstance(items[0], RowError)
    assert isinstance(items[1], RowError) and items[1].where == f"{train}:2"
    assert re.search(message, items[1].message), items[1].message


def test_norm1_boxes_are_stored_in_pixels_of_their_image(tmp_path):
    write_image(tmp_path / "scene.png", size=(HEIGHT, WIDTH))
    row = bad({}, {"bbox": [[0.1, 0.2, 0.5, 0.5]], "bbox_type": "norm1"})
    item = next(iter_rows(write_jsonl(tmp_path / "train.jsonl", [row])))
    assert '"bbox": [[30.0, 40.0, 150.0, 100.0]]' in item["objects"]


def test_sft_check_names_a_bad_grounding_row(family_models, tmp_path, capsys):
    path, train = grounding_setup(family_models, tmp_path, "qwen2_vl", [ROW, bad({}, {"image_id": [2]})])
    assert sft(["check", str(path)]) == 1
    assert f'{train}:2: "objects.image_id[0]" is 2 but the row has 1 image(s)' in capsys.readouterr().err


def read_back(family_models, tmp_path, case: str, row: dict, keys: dict):
    """(overall, per-row box scores, tolerance) of the row's own supervised reply read back as a generation: decoded
    as generation decodes it; the tolerance is the frame's step (a processed-pixel frame's, in original pixels)."""
    path, train = grounding_setup(family_models, tmp_path, case, [row], **keys)
    _, collator = _recipe_and_collator(argparse.Namespace(recipe=str(path)), [])
    example = next(iter_rows(train))
    encoded = collator.encode(example)
    answer = collator.tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels)
                                        if label != IGNORE_INDEX], skip_special_tokens=True)
    overall, rows = box_scores(collator, [example], [answer])
    _, size = supervised_and_size(collator, example)
    return overall, rows, 1 + max(WIDTH / size[0], HEIGHT / size[1]) if collator.family.boxes == "qwen2_5_vl" else 1


@pytest.mark.parametrize("case, keys", CASES, ids=[f"{case}{'-budget' if keys else ''}" for case, keys in CASES])
def test_a_written_box_reads_back_in_original_pixels(family_models, tmp_path, case, keys):
    """What a model that learnt the row would answer (its supervised reply, decoded as generation decodes it) gives
    the row's own box back in pixels of the original image, within the frame's step, and IoU near 1."""
    overall, rows, tolerance = read_back(family_models, tmp_path, case, ROW, keys)
    assert rows[0]["reference_boxes"] == [[float(v) for v in BOX]]
    assert len(rows[0]["boxes"]) == 1 and all(abs(a - b) <= tolerance for a, b in zip(rows[0]["boxes"][0], BOX))
    assert overall["box_iou"] > 0.8 and overall["box_acc50"] == 1.0


@pytest.mark.parametrize("case, keys", CASES, ids=[f"{case}{'-budget' if keys else ''}" for case, keys in CASES])
def test_a_written_point_reads_back_in_original_pixels(family_models, tmp_path, case, keys):
    """A point row's supervised reply, decoded as generation decodes it, gives the point back in original pixels."""
    point = [150, 100]
    row = {**ROW, "objects": {"ref": ["red square"], "bbox": [point]}}
    overall, rows, tolerance = read_back(family_models, tmp_path, case, row, keys)
    assert overall == {} and rows[0]["reference_points"] == [[150.0, 100.0]]
    assert len(rows[0]["points"]) == 1 and all(abs(a - b) <= tolerance for a, b in zip(rows[0]["points"][0], point))


@pytest.mark.parametrize("case", ["qwen2_vl", "internvl", "paligemma"])
def test_boxes_are_paired_with_references_by_their_names_then_in_order(family_models, tmp_path, case):
    """Two named boxes answered in the other order: each is scored against the reference of its name (in order,
    both would score 0); an unnamed answer falls back to order."""
    from sft.family.boxes import CONVENTIONS, written_box

    other = [170, 100, 280, 190]
    refs = ["red square", "blue circle"]
    row = {"messages": [{"role": "user", "content": "Find both."},
                        {"role": "assistant", "content": "<ref-object><bbox> <ref-object><bbox>"}],
           "image": "scene.png", "objects": {"ref": refs, "bbox": [BOX, other]}}
    path, train = grounding_setup(family_models, tmp_path, case, [row])
    _, collator = _recipe_and_collator(argparse.Namespace(recipe=str(path)), [])
    example = next(iter_rows(train))
    convention = CONVENTIONS[collator.family.boxes]
    written = {name: written_box(convention, box, (WIDTH, HEIGHT), collator.processing_class)
               for name, box in zip(refs, [BOX, other])}
    answer = f"blue circle{written['blue circle']} red square{written['red square']}"
    for token in collator.replies.toolkit_tokens:  # as generation decodes: without the convention's special tokens
        answer = answer.replace(token, "")
    overall, rows = box_scores(collator, [example], [answer])
    assert rows[0]["box_labels"] == ["blue circle", "red square"]
    assert rows[0]["reference_labels"] == refs
    assert overall["box_acc50"] == 1.0 and overall["box_iou"] > 0.9
    unnamed = answer.replace("blue circle", "").replace("red square", "")
    assert box_scores(collator, [example], [unnamed])[0]["box_acc50"] == 0.0  # in order: each box on the other


def test_sft_predict_writes_boxes_in_original_pixels_and_box_metrics(family_models, tmp_path):
    from sft.outputs.predict import predict

    path, train = grounding_setup(family_models, tmp_path, "qwen2_vl", [ROW, {**ROW, "objects": {
        "ref": ["red square"], "bbox": [[0.5, 0.5, 1.0, 1.0]], "bbox_type": "norm1"}}])
    result = predict(family_models.folder("qwen2_vl"), train, tmp_path / "predictions.jsonl", max_new_tokens=8)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [row["reference_boxes"] for row in rows] == [[[30.0, 40.0, 130.0, 100.0]], [[150.0, 100.0, 300.0, 200.0]]]
    assert all(isinstance(row["boxes"], list) and 0 <= row["box_iou"] <= 1 for row in rows)
    assert rows[0]["reference"] == "(100,200),(433,500)"  # as generation decodes: without its special tokens
    assert set(result["metrics"]) >= {"box_iou", "box_acc50"}


def test_the_data_page_draws_each_box_on_its_thumbnail(family_models, tmp_path, capsys):
    """In headless Chromium: the rendered box lies where the row's box lies on the rendered thumbnail."""
    from tests.browser import Browser, find_chromium

    path, _ = grounding_setup(family_models, tmp_path, "qwen2_vl", [ROW])
    assert sft(["preview", str(path), "--html", str(tmp_path / "page.html")]) == 0
    browser = Browser(find_chromium())
    try:
        browser.open((tmp_path / "page.html").as_uri())
        assert browser.console_errors() == []
        image, box = browser.evaluate(
            "[document.querySelector('.boxed img'), document.querySelector('.boxes rect')].map(e => {"
            "const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })")
        label = browser.evaluate("document.querySelector('.box-label').textContent")
    finally:
        browser.close()
    across, down = (image[2] - 2) / WIDTH, (image[3] - 2) / HEIGHT  # inside the img's 1px border
    assert abs(across - down) < 0.02  # the thumbnail keeps the image's proportions
    expected = [BOX[0] * across, BOX[1] * down, (BOX[2] - BOX[0]) * across, (BOX[3] - BOX[1]) * down]
    drawn = [box[0] - image[0] - 1, box[1] - image[1] - 1, box[2], box[3]]
    assert all(abs(a - b) <= 2 for a, b in zip(drawn, expected)), (drawn, expected)
    assert label == "red square"


# Each corner has its own colour and the square covers most of the image: with a frozen random tiny vision tower,
# LoRA did not learn position alone (measured: a 32 px square of one colour, 60 epochs, the same box for every
# held-out row), while colour it learns, as every family's element test shows; so this checks the pipeline (boxes
# written, generated, read back, scored), not the tiny model's sense of space.
QUADRANTS = {(0, 0): (220, 30, 30), (16, 0): (30, 60, 220), (0, 16): (30, 200, 60), (16, 16): (230, 220, 40)}


def square_rows(folder, count: int) -> list[dict]:
    """A 48 x 48 square in one corner of a black 64 x 64 image, asked for, answered with its box."""
    import numpy as np
    from PIL import Image

    rows = []
    for index in range(count):
        (x, y), colour = list(QUADRANTS.items())[index % 4]
        pixels = np.zeros((64, 64, 3), dtype=np.uint8)
        pixels[y:y + 48, x:x + 48] = colour
        Image.fromarray(pixels).save(folder / f"{index}.png")
        rows.append({"messages": [{"role": "user", "content": "Where is the <ref-object>?"},
                                  {"role": "assistant", "content": "<bbox>"}],
                     "image": f"{index}.png", "objects": {"ref": ["square"], "bbox": [[x, y, x + 48, y + 48]]}})
    return rows


def test_a_tiny_model_learns_to_box_a_square_on_held_out_rows(family_models, tmp_path):
    """Qwen2-VL's convention, trained as any row is (LoRA, 120 steps of 8 rows); the final evaluation generates on
    4 held-out rows and reads the boxes back: IoU 0.5 or more on each."""
    from sft.config.recipe import load_recipe
    from sft.run.train import main as train

    train_file = write_jsonl(tmp_path / "train.jsonl", square_rows(tmp_path, 8))
    eval_file = write_jsonl(tmp_path / "val.jsonl", square_rows(tmp_path, 4))
    path = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder("qwen2_vl")),
                        train_file=str(train_file), eval_file=str(eval_file), output_dir=str(tmp_path / "run"),
                        max_length=1024, num_train_epochs=120, per_device_train_batch_size=8,
                        per_device_eval_batch_size=4, learning_rate=5e-3, eval_strategy="no", logging_steps=4,
                        gradient_checkpointing=False, seed=0)
    metrics = train(load_recipe(path))
    assert metrics["eval_box_acc50"] == 1.0 and metrics["eval_box_iou"] >= 0.5, metrics
    assert metrics["eval_accuracy"] == 1.0  # exact match of the box text, compared as generation decodes it
    final = [json.loads(line) for line in (tmp_path / "run" / "eval_predictions" / "final.jsonl").read_text()
             .splitlines()]
    assert len(final) == 4 and all(len(row["boxes"]) == 1 and row["box_iou"] >= 0.5 for row in final)
    assert_the_report_draws_both_boxes(tmp_path / "run" / "report.html", final, size=64)


def assert_the_report_draws_both_boxes(page, final: list[dict], size: int) -> None:
    """In headless Chromium: each eval row's reference and predicted box lie on its thumbnail where the prediction
    file puts them (in original pixels, scaled to the thumbnail)."""
    from tests.browser import Browser, find_chromium

    browser = Browser(find_chromium())
    try:
        browser.open(page.as_uri())
        assert browser.console_errors() == []
        drawn = browser.evaluate(
            "Array.from(document.querySelectorAll('section.evaluation:last-of-type table.predictions tbody tr'), "
            "tr => { const img = tr.querySelector('.boxed img').getBoundingClientRect(); "
            "return Array.from(tr.querySelectorAll('.boxes rect'), r => { const b = r.getBoundingClientRect(); "
            "return [r.getAttribute('class'), (b.left - img.left) / img.width, (b.top - img.top) / img.height, "
            "(b.right - img.left) / img.width, (b.bottom - img.top) / img.height]; }); })")
    finally:
        browser.close()
    assert len(drawn) == len(final)
    for rects, row in zip(drawn, final):
        assert [rect[0] for rect in rects] == ["reference", "predicted"]
        for (_, *shown), box in zip(rects, [row["reference_boxes"][0], row["boxes"][0]]):
            expected = [value / size for value in box]
            assert all(abs(a - b) < 0.03 for a, b in zip(shown, expected)), (shown, expected)


def test_predict_writes_boxes_in_the_runs_chosen_convention(family_models, tmp_path):
    """A run that chose `box_convention` records it; predict on its folder (here a model folder with the run's
    manifest) writes and reads boxes the same way."""
    import shutil

    from sft.outputs.predict import load_for_inference

    folder = tmp_path / "merged"
    shutil.copytree(family_models.folder("mllama"), folder)
    (folder / "run_manifest.json").write_text(json.dumps({"recipe": {"data": {"box_convention": "norm1000"}}}))
    assert load_for_inference(folder)[3].boxes == "norm1000"
