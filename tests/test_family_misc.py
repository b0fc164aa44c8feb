"""InternVL 3, Mistral 3 (Pixtral), Llama 4, Gemma 3 and LLaVA-1.5: the label contract, every processor tensor,
training, generation, LoRA targets and the quantization skip list, on tiny random models with the real processor
classes, chat templates and special tokens (tests/families/misc.py builds them; misc_PROVENANCE.md says where each
piece comes from).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig
from trl import ModelConfig

from sft.collator import IGNORE_INDEX, CompletionOnlyCollator
from sft.errors import UserError
from sft.families import FAMILIES, family_for, family_for_processor
from sft.generation import exact_match, generate_replies, reference, stop_ids
from sft.messages import with_images
from sft.model import NOT_QUANTIZED, load_model, load_processor
from sft.plan import _is_quantized, lora_targets, make_plan
from sft.recipe import LANGUAGE_MODEL_ATTENTION, load_recipe
from sft.train import main as train
from tests.conftest import REAL_PROCESSORS, REPO, write_image, write_jsonl, write_recipe
from tests.families.checks import LONG_PROMPT, fit_too_long_row, step_gradients
from tests.families.misc import BUILDERS, TEMPLATES, build
from tests.families.report import assert_learns, train_elements
from tests.families.round_trip import assert_merge_and_predict_agree
from tests.test_label_contract import SHAPES, TWO_IMAGE_TURNS, supervised_text
from tests.test_training import recipe_for

pytestmark = pytest.mark.skipif(TEMPLATES is None, reason="shared/fixtures/chat-templates beside the repo is absent")
NAMES = list(BUILDERS)
SMOLVLM = REAL_PROCESSORS / "SmolVLM-256M-Instruct"
# Issue #9's expected supervision: reply prefix + reply + closing. LLaVA-1.5's template writes "ASSISTANT:" as the
# generation prompt and "ASSISTANT: reply" with nothing after it, so its `</s>` is the EOS the collator inserts.
CLOSING = {"internvl": "<|im_end|>", "mistral3": "</s>", "llama4": "<|eot|>", "gemma3": "<end_of_turn>",
           "llava": "</s>", "smolvlm": "<end_of_utterance>", "llava_next": "</s>", "llava_onevision": "<|im_end|>",
           "gemma4": "<turn|>"}
# SmolVLM2's generation prompt is "Assistant:" and its turn "Assistant: reply"; LLaVA-NeXT's "[/INST]" then " reply".
REPLY_PREFIX = {"llava": " ", "smolvlm": " ", "llava_next": " "}
TABLE_NAME = {"internvl": "internvl3", "smolvlm": "idefics3"}  # the others are named as in sft/families.py
# Tensors with one entry per token: they must match input_ids in batch and length.
PER_TOKEN = ("attention_mask", "labels", "token_type_ids", "mm_token_type_ids")


@pytest.fixture(scope="module")
def misc_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("misc")
    return {name: build(name, root / name) for name in NAMES}


@functools.cache
def load(model_dir: str):
    """Processor and model as the toolkit loads them (sft.model)."""
    processor = load_processor(model_dir, AutoConfig.from_pretrained(model_dir))
    return processor, load_model(ModelConfig(model_name_or_path=model_dir)).eval()


def expected(name: str, messages: list[dict]) -> str:
    return "".join(REPLY_PREFIX.get(name, "") + m["content"] + CLOSING[name]
                   for m in messages if m["role"] == "assistant")


def example(tmp_path, messages: list[dict], image: bool, where: str = "t.jsonl:1") -> dict:
    paths = [str(write_image(tmp_path / "img.png", size=(36, 50)))] if image else []
    return {"where": where, "row": 1, "messages": messages, "stored_images": paths}


def assert_tensors_match_input_ids(name: str, batch: dict, n_images: int) -> None:
    size, length = batch["input_ids"].shape
    for key in PER_TOKEN:
        if key in batch:
            assert batch[key].shape == (size, length), key
    for key in family_for(name).extra_inputs if n_images else ():  # tiny families are named after their model_type
        assert key in batch, key
    if "image_sizes" in batch:  # Mistral 3: one (height, width) per image, as many as pixel_values holds
        assert batch["image_sizes"].shape == (n_images, 2) == (batch["pixel_values"].shape[0], 2)


@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_supervised_tokens_are_the_replies_and_their_end_of_turn(misc_models, tmp_path, name, shape, image):
    processor, model = load(str(misc_models[name]))
    collator = CompletionOnlyCollator(processor)
    batch = collator([example(tmp_path, SHAPES[shape], image)])
    assert supervised_text(collator, batch) == expected(name, SHAPES[shape])
    assert_tensors_match_input_ids(name, batch, int(image))
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("name", NAMES)
def test_images_in_two_turns_are_labelled_exactly_or_refused_in_one_line(misc_models, tmp_path, name):
    processor, _ = load(str(misc_models[name]))
    collator = CompletionOnlyCollator(processor)
    messages = TWO_IMAGE_TURNS
    row = {**example(tmp_path, messages, True), "stored_images": example(tmp_path, [], True)["stored_images"] * 2}
    if name == "llava_onevision":  # its processor tiles a lone image (the head before the second) but not two
        with pytest.raises(UserError, match=r"^t.jsonl:1: the processor expands the images before a later one "
                                            r"differently .* put the row's images in its first user turn$"):
            collator([row])
        return
    batch = collator([row])
    assert supervised_text(collator, batch) == expected(name, [{"role": "assistant", "content": "fire"},
                                                               {"role": "assistant", "content": "water"}])
    assert_tensors_match_input_ids(name, batch, 2)


@pytest.mark.parametrize("name", NAMES)
def test_family_table_entry_is_what_the_processor_and_template_do(misc_models, name):
    processor, _ = load(str(misc_models[name]))
    family = family_for_processor(processor)
    assert family is not None and family.name == TABLE_NAME.get(name, name) and family.closing == CLOSING[name]
    collator = CompletionOnlyCollator(processor)
    one_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What element?"}]}]
    # The template writes exactly one counted image marker per image (so no image_marker entry is needed).
    assert collator.image_token == processor.image_token
    assert collator.render(one_image).count(collator.image_token) == 1


@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_a_row_too_long_is_dropped_or_its_prompt_shortened_never_its_reply(misc_models, tmp_path, name, image):
    processor, model = load(str(misc_models[name]))
    messages = [{"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": "water"}]
    batch = fit_too_long_row(processor, example(tmp_path, messages, image))
    assert supervised_text(CompletionOnlyCollator(processor), batch) == expected(name, messages)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_batch_pads_every_tensor_to_input_ids_and_trains_one_step(misc_models, tmp_path, name):
    processor, model = load(str(misc_models[name]))
    collator = CompletionOnlyCollator(processor)
    rows = [example(tmp_path, SHAPES["prompt_completion"], True), example(tmp_path, SHAPES["multi_turn"], False)]
    batch = collator(rows)
    assert_tensors_match_input_ids(name, batch, 1)
    for row, item in enumerate(rows):
        assert supervised_text(collator, batch, row) == expected(name, item["messages"])
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()
    step_gradients(model, batch)


@pytest.mark.parametrize("name", NAMES)
def test_generation_from_the_collators_prompts_is_scored(misc_models, tmp_path, name):
    processor, model = load(str(misc_models[name]))
    collator = CompletionOnlyCollator(processor)
    rows = [example(tmp_path, SHAPES["prompt_completion"], True), example(tmp_path, SHAPES["multi_turn"], False)]
    replies = generate_replies(model, collator, rows, max_new_tokens=4)
    assert len(replies) == 2 and all(isinstance(reply, str) for reply in replies)
    assert 0.0 <= exact_match(replies, [reference(row) for row in rows]) <= 1.0
    # Generation stops at the token that closes a supervised turn, whatever the checkpoint's generation config says.
    closing = processor.tokenizer.convert_tokens_to_ids(CLOSING[name])
    assert closing in stop_ids(model, collator) and processor.tokenizer.eos_token_id in stop_ids(model, collator)


@pytest.mark.parametrize("name", NAMES)
def test_generation_prompt_is_the_rendering_before_the_last_reply_as_training_saw_it(misc_models, name):
    processor, _ = load(str(misc_models[name]))
    collator = CompletionOnlyCollator(processor)
    messages = with_images(SHAPES["multi_turn"], 0)
    text, spans = collator.supervised_spans(messages)
    prompt = collator.generation_prompt(messages)
    assert prompt == text[:spans[-1][0]]
    template = collator.render(messages[:-1], add_generation_prompt=True)
    if name == "gemma4":  # the template's generation prompt adds an empty thought block that training rows lack
        assert template == prompt + "<|channel>thought\n<channel|>"
    elif name == "llava":  # the EOS inserted after the earlier reply in training is in the prompt too
        assert prompt == template.replace("fire", "fire</s>")
    else:
        assert prompt == template
    assert collator.generation_prompt(messages[:-1]) == prompt  # a row without its reply (sft predict)


@pytest.mark.parametrize("name", NAMES)
def test_training_run_learns_the_images_and_generation_names_them(misc_models, tmp_path, name):
    assert_learns(name, train_elements(name, misc_models[name], tmp_path))


@pytest.mark.parametrize("name", NAMES)
def test_lora_hits_only_language_model_attention_and_no_vision_module_is_quantized(misc_models, name):
    _, model = load(str(misc_models[name]))
    family = family_for(model.config.model_type)
    targets = [n for n, _ in lora_targets(model, LANGUAGE_MODEL_ATTENTION)]
    layers = model.config.get_text_config().num_hidden_layers
    assert len(targets) == 4 * layers  # q, k, v, o of each language-model layer, nothing else
    language_attention = r"(language_model|text_model)\.(model\.)?layers\.\d+\.self_attn\.[qkvo]_proj$"
    assert all(re.search(language_attention, n) for n in targets)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    vision = [n for n in linears if set(n.split(".")) & set(family.vision_modules)]
    assert vision and not any(_is_quantized(n) for n in vision)
    assert all(_is_quantized(n) for n in targets)  # the language model itself is quantized


def test_every_family_derives_lora_targets_and_the_quantization_skip_list_from_the_table():
    for family in FAMILIES:
        for module in family.vision_modules:
            assert f".*{module}" in NOT_QUANTIZED
            assert not _is_quantized(f"model.{module}.layers.0.attention.q_proj")
            assert re.fullmatch(LANGUAGE_MODEL_ATTENTION, f"model.{module}.layers.0.self_attn.q_proj") is None
    assert re.fullmatch(LANGUAGE_MODEL_ATTENTION, "model.language_model.layers.0.self_attn.q_proj")
    # No second list of vision module names anywhere in sft/: every other module reads the table.
    names = {module for family in FAMILIES for module in family.vision_modules}
    for source in (Path(__file__).resolve().parents[1] / "sft").glob("*.py"):
        if source.name != "families.py":
            text = source.read_text(encoding="utf-8")
            assert not [n for n in names if f'"{n}"' in text or f"'{n}'" in text], source.name


MISSING = """
import sys
sys.modules[{package!r}] = None  # the import fails as if the package were not installed
from sft.cli import main
sys.exit(main(["preview", {recipe!r}, "--limit", "1"]))
"""


def run_without(package: str, recipe: Path) -> subprocess.CompletedProcess:
    code = MISSING.format(package=package, recipe=str(recipe))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]


@pytest.mark.parametrize("name", ["mistral3", "llama4"])
def test_missing_torchvision_is_one_line_naming_it_and_its_pip_command(misc_models, tmp_path, name):
    result = run_without("torchvision", recipe_for(tmp_path, misc_models[name], with_images=True))
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"error: {misc_models[name]}: the processor needs the package 'torchvision', "
                                   "which is not installed; install it with: pip install torchvision"]


@pytest.mark.skipif(not SMOLVLM.is_dir(), reason=f"{SMOLVLM} is absent")
def test_missing_num2words_is_one_line_naming_it_and_its_pip_command(tmp_path):
    """SmolVLM2's processor class around the real SmolVLM-256M tokenizer and image processor."""
    from transformers import AutoProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    real = AutoProcessor.from_pretrained(SMOLVLM)
    folder = tmp_path / "smolvlm2"
    SmolVLMProcessor(image_processor=real.image_processor, tokenizer=real.tokenizer,
                     video_processor=SmolVLMVideoProcessor(), image_seq_len=real.image_seq_len,
                     chat_template=real.chat_template).save_pretrained(folder)
    AutoConfig.from_pretrained(SMOLVLM).save_pretrained(folder)
    result = run_without("num2words", recipe_for(tmp_path, folder, with_images=True))
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"error: {folder}: the processor needs the package 'num2words', "
                                   "which is not installed; install it with: pip install num2words"]


