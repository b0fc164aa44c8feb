"""What only the Qwen-VL families do, beyond the contract every family meets (tests/test_family_contract.py):
Qwen3.5's thinking block, Qwen's tokenizer merging `\n\n` across the generation prompt, special tokens written in
data, scoring a thinking reply, and plans from the shipped Qwen2.5-VL-7B and Qwen3-VL-8B configs and recipe.
Tiny models from tests/families/qwen.py, named in tests/families/registry.py.
"""

from __future__ import annotations

import pytest
import torch

from sft.cli import main as sft
from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.labels.labelling import make_collator
from sft.plan.estimate import build_on_meta, make_plan
from tests.conftest import REPO, write_image, write_jsonl, write_recipe
from tests.families.checks import lora_count
from tests.families.qwen import QWEN3_ADDED, qwen_tokenizer
from tests.families.registry import BY_NAME, NO_TEMPLATES
from tests.families.rows import SHAPES, row, supervised_text

THINK = BY_NAME["qwen3_5_think"]
THINKING = THINK.thinking  # what the thinking-on generation prompt `<think>\n` leaves of the empty thinking block


@NO_TEMPLATES
def test_thinking_on_supervises_the_end_of_the_thinking_block_only_on_the_last_turn(family_models, tmp_path):
    processor, _ = family_models.load(THINK)
    collator = make_collator(processor, THINK.family)
    text, spans = collator.supervised_spans(collator.messages_of(row(tmp_path, SHAPES["multi_turn"]), []))
    assert [text[start:end] for start, end in spans] == ["fire<|im_end|>", THINKING + "A load carrier.<|im_end|>"]
    generation_prompt = collator.render(SHAPES["multi_turn"][:-1], add_generation_prompt=True)
    assert generation_prompt.endswith("<|im_start|>assistant\n<think>\n")  # the template's thinking-on prompt


@NO_TEMPLATES
def test_with_a_tokenizer_that_merges_newlines_the_span_and_the_prompt_meet_at_the_merged_token():
    """Qwen's real tokenizer has `\n\n` as one token, so `<think>\n` + `\n</think>` leaves no token boundary
    between the thinking-on generation prompt and the last reply: the span starts at that token, one `\n` early,
    and the generation prompt ends where it starts (`<think>`), so training and generation see the same tokens."""
    tokenizer = qwen_tokenizer(THINK.chat_template(), QWEN3_ADDED, newline_merges=True)
    assert tokenizer.tokenize("<think>\n\n</think>")[1] == "ĊĊ"
    collator = make_collator(tokenizer, THINK.family)
    messages = SHAPES["multi_turn"]
    batch = collator([{"where": "t.jsonl:1", "row": 1, "messages": messages}])
    assert supervised_text(collator, batch) == "fire<|im_end|>" + "\n" + THINKING + "A load carrier.<|im_end|>"
    prompt = collator.generation_prompt(messages)
    assert prompt + "\n" == collator.render(messages[:-1], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>")


@NO_TEMPLATES
def test_special_token_in_data_is_refused_in_one_line(family_models, tmp_path):
    case = BY_NAME["qwen2_5_vl"]
    processor, _ = family_models.load(case)
    messages = [{"role": "user", "content": "What is <|image_pad|>?"}, {"role": "assistant", "content": "water"}]
    with pytest.raises(UserError) as refused:
        make_collator(processor, case.family)([row(tmp_path, messages, where="qwen.jsonl:3")])
    assert str(refused.value) == ("qwen.jsonl:3: message 1 (user) contains '<|image_pad|>', a special token of this "
                                  "tokenizer; as data it would act as a control token; remove or reword it")


# ---- shipped configs and recipe ---------------------------------------------------------------------------------
QWEN2_5_VL_7B_RECIPE = REPO / "recipes/qwen2_5_vl_7b_lora.yaml"


def test_qwen2_5_vl_7b_recipe_plan_counts_match_the_architecture(tmp_path):
    plan = make_plan(load_recipe(QWEN2_5_VL_7B_RECIPE))
    assert plan.architecture == "Qwen2_5_VLForConditionalGeneration"
    assert plan.total_params == 8_292_166_656  # the hub's "8.29B params"
    # 28 layers, hidden 3584, 28 query heads and 4 key/value heads of 128.
    assert plan.lora_params == lora_count(16, 28, 3584, 3584, 512) == 10_092_544
    assert plan.quantized_params == 0 and plan.fits


def test_qwen3_vl_8b_plan_from_the_shipped_config(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="Qwen/Qwen3-VL-8B-Instruct",
                                      train_file="t.jsonl", load_in_4bit=True, dtype="bfloat16"))
    plan = make_plan(recipe)
    assert plan.architecture == "Qwen3VLForConditionalGeneration"
    assert plan.total_params == 8_767_123_696  # the hub's "8.77B params"
    # 36 layers, hidden 4096, 32 query heads and 8 key/value heads of 128.
    assert plan.lora_params == lora_count(8, 36, 4096, 4096, 1024) == 7_667_712
    # 4-bit covers the language model's linear layers only: none of the vision tower (`visual`), nor lm_head.
    model, _ = build_on_meta("Qwen/Qwen3-VL-8B-Instruct")
    language = sum(m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n.startswith("model.language_model."))
    assert plan.quantized_params == language


@NO_TEMPLATES
def test_qwen2_5_vl_7b_recipe_dry_run_checks_rows_with_a_qwen2_5_vl_processor(family_models, tmp_path, capsys):
    rows = [{"image": f"{i}.png", "prompt": "What element is shown?", "target": label}
            for i, label in enumerate(["water", "fire"])]
    for i in range(2):
        write_image(tmp_path / f"{i}.png")
    train_file, eval_file = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", rows)
    args = ["train", str(QWEN2_5_VL_7B_RECIPE), "--dry-run",
            "--accelerate-config", str(REPO / "accelerate_configs/single_gpu.yaml"),
            "--train_file", str(train_file), "--eval_file", str(eval_file),
            "--model_name_or_path", str(family_models.folder("qwen2_5_vl"))]
    assert sft(args) == 0
    out = capsys.readouterr().out
    assert "accelerate config" in out and out.count("2 rows, 2 ok") == 2 and "0 bad" in out


@NO_TEMPLATES
def test_a_dry_run_plans_rows_and_a_trainable_vision_tower_at_what_the_rows_measure(family_models, tmp_path, capsys):
    """`sft train --dry-run` reads every row first: the plan takes the longest row and the most visual tokens a
    row has (Qwen: each token 2 x 2 merged patches) instead of max_length and an assumed 1024 x 1024 image."""
    write_image(tmp_path / "0.png", size=(56, 84))
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"image": "0.png", "prompt": "What?", "target": "fire"}] * 2)
    args = ["train", str(QWEN2_5_VL_7B_RECIPE), "--dry-run", "--train_file", str(train_file), "--eval_file",
            str(train_file), "--model_name_or_path", str(family_models.folder("qwen2_5_vl")),
            "--train_vision_tower", "lora"]
    sft(args)
    out = capsys.readouterr().out
    most = int(out.split("visual tokens per image row: ")[1].split(" max ")[1].split(" ")[0])  # as sft check measured
    assert f"vision tower activations: {most} visual tokens (the most a measured row has) x 4 patches each" in out
    assert f"activations (vision tower, 4 x {most * 4} patches)" in out
    longest = int(out.split("rows planned at ")[1].split(" tokens")[0])
    assert 6 < longest < 1024 and f"activations (batch 4 x {longest})" in out
