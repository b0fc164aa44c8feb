"""The HTML pages: `sft preview --html` shows exactly the collator's supervised spans beside the rows' images, the run
report shows each evaluation's predictions; data is escaped and never runs. Browser tests share one headless
Chromium (tests/browser.py)."""

from __future__ import annotations

import argparse
import io
import json
from contextlib import redirect_stdout

import pytest
from PIL import Image

from sft.check.inspect_data import inspect_rows, preview
from sft.cli import _recipe_and_collator, main
from sft.data.sources import sha256_of
from sft.eval.history import marked_difference
from sft.pages.preview_page import write_preview_page
from sft.pages.run_report import write_report
from sft.pages.token_pieces import supervised_runs, token_runs
from tests.browser import Browser, find_chromium
from tests.conftest import write_image, write_jsonl, write_recipe

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
ELEMENTS = {"water": (40, 90, 220), "fire": (230, 60, 30), "earth": (120, 80, 40)}


def preview_rows() -> list:
    return [
        {"prompt": "What element is shown?", "completion": "water", "image": "water.png"},
        {"prompt": HOSTILE, "completion": "fire", "image": "fire.png"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "And this one?"}, {"role": "assistant", "content": "earth"}],
         "image": "earth.png"},
        {"prompt": "Formwork is a temporary mould. " * 20, "completion": "fire"},
        {"prompt": "Qu'est-ce que c'est ? 漢字", "completion": "über"},
    ]


@pytest.fixture(scope="module")
def labelled(family_models, tmp_path_factory):
    """The preview page of preview_rows() (2 rows a browser page), with what `sft preview --json` and the collator
    say of each row."""
    folder = tmp_path_factory.mktemp("preview")
    for name, colour in ELEMENTS.items():
        write_image(folder / f"{name}.png", colour, size=(300, 400))
    train = write_jsonl(folder / "train.jsonl", preview_rows())
    recipe_path = write_recipe(folder / "recipe.yaml", model_name_or_path=str(family_models.folder("mllama")),
                               train_file=str(train), max_length=96, output_dir=str(folder / "run"))
    recipe, collator = _recipe_and_collator(argparse.Namespace(recipe=str(recipe_path)), [])
    printed = io.StringIO()
    with redirect_stdout(printed):
        preview(recipe, collator, limit=10, as_json=True)
    records = [json.loads(line) for line in printed.getvalue().splitlines()]
    labels = [info["encoded"].labels for _, info in inspect_rows(recipe, collator, recipe.data.train_file)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sft.pages.preview_page.PAGE_ROWS", 2)
        path, counts = write_preview_page(recipe, collator, folder / "preview.html")
    return {"path": path, "counts": counts, "records": records, "labels": labels, "folder": folder,
            "recipe": recipe, "collator": collator}


def run_folder(folder, images: bool = True):
    """A finished run as sft train leaves it (manifest, trainer state, three evaluations), without training."""
    rows = []
    for name in ELEMENTS:
        write_image(folder / f"{name}.png", ELEMENTS[name], size=(200, 300))
        rows.append({"prompt": "What element?", "target": name, **({"image": f"{name}.png"} if images else {})})
    val = write_jsonl(folder / "val.jsonl", rows)
    run = folder / "run"
    (run / "eval_predictions").mkdir(parents=True)
    manifest = {"recipe_file": "recipe.yaml",
                "recipe": {"data": {"eval_file": str(val), "column_map": {"completion": "target"}},
                           "model": {"model_name_or_path": "tiny"}, "training": {"learning_rate": 0.003}},
                "base_model": {"path": "tiny", "architectures": ["MllamaForConditionalGeneration"]},
                "versions": {"trl": "1.16.0"}, "git_commit": "abc",
                "data_files": {"eval_file": {"path": str(val), "sha256": sha256_of(val)}},
                "model_setup": {"family": "mllama", "found_by": "config.model_type mllama",
                                "parts": {"vision_tower": "frozen", "language_model": "lora"},
                                "params": {"vision_tower": 1000, "language_model": 5000},
                                "trainable_params": {"vision_tower": 0, "language_model": 64},
                                "lora_modules": ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]},
                "rows": {"eval": {"ok": 3}}, "evaluation": {"metrics": ["exact_match"], "why": "labels"}}
    (run / "run_manifest.json").write_text(json.dumps(manifest))
    history = [{"step": 1, "loss": 3.0, "learning_rate": 0.003}, {"step": 2, "loss": 1.0, "learning_rate": 0.003},
               {"step": 2, "eval_loss": 1.5, "eval_exact_match": 0.33}, {"step": 4, "loss": 0.2},
               {"step": 4, "eval_loss": 0.3, "eval_exact_match": 1.0}]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    predictions = {"step-2": ["water", HOSTILE, "fire"], "step-4": ["water", "fire", "earth"],
                   "final": ["water", "fire", "earth"]}
    for name, replies in predictions.items():
        write_jsonl(run / "eval_predictions" / f"{name}.jsonl",
                    [{"row": n, "prompt": "user What element? assistant", "prediction": reply, "reference": ref,
                      "scores": {"exact_match": float(reply == ref)}}
                     for n, (reply, ref) in enumerate(zip(replies, ELEMENTS), start=1)])
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return write_report(run_folder(tmp_path_factory.mktemp("report")))


