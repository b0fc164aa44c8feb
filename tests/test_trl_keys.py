"""TRL keys the toolkit does its own way are honoured or refused in one line when the recipe loads (before any
weights), never ignored."""

from __future__ import annotations

import pytest

from sft.cli import main as sft
from sft.errors import UserError
from sft.recipe import load_recipe
from tests.conftest import REPO, write_recipe


def recipe(tmp_path, **keys):
    return write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", **keys)


@pytest.mark.parametrize(("keys", "message"), [
    ({"load_in_8bit": True, "use_peft": False}, r"^use_peft false with load_in_8bit: quantized weights cannot be "
                                                r"trained in full; keep LoRA \(use_peft true\) or train a "
                                                r"full-precision base \(drop load_in_8bit\)$"),
    ({"load_in_4bit": True, "use_peft": False}, r"^use_peft false with load_in_4bit: "),
    ({"completion_only_loss": False}, r"^completion_only_loss false: training on the whole conversation is not "),
    ({"activation_offloading": True}, r"^activation_offloading true: not supported by the toolkit; use "),
    ({"dataset_text_field": "body"}, r"^dataset_text_field 'body': the toolkit reads rows by their shape "),
])
def test_keys_that_cannot_work_here_are_refused_in_one_line_when_the_recipe_loads(tmp_path, keys, message):
    with pytest.raises(UserError, match=message) as refused:
        load_recipe(recipe(tmp_path, **keys))
    assert "\n" not in str(refused.value)


def test_assistant_only_loss_is_what_the_toolkit_does_and_says_so_once(tmp_path):
    loaded = load_recipe(recipe(tmp_path, assistant_only_loss=True))
    assert loaded.training.assistant_only_loss is False  # TRL's template-marker path stays off
    assert sum("assistant_only_loss" in notice for notice in loaded.notices) == 1


def test_the_8bit_seed_recipe_without_lora_is_refused_before_any_weights_load(capsys):
    assert sft(["plan", str(REPO / "recipes/llama11b_construction.yaml"), "--use_peft", "false"]) == 2
    assert capsys.readouterr().err.startswith("error: use_peft false with load_in_8bit: ")
