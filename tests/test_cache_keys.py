"""Measured rows are cached by what they are made of (sft/labels/cache_key.py): the same rows and labelling read back
from the `datasets` cache, and a change to anything that can change a row's tokens or labels measured afresh.

On the tiny Llama 3.2 Vision with its real MllamaProcessor; each change is made in place on the loaded processor or
collator, the way an edited checkpoint file or another recipe key reaches it, with the model path unchanged.
"""

from __future__ import annotations

import argparse
import uuid
from dataclasses import replace

import pytest

from sft.cli import _recipe_and_collator
from sft.data.arrow_rows import load_rows
from sft.labels.fit import fit_to_length
from tests.conftest import write_image, write_jsonl, write_recipe


@pytest.fixture
def measured_twice(family_models, tmp_path):
    """A recipe's collator and rows unique to this test (a fresh cache), measured once already."""
    write_image(tmp_path / "water.png")
    nonce = uuid.uuid4().hex  # rows no earlier test session measured
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": f"What element is shown? {nonce}", "completion": "water", "image": "water.png"},
        {"prompt": "Formwork is a temporary mould. " * 8, "completion": "fire"},
    ])
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder("mllama")),
                          train_file=str(train), max_length=96, output_dir=str(tmp_path / "run"))
    recipe, collator = _recipe_and_collator(argparse.Namespace(recipe=str(recipe)), [])
    rows = load_rows(recipe.data.train_file)

    def measure(max_length: int = 96, truncation: str = "drop"):
        return fit_to_length(rows, collator, max_length, truncation, "train")[1]

    first = measure()
    assert not first.from_cache and first.measured == "train: measured 2 rows"
    return collator, measure


def test_the_same_rows_and_labelling_are_read_back_from_the_cache(measured_twice):
    _, measure = measured_twice
    again = measure()
    assert again.from_cache and again.measured == "train: 2 rows measured before (cache)"


def change_template(collator):
    collator.processing_class.chat_template += "{# edited in place #}"
    collator.tokenizer.chat_template = collator.processing_class.chat_template


def change_vocabulary(collator):
    collator.tokenizer.add_tokens(["zyxwv"])


def change_special_tokens(collator):
    collator.tokenizer.add_special_tokens({"additional_special_tokens": ["<|new_special|>"]})


def change_image_setting(collator):
    collator.processing_class.image_processor.max_image_tiles = 2


def change_family_entry(collator):
    collator.family = replace(collator.family, image_marker="<|image|>", reasoning_end="</think>")


def change_date_string(collator):
    collator.date_string = "1 Jan 2020"


def change_completion_only_loss(collator):
    collator.completion_only_loss = False


def change_empty_thinking(collator):
    collator.supervise_empty_thinking = False


def change_enable_thinking(collator):
    collator.enable_thinking = True


def change_labelling_version(collator, monkeypatch):
    monkeypatch.setattr("sft.labels.cache_key.LABELLING_VERSION", 10**6)


@pytest.mark.parametrize("change", [change_template, change_vocabulary, change_special_tokens, change_image_setting,
                                    change_family_entry, change_date_string, change_completion_only_loss,
                                    change_empty_thinking, change_enable_thinking, change_labelling_version])
def test_a_change_to_what_labels_a_row_measures_the_rows_afresh(measured_twice, change, monkeypatch):
    collator, measure = measured_twice
    change(collator, monkeypatch) if change is change_labelling_version else change(collator)
    assert not measure().from_cache
    assert measure().from_cache  # and the new measurement is cached under its own key


@pytest.mark.parametrize("keys", [{"max_length": 80}, {"truncation": "shorten_prompt"}])
def test_another_max_length_or_truncation_measures_the_rows_afresh(measured_twice, keys):
    _, measure = measured_twice
    assert not measure(**keys).from_cache


def test_a_second_run_with_another_chat_template_path_measures_its_rows_with_that_template(family_models, tmp_path,
                                                                                          capsys):
    """The reported failure: the same recipe run again with `chat_template_path` trained on the rows measured with
    the checkpoint's own template. Through the train stages up to the rows (sft/run/decide.py, prepare.py)."""
    from sft.config.recipe import load_recipe
    from sft.labels.collator import IGNORE_INDEX
    from sft.model.tiny import LLAMA_TEMPLATE
    from sft.run.decide import decide
    from sft.run.prepare import prepare_data

    system = "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
    template = tmp_path / "custom.jinja"
    template.write_text(LLAMA_TEMPLATE.replace("{{ bos_token }}", "{{ bos_token }}" + system, 1), encoding="utf-8")
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Hi {uuid.uuid4().hex}", "completion": "water"}])
    keys = dict(model_name_or_path=str(family_models.folder("llama")), train_file=str(train), max_length=96,
                output_dir=str(tmp_path / "run"))
    runs = []
    for extra in ({}, {"chat_template_path": str(template)}):
        data = prepare_data(decide(load_recipe(write_recipe(tmp_path / "recipe.yaml", **keys, **extra))))
        runs.append((capsys.readouterr().err, data.train_rows[0]["row_ids"], data.train_rows[0]["row_labels"]))
    assert ["train: measured 1 rows" in log for log, _, _ in runs] == [True, True]
    (_, first_ids, first_labels), (_, second_ids, second_labels) = runs
    assert len(second_ids) > len(first_ids)  # the system turn the new template writes is in the stored ids
    supervised = [[label for label in labels if label != IGNORE_INDEX] for labels in (first_labels, second_labels)]
    assert supervised[0] and supervised[0] == supervised[1]  # the same reply, at its place in the new rendering
