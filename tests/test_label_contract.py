"""The label contract (shared/DESIGN.md) on the three tiny families.

For every row: the supervised tokens, decoded in order, are exactly each assistant reply plus the token that closes
its turn; every processor tensor matches input_ids in batch and length; a forward pass gives a finite loss.
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from sft.collator import IGNORE_INDEX, CompletionOnlyCollator
from sft.dataset import measure
from sft.model import load_processor
from tests.conftest import write_image

END_OF_TURN = {"llama": "<|eot_id|>", "mllama": "<|eot_id|>", "idefics3": "<end_of_utterance>"}
# SmolVLM's template writes "Assistant:" as the generation prompt and "Assistant: {text}" for the turn.
REPLY_PREFIX = {"llama": "", "mllama": "", "idefics3": " "}

SHAPES = {
    "instruction": [{"role": "user", "content": "Define the construction term.\n\nrebar"},
                    {"role": "assistant", "content": "A steel bar used to reinforce concrete."}],
    "prompt_completion": [{"role": "user", "content": "What element is shown?"},
                          {"role": "assistant", "content": "water"}],
    "multi_turn": [{"role": "system", "content": "Answer briefly."},
                   {"role": "user", "content": "What element is shown?"}, {"role": "assistant", "content": "fire"},
                   {"role": "user", "content": "And a beam?"}, {"role": "assistant", "content": "A load carrier."}],
}
# An image in each user turn: the first reply's span lies before the second image.
TWO_IMAGE_TURNS = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What element?"}]},
                   {"role": "assistant", "content": "fire"},
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]},
                   {"role": "assistant", "content": "water"}]
CASES = [(family, image, shape) for family in ("llama", "mllama", "idefics3") for image in (False, True)
         for shape in SHAPES if not (family == "llama" and image)]


@functools.cache
def load(model_dir: str):
    is_text = "llama" == model_dir.rsplit("/", 1)[-1]
    processing_class = load_processor(model_dir, AutoConfig.from_pretrained(model_dir))
    model = (AutoModelForCausalLM if is_text else AutoModelForImageTextToText).from_pretrained(model_dir)
    return processing_class, model.eval()


def expected_supervised(family: str, messages: list[dict]) -> str:
    return "".join(REPLY_PREFIX[family] + m["content"] + END_OF_TURN[family]
                   for m in messages if m["role"] == "assistant")


def assert_tensors_match_input_ids(batch: dict) -> None:
    batch_size, length = batch["input_ids"].shape
    assert batch["labels"].shape == (batch_size, length)
    assert batch["attention_mask"].shape == (batch_size, length)
    if "cross_attention_mask" in batch:  # Mllama: one row of tile masks per text token
        assert batch["cross_attention_mask"].shape[:2] == (batch_size, length)
    for key in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "pixel_attention_mask"):
        if key in batch:
            assert batch[key].shape[0] == batch_size, key


def supervised_text(collator, batch, row: int = 0) -> str:
    ids = batch["input_ids"][row][batch["labels"][row] != IGNORE_INDEX]
    return collator.tokenizer.decode(ids, skip_special_tokens=False)


def example_for(tmp_path, shape: str, image: bool) -> dict:
    paths = [str(write_image(tmp_path / "img.png", size=(36, 50)))] if image else []
    return {"where": "test.jsonl:1", "row": 1, "messages": SHAPES[shape], "stored_images": paths}


@pytest.mark.parametrize(("family", "image", "shape"), CASES)
def test_supervised_tokens_are_the_replies_and_their_end_of_turn(tiny_models, tmp_path, family, image, shape):
    processing_class, model = load(str(tiny_models[family]))
    collator = CompletionOnlyCollator(processing_class)
    example = example_for(tmp_path, shape, image)
    batch = collator([example])
    assert supervised_text(collator, batch) == expected_supervised(family, SHAPES[shape])
    assert_tensors_match_input_ids(batch)
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize(("family", "image", "shape"), CASES)
def test_a_row_too_long_is_dropped_or_its_prompt_shortened_never_its_reply(tiny_models, tmp_path, family, image,
                                                                           shape):
    processing_class, model = load(str(tiny_models[family]))
    collator = CompletionOnlyCollator(processing_class)
    example = example_for(tmp_path, shape, image)
    long_user = {"role": "user", "content": "Formwork is a temporary mould for concrete. " * 30}
    messages = list(example["messages"])
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[first_user] = long_user
    example["messages"] = messages
    full_length = len(collator.encode(example).input_ids)
    max_length = full_length - 40

    dropped = measure(example, collator, max_length, "drop")
    assert dropped["status"] == "dropped"

    shortened = measure(example, collator, max_length, "shorten_prompt")
    assert shortened["status"] == "truncated"
    assert shortened["length"] <= max_length
    fitted = {**example, "messages": shortened["messages"]}
    batch = CompletionOnlyCollator(processing_class, max_length=max_length)([fitted])
    assert batch["input_ids"].shape[1] <= max_length
    assert supervised_text(collator, batch) == expected_supervised(family, messages)
    assert_tensors_match_input_ids(batch)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("family", ["mllama", "idefics3"])
def test_mixed_batch_of_image_and_text_rows_pads_right_and_supervises_no_padding(tiny_models, tmp_path, family):
    processing_class, model = load(str(tiny_models[family]))
    collator = CompletionOnlyCollator(processing_class)
    rows = [example_for(tmp_path, "prompt_completion", True), example_for(tmp_path, "multi_turn", False)]
    batch = collator(rows)
    assert_tensors_match_input_ids(batch)
    for row, example in enumerate(rows):
        assert supervised_text(collator, batch, row) == expected_supervised(family, example["messages"])
        padding = batch["attention_mask"][row] == 0
        assert (batch["labels"][row][padding] == IGNORE_INDEX).all()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("family", ["mllama", "idefics3"])
def test_images_in_two_turns_are_labelled_exactly(tiny_models, tmp_path, family):
    processing_class, model = load(str(tiny_models[family]))
    collator = CompletionOnlyCollator(processing_class)
    example = {**example_for(tmp_path, "prompt_completion", True), "messages": TWO_IMAGE_TURNS}
    batch = collator([{**example, "stored_images": example["stored_images"] * 2}])
    assert supervised_text(collator, batch) == expected_supervised(family, TWO_IMAGE_TURNS)
    assert_tensors_match_input_ids(batch)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("family", ["llama", "mllama", "idefics3"])
def test_a_reply_that_repeats_a_word_of_the_role_header_is_found_after_it(tiny_models, tmp_path, family):
    """`assistant` is in Llama's header and `Assistant` in SmolVLM's: the reply is searched after the generation
    prompt, so the header is never supervised."""
    processing_class, _ = load(str(tiny_models[family]))
    collator = CompletionOnlyCollator(processing_class)
    reply = "Assistant" if family == "idefics3" else "assistant"
    messages = [{"role": "user", "content": "Who answers?"}, {"role": "assistant", "content": reply}]
    batch = collator([{**example_for(tmp_path, "prompt_completion", False), "messages": messages}])
    assert supervised_text(collator, batch) == expected_supervised(family, messages)


def test_bos_is_never_supervised_and_appears_once(tiny_models, tmp_path):
    processing_class, _ = load(str(tiny_models["mllama"]))
    collator = CompletionOnlyCollator(processing_class)
    batch = collator([example_for(tmp_path, "prompt_completion", True)])
    bos = collator.tokenizer.bos_token_id
    assert (batch["input_ids"][0] == bos).sum() == 1
    assert bos not in batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
