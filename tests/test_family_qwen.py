"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (thinking on and off) under the label contract, end to end.

Tiny random models of the real architecture classes with the real processor classes, the families' real chat
templates (shared fixtures) and special tokens (tests/families/qwen.py). Per family: the supervised text of each
row shape is exactly what issue #9 lists; every processor tensor matches input_ids; a forward and backward pass;
a short training run whose loss falls; generation through `generate` (Qwen's M-RoPE deltas) for eval_accuracy;
LoRA and the quantization skip list keep to the language model.
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from sft.cli import main as sft
from sft.collator import IGNORE_INDEX, CompletionOnlyCollator
from sft.errors import UserError
from sft.families import family_for_processor
from sft.generation import answer_of, exact_match, generate_replies, reference
from sft.model import load_processor
from sft.plan import _is_quantized, build_on_meta, lora_targets, make_plan
from sft.recipe import LANGUAGE_MODEL_ATTENTION, load_recipe
from sft.train import main as train
from tests.conftest import REPO, write_image, write_jsonl, write_recipe
from tests.families.checks import LONG_PROMPT, fit_too_long_row, step_gradients
from tests.families.qwen import TEMPLATES, VARIANTS, build_qwen, qwen_tokenizer
from tests.families.report import assert_learns, train_elements
from tests.families.round_trip import assert_merge_and_predict_agree
from tests.test_label_contract import SHAPES, TWO_IMAGE_TURNS, supervised_text
from tests.test_training import recipe_for

pytestmark = pytest.mark.skipif(not TEMPLATES.is_dir(), reason=f"{TEMPLATES} (real chat templates) is absent")

VARIANT_NAMES = list(VARIANTS)
THINKING = "\n</think>\n\n"  # what the thinking-on generation prompt `<think>\n` leaves of the empty thinking block


def expected_supervised(variant: str, messages: list[dict]) -> str:
    """Issue #9: `reply<|im_end|>` per assistant turn; with Qwen3.5 thinking on, the last reply (the only one after
    the last user turn) is preceded by the end of its empty thinking block."""
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    texts = [reply + "<|im_end|>" for reply in replies]
    if variant == "qwen3_5_think":
        texts[-1] = THINKING + texts[-1]
    return "".join(texts)


@pytest.fixture(scope="session")
def qwen_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("qwen")
    return {name: build_qwen(name, root / name) for name in VARIANT_NAMES}


@functools.cache
def load(model_dir: str):
    processor = load_processor(model_dir, AutoConfig.from_pretrained(model_dir))
    return processor, AutoModelForImageTextToText.from_pretrained(model_dir).eval()


def example(tmp_path, messages, image: bool, where: str = "qwen.jsonl:1") -> dict:
    paths = [str(write_image(tmp_path / "img.png", size=(36, 50)))] if image else []
    return {"where": where, "messages": messages, "stored_images": paths}


def assert_every_tensor_matches_input_ids(batch, processor, images_per_row: list[int]) -> None:
    """Per-token tensors have input_ids' shape; per-image tensors hold exactly the images' patches."""
    family = family_for_processor(processor)
    expected = {"input_ids", "attention_mask", "labels"} | ({"pixel_values", *family.extra_inputs}
                                                            if any(images_per_row) else {"mm_token_type_ids"})
    assert set(batch) == expected
    shape = batch["input_ids"].shape
    for key in ("attention_mask", "labels", "mm_token_type_ids"):
        assert batch[key].shape == shape, key
    image_tokens = batch["input_ids"] == processor.image_token_id
    assert torch.equal(batch["mm_token_type_ids"] == 1, image_tokens)  # 1 marks exactly the image placeholders
    if any(images_per_row):
        grid = batch["image_grid_thw"]
        assert grid.shape == (sum(images_per_row), 3)
        assert batch["pixel_values"].shape[0] == int(grid.prod(dim=1).sum())
        merge = processor.image_processor.merge_size ** 2
        per_row = [int(n) for n in image_tokens.sum(dim=1)]
        grids = iter(grid.prod(dim=1).tolist())
        assert per_row == [sum(next(grids) // merge for _ in range(n)) for n in images_per_row]


# ---- labels ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("image", [False, True], ids=["text", "image"])
@pytest.mark.parametrize("shape", ["instruction", "prompt_completion", "multi_turn"])
def test_supervised_text_is_each_reply_and_im_end(qwen_models, tmp_path, variant, image, shape):
    processor, model = load(str(qwen_models[variant]))
    collator = CompletionOnlyCollator(processor)
    batch = collator([example(tmp_path, SHAPES[shape], image)])
    assert supervised_text(collator, batch) == expected_supervised(variant, SHAPES[shape])
    assert_every_tensor_matches_input_ids(batch, processor, [int(image)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_thinking_on_supervises_the_end_of_the_thinking_block_only_on_the_last_turn(qwen_models, tmp_path):
    processor, _ = load(str(qwen_models["qwen3_5_think"]))
    collator = CompletionOnlyCollator(processor)
    text, spans = collator.supervised_spans(collator.messages_of(example(tmp_path, SHAPES["multi_turn"], False), []))
    assert [text[start:end] for start, end in spans] == ["fire<|im_end|>", THINKING + "A load carrier.<|im_end|>"]
    generation_prompt = collator.render(SHAPES["multi_turn"][:-1], add_generation_prompt=True)
    assert generation_prompt.endswith("<|im_start|>assistant\n<think>\n")  # the template's thinking-on prompt


def test_with_a_tokenizer_that_merges_newlines_the_span_and_the_prompt_meet_at_the_merged_token():
    """Qwen's real tokenizer has `\n\n` as one token, so `<think>\n` + `\n</think>` leaves no token boundary
    between the thinking-on generation prompt and the last reply: the span starts at that token, one `\n` early,
    and the generation prompt ends where it starts (`<think>`), so training and generation see the same tokens."""
    tokenizer = qwen_tokenizer("qwen3_5_think", newline_merges=True)
    assert tokenizer.tokenize("<think>\n\n</think>")[1] == "ĊĊ"
    collator = CompletionOnlyCollator(tokenizer)
    messages = SHAPES["multi_turn"]
    batch = collator([{"where": "t.jsonl:1", "row": 1, "messages": messages}])
    assert supervised_text(collator, batch) == "fire<|im_end|>" + "\n" + THINKING + "A load carrier.<|im_end|>"
    prompt = collator.generation_prompt(messages)
    assert prompt + "\n" == collator.render(messages[:-1], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>")


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_a_row_too_long_is_dropped_or_shortened_with_its_reply_intact(qwen_models, tmp_path, variant):
    processor, model = load(str(qwen_models[variant]))
    messages = [{"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": "A mould."}]
    batch = fit_too_long_row(processor, example(tmp_path, messages, image=True))
    assert supervised_text(CompletionOnlyCollator(processor), batch) == expected_supervised(variant, messages)
    assert_every_tensor_matches_input_ids(batch, processor, [1])


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_images_in_two_turns_are_labelled_exactly(qwen_models, tmp_path, variant):
    """The first reply's boundaries lie before the second image: located by running the processor on the head."""
    processor, _ = load(str(qwen_models[variant]))
    collator = CompletionOnlyCollator(processor)
    messages = TWO_IMAGE_TURNS
    row = example(tmp_path, messages, image=True)
    batch = collator([{**row, "stored_images": row["stored_images"] * 2}])
    assert supervised_text(collator, batch) == expected_supervised(variant, messages)
    assert_every_tensor_matches_input_ids(batch, processor, [2])


# ---- tensors, forward and backward ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_mixed_batch_tensors_match_and_forward_backward_is_finite(qwen_models, tmp_path, variant):
    processor, model = load(str(qwen_models[variant]))
    collator = CompletionOnlyCollator(processor)
    rows = [example(tmp_path, SHAPES["prompt_completion"], True), example(tmp_path, SHAPES["multi_turn"], False)]
    batch = collator(rows)
    assert_every_tensor_matches_input_ids(batch, processor, [1, 0])
    for row, item in enumerate(rows):
        assert supervised_text(collator, batch, row) == expected_supervised(variant, item["messages"])
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()
    vision_grad = sum(size for name, size in step_gradients(model, batch).items() if ".visual." in name)
    assert vision_grad > 0  # the image reached the vision tower through pixel_values and image_grid_thw


def test_special_token_in_data_is_refused_in_one_line(qwen_models, tmp_path):
    processor, _ = load(str(qwen_models["qwen2_5_vl"]))
    messages = [{"role": "user", "content": "What is <|image_pad|>?"}, {"role": "assistant", "content": "water"}]
    with pytest.raises(UserError) as refused:
        CompletionOnlyCollator(processor)([example(tmp_path, messages, False, where="qwen.jsonl:3")])
    assert str(refused.value) == ("qwen.jsonl:3: message 1 (user) contains '<|image_pad|>', a special token of this "
                                  "tokenizer; as data it would act as a control token; remove or reword it")


# ---- generation -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_generation_from_left_padded_image_and_text_prompts(qwen_models, tmp_path, variant):
    processor, model = load(str(qwen_models[variant]))
    collator = CompletionOnlyCollator(processor)
    rows = [example(tmp_path, SHAPES["prompt_completion"], True), example(tmp_path, SHAPES["instruction"], False)]
    inputs = collator.generation_inputs(rows)
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends at the last column
    replies = generate_replies(model, collator, rows, max_new_tokens=4)
    assert len(replies) == 2 and all(isinstance(reply, str) for reply in replies)
    # Qwen's M-RoPE deltas: the image prompt's first new token equals a one-row generation of the same prompt.
    alone = generate_replies(model, collator, rows[:1], max_new_tokens=4)
    assert alone[0] == replies[0]
    assert exact_match(replies, [reference(r) for r in rows]) in (0.0, 0.5, 1.0)


def test_a_thinking_reply_is_scored_on_the_text_after_its_thinking_block(qwen_models):
    processor, _ = load(str(qwen_models["qwen3_5_think"]))
    family = family_for_processor(processor)
    # What greedy decoding gives after the thinking-on prompt `<think>\n` (`</think>` is not a special token).
    assert answer_of("\n</think>\n\nwater", family) == "water"
    assert answer_of("water", family) == "water"
    assert answer_of("\n</think>\n\nwater", None) == "</think>\n\nwater"


# ---- training ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_training_run_learns_the_images_and_generation_names_them(qwen_models, tmp_path, variant):
    assert_learns(variant, train_elements(variant, qwen_models[variant], tmp_path))


# ---- LoRA and quantization keep to the language model -----------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_lora_hits_only_language_attention_and_no_vision_module_is_quantized(qwen_models, variant):
    _, model = load(str(qwen_models[variant]))
    config = model.config.get_text_config()
    targets = [name for name, _ in lora_targets(model, LANGUAGE_MODEL_ATTENTION)]
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    attention_layers = layer_types.count("full_attention")
    assert len(targets) == 4 * attention_layers  # q, k, v, o per attention layer; Gated DeltaNet layers have none
    assert all(name.startswith("model.language_model.layers.") and name.endswith(("q_proj", "k_proj", "v_proj",
                                                                                  "o_proj")) for name in targets)
    vision = [name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.startswith("model.visual.")]
    assert vision and not any(_is_quantized(name) for name in vision)
    language = [name for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and name.startswith("model.language_model.")]
    assert language and all(_is_quantized(name) for name in language)
    assert not _is_quantized("lm_head")


# ---- shipped configs and recipe ---------------------------------------------------------------------------------
QWEN2_5_VL_7B_RECIPE = REPO / "recipes/qwen2_5_vl_7b_lora.yaml"


def lora_count(r: int, layers: int, hidden: int, q_out: int, kv_out: int) -> int:
    """LoRA parameters on q/k/v/o: each adds r x (in + out)."""
    return layers * r * ((hidden + q_out) + 2 * (hidden + kv_out) + (q_out + hidden))


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


def test_qwen2_5_vl_7b_recipe_dry_run_checks_rows_with_a_qwen2_5_vl_processor(qwen_models, tmp_path, capsys):
    rows = [{"image": f"{i}.png", "prompt": "What element is shown?", "target": label}
            for i, label in enumerate(["water", "fire"])]
    for i in range(2):
        write_image(tmp_path / f"{i}.png")
    train_file, eval_file = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", rows)
    args = ["train", str(QWEN2_5_VL_7B_RECIPE), "--dry-run",
            "--accelerate-config", str(REPO / "accelerate_configs/single_gpu.yaml"),
            "--train_file", str(train_file), "--eval_file", str(eval_file),
            "--model_name_or_path", str(qwen_models["qwen2_5_vl"])]
    assert sft(args) == 0
    out = capsys.readouterr().out
    assert "accelerate config" in out and out.count("2 rows, 2 ok") == 2 and "0 bad" in out


# ---- export, merge, predict -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_run(qwen_models, tmp_path_factory):
    """A short 8-bit LoRA run on the tiny Qwen2.5-VL (image rows)."""
    tmp = tmp_path_factory.mktemp("qwen_export")
    train(load_recipe(recipe_for(tmp, qwen_models["qwen2_5_vl"], True, load_in_8bit=True, learning_rate=5e-3,
                                 max_length=128)))
    return tmp / "run"


def test_qwen2_5_vl_merged_logits_equal_base_plus_adapter_and_predict_agrees(qwen_run, qwen_models, tmp_path):
    image = write_image(tmp_path / "a.png", (230, 60, 30))
    base_config = AutoConfig.from_pretrained(qwen_models["qwen2_5_vl"])
    collator = CompletionOnlyCollator(load_processor(str(qwen_run), base_config))
    rows = [example(tmp_path, SHAPES["prompt_completion"], False) | {"stored_images": [str(image)]},
            example(tmp_path, SHAPES["multi_turn"], False)]
    batches = [{k: v for k, v in collator([row]).items() if k != "labels"} for row in rows]
    assert_merge_and_predict_agree(qwen_run, qwen_models["qwen2_5_vl"], batches, tmp_path)