@pytest.fixture(scope="module")
def browser():
    chromium = Browser(find_chromium())
    yield chromium
    chromium.close()


# ---- the preview page -------------------------------------------------------------------------------------------
def test_preview_page_counts_every_row_and_escapes_the_data(labelled):
    html = labelled["path"].read_text(encoding="utf-8")
    counts = labelled["counts"]
    assert (counts["seen"], counts["ok"], counts["truncated"], counts["dropped"], counts["bad"]) == (5, 4, 0, 1, 0)
    assert html.count("<script") == 1 and "<img src=x" not in html  # the page's own script; the row's is text
    assert "&lt;" in html and "&#34;" in html
    assert "dropped: text too long for max_length 96" in html


def test_preview_page_embeds_downscaled_thumbnails_not_the_files(labelled):
    html = labelled["path"].read_text(encoding="utf-8")
    assert html.count('src="data:image/jpeg;base64,') == 3
    assert str(labelled["folder"]) + "/water.png" not in html and 'width="128" height="96"' in html


def test_token_runs_give_each_token_its_text_and_collapse_repeated_placeholders(labelled):
    tokenizer = labelled["collator"].tokenizer
    prompt, reply = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("Qu'est-ce 漢字", " über"))
    image = tokenizer.convert_tokens_to_ids("<|image|>")
    runs = token_runs(tokenizer, [image] * 4 + prompt + reply, [-100] * (4 + len(prompt)) + reply)
    assert [run["supervised"] for run in runs] == [False, True]
    assert runs[0]["pieces"][0] == {"text": "<|image|>", "ids": [image], "repeat": 4, "special": True}
    text = "".join(piece["text"] for run in runs for piece in run["pieces"][1 if run is runs[0] else 0:])
    assert text == "Qu'est-ce 漢字 über"
    assert supervised_runs([-100, 5, 6, -100, 7, -100]) == [(1, 3), (4, 5)]


def test_marked_difference_marks_extra_and_missing_words():
    assert marked_difference("the red fire", "the blue fire") == [
        {"kind": "same", "text": "the "}, {"kind": "missing", "text": "red"}, {"kind": "extra", "text": "blue"},
        {"kind": "same", "text": " fire"}]
    assert marked_difference(None, "x") == [{"kind": "same", "text": "x"}]


def test_preview_html_command_writes_the_page(labelled, tmp_path, capsys):
    recipe = labelled["recipe"]
    assert main(["preview", str(recipe.path), "--html", str(tmp_path / "page.html"), "--limit", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "page.html").read_text(encoding="utf-8").count('<article class="row"') == 2


def test_preview_page_loads_without_errors_and_images_load(labelled, browser):
    browser.open(labelled["path"].as_uri())
    assert browser.console_errors() == []
    widths = browser.evaluate("Array.from(document.querySelectorAll('article.row img'), i => i.naturalWidth)")
    assert widths == [128, 128, 128]  # 400 x 300 images, downscaled


def test_highlighted_spans_are_the_collators_supervised_spans(labelled, browser):
    browser.open(labelled["path"].as_uri())
    shown = browser.evaluate("Array.from(document.querySelectorAll('article.row'), a => "
                             "Array.from(a.querySelectorAll('mark.sup'), m => m.textContent))")
    assert [len(spans) for spans in shown] == [len(supervised_runs(labels)) for labels in labelled["labels"]]
    assert [len(spans) for spans in shown] == [1, 1, 2, 1, 1]
    assert ["".join(spans) for spans in shown] == [record["supervised_text"] for record in labelled["records"]]


def test_filters_search_and_paging_change_what_is_shown(labelled, browser):
    browser.open(labelled["path"].as_uri())
    visible = "Array.from(document.querySelectorAll('article.row'), a => a.hidden ? '' : a.dataset.status)" \
              ".filter(Boolean)"
    assert browser.evaluate(visible) == ["ok", "ok"]  # 2 a page
    browser.evaluate("document.getElementById('next').click()")
    assert browser.evaluate(visible) == ["ok", "dropped"]
    browser.evaluate("document.querySelector('input[value=ok]').click()")
    assert browser.evaluate(visible) == ["dropped"]
    browser.evaluate("document.querySelector('input[value=ok]').click();"
                     "const s = document.getElementById('search'); s.value = 'über';"
                     "s.dispatchEvent(new Event('input'))")
    assert browser.evaluate(visible) == ["ok"]
    assert "1 of 1 matching" in browser.evaluate("document.getElementById('showing').textContent")


def test_a_script_in_a_row_does_not_run_and_shows_as_text(labelled, browser):
    browser.open(labelled["path"].as_uri())
    assert browser.evaluate("typeof window.pwned") == "undefined"
    assert browser.evaluate("document.scripts.length") == 1
    assert HOSTILE in browser.evaluate("document.querySelectorAll('article.row')[1].textContent")
    assert browser.evaluate("document.querySelectorAll('img[src=x]').length") == 0
    assert browser.console_errors() == []


# ---- the run report ---------------------------------------------------------------------------------------------
def test_report_command_writes_the_page_with_each_evaluation(tmp_path, capsys):
    run = run_folder(tmp_path, images=False)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'report.html'}"
    html = (run / "report.html").read_text(encoding="utf-8")
    assert all(f'id="eval-{name}"' in html for name in ("step-2", "step-4", "final"))
    assert "&lt;script&gt;window.pwned" in html and html.count("<script>") == 1
    assert "changed since step-2" in html and "2 rows (2 better)" in html


