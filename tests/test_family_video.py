"""The label contract with video (shared/DESIGN.md: video rows follow the image rules), for every family whose table
entry takes video (tests/families/registry.py VIDEO): tiny clips of a few solid-colour frames written with PyAV.

Per case: a video row supervises exactly each reply plus the closing token, also beside an image in another turn;
every video tensor matches input_ids and the clips' frames; a row's tokens do not depend on the clips beside it in a
batch; a too-long video row is dropped or its prompt shortened, never its clip; generation answers the tokens
training saw; a training run learns to name the colour of a clip (accuracy 1.0 by generation).
"""

from __future__ import annotations

import pytest
import torch

from sft.family.families import FAMILIES
from sft.family.video_budget import VIDEO_BUDGETS
from sft.labels.fit import measure
from sft.labels.labelling import make_collator
from tests.families.checks import (
    assert_tensors_match_input_ids,
    assert_video_tensors_match,
    fit_too_long_row,
    step_gradients,
)
from tests.families.registry import VIDEO, Case, cases
from tests.families.report import assert_learns, train_clips
from tests.families.rows import (
    IMAGE_THEN_VIDEO,
    LONG_PROMPT,
    SHAPES,
    VIDEO_THEN_IMAGE,
    row,
    supervised_text,
    video_row,
)

ONE_VIDEO = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What element?"}]},
             {"role": "assistant", "content": "water"}]


def loaded(family_models, case: Case):
    processor, model = family_models.load(case)
    return processor, model, make_collator(processor, case.family)


def frames_of(collator, items: list[dict]) -> list[int]:
    """The frames each clip of the rows gives under the processor's frame budget, in row order."""
    from sft.labels.video_batch import split_visuals

    return [len(clip) for item in items for clip in split_visuals(collator.load_images(item))[1]]


def test_every_video_family_names_its_tensors_and_a_video_budget_setting():
    for family in FAMILIES:
        if family.video_inputs:
            assert family.video_budget in VIDEO_BUDGETS, family.name
        else:
            assert family.video_refusal and not family.video_fixed_frames and not family.video_frames_as_images


@pytest.mark.parametrize("case", cases(VIDEO))
def test_a_video_row_supervises_each_reply_and_its_closing_token(family_models, tmp_path, case):
    processor, model, collator = loaded(family_models, case)
    for messages in (ONE_VIDEO, SHAPES["multi_turn"]):
        item = video_row(tmp_path, messages)
        batch = collator([item])
        assert supervised_text(collator, batch) == case.expected(messages)
        assert_tensors_match_input_ids(batch, processor, case.family, [0], [1])
        assert_video_tensors_match(batch, processor, case.family, frames_of(collator, [item]), [1])
        with torch.no_grad():
            assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("case", cases(VIDEO))
def test_a_video_and_an_image_in_two_turns_are_labelled_exactly(family_models, tmp_path, case):
    """The first reply's span lies before the later image (video): located by running the processor on the rows
    before it, with the clip (image) they hold."""
    processor, model, collator = loaded(family_models, case)
    for messages in (VIDEO_THEN_IMAGE, IMAGE_THEN_VIDEO):
        item = video_row(tmp_path, messages, images=1)
        batch = collator([item])
        assert supervised_text(collator, batch) == case.expected(messages)
        assert_tensors_match_input_ids(batch, processor, case.family, [1], [1])
        with torch.no_grad():
            assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("case", cases(VIDEO))
def test_a_mixed_batch_of_video_image_and_text_rows_matches_and_trains_one_step(family_models, tmp_path, case):
    processor, model, collator = loaded(family_models, case)
    items = [video_row(tmp_path, ONE_VIDEO, frames=(4, 6), where="t.jsonl:1"),
             row(tmp_path, SHAPES["prompt_completion"], 1, where="t.jsonl:2"),
             video_row(tmp_path, SHAPES["multi_turn"], frames=(2,), where="t.jsonl:3")]
    items[0]["messages"] = [{"role": "user", "content": [{"type": "video"}, {"type": "video"},
                                                         {"type": "text", "text": "Which elements?"}]},
                            {"role": "assistant", "content": "water"}]
    batch = collator(items)
    videos = [len(item.get("stored_videos", [])) for item in items]
    assert_tensors_match_input_ids(batch, processor, case.family, [0, 1, 0], videos)
    assert_video_tensors_match(batch, processor, case.family, frames_of(collator, items), videos)
    for index, item in enumerate(items):
        assert supervised_text(collator, batch, index) == case.expected(item["messages"])
    gradients = step_gradients(model, batch)
    assert gradients


