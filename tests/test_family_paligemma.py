"""PaliGemma 2: no chat template; one prompt and one answer through the processor's own prefix/suffix call.

Labels, the prefix's bidirectional attention, truncation, training, generation, LoRA targets and the quantization
skip list, export / merge / predict on a tiny random PaliGemma 2 with the real processor class
(tests/families/paligemma.py), and the plan from the shipped paligemma2-3b-pt-448 config.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoConfig
from trl import ModelConfig

from sft.collator import IGNORE_INDEX, make_collator
from sft.errors import UserError
from sft.families import family_for, family_for_processor
from sft.generation import exact_match, generate, reference
from sft.model import load_model, load_processor
from sft.plan import _is_quantized, lora_targets, make_plan
from sft.prefix_suffix import PrefixSuffixCollator
from sft.recipe import LANGUAGE_MODEL_ATTENTION, load_recipe
from sft.train import main as train
from tests.conftest import write_image, write_recipe
from tests.families.checks import LONG_PROMPT, fit_too_long_row, step_gradients
from tests.families.paligemma import build
from tests.families.report import assert_learns, train_elements
from tests.families.round_trip import assert_merge_and_predict_agree
from tests.test_label_contract import SHAPES, supervised_text
from tests.test_training import recipe_for


@pytest.fixture(scope="module")
def paligemma(tmp_path_factory):
    """(model folder, processor, collator, model) of the tiny PaliGemma 2."""
    folder = build(tmp_path_factory.mktemp("paligemma") / "model")
    processor = load_processor(str(folder), AutoConfig.from_pretrained(folder))
    model = load_model(ModelConfig(model_name_or_path=str(folder))).eval()
    return folder, processor, make_collator(processor), model


def row(tmp_path, messages: list[dict], image: bool = True, where: str = "t.jsonl:1") -> dict:
    paths = [str(write_image(tmp_path / "img.png", size=(36, 50)))] if image else []
    return {"where": where, "row": 1, "messages": messages, "stored_images": paths}


def test_the_family_table_sends_paligemma_through_its_processors_prefix_suffix_path(paligemma):
    _, processor, collator, _ = paligemma
    assert family_for_processor(processor) is family_for("paligemma")
    assert isinstance(collator, PrefixSuffixCollator) and not processor.chat_template


@pytest.mark.parametrize("shape", ["instruction", "prompt_completion"])
def test_supervised_tokens_are_the_answer_and_eos_and_the_prefix_is_type_0(paligemma, tmp_path, shape):
    _, processor, collator, model = paligemma
    messages = SHAPES[shape]
    batch = collator([row(tmp_path, messages)])
    assert supervised_text(collator, batch) == messages[-1]["content"] + "<eos>"
    ids, types = batch["input_ids"][0], batch["token_type_ids"][0]
    prefix = collator.tokenizer.decode(ids[types == 0])
    assert prefix == "<image>" * processor.image_seq_length + "<bos>" + messages[0]["content"] + "\n"
    assert (batch["labels"][0][types == 0] == IGNORE_INDEX).all()
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values", "labels"}
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_the_prefix_attends_both_ways_and_the_answer_causally(paligemma, tmp_path):
    """token_type_ids reach the model: changing the prompt's last word changes the logits at its first word (the
    prefix is one bidirectional block) but changing the answer's last token never reaches back to the prefix."""
    _, _, collator, model = paligemma

    def logits(prompt: str, answer: str) -> torch.Tensor:
        batch = collator([row(tmp_path, [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": answer}])])
        with torch.no_grad():
            return model(**batch).logits[0], batch["token_type_ids"][0]

    (a, types), (b, _) = logits("What element is shown?", "water"), logits("What element is shown!", "water")
    first_text = int((types == 0).nonzero()[0]) + collator.processing_class.image_seq_length + 1  # after <bos>
    assert not torch.allclose(a[first_text], b[first_text], atol=1e-3)
    (c, types), (d, _) = logits("What element is shown?", "water"), logits("What element is shown?", "fire")
    prefix = int((types == 0).sum())
    assert torch.allclose(c[:prefix], d[:prefix], atol=1e-4)  # sdpa over another length: float noise only


@pytest.mark.parametrize(("messages", "image", "reason"), [
    (SHAPES["multi_turn"], True, "takes no system message"),
    (SHAPES["multi_turn"][1:], True, "takes one prompt and one answer per row (its processor's prefix/suffix); "
                                     "this row has 2 user and 2 assistant turn(s)"),
    (SHAPES["prompt_completion"], False, "processor needs an image in every row; this row has none"),
])
def test_other_row_shapes_are_refused_in_one_line_saying_why(paligemma, tmp_path, messages, image, reason):
    _, _, collator, _ = paligemma
    for build_batch in (collator, collator.generation_inputs):
        with pytest.raises(UserError) as refused:
            build_batch([row(tmp_path, messages, image, where="data.jsonl:7")])
        message = str(refused.value)
        assert message.startswith("data.jsonl:7: paligemma") and reason in message and "\n" not in message


def test_a_row_too_long_is_dropped_or_its_prompt_shortened_never_its_answer(paligemma, tmp_path):
    _, processor, collator, model = paligemma
    messages = [{"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": "water"}]
    batch = fit_too_long_row(processor, row(tmp_path, messages))
    assert supervised_text(collator, batch) == "water<eos>"
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_mixed_batch_pads_every_tensor_and_trains_one_step(paligemma, tmp_path):
    _, _, collator, model = paligemma
    rows = [row(tmp_path, SHAPES["prompt_completion"]), row(tmp_path, SHAPES["instruction"])]
    batch = collator(rows)
    for key in ("attention_mask", "token_type_ids", "labels"):
        assert batch[key].shape == batch["input_ids"].shape, key
    for index, item in enumerate(rows):
        assert supervised_text(collator, batch, index) == item["messages"][-1]["content"] + "<eos>"
        assert (batch["labels"][index][batch["attention_mask"][index] == 0] == IGNORE_INDEX).all()
    step_gradients(model, batch)


def test_generation_prompts_are_the_prefix_alone_left_padded(paligemma, tmp_path):
    _, processor, collator, model = paligemma
    rows = [row(tmp_path, SHAPES["prompt_completion"]), row(tmp_path, SHAPES["instruction"])]
    inputs = collator.generation_inputs(rows)
    assert "labels" not in inputs and (inputs["token_type_ids"] == 0).all()
    assert inputs["attention_mask"][:, -1].all()  # left padding: every prompt ends at the last column
    last = collator.tokenizer.decode(inputs["input_ids"][0][-4:])
    assert last.endswith(SHAPES["prompt_completion"][0]["content"][-4:] + "\n")
    generated = generate(model, collator, rows, max_new_tokens=4)
    assert [g.prompt for g in generated] == [item["messages"][0]["content"] for item in rows]
    assert 0.0 <= exact_match([g.reply for g in generated], [reference(item) for item in rows]) <= 1.0


def test_training_run_learns_the_images_and_generation_names_them(paligemma, tmp_path):
    assert_learns("paligemma", train_elements("paligemma", paligemma[0], tmp_path))


def test_lora_hits_only_language_model_attention_and_no_vision_module_is_quantized(paligemma):
    model = paligemma[3]
    targets = [n for n, _ in lora_targets(model, LANGUAGE_MODEL_ATTENTION)]
    assert len(targets) == 4 * model.config.text_config.num_hidden_layers
    assert all(re.search(r"language_model\.(model\.)?layers\.\d+\.self_attn\.[qkvo]_proj$", n) for n in targets)
    vision = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              and {"vision_tower", "multi_modal_projector"} & set(n.split("."))]
    assert vision and not any(_is_quantized(n) for n in vision) and all(_is_quantized(n) for n in targets)


def test_preview_shows_the_answer_and_eos_as_supervised(paligemma, tmp_path, capsys):
    from sft.cli import main as cli

    write_image(tmp_path / "0.png")
    data = tmp_path / "train.jsonl"
    data.write_text('{"image": "0.png", "prompt": "answer en What element?", "completion": "water"}\n',
                    encoding="utf-8")
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(paligemma[0]), train_file=str(data),
                          max_length=128)
    assert cli(["preview", str(recipe), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["supervised_text"] == "water<eos>" and record["status"] == "ok"


def test_plan_from_the_shipped_paligemma2_config_quantizes_only_the_language_model(tmp_path):
    from sft.plan import build_on_meta
    from tests.test_family_misc import lora_count

    hub_id = "google/paligemma2-3b-pt-448"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=hub_id, train_file="t.jsonl", load_in_8bit=True,
                          dtype="bfloat16", lora_r=8)
    plan = make_plan(load_recipe(recipe))
    # 3,033,127,152 = keras-hub's pali_gemma2_pt_3b_448 (3,032,979,696) + the 64 padding rows of the hub's
    # 257,216-row embedding (64 x 2304); Gemma 2 2B: 26 layers, hidden 2304, 8 query and 4 key/value heads of 256.
    assert (plan.architecture, plan.total_params) == ("PaliGemmaForConditionalGeneration", 3_033_127_152)
    assert plan.lora_params == lora_count(8, 26, 2304, 8 * 256, 4 * 256)
    model, _ = build_on_meta(hub_id)
    language = sum(m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and re.search(r"\.language_model\.", n))
    assert plan.quantized_params == language and plan.fits


def test_merged_logits_equal_base_plus_adapter_and_predict_agrees(paligemma, tmp_path_factory, tmp_path):
    """8-bit LoRA run, merge into the unquantized base (fp32), predict from the run and from the merged folder."""
    folder, processor, collator, _ = paligemma
    run_root = tmp_path_factory.mktemp("paligemma_export")
    train(load_recipe(recipe_for(run_root, folder, True, load_in_8bit=True, learning_rate=5e-3, max_length=128)))
    run = run_root / "run"
    assert not (run / "chat_template.jinja").exists()
    rows = [row(tmp_path, SHAPES["prompt_completion"]), row(tmp_path, SHAPES["instruction"])]
    batches = [{k: v for k, v in collator([item]).items() if k != "labels"} for item in rows]
    assert_merge_and_predict_agree(run, folder, batches, tmp_path)