@pytest.mark.parametrize("name", ["llava", "gemma3"])
def test_preview_says_when_eos_is_inserted_because_the_template_closes_no_turn(misc_models, tmp_path, capsys, name):
    from sft.cli import main as cli

    train_file = tmp_path / "train.jsonl"
    train_file.write_text('{"prompt": "What element?", "completion": "water"}\n', encoding="utf-8")
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(misc_models[name]),
                          train_file=str(train_file), max_length=256)
    assert cli(["preview", str(recipe), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["supervised_text"] == expected(name, SHAPES["prompt_completion"])
    note = [line for line in captured.err.splitlines() if line.startswith("note: the chat template closes")]
    assert note == (["note: the chat template closes an assistant turn with no special token; the tokenizer's "
                     "EOS '</s>' is inserted right after each reply and supervised"] if name == "llava" else [])


# ---- Gemma 3: shipped configs and recipe -----------------------------------------------------------------------
GEMMA3_4B_RECIPE = REPO / "recipes" / "gemma3_4b_lora.yaml"


@pytest.mark.parametrize(("hub_id", "params", "layers", "hidden", "heads", "kv_heads"),
                         [("google/gemma-3-4b-it", 4_300_079_472, 34, 2560, 8, 4),
                          ("google/gemma-3-12b-it", 12_187_325_040, 48, 3840, 16, 8)])
def test_gemma3_plans_from_the_shipped_configs(tmp_path, hub_id, params, layers, hidden, heads, kv_heads):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path=hub_id, train_file="t.jsonl",
                                      dtype="bfloat16"))
    plan = make_plan(recipe)
    assert plan.architecture == "Gemma3ForConditionalGeneration"
    assert plan.total_params == params  # the model cards' 4.3B / 12.2B
    head_dim = 256  # q/k/v/o: hidden -> heads x 256 (k and v: kv_heads x 256) and back; r (8) x (in + out) each
    assert plan.lora_params == layers * 8 * ((hidden + heads * head_dim) * 2 + (hidden + kv_heads * head_dim) * 2)


