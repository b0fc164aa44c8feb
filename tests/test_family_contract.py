"""The label contract (shared/DESIGN.md), end to end, for every family in tests/families/registry.py.

Each case is a tiny random model of the real architecture class with its real processor class, chat template and
special tokens. Per case: the supervised text of every row kind is exactly each reply plus the table's closing token
(and the quirks the registry declares); every processor tensor matches input_ids; forward and backward are finite
and reach the vision tower; generation answers the text training saw and stops at the closing token; a training
run learns to name the element in an image; export, merge and predict agree where the registry asks for them.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig

from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.eval.generation import exact_match, generate_replies, reference, stop_ids
from sft.family.families import FAMILIES, family_for_processor, find_family
from sft.labels.collator import IGNORE_INDEX
from sft.labels.labelling import make_collator
from sft.model.loading import load_processor
from sft.model.targets import is_vision_side
from sft.run.train import main as train
from tests.conftest import REPO
from tests.families.checks import assert_tensors_match_input_ids, fit_too_long_row, step_gradients
from tests.families.registry import CASES, VISION, Case, cases, param
from tests.families.report import assert_learns, train_elements
from tests.families.round_trip import assert_merge_and_predict_agree
from tests.families.rows import LONG_PROMPT, SHAPES, TWO_IMAGE_TURNS, row, supervised_text
from tests.test_training import recipe_for


def loaded(family_models, case: Case):
    """(processor, model, the case family's collator)."""
    processor, model = family_models.load(case)
    return processor, model, make_collator(processor, case.family)


def mixed_rows(case: Case, tmp_path) -> list[dict]:
    """Two rows of different lengths: a prompt/completion row with an image (where the case takes one) and a row of
    its last shape, text only where the case takes that."""
    return [row(tmp_path, SHAPES["prompt_completion"], int(case.images[-1])),
            row(tmp_path, SHAPES[case.shapes[-1]], int(case.images[0]))]


ROW_KINDS = [param(case, shape, image) for case in CASES for shape in case.shapes for image in case.images]


# ---- labels -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "shape", "image"), ROW_KINDS)
def test_supervised_text_is_each_reply_and_its_closing_token(family_models, tmp_path, case, shape, image):
    processor, model, collator = loaded(family_models, case)
    batch = collator([row(tmp_path, SHAPES[shape], int(image))])
    assert supervised_text(collator, batch) == case.expected(SHAPES[shape])
    assert_tensors_match_input_ids(batch, processor, case.family, [int(image)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("case", cases(CASES))
def test_whitespace_around_a_reply_is_never_learnt(family_models, tmp_path, case):
    """A reply "   scaffold  " supervises exactly what "scaffold" does (sft.data.messages.stripped_replies)."""
    _, _, collator = loaded(family_models, case)

    def replies(reply: str) -> list[dict]:
        return [{**m, "content": reply} if m["role"] == "assistant" else m for m in SHAPES[case.shapes[-1]]]

    padded, plain = (collator([row(tmp_path, replies(reply), int(case.images[-1]))])
                     for reply in ("   scaffold  ", "scaffold"))
    assert torch.equal(padded["input_ids"], plain["input_ids"]) and torch.equal(padded["labels"], plain["labels"])
    assert supervised_text(collator, padded) == case.expected(replies("scaffold"))


@pytest.mark.parametrize("case", cases(c for c in CASES if c.family.labels == "chat_template"))
def test_a_reply_that_repeats_a_word_of_the_role_header_supervises_only_the_reply(family_models, tmp_path, case):
    """`assistant` is in Llama's and Qwen's headers, `Assistant` in SmolVLM's, `model` in Gemma's: the reply is
    searched after the generation prompt, so the header is never supervised."""
    _, _, collator = loaded(family_models, case)
    question = [{"role": "user", "content": "Who answers?"}]
    header = collator.render(question, add_generation_prompt=True)[len(collator.render(question)):]
    for special in collator.replies.special_tokens:
        header = header.replace(special, " ")
    reply = (re.findall(r"[A-Za-z]+", header) or ["assistant"])[0]
    messages = [*question, {"role": "assistant", "content": reply}]
    batch = collator([row(tmp_path, messages)])
    assert supervised_text(collator, batch) == case.expected(messages)


@pytest.mark.parametrize("case", cases(CASES))
def test_bos_is_never_supervised_nor_doubled(family_models, tmp_path, case):
    _, _, collator = loaded(family_models, case)
    bos = collator.tokenizer.bos_token_id
    for item in mixed_rows(case, tmp_path):
        batch = collator([item])
        ids = batch["input_ids"][0].tolist()
        assert bos not in batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
        assert bos is None or ids[:2] != [bos, bos]


@pytest.mark.parametrize(("case", "image"), [param(case, image) for case in CASES for image in case.images])
def test_a_row_too_long_is_dropped_or_its_prompt_shortened_never_its_reply(family_models, tmp_path, case, image):
    processor, model, collator = loaded(family_models, case)
    messages = [{"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": "water"}]
    batch = fit_too_long_row(processor, row(tmp_path, messages, int(image)), case.family)
    assert supervised_text(collator, batch) == case.expected(messages)
    assert_tensors_match_input_ids(batch, processor, case.family, [int(image)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("case", cases(c for c in VISION if not c.two_image_turns_refused))
def test_images_in_two_turns_are_labelled_exactly(family_models, tmp_path, case):
    """The first reply's span lies before the second image: located by running the processor on the rows before."""
    processor, model, collator = loaded(family_models, case)
    batch = collator([row(tmp_path, TWO_IMAGE_TURNS, 2)])
    assert supervised_text(collator, batch) == case.expected(TWO_IMAGE_TURNS)
    assert_tensors_match_input_ids(batch, processor, case.family, [2])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("case", cases(c for c in VISION if c.two_image_turns_refused))
def test_images_in_two_turns_are_refused_in_one_line_where_the_family_cannot_label_them(family_models, tmp_path,
                                                                                         case):
    _, _, collator = loaded(family_models, case)
    with pytest.raises(UserError) as refused:
        collator([row(tmp_path, TWO_IMAGE_TURNS, 2)])
    message = str(refused.value)
    assert message.startswith("t.jsonl:1: ") and "\n" not in message
    assert re.search(case.two_image_turns_refused, message)


# ---- tensors, forward and backward ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases(CASES))
def test_mixed_batch_pads_every_tensor_to_input_ids_and_trains_one_step(family_models, tmp_path, case):
    processor, model, collator = loaded(family_models, case)
    rows = mixed_rows(case, tmp_path)
    batch = collator(rows)
    images = [len(item["stored_images"]) for item in rows]
    assert_tensors_match_input_ids(batch, processor, case.family, images)
    for index, item in enumerate(rows):
        assert supervised_text(collator, batch, index) == case.expected(item["messages"])
        assert (batch["labels"][index][batch["attention_mask"][index] == 0] == IGNORE_INDEX).all()
    gradients = step_gradients(model, batch)
    vision = sum(size for name, size in gradients.items() if is_vision_side(name, case.family))
    assert (vision > 0) == any(images)  # the image reached the vision tower through the processor's tensors


# ---- the family table entry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases(CASES))
def test_the_table_entry_is_found_for_the_checkpoint_and_by_its_processor_class(family_models, case):
    processor, model, collator = loaded(family_models, case)
    assert case.family in FAMILIES
    assert find_family(model.config.model_type, processor).name == case.family.name
    if case.vision:  # a renamed checkpoint is found by its processor class and labelled the same way
        by_class = family_for_processor(processor)
        assert (by_class.labels, by_class.closing) == (case.family.labels, case.family.closing)
    assert collator.inserts_eos(SHAPES["prompt_completion"]) == case.inserts_eos


@pytest.mark.parametrize("case", cases(c for c in VISION if c.family.labels == "chat_template"))
def test_the_template_writes_one_counted_marker_per_image(family_models, case):
    """What the collator counts to know which images lie before a position: the table's image_marker, else the
    processor's image_token, written once per image."""
    processor, _, collator = loaded(family_models, case)
    assert collator.image_token == (case.family.image_marker or processor.image_token)
    one_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What element?"}]}]
    assert collator.render(one_image).count(collator.image_token) == 1


# ---- generation -------------------------------------------------------------------------------------------------
def last_span_start(labels: torch.Tensor) -> int:
    supervised = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    start = supervised[-1]
    while start - 1 in supervised:
        start -= 1
    return start


@pytest.mark.parametrize("case", cases(CASES))
def test_generation_prompt_is_the_tokens_training_saw_before_the_last_reply(family_models, tmp_path, case):
    """For a row with its reply (eval) and without it (sft predict): the generation inputs are, token for token,
    the training row up to its last supervised span, with the same images."""
    _, _, collator = loaded(family_models, case)
    for item in mixed_rows(case, tmp_path):
        training = collator([item])
        start = last_span_start(training["labels"][0])
        without_reply = {**item, "messages": item["messages"][:-1]}
        for prompt in (collator.generation_inputs([item]), collator.generation_inputs([without_reply])):
            assert prompt["input_ids"][0].tolist() == training["input_ids"][0][:start].tolist()
            for key, value in prompt.items():
                if value.shape[:2] == (1, start) and key != "input_ids":  # per-token tensors
                    assert torch.equal(value, training[key][:, :start]), key
                elif key != "input_ids":  # per-image tensors
                    assert torch.equal(value, training[key]), key


@pytest.mark.parametrize("case", cases(c for c in CASES if c.family.labels == "chat_template"))
def test_the_templates_own_generation_prompt_differs_only_as_the_registry_says(family_models, case):
    """The template's generation prompt is what training saw before the reply, but for the EOS the collator inserts
    after earlier replies (LLaVA-1.5) and an empty thinking block training rows lack (Gemma 4)."""
    _, _, collator = loaded(family_models, case)
    messages = SHAPES[case.shapes[-1]]
    prompt = collator.generation_prompt(messages)
    if case.inserts_eos:
        prompt = prompt.replace(collator.tokenizer.eos_token, "")
    assert collator.render(messages[:-1], add_generation_prompt=True) == prompt + case.prompt_extra


@pytest.mark.parametrize("case", cases(CASES))
def test_generation_stops_at_the_closing_token_and_a_batch_answers_as_single_rows(family_models, tmp_path, case):
    _, model, collator = loaded(family_models, case)
    stops = stop_ids(model, collator)
    tokenizer = collator.tokenizer
    assert {tokenizer.convert_tokens_to_ids(case.family.closing), tokenizer.eos_token_id} <= set(stops)
    rows = mixed_rows(case, tmp_path)
    inputs = collator.generation_inputs(rows)
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends at the last column
    replies = generate_replies(model, collator, rows, max_new_tokens=4)
    assert replies == [generate_replies(model, collator, [item], max_new_tokens=4)[0] for item in rows]
    assert 0.0 <= exact_match(replies, [reference(item) for item in rows]) <= 1.0


# ---- training, export, merge, predict ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases(VISION))
def test_training_run_learns_the_images_and_generation_names_them(family_models, tmp_path, case):
    assert_learns(case.name, train_elements(case, family_models.folder(case), tmp_path))


@pytest.mark.parametrize("case", cases(c for c in CASES if c.round_trip))
def test_merged_logits_equal_base_plus_adapter_and_predict_agrees(family_models, tmp_path, case):
    """An 8-bit LoRA run, merged into the unquantized base (fp32); predictions from the run and the merged folder."""
    base = family_models.folder(case)
    run_root = tmp_path / "run_root"
    train(load_recipe(recipe_for(run_root, base, True, load_in_8bit=True, learning_rate=5e-3, max_length=128)))
    run = run_root / "run"
    processor = load_processor(str(run), AutoConfig.from_pretrained(base), family=case.family)
    collator = make_collator(processor, case.family)
    batches = [{k: v for k, v in collator([item]).items() if k != "labels"} for item in mixed_rows(case, tmp_path)]
    assert_merge_and_predict_agree(run, base, batches, tmp_path)


# ---- every family in the table is covered -----------------------------------------------------------------------
def family_table_rows() -> list[list[str]]:
    """The cells of each row of the model-family table (docs/families.md)."""
    text = (REPO / "docs" / "families.md").read_text(encoding="utf-8")
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| family ")]


def in_row(family, cells: list[str]) -> bool:
    """A docs/families.md row is the family's when it holds the family's example hub id, or when its first cell names
    the model that hub id is of (`Qwen2-VL` for Qwen/Qwen2-VL-2B-Instruct, `SmolVLM` for SmolVLM-256M-Instruct)."""
    if family.example in cells:
        return True
    model = family.example.rsplit("/", 1)[-1].lower()
    names = [name.strip().lower().replace(" ", "-") for name in re.split(r"[,/]", cells[0])]
    return any(name and model.startswith(name + "-") for name in names)


def test_every_family_in_the_table_has_a_registry_case():
    covered = {case.family.name for case in CASES}
    assert [family.name for family in FAMILIES if family.name not in covered] == []
    assert all(case.family in FAMILIES for case in CASES)


def test_every_family_in_the_table_has_a_row_in_docs_families_and_every_row_a_family():
    rows = family_table_rows()
    assert [family.name for family in FAMILIES if not any(in_row(family, cells) for cells in rows)] == []
    assert [cells[0] for cells in rows if not any(in_row(family, cells) for family in FAMILIES)] == []
