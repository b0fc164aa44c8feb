"""TRL keys the toolkit does its own way are honoured or refused in one line when the recipe loads (before any
weights), never ignored."""

from __future__ import annotations

import dataclasses
import re

import pytest
from trl import ModelConfig, SFTConfig

from sft.cli import main as sft
from sft.config.recipe import TOOLKIT_DEFAULTS, load_recipe
from sft.config.trl_surface import MODEL_KEYS, REFUSED, TOOLKIT, TRAINER, shown
from sft.errors import UserError
from tests.conftest import REPO, write_recipe


def recipe(tmp_path, **keys):
    return write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", **keys)


@pytest.mark.parametrize(("keys", "message"), [
    ({"load_in_8bit": True, "use_peft": False}, r"^use_peft false with load_in_8bit: quantized weights cannot be "
                                                r"trained in full; keep LoRA \(use_peft true\) or train a "
                                                r"full-precision base \(drop load_in_8bit\)$"),
    ({"load_in_4bit": True, "use_peft": False}, r"^use_peft false with load_in_4bit: "),
    ({"completion_only_loss": False, "assistant_only_loss": True},
     r"^completion_only_loss false with assistant_only_loss true: one supervises the whole conversation, the other "
     r"the assistant replies only; drop one of them$"),
    ({"activation_offloading": True}, r"^activation_offloading true: not supported by the toolkit; use "),
    ({"dataset_text_field": "body"}, r"^dataset_text_field 'body': the toolkit reads rows by their shape "),
])
def test_keys_that_cannot_work_here_are_refused_in_one_line_when_the_recipe_loads(tmp_path, keys, message):
    with pytest.raises(UserError, match=message) as refused:
        load_recipe(recipe(tmp_path, **keys))
    assert "\n" not in str(refused.value)


def test_completion_only_loss_false_loads_for_the_labeller_to_supervise_the_whole_conversation(tmp_path):
    """What the labels then are: tests/test_whole_conversation.py."""
    loaded = load_recipe(recipe(tmp_path, completion_only_loss=False))
    assert loaded.training.completion_only_loss is False and loaded.training.assistant_only_loss is False
    assert not any("completion_only_loss" in notice for notice in loaded.notices)


def test_assistant_only_loss_is_what_the_toolkit_does_and_says_so_once(tmp_path):
    loaded = load_recipe(recipe(tmp_path, assistant_only_loss=True))
    assert loaded.training.assistant_only_loss is False  # TRL's template-marker path stays off
    assert sum("assistant_only_loss" in notice for notice in loaded.notices) == 1


def test_the_8bit_seed_recipe_without_lora_is_refused_before_any_weights_load(capsys):
    assert sft(["plan", str(REPO / "recipes/llama11b_construction.yaml"), "--use_peft", "false"]) == 2
    assert capsys.readouterr().err.startswith("error: use_peft false with load_in_8bit: ")


# ---- the whole surface: every field of SFTConfig and ModelConfig is classified (sft/config/trl_surface.py) ---------

SURFACE = [field for config in (SFTConfig, ModelConfig) for field in dataclasses.fields(config)]