@pytest.mark.parametrize("case", cases(VIDEO))
def test_a_video_rows_tokens_are_the_same_whatever_clips_share_its_batch(family_models, tmp_path, case):
    """Measured alone (the length max_length is checked against) or batched beside a longer clip: one row, the same
    ids and labels (SmolVLM2's processor would write the longest clip's frame count into each clip's text)."""
    _, _, collator = loaded(family_models, case)
    short = video_row(tmp_path, ONE_VIDEO, frames=(2,), where="t.jsonl:1")
    longer = video_row(tmp_path, SHAPES["prompt_completion"], frames=(6,), where="t.jsonl:2")
    alone, together = collator([short]), collator([short, longer])
    length = int(together["attention_mask"][0].sum())
    assert together["input_ids"][0][:length].tolist() == alone["input_ids"][0].tolist()
    assert together["labels"][0][:length].tolist() == alone["labels"][0].tolist()
    assert measure(short, collator, None, "drop")["length"] == length


@pytest.mark.parametrize("case", cases(VIDEO))
def test_a_video_row_too_long_is_dropped_or_its_prompt_shortened_never_its_clip(family_models, tmp_path, case):
    processor, model, collator = loaded(family_models, case)
    messages = [{"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": "water"}]
    item = video_row(tmp_path, messages)
    batch = fit_too_long_row(processor, item, case.family)
    assert supervised_text(collator, batch) == case.expected(messages)
    assert_tensors_match_input_ids(batch, processor, case.family, [0], [1])
    fit = measure(item, collator, None, "drop")
    assert fit["video_frames"] == sum(frames_of(collator, [item])) and fit["image_tokens"] > 0
    # A clip whose tokens alone pass max_length: dropped whole, counted as dropped for its visual tokens.
    clip_only = measure(item, collator, fit["image_tokens"] - 1, "shorten_prompt")
    assert clip_only["status"] == "dropped"


@pytest.mark.parametrize("case", cases(VIDEO))
def test_generation_prompt_of_a_video_row_is_the_tokens_training_saw(family_models, tmp_path, case):
    _, _, collator = loaded(family_models, case)
    item = video_row(tmp_path, ONE_VIDEO)
    training = collator([item])
    supervised = (training["labels"][0] != -100).nonzero().flatten().tolist()
    start = supervised[0]
    for prompt in (collator.generation_inputs([item]),
                   collator.generation_inputs([{**item, "messages": item["messages"][:-1]}])):
        assert prompt["input_ids"][0].tolist() == training["input_ids"][0][:start].tolist()
        for key in set(case.family.video_inputs) - {"pixel_values", "pixel_attention_mask"}:
            assert torch.equal(prompt[key], training[key]), key


@pytest.mark.parametrize("case", cases(VIDEO))
def test_training_run_learns_the_colour_of_a_clip_and_generation_names_it(family_models, tmp_path, case):
    assert_learns(case.name, train_clips(case, family_models.folder(case), tmp_path))


@pytest.mark.parametrize("case", cases(case for case in VIDEO if case.family.packing))
def test_packed_video_rows_give_the_logits_and_loss_of_the_same_rows_unpacked(family_models, tmp_path, case):
    """Video rows pack as image rows do (shared/DESIGN.md): the same logits and loss, each example on its own."""
    from tests.test_packing import TOLERANCE, loss_and_grads, packer

    processor, model = family_models.load(case)
    batches = packer(case, processor, model)
    examples = [video_row(tmp_path, ONE_VIDEO, frames=(4,), where="t.jsonl:1"),
                row(tmp_path, SHAPES["multi_turn"], where="t.jsonl:2"),
                video_row(tmp_path, SHAPES["prompt_completion"], frames=(2,), where="t.jsonl:3")]
    padded = batches(examples)
    packed = batches.concatenate(batches(examples))
    logits, loss, _ = loss_and_grads(model, padded)
    packed_logits, packed_loss, _ = loss_and_grads(model, packed)
    real = padded["attention_mask"].bool()
    assert (logits[real] - packed_logits[0]).abs().max().item() <= TOLERANCE
    assert abs(loss.item() - packed_loss.item()) <= TOLERANCE
