"""Bad rows of the new shapes and sources: each is one line naming where it is; good rows beside it pass.

Also the command line on these sources: `sft preview --json` numbers table rows from 1, a `dataset_name` that is
neither a folder nor reachable is one line naming it (and HF_HUB_OFFLINE), and no command prints bitsandbytes'
CPU-kernel notice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from datasets import Dataset, DatasetDict, Image, List

from sft.cli import main
from sft.data.arrow_rows import load_rows
from sft.data.rows import RowError, iter_rows
from sft.data.sources import DatasetSplit
from sft.errors import UserError
from tests.conftest import REPO, write_image, write_jsonl, write_recipe

GOOD = {"prompt": "What?", "completion": "water"}


def parts(*items):
    return [{"type": "image"} if item is None else {"type": "text", "text": item} for item in items]


BAD_JSONL_ROWS = [
    ({"conversations": [{"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "x"}],
      "images": ["a.png"]}, "2 <image> markers for 1 image(s): <image> marker 2 has no image left"),
    ({"conversations": [{"from": "human", "value": "<image> only one"}, {"from": "gpt", "value": "x"}],
      "images": ["a.png", "a.png"]},
     "1 <image> marker for 2 image(s); place each image once, or none to put them all at the start of the first "
     "user turn"),
    ({"messages": [{"role": "user", "content": parts(None, "a", None)}, {"role": "assistant", "content": "x"}],
      "images": ["a.png"]}, "2 image parts for 1 image(s): image part 2 has no image left"),
    ({"messages": [{"role": "user", "content": parts(None, "a")}, {"role": "assistant", "content": "x"}]},
     "1 image part for 0 image(s): image part 1 has no image left"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}, {"role": "assistant", "content": "x"}]},
     "message 1 part 1: type 'audio' is not a text, image or video part"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "x"}]},
     "1 video part for 0 video(s): video part 1 has no video left"),
    ({"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "x"}]},
     "message 1 needs a role of system, user, assistant, tool"),
    ({"conversations": [{"from": "observation", "value": "a"}, {"from": "gpt", "value": "x"}]},
     'turn 1: unknown "from" \'observation\'; use one of human, user, gpt, assistant, system'),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "<image> x"}],
      "images": ["a.png"]}, "message 2 (assistant) has an image; images go in user (or tool) turns"),
    ({"prompt": "a", "completion": "b", "image": "https://example.com/a.png"},
     "image 'https://example.com/a.png' is a URL; download it first (no network at training time)"),
]


@pytest.mark.parametrize(("row", "message"), BAD_JSONL_ROWS, ids=[m[:40] for _, m in BAD_JSONL_ROWS])
def test_bad_row_is_one_line_naming_it_and_good_rows_pass(tmp_path, row, message):
    write_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, row, GOOD])
    first, bad, third = iter_rows(path)
    assert str(bad) == f"{path}:2: {message}"
    assert not isinstance(first, RowError) and not isinstance(third, RowError)


def test_corrupt_embedded_image_bytes_name_the_table_row(tmp_path):
    good = write_image(tmp_path / "a.png").read_bytes()
    rows = [{**GOOD, "images": [{"bytes": good, "path": None}]},
            {**GOOD, "images": [{"bytes": b"\x89PNG but not really", "path": None}]}]
    Dataset.from_list(rows).cast_column("images", List(Image())).to_parquet(str(tmp_path / "d.parquet"))
    first, bad = iter_rows(tmp_path / "d.parquet")
    assert str(bad).startswith(f"{tmp_path / 'd.parquet'}:row 2: embedded image bytes are not an image (")
    assert "\n" not in str(bad) and not isinstance(first, RowError)
    with pytest.raises(UserError, match=r"^1 bad row\(s\):\n.*d.parquet:row 2: embedded image bytes"):
        load_rows(tmp_path / "d.parquet")


def test_missing_column_names_each_table_row(tmp_path):
    Dataset.from_list([{"prompt": "a", "answer": "b"}] * 2).to_parquet(str(tmp_path / "d.parquet"))
    errors = list(iter_rows(tmp_path / "d.parquet", column_map={"completion": "target"}))
    assert [str(e) for e in errors] == [f'{tmp_path / "d.parquet"}:row {n}: "target" must be a non-empty string, '
                                        "got nothing" for n in (1, 2)]


def test_missing_split_is_one_line_naming_the_splits(tmp_path):
    DatasetDict({"train": Dataset.from_list([GOOD])}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UserError) as caught:
        load_rows(DatasetSplit(str(tmp_path / "ds"), "validation"))
    assert str(caught.value) == (f"{tmp_path / 'ds'}: no split 'validation'; it has train "
                                 "(set dataset_train_split / dataset_test_split)")


def test_unreadable_table_is_one_line(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match=r"^\S+d.parquet: cannot read as parquet: \w+"):
        list(iter_rows(tmp_path / "d.parquet"))


# ---- the command line ---------------------------------------------------------------------------------------
def test_preview_json_numbers_parquet_rows_from_one(tiny_models, tmp_path, capsys):
    image = write_image(tmp_path / "a.png").read_bytes()
    rows = [{"messages": [{"role": "user", "content": parts(None, "What?")},
                          {"role": "assistant", "content": parts("water")}], "images": [{"bytes": image}]},
            {"messages": [{"role": "user", "content": parts("Say fire.")},
                          {"role": "assistant", "content": parts("fire")}], "images": None}]
    Dataset.from_list(rows).cast_column("images", List(Image())).to_parquet(str(tmp_path / "d.parquet"))
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_models["mllama"]),
                          train_file=str(tmp_path / "d.parquet"), max_length=64)
    assert main(["preview", str(recipe), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["row"], r["status"], r["supervised_text"]) for r in records] == [
        (1, "ok", "water<|eot_id|>"), (2, "ok", "fire<|eot_id|>")]


def test_unreachable_dataset_name_is_one_line_and_no_library_notice(tiny_models, tmp_path):
    """A made-up Hub id offline: one line naming it and HF_HUB_OFFLINE, no traceback; and the bitsandbytes
    'Failed to load CPU gemm_4bit_forward' notice (logged at import on CPUs with AVX512-BF16) is not printed."""
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_models["mllama"]),
                          dataset_name="nobody-sft-test/made-up-set")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "sft.cli", "check", str(recipe)], capture_output=True,
                            text=True, cwd=REPO, timeout=180, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: dataset_name 'nobody-sft-test/made-up-set': not a local folder, and not reachable on "
                     "the Hub (HF_HUB_OFFLINE=1) nor in the local cache; download it first (huggingface-cli "
                     "download --repo-type dataset nobody-sft-test/made-up-set) or name a local folder"]
    assert "gemm_4bit" not in result.stderr + result.stdout


def test_dataset_name_folder_trains_from_check(tiny_models, tmp_path, capsys):
    """`sft check` on a save_to_disk folder with a test split: both splits named and counted."""
    rows = [GOOD, {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}]
    DatasetDict({"train": Dataset.from_list([{"prompt": "a", "completion": "b"}] * 3),
                 "test": Dataset.from_list([{"conversations": rows[1]["conversations"]}])}).save_to_disk(
        str(tmp_path / "ds"))
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_models["mllama"]),
                          dataset_name=str(tmp_path / "ds"), dataset_test_split="test", max_length=64)
    assert main(["check", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert f"train {tmp_path / 'ds'}[train]: 3 rows, 3 ok" in out
    assert f"eval {tmp_path / 'ds'}[test]: 1 rows, 1 ok" in out


@pytest.mark.parametrize(("keys", "message"), [
    ({"train_file": "t.jsonl", "dataset_name": "d"}, "give train_file or dataset_name, not both"),
    ({"train_file": "t.jsonl", "dataset_test_split": "test"}, "dataset_test_split needs dataset_name"),
])
def test_conflicting_data_keys_are_one_line(keys, message):
    from sft.config.recipe import DataArguments

    with pytest.raises(UserError, match=f"^{message}$"):
        DataArguments(**keys)
