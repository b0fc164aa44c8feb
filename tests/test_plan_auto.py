"""`auto` checkpointing and micro-batch: what the plan picks for given memory budgets, and how a run applies it.

Budgets are derived from the plan's own estimates (a hair above or below what a choice needs), so each test pins
the rule, not today's constants; no timing is asserted.
"""

from __future__ import annotations

import json

import pytest
import torch

from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.model.loading import liger_unavailable, load_model
from sft.model.tiny import build_tiny
from sft.outputs.manifest import write_manifest
from sft.plan.estimate import AUTO_MARGIN, GIB, apply_auto, make_plan
from sft.plan.report import render
from tests.conftest import REPO, write_jsonl, write_recipe

LLAMA_11B = REPO / "recipes/llama11b_construction.yaml"
AUTO = ["--gradient_checkpointing", "auto", "--per_device_train_batch_size", "auto"]


def budget_for(needed_bytes: float, above: bool) -> str:
    """A gpu_memory_gib that leaves the margin just above (or just below) `needed_bytes`."""
    gib = needed_bytes / GIB / (1 - AUTO_MARGIN)
    return f"{gib * (1.001 if above else 0.999):.4f}"


@pytest.fixture(scope="module")
def plan_11b():
    return make_plan(load_recipe(LLAMA_11B, ["--gradient_checkpointing", "false"]))


def plan_with(budget: str | None = None, *extra: str):
    overrides = [*AUTO, *(["--gpu_memory_gib", budget] if budget else []), *extra]
    return make_plan(load_recipe(LLAMA_11B, overrides))


def test_recipe_batch_is_the_effective_batch_when_the_command_line_says_auto():
    recipe = load_recipe(LLAMA_11B, AUTO)
    assert recipe.auto == {"gradient_checkpointing", "per_device_train_batch_size"}
    assert recipe.data.effective_batch_size == 2 * 2  # the file's 2 x accumulation 2


def test_a_value_on_the_command_line_replaces_the_files_auto(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="meta-llama/Llama-3.2-11B-Vision-Instruct",
                        train_file="t.jsonl", gradient_checkpointing="auto")
    assert load_recipe(path).auto == {"gradient_checkpointing"}
    recipe = load_recipe(path, ["--gradient_checkpointing=true"])
    assert recipe.auto == frozenset() and recipe.training.gradient_checkpointing is True


def test_auto_micro_batch_without_an_effective_batch_is_a_one_line_error(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl",
                        per_device_train_batch_size="auto")
    with pytest.raises(UserError, match="needs effective_batch_size"):
        load_recipe(path)


def test_roomy_gpu_turns_checkpointing_off_and_takes_the_whole_batch_at_once():
    plan = plan_with("80")
    assert (plan.gradient_checkpointing, plan.batch, plan.accumulation) == (False, 4, 1)
    assert "gradient_checkpointing auto -> off" in render(plan)
    assert "per_device_train_batch_size auto -> 4 x gradient_accumulation_steps 1" in render(plan)


def test_smaller_micro_batch_without_checkpointing_comes_before_checkpointing(plan_11b):
    plan = plan_with(budget_for(plan_11b.total(False, 2), above=True))
    assert (plan.gradient_checkpointing, plan.batch, plan.accumulation) == (False, 2, 2)


def test_checkpointing_turns_on_only_when_one_row_does_not_fit_without_it(plan_11b):
    plan = plan_with(budget_for(plan_11b.total(False, 1), above=False))
    assert plan.gradient_checkpointing is True
    assert plan.batch * plan.accumulation == 4 and plan.fits_in(True, plan.batch, AUTO_MARGIN)
    assert "over" in plan.decisions[0]


def test_checkpointing_alone_on_auto_keeps_the_recipe_batch(plan_11b):
    overrides = ["--gradient_checkpointing", "auto"]
    roomy = make_plan(load_recipe(LLAMA_11B, overrides))
    tight = make_plan(load_recipe(LLAMA_11B, [*overrides, "--gpu_memory_gib",
                                              budget_for(plan_11b.total(False, 2), above=False)]))
    assert (roomy.gradient_checkpointing, roomy.batch, roomy.accumulation) == (False, 2, 2)
    assert (tight.gradient_checkpointing, tight.batch, tight.accumulation) == (True, 2, 2)


def test_nothing_fits_says_so_and_takes_the_smallest_step(plan_11b):
    plan = plan_with("4")
    assert (plan.gradient_checkpointing, plan.batch, plan.accumulation) == (True, 1, 4)
    assert "still over" in plan.decisions[0] and "nothing fits" in plan.decisions[1]


def test_fp32_upcast_of_a_quantized_model_is_planned(plan_11b):
    upcast = make_plan(load_recipe(LLAMA_11B, ["--kbit_fp32_upcast", "true"]))
    kept = plan_11b.total_params - plan_11b.quantized_params
    assert upcast.total(False, 2) - plan_11b.total(False, 2) == pytest.approx(kept * 2)  # bf16 -> fp32


def test_applied_choices_reach_the_trainer_arguments_and_the_manifest(tmp_path):
    model = build_tiny("llama", tmp_path / "llama")
    rows = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "completion": "b"}])
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path=str(model), train_file=str(rows),
                                      max_length=64, gradient_checkpointing="auto", effective_batch_size=6,
                                      per_device_train_batch_size="auto"))
    plan = apply_auto(recipe)
    args = recipe.training
    assert args.activation_checkpointing is False  # what transformers 5 reads
    assert (args.gradient_checkpointing, args.per_device_train_batch_size, args.gradient_accumulation_steps) == \
        (False, 6, 1) == (plan.gradient_checkpointing, plan.batch, plan.accumulation)
    manifest = json.loads(write_manifest(recipe, tmp_path, [], {}).read_text())
    assert manifest["auto_choices"]["per_device_train_batch_size"]["value"] == 6
    assert manifest["auto_choices"]["gradient_checkpointing"]["why"].startswith("gradient_checkpointing auto -> off")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback")
def test_liger_falls_back_with_one_line_without_a_gpu_or_for_an_unpatched_family():
    assert "need a GPU" in liger_unavailable("mllama")
    assert "no Liger kernels for model_type 'idefics3'" in liger_unavailable("idefics3")


def test_quantized_base_keeps_its_dtype_unless_fp32_upcast_is_asked(tmp_path):
    from trl import ModelConfig

    model_dir = build_tiny("llama", tmp_path / "llama")
    args = ModelConfig(model_name_or_path=str(model_dir), load_in_8bit=True, dtype="bfloat16")
    kept = load_model(args, gradient_checkpointing=True)
    upcast = load_model(args, gradient_checkpointing=True, fp32_upcast=True)
    assert {p.dtype for n, p in kept.named_parameters() if "norm" in n} == {torch.bfloat16}
    assert {p.dtype for n, p in upcast.named_parameters() if "norm" in n} == {torch.float32}
    assert not any(p.requires_grad for p in kept.parameters()) and kept.is_gradient_checkpointing