def test_gemma3_4b_recipe_plans_and_dry_runs_with_a_gemma3_processor(misc_models, tmp_path, capsys):
    from sft.cli import main as cli

    assert make_plan(load_recipe(GEMMA3_4B_RECIPE)).fits
    rows = [{"image": f"{i}.png", "prompt": "What element is shown?", "target": label}
            for i, label in enumerate(["water", "fire"])]
    for i in range(2):
        write_image(tmp_path / f"{i}.png")
    train_file, eval_file = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", rows)
    args = ["train", str(GEMMA3_4B_RECIPE), "--dry-run", "--train_file", str(train_file),
            "--eval_file", str(eval_file), "--model_name_or_path", str(misc_models["gemma3"])]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert out.count("2 rows, 2 ok") == 2 and "0 bad" in out


# ---- Gemma 3: export, merge, predict ----------------------------------------------------------------------------
def test_gemma3_merged_logits_equal_base_plus_adapter_and_predict_agrees(misc_models, tmp_path_factory, tmp_path):
    run_root = tmp_path_factory.mktemp("gemma3_export")
    train(load_recipe(recipe_for(run_root, misc_models["gemma3"], True, load_in_8bit=True, learning_rate=5e-3,
                                 max_length=128)))
    run = run_root / "run"
    collator = CompletionOnlyCollator(load_processor(str(run), AutoConfig.from_pretrained(misc_models["gemma3"])))
    rows = [example(tmp_path, SHAPES["prompt_completion"], True), example(tmp_path, SHAPES["multi_turn"], False)]
    batches = [{k: v for k, v in collator([row]).items() if k != "labels"} for row in rows]
    assert_merge_and_predict_agree(run, misc_models["gemma3"], batches, tmp_path)


