"""Recipes go through TRL's parser: documented keys only, command-line overrides, CPU fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from sft.config.recipe import load_recipe
from sft.errors import UserError
from tests.conftest import REPO, write_recipe

SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def test_toolkit_defaults_lora_r8_alpha32_dropout005_targets_chosen_on_the_loaded_model(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl"))
    model = recipe.model
    assert (model.use_peft, model.lora_r, model.lora_alpha, model.lora_dropout) == (True, 8, 32, 0.05)
    assert model.lora_target_modules is None  # sft.model.targets.lora_targets: the language model's attention
    assert recipe.training.report_to == [] and recipe.training.remove_unused_columns is False
    assert recipe.training.output_dir == str(Path("outputs") / "r")


def test_command_line_overrides_the_file(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", learning_rate=0.1)
    assert load_recipe(path, ["--learning_rate", "0.0001"]).training.learning_rate == 0.0001


def test_unknown_key_names_its_line_and_the_near_key(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", lora_alpah=8)
    with pytest.raises(UserError, match=rf"^{path}:3: unknown key 'lora_alpah' \(did you mean 'lora_alpha'\?\)$"):
        load_recipe(path)


def test_unknown_command_line_option_is_named(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl")
    with pytest.raises(UserError, match=r"unknown option --learning_rat \(did you mean 'learning_rate'\?\)"):
        load_recipe(path, ["--learning_rat", "1"])


def test_without_gpu_bf16_is_switched_off_with_a_notice(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", bf16=True,
                        dtype="bfloat16")
    recipe = load_recipe(path, cuda=False)
    assert recipe.training.bf16 is False and recipe.model.dtype == "float32"
    assert recipe.notices == ["no GPU found: training on CPU in fp32 (bf16, dtype bfloat16 off)"]


def test_eval_file_turns_on_epoch_eval_and_best_model(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", eval_file="e.jsonl")
    training = load_recipe(path).training
    assert training.eval_strategy == "epoch" and training.save_strategy == "epoch"
    assert training.load_best_model_at_end is True


def test_missing_train_file_and_bad_yaml_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="train_file is required"):
        load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="m"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: m\ntrain_file: [unclosed\n")
    with pytest.raises(UserError, match=rf"^{bad}:\d+: not valid YAML"):
        load_recipe(bad)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert (recipe.data.train_file or recipe.data.datasets) and recipe.model.model_name_or_path
