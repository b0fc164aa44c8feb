"""Packing and padding-free batches: for every family the table lets pack, packed rows give the logits, loss and
gradients of the same rows unpacked, and no example sees another's image; the rest are refused in one line before
weights load. Then `--packing true` and `--padding_free true` train end to end."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from sft.cli import main as sft
from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.labels.labelling import make_collator
from sft.labels.packing import PackedBatches, pack_rows, refuse_unpackable
from sft.plan.estimate import make_plan
from sft.run.train import main as train
from tests.conftest import REPO, write_image, write_recipe
from tests.families.registry import BY_NAME, CASES, cases, param
from tests.families.report import PACKED_RUNS, assert_learns, train_elements
from tests.families.rows import SHAPES
from tests.test_training import recipe_for


def test_bfd_packs_hold_every_row_once_and_never_exceed_max_length():
    lengths = [5, 3, 7, 2, 4, 6, 10, 1]
    packs = pack_rows(Dataset.from_dict({"length": lengths}), 10, "packing")
    members = [i for pack in packs["pack"] for i in pack]
    assert sorted(members) == list(range(len(lengths)))  # no row split, lost or repeated
    assert all(sum(lengths[i] for i in pack) == length <= 10 for pack, length in zip(packs["pack"], packs["length"]))
    assert len(packs) == 4 == -(-sum(lengths) // 10)  # best-fit decreasing fills 38 tokens into the minimum 4 bins
    alone = pack_rows(Dataset.from_dict({"length": lengths}), 10, "padding_free")
    assert alone["pack"] == [[i] for i in range(len(lengths))] and alone["length"] == lengths


PACKED = [case for case in CASES if case.family.packing]
REFUSED = [case for case in CASES if not case.family.packing]
TOLERANCE = 1e-5  # fp32 on CPU


def rows(case, tmp_path, fire=(230, 60, 30)) -> list[dict]:
    """An image row, a text multi-turn row and a second image row (three text rows for a text model, or a family
    whose image rows do not pack)."""
    images = case.vision and case.family.packing_images
    water = [str(write_image(tmp_path / "water.png", (40, 90, 220), size=(36, 50)))] if images else []
    fire = [str(write_image(tmp_path / f"fire{fire}.png", fire, size=(36, 50)))] if images else []
    return [{"where": "t.jsonl:1", "row": 1, "messages": SHAPES["prompt_completion"], "stored_images": water},
            {"where": "t.jsonl:2", "row": 2, "messages": SHAPES["multi_turn"], "stored_images": []},
            {"where": "t.jsonl:3", "row": 3, "messages": SHAPES["instruction"], "stored_images": fire}]


def packer(case, processor, model) -> PackedBatches:
    batches = PackedBatches(make_collator(processor, case.family), None, case.family)
    if case.family.packing == "mrope":
        batches.rope_index = model.model.get_rope_index
    return batches


def loss_and_grads(model, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    output = model(**batch)
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return output.logits.detach(), output.loss.detach(), grads


@pytest.mark.parametrize("case", cases(PACKED))
def test_packed_rows_give_the_logits_loss_and_gradients_of_the_same_rows_unpacked(family_models, tmp_path, case):
    processor, model = family_models.load(case)
    batches = packer(case, processor, model)
    examples = rows(case, tmp_path)
    padded = batches(examples)  # plain rows: the labeller's padded batch
    packed = batches.concatenate(batches(examples))
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    logits, loss, grads = loss_and_grads(model, padded)
    packed_logits, packed_loss, packed_grads = loss_and_grads(model, packed)
    real = padded["attention_mask"].bool()
    assert (logits[real] - packed_logits[0]).abs().max().item() <= TOLERANCE
    assert abs(loss.item() - packed_loss.item()) <= TOLERANCE
    assert grads.keys() == packed_grads.keys()
    assert max((grads[n] - packed_grads[n]).abs().max().item() for n in grads) <= TOLERANCE
    # Each example's first token is unsupervised, so no label crosses a boundary (the loss shifts by one).
    starts = torch.cumsum(torch.tensor([0, *real.sum(dim=1).tolist()[:-1]]), 0)
    assert (packed["labels"][0, starts] == -100).all()


@pytest.mark.parametrize("case", cases([case for case in PACKED if case.vision and case.family.packing_images]))
def test_changing_one_examples_image_changes_no_other_examples_logits(family_models, tmp_path, case):
    processor, model = family_models.load(case)
    batches = packer(case, processor, model)
    first = batches.concatenate(batches(rows(case, tmp_path)))
    second = batches.concatenate(batches(rows(case, tmp_path, fire=(20, 200, 20))))  # the third row's image only
    lengths = [len(batches.labeller.encode(example).input_ids) for example in rows(case, tmp_path)]
    before = sum(lengths[:2])
    with torch.no_grad():
        a, b = model(**first).logits[0], model(**second).logits[0]
    assert (a[:before] - b[:before]).abs().max().item() <= TOLERANCE
    assert (a[before:] - b[before:]).abs().max().item() > 1e-3  # the changed image reaches its own example


@pytest.mark.parametrize("case", cases(REFUSED))
@pytest.mark.parametrize("key", ["packing", "padding_free"])
def test_families_that_cannot_pack_exactly_are_refused_in_one_line(tmp_path, case, key):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl",
                                      **{key: True}))
    with pytest.raises(UserError, match=rf"^{key}: not exact for family {case.family.name}: .+; train without it$"):
        refuse_unpackable(case.family, recipe.training)


@pytest.mark.parametrize("case", cases([case for case in PACKED if not case.family.packing_images]))
def test_families_whose_image_rows_cannot_pack_exactly_refuse_them_in_one_line(tmp_path, case):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl",
                                      packing=True))
    refuse_unpackable(case.family, recipe.training, image_rows=0)  # text rows pack
    with pytest.raises(UserError, match=rf"^packing: not exact for family {case.family.name} on rows with images "
                                        r"\(3 here\): .+; train without it \(text rows alone pack exactly\)$"):
        refuse_unpackable(case.family, recipe.training, image_rows=3)


def test_preview_shows_which_rows_share_a_sequence_and_each_ones_supervised_text(tiny_models, tmp_path, capsys):
    recipe = recipe_for(tmp_path, tiny_models["idefics3"], with_images=True, max_length=128)
    assert sft(["preview", str(recipe), "--json", "--limit", "4", "--packing", "true"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows = {line["row"]: line for line in lines if "row" in line}
    packs = [line for line in lines if "pack" in line]
    assert sorted(r for pack in packs for r in pack["rows"]) == sorted(rows) == [1, 2, 3, 4]
    assert len(packs) == 2  # 4 rows of about 60 tokens, two to a 128-token sequence
    for pack in packs:
        assert sum(pack["tokens"]) <= 128
        assert pack["supervised_text"] == [rows[r]["supervised_text"] for r in pack["rows"]]


def test_plan_counts_one_packed_sequence_a_micro_batch_and_refuses_a_family_that_cannot_pack(capsys):
    qwen = str(REPO / "recipes/qwen2_5_vl_7b_lora.yaml")
    padded, packed = make_plan(load_recipe(qwen)), make_plan(load_recipe(qwen, ["--packing", "true"]))
    tokens = packed.batch * packed.max_length
    memory = packed.memory()
    assert f"activations (1 x {tokens}, packing)" in memory
    assert memory["block mask of the packed sequence"][0] == 2 * tokens**2  # bf16 additive mask, L x L
    assert packed.total(False) - padded.total(False) == 2 * tokens**2  # sdpa: activations as many tokens either way
    assert sft(["plan", str(REPO / "recipes/llama11b_construction.yaml"), "--packing", "true"]) == 0  # text rows
    assert sft(["plan", str(REPO / "recipes/gemma3_4b_lora.yaml"), "--packing", "true"]) == 2
    assert capsys.readouterr().err.startswith("error: packing: not exact for family gemma3: its sliding-window ")


@pytest.mark.parametrize(("case", "mode"), [param(BY_NAME["qwen2_5_vl"], "packing"), param(BY_NAME["llava"], "packing"),
                                            param(BY_NAME["idefics3"], "padding_free")])
def test_packed_training_names_every_image_as_the_unpacked_run_does(family_models, tmp_path, case, mode):
    metrics = train_elements(case, family_models.folder(case), tmp_path, **PACKED_RUNS[mode])
    assert_learns(f"{case.name} {mode}", metrics)
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert manifest["model_setup"]["packing"].startswith(f"{mode}: 8 rows in ")


def test_the_seed_architecture_packs_its_text_rows_end_to_end(tiny_models, tmp_path, capsys):
    recipe = recipe_for(tmp_path, tiny_models["mllama"], with_images=False, max_length=128, num_train_epochs=1,
                        eval_strategy="no", packing=True, per_device_train_batch_size=1)
    metrics = train(load_recipe(recipe))
    assert "[sft] packing: 8 rows in 2 sequences; a micro-batch of 1 holds 4.0 rows" in capsys.readouterr().err
    assert metrics["first_loss"] > 0 and metrics["eval_accuracy"] is not None
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert manifest["recipe"]["training"]["packing"] is True  # the resolved recipe says what was asked
