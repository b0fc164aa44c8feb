"""Packing and padding-free batches: for every family the table lets pack, packed rows give the logits, loss and
gradients of the same rows unpacked, and no example sees another's image; the rest are refused in one line before
weights load. Then `--packing true` and `--padding_free true` train end to end."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch

from sft.cli import main as sft
from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.family.families import FAMILIES, find_family
from sft.labels.labelling import make_collator
from sft.labels.packing import EpochPacks, EpochSampler, PackedBatches, refuse_unpackable
from sft.model.packed_model import ready_for_packing
from sft.plan.estimate import make_plan
from sft.run.train import main as train
from tests.conftest import REPO, write_image, write_recipe
from tests.families.registry import BY_NAME, CASES, cases, param
from tests.families.report import PACKED_RUNS, assert_learns, train_elements
from tests.families.rows import SHAPES
from tests.test_training import recipe_for


def test_epoch_packs_hold_every_row_once_change_every_epoch_and_keep_their_count():
    lengths = [5, 3, 7, 2, 4, 6, 10, 1, 5, 5, 5, 5, 3, 3, 3, 3] * 4
    packs = EpochPacks(lengths, 16, "packing", seed=0, epochs=4)
    epochs = [[item["pack"] for item in packs.epoch(epoch)] for epoch in range(4)]
    for made in epochs:
        assert sorted(i for pack in made for i in pack) == list(range(len(lengths)))  # none split, lost or repeated
        assert all(sum(lengths[i] for i in pack) <= 16 for pack in made)
        assert len(made) == len(packs)  # Trainer's steps an epoch stay put
    assert len({str(made) for made in epochs}) == 4  # a fresh packing every epoch
    assert sum(lengths) / (len(packs) * 16) > 0.9  # best fit still fills them
    again = EpochPacks(lengths, 16, "packing", seed=0, epochs=4).dataset()
    assert again["pack"] == [p for made in epochs for p in made]  # the seed and the epoch decide them
    assert EpochPacks(lengths, 16, "packing", seed=1, epochs=1).epoch(0)[0]["pack"] != epochs[0][0]
    alone = EpochPacks(lengths, 16, "padding_free", seed=0, epochs=2)
    assert [item["pack"] for item in alone.epoch(1)] == [[i] for i in range(len(lengths))]


def test_equal_length_rows_of_two_answers_share_packs_instead_of_filling_one_each():
    """The smoke task's failure: 'water' rows one token longer than 'fire' rows; decreasing best fit gave a pack of
    only water rows; shuffled best fit mixes both in every full pack."""
    lengths = [61 if i % 2 else 60 for i in range(64)]  # odd rows 'water', even rows 'fire'
    packs = EpochPacks(lengths, 1024, "packing", seed=0, epochs=1)
    full = [item["pack"] for item in packs.epoch(0) if len(item["pack"]) > 8]
    assert full and all({i % 2 for i in pack} == {0, 1} for pack in full)


def test_the_sampler_asks_for_each_packs_epoch_in_a_seeded_order():
    packs = EpochPacks([3] * 10, 6, "packing", seed=0, epochs=3)
    sampler = EpochSampler(packs, seed=0)
    sampler.set_epoch(2)
    asked = list(sampler)
    assert sorted(asked) == list(range(2 * len(packs), 3 * len(packs))) and asked == list(sampler)
    sampler.set_epoch(4)  # past the planned epochs: theirs again, in turn
    assert sorted(sampler) == list(range(len(packs), 2 * len(packs)))


PACKED = [case for case in CASES if case.family.packing]
TOLERANCE = 1e-5  # fp32 on CPU


def rows(case, tmp_path, fire=(230, 60, 30)) -> list[dict]:
    """An image row, a text multi-turn row and a second image row (three text rows for a text model, or a family
    whose image rows do not pack)."""
    images = case.vision and case.family.packing_images
    water = [str(write_image(tmp_path / "water.png", (40, 90, 220), size=(36, 50)))] if images else []
    fire = [str(write_image(tmp_path / f"fire{fire}.png", fire, size=(36, 50)))] if images else []
    if False not in case.images:  # a family that takes an image in every row, one prompt and one answer (PaliGemma)
        return [{"where": f"t.jsonl:{n}", "row": n, "messages": SHAPES[shape], "stored_images": image}
                for n, (shape, image) in enumerate(zip([*case.shapes, case.shapes[0]], [water, water, fire]), 1)]
    return [{"where": "t.jsonl:1", "row": 1, "messages": SHAPES["prompt_completion"], "stored_images": water},
            {"where": "t.jsonl:2", "row": 2, "messages": SHAPES["multi_turn"], "stored_images": []},
            {"where": "t.jsonl:3", "row": 3, "messages": SHAPES["instruction"], "stored_images": fire}]


def packer(case, processor, model, collator=None) -> PackedBatches:
    """The family's packed batches, and its model readied for them as sft/run/build.py readies it."""
    batches = PackedBatches(collator or make_collator(processor, case.family), None, case.family)
    ready_for_packing(model, batches)
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
    assert_packs_exactly(case, *family_models.load(case), tmp_path)