def test_report_loads_without_errors_with_thumbnails_in_every_table(report, browser):
    browser.open(report.as_uri())
    assert browser.console_errors() == []
    widths = browser.evaluate("Array.from(document.querySelectorAll('table.predictions img'), i => i.naturalWidth)")
    assert widths == [128] * 9  # three rows in three evaluations, 300 x 200 images downscaled
    assert browser.evaluate("document.querySelectorAll('svg.chart polyline').length") == 4  # 2 loss, metric, lr
    assert report.stat().st_size < 60_000


def test_report_sorts_by_score_and_links_changed_rows(report, browser):
    browser.open(report.as_uri())
    table = "document.querySelector('#eval-step-2 table.predictions')"
    order = f"Array.from({table}.tBodies[0].rows, r => r.cells[1].textContent + ':' + r.cells[6].textContent)"
    assert browser.evaluate(order) == ["1:1", "2:0", "3:0"]
    score_header = f"{table}.querySelectorAll('th[data-sort]')[2]"  # #, row, exact_match
    assert browser.evaluate(f"{score_header}.textContent") == "exact_match"
    browser.evaluate(f"{score_header}.click(); {score_header}.click()")  # highest first, then lowest first
    assert browser.evaluate(order) == ["2:0", "3:0", "1:1"]
    table = "document.querySelector('#eval-step-4 table.predictions')"
    browser.evaluate("document.querySelector('#eval-step-4 input.only-changed').click()")
    assert browser.evaluate(f"Array.from({table}.tBodies[0].rows).filter(r => !r.hidden).length") == 2
    links = browser.evaluate("Array.from(document.querySelectorAll('#eval-step-4 a.change-better'), "
                             "a => document.querySelector(a.getAttribute('href')) !== null)")
    assert links == [True] * 4  # two in the summary line, two in the table, each to a row that exists
    assert browser.evaluate("typeof window.pwned") == "undefined"


def test_thumbnails_are_reencoded_jpegs_of_at_most_128_pixels():
    from sft.pages.thumbnails import thumbnail

    small = thumbnail(Image.new("RGB", (1000, 500), (1, 2, 3)), "image 1")
    assert small["uri"].startswith("data:image/jpeg;base64,") and (small["width"], small["height"]) == (128, 64)


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        find_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        find_chromium()


def test_a_rows_video_clips_show_as_a_few_frames_each():
    from types import SimpleNamespace

    import numpy as np

    from sft.pages.thumbnails import row_pictures

    image = Image.new("RGB", (8, 8))
    clip = SimpleNamespace(frames=np.zeros((32, 6, 10, 3), dtype=np.uint8),
                           metadata={"frames_indices": list(range(0, 64, 2)), "fps": 4.0})
    collator = SimpleNamespace(load_images=lambda row: [image, clip])
    pictures = row_pictures(collator, {"where": "x.jsonl:1"})
    assert [(kind, label) for kind, label, _ in pictures][:3] == [
        ("image", "image 1"), ("frame", "video 1 frame 1/32 at 0.0 s"), ("frame", "video 1 frame 7/32 at 3.0 s")]
    assert len(pictures) == 7 and pictures[-1][1] == "video 1 frame 32/32 at 15.5 s"


def test_report_images_come_from_held_out_rows_only_while_the_file_is_unchanged(tmp_path):
    from sft.pages.run_report import eval_pictures

    rows = [{"prompt": "What?", "target": name, "image": f"{name}.png"} for name in ELEMENTS]
    for name, colour in ELEMENTS.items():
        write_image(tmp_path / f"{name}.png", colour)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    manifest = {"recipe": {"data": {"train_file": str(train), "column_map": {"completion": "target"}}},
                "data_files": {"train_file": {"path": str(train), "sha256": sha256_of(train)}},
                "evaluation": {"split": {"row_numbers": [3]}}}
    pictures, note = eval_pictures(manifest, {3})
    assert note is None and list(pictures) == [3] and pictures[3]["shown"][0]["label"] == "image 1"
    write_jsonl(train, rows[:2])
    assert eval_pictures(manifest, {3}) == ({}, f"{train} changed since the run (its sha256 differs from the "
                                                "manifest's)")