def default_of(field: dataclasses.Field):
    """The value a recipe gets when it leaves the key out: the toolkit's default, else the dataclass's."""
    if field.name in TOOLKIT_DEFAULTS:
        return TOOLKIT_DEFAULTS[field.name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def other_than(field: dataclasses.Field, default):
    """A value of the field's type that is not its default (one of its choices, when it has them)."""
    if field.metadata.get("choices"):
        return next(choice for choice in field.metadata["choices"] if choice != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, str):
        return f"{default}_other"
    if isinstance(default, (int, float)):
        return default + 1
    kinds = (("dict", {"revision": "v2"}), ("list", ["inputs"]), ("bool", True), ("int", 8), ("float", 0.5),
             ("str", "</s>"))
    return next(value for kind, value in kinds if kind in str(field.type))


def test_every_field_of_sft_config_and_model_config_is_passed_through_done_by_the_toolkit_or_refused():
    tables = (TRAINER, set(TOOLKIT), set(REFUSED))
    names = {field.name for field in SURFACE}
    assert [field.name for field in SURFACE if not any(field.name in table for table in tables)] == []  # new fields
    assert sorted(set().union(*tables) - names) == []  # fields TRL or transformers no longer have
    assert sum(len(table) for table in tables) == len(names)  # each field in one table only


def test_each_field_the_toolkit_does_itself_names_modules_that_exist():
    missing = {key: path for key, where in TOOLKIT.items() for path in re.findall(r"sft/[\w/]+\.py", where)
               if not (REPO / path).is_file()}
    assert missing == {}
    assert [key for key, where in TOOLKIT.items() if not re.search(r"sft/[\w/]+\.py", where)] == []


@pytest.mark.parametrize("field", [field for field in SURFACE if field.name in REFUSED], ids=lambda field: field.name)
def test_a_refused_field_away_from_its_default_is_refused_in_one_line_that_names_it(tmp_path, field):
    value = other_than(field, default_of(field))
    with pytest.raises(UserError) as refused:
        load_recipe(recipe(tmp_path, **{field.name: value}))
    message = str(refused.value)
    assert message.startswith(f"{field.name} {shown(value)}: ") and "; " in message and "\n" not in message


def test_the_refused_fields_stated_at_their_defaults_load_unchanged(tmp_path):
    stated = {field.name: default_of(field) for field in SURFACE if field.name in REFUSED}
    loaded = load_recipe(recipe(tmp_path, **stated))
    assert {key: getattr(loaded.model if key in MODEL_KEYS else loaded.training, key) for key in stated} == stated


@pytest.mark.parametrize("keys", [{"eval_packing": False}, {"do_eval": True, "eval_file": "e.jsonl"},
                                  {"do_eval": True, "eval_strategy": "steps", "eval_steps": 10}])
def test_a_refused_field_set_to_what_the_toolkit_does_anyway_loads(tmp_path, keys):
    loaded = load_recipe(recipe(tmp_path, **keys))
    assert all(getattr(loaded.training, key) == value for key, value in keys.items() if key != "eval_file")


PASSED_THROUGH = {"learning_rate": 3e-4, "seed": 7, "logging_steps": 3, "save_strategy": "no", "optim": "adamw_torch",
                  "lr_scheduler_type": "cosine", "weight_decay": 0.1, "max_grad_norm": 0.5, "warmup_steps": 10,
                  "num_train_epochs": 2.0, "gradient_accumulation_steps": 4, "neftune_noise_alpha": 5.0,
                  "loss_type": "dft", "router_aux_loss_coef": 0.01, "data_seed": 3, "save_total_limit": 1,
                  "dataloader_num_workers": 2, "report_to": ["tensorboard"]}


@pytest.mark.parametrize(("key", "value"), PASSED_THROUGH.items(), ids=list(PASSED_THROUGH))
def test_a_passed_through_field_arrives_unchanged_in_the_sft_config_that_reaches_the_trainer(tmp_path, key, value):
    field = next(field for field in SURFACE if field.name == key)
    assert key in TRAINER and value != default_of(field)
    assert getattr(load_recipe(recipe(tmp_path, **{key: value})).training, key) == value


@pytest.mark.parametrize(("keys", "message"), [
    ({"pad_to_multiple_of": 8, "packing": True}, r"^pad_to_multiple_of 8 with packing: packed rows are laid "
                                                 r"end to end without padding \(sft/labels/packing.py\); "
                                                 r"drop pad_to_multiple_of$"),
    ({"pad_to_multiple_of": 8, "padding_free": True}, r"^pad_to_multiple_of 8 with padding_free: "),
    ({"bnb_4bit_quant_type": "fp4"}, r"^bnb_4bit_quant_type 'fp4': applies to 4-bit weights only and load_in_4bit is "
                                     r"off; set load_in_4bit: true or drop it$"),
    ({"use_bnb_nested_quant": True}, r"^use_bnb_nested_quant true: applies to 4-bit weights only "),
    ({"bnb_4bit_quant_storage": "bfloat16"}, r"^bnb_4bit_quant_storage 'bfloat16': applies to 4-bit weights only "),
])
def test_a_field_that_would_change_nothing_beside_another_is_refused_in_one_line(tmp_path, keys, message):
    with pytest.raises(UserError, match=message):
        load_recipe(recipe(tmp_path, **keys))


@pytest.mark.parametrize("keys", [{"pad_to_multiple_of": 8}, {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
                                                              "use_bnb_nested_quant": True}])
def test_the_same_fields_where_they_take_effect_arrive_unchanged(tmp_path, keys):
    loaded = load_recipe(recipe(tmp_path, **keys))
    assert all(getattr(loaded.model if key in MODEL_KEYS else loaded.training, key) == value
               for key, value in keys.items())