def assert_packs_exactly(case, processor, model, tmp_path) -> None:
    """Logits, loss and every gradient of the packed rows equal the padded rows' (fp32). A gradient is compared
    against its own scale: a parameter whose gradient sums many tokens (the token embeddings) adds them in another
    order once packed (1.1e-5 on a gradient of 11.5 for Gemma 4, measured)."""
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
    assert max((grads[n] - packed_grads[n]).abs().max().item() / max(1.0, grads[n].abs().max().item())
               for n in grads) <= TOLERANCE
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


def test_every_family_in_the_table_packs():
    assert [family.name for family in FAMILIES if family.packing is None] == []


@pytest.mark.parametrize("key", ["packing", "padding_free"])
def test_a_family_not_in_the_table_is_refused_packing_in_one_line(tmp_path, key):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl",
                                      **{key: True}))
    with pytest.raises(UserError, match=rf"^{key}: not exact for family mystery: it is not in the family table, so "
                                        r"packed rows are not known to be exact; train without it$"):
        refuse_unpackable(find_family("mystery"), recipe.training)


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


def test_plan_counts_one_packed_sequence_a_micro_batch(capsys):
    qwen = str(REPO / "recipes/qwen2_5_vl_7b_lora.yaml")
    padded, packed = make_plan(load_recipe(qwen)), make_plan(load_recipe(qwen, ["--packing", "true"]))
    tokens = packed.batch * packed.max_length
    memory = packed.memory()
    assert f"activations (1 x {tokens}, packing)" in memory
    assert memory["block mask of the packed sequence"][0] == 2 * tokens**2  # bf16 additive mask, L x L
    assert packed.total(False) - padded.total(False) == 2 * tokens**2  # sdpa: activations as many tokens either way
    assert sft(["plan", str(REPO / "recipes/llama11b_construction.yaml"), "--packing", "true"]) == 0  # text rows
    assert sft(["plan", str(REPO / "recipes/gemma3_4b_lora.yaml"), "--packing", "true"]) == 0  # its image blocks


@pytest.mark.parametrize(("case", "mode"), [param(BY_NAME["qwen2_5_vl"], "packing"), param(BY_NAME["llava"], "packing"),
                                            param(BY_NAME["idefics3"], "padding_free"),
                                            param(BY_NAME["qwen3_5_think"], "packing"),
                                            param(BY_NAME["paligemma"], "packing"),
                                            param(BY_NAME["gemma3"], "packing")])
def test_packed_training_names_every_image_as_the_unpacked_run_does(family_models, tmp_path, case, mode):
    metrics = train_elements(case, family_models.folder(case), tmp_path, **PACKED_RUNS[mode])
    assert_learns(f"{case.name} {mode}", metrics)
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert manifest["model_setup"]["packing"].startswith(f"{mode}: 8 rows in ")


def test_the_seed_architecture_packs_its_text_rows_end_to_end(tiny_models, tmp_path, capsys):
    recipe = recipe_for(tmp_path, tiny_models["mllama"], with_images=False, max_length=128, num_train_epochs=1,
                        eval_strategy="no", packing=True, per_device_train_batch_size=1)
    metrics = train(load_recipe(recipe))
    assert re.search(r"\[sft\] packing: 8 rows in 2 sequences, packed afresh each epoch; a micro-batch of 1 holds "
                     r"4.0 rows and \d+ tokens on average; packs \d+\.\d% full", capsys.readouterr().err)
    assert metrics["first_loss"] > 0 and metrics["eval_accuracy"] is not None
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert manifest["recipe"]["training"]["packing"] is True  # the resolved recipe says what was asked


def test_the_smoke_task_learns_packed_as_well_as_unpacked_in_the_same_steps(tiny_models, tmp_path):
    """Tiny SmolVLM on the smoke data (64 image rows, four answers), 64 optimizer steps each way: rows 8 a step, or
    packs of ~16 rows one a step (max_length 1024). Best fit in decreasing order packed each answer's rows together
    (they have one length); shuffled and re-packed each epoch, every pack mixes them."""
    import subprocess
    import sys

    from tests.conftest import write_recipe

    subprocess.run([sys.executable, str(REPO / "scripts/make_elements.py"), str(tmp_path / "data")], check=True,
                   capture_output=True)
    accuracy = {}
    for name, keys in (("rows", {"per_device_train_batch_size": 8, "max_length": 256}),
                       ("packed", {"per_device_train_batch_size": 1, "max_length": 1024, "packing": True})):
        recipe = write_recipe(tmp_path / f"{name}.yaml", model_name_or_path=str(tiny_models["idefics3"]),
                              train_file=str(tmp_path / "data/train.jsonl"), eval_file=str(tmp_path / "data/val.jsonl"),
                              column_map={"completion": "target"}, output_dir=str(tmp_path / name), max_steps=64,
                              per_device_eval_batch_size=16, learning_rate=3e-3, lr_scheduler_type="constant",
                              warmup_steps=0, gradient_checkpointing=False, logging_steps=16, eval_strategy="no",
                              seed=0, **keys)
        accuracy[name] = train(load_recipe(recipe))["eval_accuracy"]
    assert accuracy["rows"] >= 0.9 and accuracy["packed"] >= 0.9, accuracy


