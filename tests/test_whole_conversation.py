"""`completion_only_loss: false` (TRL's key): the whole conversation is supervised except padding and image
placeholders (shared/DESIGN.md's one exception to the label contract), for every family in tests/families/registry.py;
`sft preview` shows it, packed rows stay exact, a run trains on it, and PaliGemma (prefix-LM) refuses it in one line.
Unset, the labels are the contract's (tests/test_family_contract.py); the pair with assistant_only_loss is refused
when the recipe loads (tests/test_trl_keys.py)."""

from __future__ import annotations

import json

import pytest
import torch

from sft.cli import main as sft
from sft.data.messages import text_of
from sft.errors import UserError
from sft.labels.collator import IGNORE_INDEX
from sft.labels.labelling import make_collator
from tests.conftest import write_image, write_jsonl, write_recipe
from tests.families.checks import assert_tensors_match_input_ids, step_gradients
from tests.families.registry import BY_NAME, CASES, VISION, Case, cases, param
from tests.families.report import train_elements
from tests.families.rows import SHAPES, TWO_IMAGE_TURNS, row, supervised_text
from tests.test_packing import PACKED, loss_and_grads, packer, rows

CHAT = [case for case in CASES if case.family.labels == "chat_template"]
ROW_KINDS = [param(case, shape, image) for case in CHAT for shape in case.shapes for image in case.images]
TOLERANCE = 1e-5  # fp32 on CPU


def whole(family_models, case: Case):
    """(processor, model, the case family's collator with completion_only_loss false)."""
    processor, model = family_models.load(case)
    return processor, model, make_collator(processor, case.family, completion_only_loss=False)


def assert_whole_conversation(processor, collator, case: Case, item: dict, batch, index: int = 0) -> None:
    """Row `index` supervises, in order, every token of the conversation as rendered for training (the template's
    text, with the EOS inserted after each reply where the template closes no turn) but the template's image marker
    and the row's first token (no token precedes it); the image expansion, the padding and every image token id of
    the processor are never supervised, and each reply with its closing token is."""
    ids, labels = batch["input_ids"][index], batch["labels"][index]
    real = batch["attention_mask"][index].bool()
    assert (labels[~real] == IGNORE_INDEX).all()
    text, _ = collator.supervised_spans(collator.messages_of(item, collator.load_images(item)))
    marker = collator.tokenizer.convert_tokens_to_ids(processor.image_token) if item["stored_images"] else None
    rendered = [token for token in collator.tokenizer(text, add_special_tokens=False)["input_ids"] if token != marker]
    supervised = ids[labels != IGNORE_INDEX].tolist()
    assert supervised == rendered[1:]
    assert labels[0] == IGNORE_INDEX and (labels[real][1:] == IGNORE_INDEX).sum() == real.sum() - len(rendered)
    assert not set(supervised) & set(getattr(processor, "image_token_ids", None) or [])
    decoded = supervised_text(collator, batch, index)
    for message in item["messages"]:
        if message["role"] == "assistant":
            assert case.reply_prefix + text_of(message).strip() + case.family.closing in decoded
        elif not text.startswith(text_of(message)):  # the prompt is learnt too (but a first token: LLaVA's system)
            assert text_of(message).split("\n")[0] in decoded


@pytest.mark.parametrize(("case", "shape", "image"), ROW_KINDS)
def test_whole_conversation_supervises_every_token_but_padding_and_image_placeholders(family_models, tmp_path, case,
                                                                                       shape, image):
    processor, model, collator = whole(family_models, case)
    item = row(tmp_path, SHAPES[shape], int(image))
    batch = collator([item])
    assert_whole_conversation(processor, collator, case, item, batch)
    assert_tensors_match_input_ids(batch, processor, case.family, [int(image)])
    encoded = collator.encode(item)  # what `sft preview` and the length check read
    assert encoded.input_ids == batch["input_ids"][0].tolist() and encoded.labels == batch["labels"][0].tolist()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


@pytest.mark.parametrize("case", cases(c for c in VISION if c.family.labels == "chat_template"))
def test_whole_conversation_with_images_in_two_turns_masks_both_expansions(family_models, tmp_path, case):
    """By position, not by the head of the row, so LLaVA-OneVision's lone-image tiling does not matter here."""
    processor, _, collator = whole(family_models, case)
    item = row(tmp_path, TWO_IMAGE_TURNS, 2)
    batch = collator([item])
    assert_whole_conversation(processor, collator, case, item, batch)
    assert_tensors_match_input_ids(batch, processor, case.family, [2])


