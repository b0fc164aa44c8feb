"""The command line: bad input ends in one line per problem naming file:line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sft.cli import main
from tests.conftest import REPO, write_image, write_jsonl, write_recipe


@pytest.fixture
def recipe(tiny_models, tmp_path):
    def make(rows, **extra):
        train_file = write_jsonl(tmp_path / "train.jsonl", rows)
        keys = dict(model_name_or_path=str(tiny_models["mllama"]), train_file=str(train_file), max_length=64,
                    output_dir=str(tmp_path / "run")) | extra
        return str(write_recipe(tmp_path / "recipe.yaml", **keys))
    return make


def test_check_names_every_bad_row_and_exits_non_zero(recipe, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    path = recipe([
        {"prompt": "What?", "completion": "water"},
        "{oops",
        {"instruction": "Define rebar.", "output": 3},
        {"prompt": "What?", "completion": "fire", "image": "broken.png"},
        {"prompt": "What?", "completion": "fire", "image": "gone.png"},
    ])
    assert main(["check", path]) == 1
    out, err = capsys.readouterr()
    train = tmp_path / "train.jsonl"
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"{train}:2: not JSON")
    assert lines[1] == f'{train}:3: "output" must be a non-empty string, got 3'
    assert lines[2].startswith(f"{train}:4: cannot decode image {tmp_path / 'broken.png'}")
    assert lines[3] == f"{train}:5: image not found: {tmp_path / 'gone.png'}"
    assert "5 rows, 1 ok, 0 prompt-shortened, 0 dropped" in out and "4 bad" in out


def test_check_passes_clean_data(recipe, tmp_path, capsys):
    write_image(tmp_path / "a.png")
    path = recipe([{"prompt": "What?", "completion": "water", "image": "a.png"}])
    assert main(["check", path]) == 0
    assert "1 rows, 1 ok" in capsys.readouterr().out


def test_train_on_bad_data_is_refused_before_loading_weights(recipe, capsys):
    path = recipe([{"prompt": "What?", "completion": ""}, {"prompt": "What?"}])
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert "error: 2 bad row(s):" in err
    assert "train.jsonl:1: \"completion\" must be a non-empty string, got ''" in err
    assert "Traceback" not in err


def test_unknown_recipe_key_suggests_the_near_one(recipe, tmp_path, capsys):
    path = recipe([{"prompt": "a", "completion": "b"}], learning_rte=0.1)
    assert main(["check", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}:5: unknown key 'learning_rte' (did you mean 'learning_rate'?)"


def test_preview_json_gives_row_status_and_supervised_text(recipe, capsys):
    path = recipe([{"prompt": "What?", "completion": "water"},
                   {"prompt": "Formwork is a temporary mould. " * 20, "completion": "fire"}])
    assert main(["preview", path, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0] == {"row": 1, "status": "ok", "prompt_tokens": records[0]["prompt_tokens"],
                          "supervised_tokens": 2, "supervised_text": "water<|eot_id|>"}
    assert records[1]["row"] == 2 and records[1]["status"] == "dropped"


def test_preview_with_shorten_prompt_reports_truncated(recipe, capsys):
    path = recipe([{"prompt": "Formwork is a temporary mould. " * 20, "completion": "fire"}],
                  truncation="shorten_prompt")
    assert main(["preview", path, "--json"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["status"] == "truncated" and record["supervised_text"] == "fire<|eot_id|>"
    assert record["prompt_tokens"] + record["supervised_tokens"] <= 64


def test_a_real_subprocess_prints_no_traceback(recipe):
    path = recipe(["[1, 2, 3]"])
    result = subprocess.run([sys.executable, "-m", "sft.cli", "check", path], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "train.jsonl:1: not a JSON object (got list)" in result.stderr


def test_missing_model_is_one_line(tmp_path, capsys):
    train_file = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "completion": "b"}])
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tmp_path / "nope"), train_file=str(train_file))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: model_name_or_path '{tmp_path / 'nope'}': no such folder\n"