def test_a_packed_run_resumed_mid_epoch_packs_and_trains_as_the_uninterrupted_one(tiny_models, tmp_path):
    """Packs are the seed's and the epoch's: a run resumed from a checkpoint taken inside an epoch (step 3 of 2-step
    epochs) trains the same packs in the same order as the run that never stopped."""
    import shutil

    from safetensors.torch import load_file

    keys = dict(max_length=64, max_steps=8, save_steps=3, eval_strategy="no", packing=True,
                per_device_train_batch_size=1, logging_steps=1)
    straight = recipe_for(tmp_path / "straight", tiny_models["mllama"], with_images=False, **keys)
    train(load_recipe(straight))
    resumed_dir = tmp_path / "resumed"
    resumed = recipe_for(resumed_dir, tiny_models["mllama"], with_images=False, **keys)
    shutil.copytree(tmp_path / "straight" / "run" / "checkpoint-3", resumed_dir / "run" / "checkpoint-3")
    train(load_recipe(resumed, ["--resume_from_checkpoint", "true"]))
    expected = load_file(tmp_path / "straight" / "run" / "adapter_model.safetensors")
    again = load_file(resumed_dir / "run" / "adapter_model.safetensors")
    assert expected.keys() == again.keys()
    assert max((expected[k] - again[k]).abs().max().item() for k in expected) <= 1e-5


def test_training_gets_each_epochs_own_packs(tiny_models, tmp_path, monkeypatch):
    """What the collator is handed in a packed run: every row once an epoch, and other packs in the second epoch."""
    seen = []
    original = PackedBatches.__call__

    def recording(self, examples):
        seen.extend(sorted(example["pack"]) for example in examples if "pack" in example)
        return original(self, examples)

    monkeypatch.setattr(PackedBatches, "__call__", recording)
    rows = [{"prompt": "What element is shown?" + " really" * (i % 5), "target": "water"} for i in range(12)]
    recipe = recipe_for(tmp_path, tiny_models["mllama"], with_images=False, max_length=200, num_train_epochs=2,
                        eval_strategy="no", packing=True, per_device_train_batch_size=1)
    from tests.conftest import write_jsonl
    write_jsonl(tmp_path / "train.jsonl", rows)
    train(load_recipe(recipe))
    half = len(seen) // 2
    first, second = seen[:half], seen[half:]
    assert sorted(i for pack in first for i in pack) == list(range(12)) == sorted(i for pack in second for i in pack)
    assert sorted(first) != sorted(second)


def test_gemma4_image_blocks_longer_than_its_sliding_window_pack_exactly(tmp_path):
    """Gemma 4 with `use_bidirectional_attention: vision` (its image tokens attend both ways in sliding-window layers):
    70 image tokens a row against a 64-token window, three rows packed (well past the window). With transformers'
    own masks the packed logits were off by 11.1 (measured); with the toolkit's they agree within 1e-5."""
    from transformers import AutoConfig
    from trl import ModelConfig

    from sft.model.loading import load_model, load_processor
    from tests.families import misc
    from tests.families.registry import build, from_spec

    def config(tok):
        made = misc.gemma4_config(tok)
        made.text_config.use_bidirectional_attention = "vision"
        return made

    case = BY_NAME["gemma4"]
    folder = str(build(replace(case, build=from_spec(replace(misc.SPECS["gemma4"], config=config))), tmp_path / "m"))
    processor = load_processor(folder, AutoConfig.from_pretrained(folder), family=case.family)
    model = load_model(ModelConfig(model_name_or_path=folder), family=case.family).eval()
    assert model.config.get_text_config().use_bidirectional_attention == "vision"
    assert_packs_exactly(case, processor, model, tmp_path)


def test_gemma3_packs_exactly_with_eager_attention_too(family_models, tmp_path):
    """The masks go to eager attention as an additive float mask (0 where allowed, the dtype's minimum elsewhere)."""
    from trl import ModelConfig

    from sft.model.loading import load_model

    case = BY_NAME["gemma3"]
    processor, _ = family_models.load(case)
    model = load_model(ModelConfig(model_name_or_path=str(family_models.folder(case)), attn_implementation="eager"),
                       family=case.family).eval()
    assert model.config._attn_implementation == "eager"
    assert_packs_exactly(case, processor, model, tmp_path)
