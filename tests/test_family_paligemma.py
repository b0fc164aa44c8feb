"""What only PaliGemma 2 does, beyond the contract every family meets (tests/test_family_contract.py): no chat
template, one prompt and one answer through its processor's own prefix/suffix call, the prefix attended both ways,
other row shapes refused, `sft preview`, and the plan from the shipped paligemma2-3b-pt-448 config. Tiny model from
tests/families/paligemma.py, named in tests/families/registry.py.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.eval.generation import generate
from sft.family.families import family_for, family_for_processor
from sft.labels.labelling import make_collator
from sft.labels.prefix_suffix import PrefixSuffixCollator
from sft.plan.estimate import make_plan
from tests.conftest import write_image, write_recipe
from tests.families.checks import lora_count
from tests.families.registry import BY_NAME
from tests.families.rows import SHAPES, row

CASE = BY_NAME["paligemma"]


@pytest.fixture
def paligemma(family_models):
    """(model folder, processor, collator, model) of the tiny PaliGemma 2."""
    processor, model = family_models.load(CASE)
    return family_models.folder(CASE), processor, make_collator(processor, CASE.family), model


def test_the_family_table_sends_paligemma_through_its_processors_prefix_suffix_path(paligemma):
    _, processor, collator, _ = paligemma
    assert family_for_processor(processor) is family_for("paligemma")
    assert isinstance(collator, PrefixSuffixCollator) and not processor.chat_template


@pytest.mark.parametrize("shape", ["instruction", "prompt_completion"])
def test_the_prefix_is_the_image_tokens_bos_and_prompt_and_type_0(paligemma, tmp_path, shape):
    _, processor, collator, _ = paligemma
    messages = SHAPES[shape]
    batch = collator([row(tmp_path, messages, 1)])
    ids, types = batch["input_ids"][0], batch["token_type_ids"][0]
    prefix = collator.tokenizer.decode(ids[types == 0])
    assert prefix == "<image>" * processor.image_seq_length + "<bos>" + messages[0]["content"] + "\n"
    assert (batch["labels"][0][types == 0] == -100).all()


def test_the_prefix_attends_both_ways_and_the_answer_causally(paligemma, tmp_path):
    """token_type_ids reach the model: changing the prompt's last word changes the logits at its first word (the
    prefix is one bidirectional block) but changing the answer's last token never reaches back to the prefix."""
    _, _, collator, model = paligemma

    def logits(prompt: str, answer: str) -> torch.Tensor:
        batch = collator([row(tmp_path, [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": answer}], 1)])
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
            build_batch([row(tmp_path, messages, int(image), where="data.jsonl:7")])
        message = str(refused.value)
        assert message.startswith("data.jsonl:7: paligemma") and reason in message and "\n" not in message


def test_generation_prompts_are_the_prefix_alone_left_padded(paligemma, tmp_path):
    _, processor, collator, model = paligemma
    rows = [row(tmp_path, SHAPES["prompt_completion"], 1), row(tmp_path, SHAPES["instruction"], 1)]
    inputs = collator.generation_inputs(rows)
    assert "labels" not in inputs and (inputs["token_type_ids"] == 0).all()
    assert inputs["attention_mask"][:, -1].all()  # left padding: every prompt ends at the last column
    last = collator.tokenizer.decode(inputs["input_ids"][0][-4:])
    assert last.endswith(SHAPES["prompt_completion"][0]["content"][-4:] + "\n")
    generated = generate(model, collator, rows, max_new_tokens=4)
    assert [g.prompt for g in generated] == [item["messages"][0]["content"] for item in rows]


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
    from sft.plan.estimate import build_on_meta

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
