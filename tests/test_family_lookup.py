"""The family is found once (recipe `family:`, else config.model_type, else the processor class), the table refuses
a model type listed twice, an unknown family trains through the generic contract and says what it assumed, and LoRA
targets are chosen on the loaded module tree (fused qkv_proj included, o_proj alone refused)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig

from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.family.families import FAMILIES, LABELLING, _by_model_type, family_for, find_family
from sft.labels.labelling import STRATEGIES, make_collator
from sft.labels.prefix_suffix import PrefixSuffixCollator
from sft.model.loading import load_processor
from sft.model.targets import language_attention, lora_targets
from sft.run.train import main as train
from tests.conftest import write_recipe
from tests.test_training import recipe_for


def test_a_model_type_listed_twice_is_an_error_naming_both_families():
    twice = (*FAMILIES, replace(FAMILIES[0], name="copy"))
    with pytest.raises(ValueError, match=r"model_type 'llama' is listed by families llama and copy"):
        _by_model_type(twice)


def test_every_labelling_value_maps_to_one_class():
    assert set(STRATEGIES) == set(LABELLING)
    assert {family.labels for family in FAMILIES} <= set(LABELLING)
    with pytest.raises(ValueError, match=r"labels 'spans' is not one of chat_template, prefix_suffix"):
        _by_model_type((replace(FAMILIES[0], labels="spans"),))


def test_recipe_family_overrides_model_type_and_processor(tiny_models):
    processor = load_processor(str(tiny_models["idefics3"]), AutoConfig.from_pretrained(tiny_models["idefics3"]))
    assert find_family("idefics3", processor).found_by == "config.model_type idefics3"
    chosen = find_family("idefics3", processor, override="smolvlm")  # a model type the table lists, by that name
    assert chosen.name == "idefics3" and chosen.found_by == "the recipe's family: smolvlm"
    # A checkpoint whose model_type the table does not know (a renamed or remote-code one) is found by its processor.
    by_class = find_family("my_remote_vlm", processor)
    assert by_class.name == "idefics3" and "its processor class Idefics3Processor" in by_class.found_by
    assert make_collator(processor, by_class).family.closing == "<end_of_utterance>"


def test_an_unknown_family_name_in_a_recipe_is_refused_before_anything_loads(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", family="qwen9_vl")
    with pytest.raises(UserError, match=r"^family: 'qwen9_vl' is not in the family table; choose one of llama, "):
        load_recipe(path)


def test_paligemma_is_labelled_through_its_prefix_suffix_class_by_the_table_field():
    assert family_for("paligemma").labels == "prefix_suffix"
    assert STRATEGIES["prefix_suffix"] is PrefixSuffixCollator


def test_an_unknown_family_trains_through_the_generic_contract_and_says_what_it_assumed(tiny_models, tmp_path,
                                                                                        capsys):
    # The tiny Llama renamed to Mistral (the same module tree), a model type the table does not list.
    model_dir = tmp_path / "mistral"
    model_dir.mkdir()
    for source in tiny_models["llama"].iterdir():
        (model_dir / source.name).write_bytes(source.read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config |= {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": None}
    (model_dir / "config.json").write_text(json.dumps(config))
    metrics = train(load_recipe(recipe_for(tmp_path, model_dir, with_images=False, num_train_epochs=1)))
    log = capsys.readouterr().err
    assert log.count("[sft] family: mistral, found by not in the table (config.model_type mistral); assumed: "
                     "labels chat_template, generation stops at EOS only") == 1
    assert "; LoRA on 8 layers (k_proj, o_proj, q_proj, v_proj)" in log  # 2 layers x q/k/v/o
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert manifest["model_setup"]["family"] == "mistral"
    assert manifest["model_setup"]["lora_modules"][0] == "model.layers.0.self_attn.k_proj"
    assert metrics["first_loss"] > 0


class Attention(torch.nn.Module):
    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        for name in names:
            setattr(self, name, torch.nn.Linear(4, 4))


def tree(*names: str) -> torch.nn.Module:
    """A model whose language layer has these attention linears, beside a vision tower with q/k/v/o of its own."""
    model = torch.nn.Module()
    model.language_model = torch.nn.Module()
    model.language_model.self_attn = Attention(names)
    model.vision_tower = torch.nn.Module()
    model.vision_tower.attn = Attention(("q_proj", "k_proj", "v_proj", "o_proj"))
    return model


def test_fused_qkv_projections_are_lora_targets_and_o_proj_alone_is_refused():
    family = family_for("llava")  # vision_modules: vision_tower, multi_modal_projector
    assert [n for n, _ in lora_targets(tree("qkv_proj", "o_proj"), family)] == [
        "language_model.self_attn.qkv_proj", "language_model.self_attn.o_proj"]
    assert len(language_attention(tree("q_proj", "k_proj", "v_proj", "o_proj"), family)) == 4
    with pytest.raises(UserError, match=r"^family llava: the language model has no q_proj/k_proj/v_proj or fused "
                                        r"qkv_proj linear layer \(attention projections found: o_proj\)"):
        lora_targets(tree("Wqkv", "o_proj"), family)
    # A recipe's own lora_target_modules are matched as PEFT matches them.
    assert [n for n, _ in lora_targets(tree("Wqkv", "o_proj"), family, ["Wqkv"])] == ["language_model.self_attn.Wqkv"]
