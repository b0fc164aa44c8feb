"""The label contract with the real Llama 3.2 Vision and SmolVLM-256M processors (tokenizer, chat template, image
processor), each paired with a tiny random model whose vocabulary matches. The assets live beside the repository
(../shared/fixtures/real-processors, never copied in); without them these tests skip.
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import (
    AutoProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    MllamaConfig,
    MllamaForConditionalGeneration,
)

from sft.errors import UserError
from sft.labels.collator import CompletionOnlyCollator
from sft.labels.fit import measure
from tests.conftest import REAL_PROCESSORS, write_image
from tests.families.checks import assert_tensors_match_input_ids
from tests.families.registry import BY_NAME
from tests.families.rows import SHAPES, supervised_text

pytestmark = pytest.mark.skipif(not REAL_PROCESSORS.is_dir(), reason=f"{REAL_PROCESSORS} is absent")
LLAMA = REAL_PROCESSORS / "Llama-3.2-11B-Vision-Instruct"
SMOLVLM = REAL_PROCESSORS / "SmolVLM-256M-Instruct"
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
CASE = {"llama": BY_NAME["mllama"], "smolvlm": BY_NAME["idefics3"]}  # the tiny cases of the same templates


@functools.cache
def real(name: str):
    """The real processor and a tiny random model shaped to its vocabulary and image tiles."""
    torch.manual_seed(0)
    if name == "llama":
        processor = AutoProcessor.from_pretrained(LLAMA)
        config = MllamaConfig(
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_global_layers=1,
                               attention_heads=2, image_size=560, patch_size=14, max_num_tiles=4,
                               intermediate_layers_indices=[0], vision_output_dim=32),
            text_config=dict(vocab_size=128264, cross_attention_layers=[1], pad_token_id=128004, **TEXT),
            image_token_index=128256,
        )
        model = MllamaForConditionalGeneration(config)
    else:
        processor = AutoProcessor.from_pretrained(SMOLVLM)
        config = Idefics3Config(
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=512, patch_size=16),
            text_config=dict(model_type="llama", vocab_size=49280, pad_token_id=2, **TEXT),
            scale_factor=4, image_token_id=processor.tokenizer.convert_tokens_to_ids("<image>"),
        )
        model = Idefics3ForConditionalGeneration(config)
    return processor, model.eval()


@pytest.mark.parametrize("name", ["llama", "smolvlm"])
@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_real_processor_supervises_replies_and_end_of_turn_only(tmp_path, name, image, shape):
    processor, model = real(name)
    collator = CompletionOnlyCollator(processor, date_string="26 Jul 2024")
    paths = [str(write_image(tmp_path / "img.png", size=(24, 32)))] if image else []
    messages = SHAPES[shape]
    if name == "llama" and image:  # the real template refuses a system turn with images (tested below)
        messages = [m for m in messages if m["role"] != "system"]
    example = {"where": "t.jsonl:1", "messages": messages, "stored_images": paths}
    batch = collator([example])
    assert supervised_text(collator, batch) == CASE[name].expected(messages)
    assert_tensors_match_input_ids(batch, processor, CASE[name].family, [int(image)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("name", ["llama", "smolvlm"])
def test_real_processor_row_too_long_gets_its_prompt_shortened_not_its_reply(tmp_path, name):
    processor, _ = real(name)
    collator = CompletionOnlyCollator(processor, date_string="26 Jul 2024")
    messages = [{"role": "user", "content": "Formwork is a temporary mould for concrete. " * 40},
                {"role": "assistant", "content": "A mould."}]
    example = {"where": "t.jsonl:1", "messages": messages, "stored_images": []}
    max_length = len(collator.encode(example).input_ids) - 100
    fit = measure(example, collator, max_length, "shorten_prompt")
    assert fit["status"] == "truncated" and fit["length"] <= max_length
    batch = collator([{**example, "messages": fit["messages"]}])
    assert supervised_text(collator, batch) == CASE[name].expected(messages)


def test_llama_template_date_is_pinned_so_a_row_renders_the_same_any_day():
    processor, _ = real("llama")
    collator = CompletionOnlyCollator(processor, date_string="26 Jul 2024")
    text = collator.render(SHAPES["prompt_completion"])
    assert "Today Date: 26 Jul 2024" in text


def test_llama_bos_appears_once_and_unsupervised(tmp_path):
    processor, _ = real("llama")
    collator = CompletionOnlyCollator(processor, date_string="26 Jul 2024")
    example = {"where": "t.jsonl:1", "messages": SHAPES["prompt_completion"],
               "stored_images": [str(write_image(tmp_path / "i.png"))]}
    encoded = collator.encode(example)
    assert encoded.input_ids.count(128000) == 1
    assert encoded.labels[encoded.input_ids.index(128000)] == -100


def test_llama_template_refusing_images_with_a_system_turn_is_a_one_line_error_naming_the_row(tmp_path):
    processor, _ = real("llama")
    collator = CompletionOnlyCollator(processor, date_string="26 Jul 2024")
    example = {"where": "t.jsonl:7", "messages": SHAPES["multi_turn"],
               "stored_images": [str(write_image(tmp_path / "i.png"))]}
    with pytest.raises(UserError) as error:
        collator.encode(example)
    assert str(error.value) == ("t.jsonl:7: the chat template refuses this row: "
                                "Prompting with images is incompatible with system messages.")