# ---- SmolVLM2 and LLaVA-OneVision: plans from the shipped configs ------------------------------------------------
def lora_count(r: int, layers: int, hidden: int, q_out: int, kv_out: int) -> int:
    """LoRA parameters on q/k/v/o: each adds r x (in + out)."""
    return layers * r * ((hidden + q_out) + 2 * (hidden + kv_out) + (q_out + hidden))


SHIPPED = {
    # 24 layers, hidden 2048, 32 heads of 64 for queries and for keys/values; the hub's "2.25B params".
    "HuggingFaceTB/SmolVLM2-2.2B-Instruct": ("SmolVLMForConditionalGeneration", 2_246_784_880,
                                             lora_count(8, 24, 2048, 2048, 2048)),
    # 28 layers, hidden 3584, 28 query and 4 key/value heads of 128; the hub's "8.03B params".
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": ("LlavaOnevisionForConditionalGeneration", 8_030_807_584,
                                                lora_count(8, 28, 3584, 3584, 512)),
}


@pytest.mark.parametrize("hub_id", list(SHIPPED))
def test_plan_from_the_shipped_config_quantizes_only_the_language_model(tmp_path, hub_id):
    from sft.plan import build_on_meta

    architecture, total, lora = SHIPPED[hub_id]
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=hub_id, train_file="t.jsonl", load_in_4bit=True,
                          dtype="bfloat16", lora_r=8)
    plan = make_plan(load_recipe(recipe))
    assert (plan.architecture, plan.total_params, plan.lora_params) == (architecture, total, lora)
    model, _ = build_on_meta(hub_id)
    language = sum(m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and re.search(r"\.(language|text)_model\.", n))
    assert plan.quantized_params == language  # 4-bit: no vision tower, projector or lm_head weight