@pytest.mark.parametrize("case", cases(CHAT))
def test_whole_conversation_mixed_batch_learns_no_padding_and_trains_one_step(family_models, tmp_path, case):
    processor, model, collator = whole(family_models, case)
    items = [row(tmp_path, SHAPES["prompt_completion"], int(case.images[-1])),
             row(tmp_path, SHAPES[case.shapes[-1]], int(case.images[0]))]
    batch = collator(items)
    for index, item in enumerate(items):
        assert_whole_conversation(processor, collator, case, item, batch, index)
    assert_tensors_match_input_ids(batch, processor, case.family, [len(item["stored_images"]) for item in items])
    step_gradients(model, batch)
    default, explicit = make_collator(processor, case.family), make_collator(processor, case.family,
                                                                             completion_only_loss=True)
    assert torch.equal(default(items)["labels"], explicit(items)["labels"])  # true is the default, unset


@pytest.mark.parametrize("case", cases(case for case in PACKED if case.family.labels == "chat_template"))
def test_whole_conversation_packed_gives_the_loss_and_gradients_of_the_rows_unpacked(family_models, tmp_path, case):
    """Each row's first token stays unsupervised, so no label is learnt from the row before it in a pack (PaliGemma
    has no whole-conversation labels: refused below)."""
    processor, model, collator = whole(family_models, case)
    batches = packer(case, processor, model, collator)
    examples = rows(case, tmp_path)
    _, loss, grads = loss_and_grads(model, batches(examples))
    _, packed_loss, packed_grads = loss_and_grads(model, batches.concatenate(batches(examples)))
    assert abs(loss.item() - packed_loss.item()) <= TOLERANCE
    assert max((grads[n] - packed_grads[n]).abs().max().item() / max(1.0, grads[n].abs().max().item())
               for n in grads) <= TOLERANCE  # against each gradient's scale (tests/test_packing.py says why)


def test_paligemma_refuses_whole_conversation_in_one_line(family_models):
    case = BY_NAME["paligemma"]
    processor, _ = family_models.load(case)
    make_collator(processor, case.family, completion_only_loss=True)  # the default is its label contract
    with pytest.raises(UserError, match=r"^completion_only_loss false: paligemma attends to its prompt in both "
                                        r"directions .*\(leave completion_only_loss unset\)$") as refused:
        make_collator(processor, case.family, completion_only_loss=False)
    assert "\n" not in str(refused.value)


def test_preview_shows_the_whole_conversation_supervised(family_models, tmp_path, capsys):
    case = BY_NAME["idefics3"]
    processor, _ = family_models.load(case)
    write_image(tmp_path / "water.png", size=(36, 50))
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "What element is shown?", "completion": "water",
                                                         "image": "water.png"}])
    recipe = str(write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder(case)),
                              train_file=str(train_file), max_length=256))
    assert sft(["preview", recipe, "--json"]) == 0
    replies = json.loads(capsys.readouterr().out)
    assert replies["supervised_text"] == case.expected(SHAPES["prompt_completion"]) == " water<end_of_utterance>"

    assert sft(["preview", recipe, "--json", "--completion_only_loss", "false"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What element is shown?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "water"}]}]
    rendered = processor.apply_chat_template(messages, tokenize=False)  # the template's text, images unexpanded
    tokens = [t for t in processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
              if t != processor.image_token_id]
    assert record["supervised_text"] == processor.tokenizer.decode(tokens[1:], skip_special_tokens=False)
    assert record["supervised_text"] == ("User:What element is shown?<end_of_utterance>\nAssistant: water"
                                         "<end_of_utterance>\n")
    assert (record["prompt_tokens"], record["supervised_tokens"]) == (1, len(tokens) - 1)
    assert record["supervised_tokens"] > replies["supervised_tokens"]
    assert "note: completion_only_loss false: the whole conversation is supervised" in captured.err


def test_a_whole_conversation_run_trains_and_its_loss_falls(family_models, tmp_path):
    """The element run (tests/families/report.py) on every token but the images. Its loss is mostly the template
    and the prompt, which the tiny model learns (measured 5.88 -> 1.77); naming the image, one token in about 40,
    it does not learn in these 24 steps, so generation is not scored here."""
    case = BY_NAME["qwen2_5_vl"]
    metrics = train_elements(case, family_models.folder(case), tmp_path, completion_only_loss=False)
    print(f"REPORT {case.name} completion_only_loss false: loss {metrics['first_loss']:.3f} -> "
          f"{metrics['last_loss']:.3f}")
    assert metrics["last_loss"] < 0.5 * metrics["first_loss"]
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text(encoding="utf-8"))
    assert manifest["recipe"]["training"]["completion_only_loss"] is False
