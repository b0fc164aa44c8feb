"""What trains (sft/family/parts.py): vision tower, projector and language model, each frozen, lora or full.

Set up as `sft train` sets a model up (LoRA targets and saved modules chosen on the meta-device twin, PEFT applied as
TRL's SFTTrainer applies it, or the full parts unfrozen without PEFT), then one forward and backward pass on an image
row: which parameters require a gradient and which receive one, per part. Real `sft train` runs show frozen parts
stay bit-identical, per-part learning rates, and export -> merge -> predict for a full projector and a full run.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from peft import get_peft_model
from trl import ModelConfig

from sft.cli import main as sft
from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.family.parts import CHOICES, PARTS, Parts, parameter_counts, part_of, set_trainable
from sft.labels.labelling import make_collator
from sft.model.loading import load_model, load_processor, meta_model
from sft.model.targets import linear_layers, lora_config, lora_targets
from sft.outputs.export import export_adapter, load_base, merge
from sft.outputs.predict import load_for_inference, predict
from sft.plan.estimate import make_plan
from tests.conftest import REPO, write_recipe
from tests.families.registry import BY_NAME, VISION, cases
from tests.families.round_trip import assert_merge_and_predict_agree
from tests.families.rows import row

IMAGE_ROW = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What element?"}]},
             {"role": "assistant", "content": "fire"}]
COMBINATIONS = [Parts(*choice) for choice in itertools.product(CHOICES, repeat=3) if set(choice) != {"frozen"}]


def prepared(folder, family, parts: Parts, target_modules=None):
    """The model as `sft train` hands it to the trainer (sft/run/train.py), in train mode."""
    args = ModelConfig(model_name_or_path=str(folder), use_peft=parts.uses_peft, lora_r=4,
                       lora_target_modules=target_modules)
    config = lora_config(args, meta_model(args), family, parts)
    model = load_model(args, family=family)
    if config is None:
        set_trainable(model, family, parts)
    else:
        model = get_peft_model(model, config)  # what TRL's SFTTrainer does with a peft_config
    return model.train()


def image_batch(family_models, case, tmp_path):
    processor = load_processor(str(family_models.folder(case)), _config(family_models, case), family=case.family)
    return make_collator(processor, case.family)([row(tmp_path, IMAGE_ROW, images=1)])


def _config(family_models, case):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(family_models.folder(case))


def kind(name: str) -> str:
    """What a parameter of a prepared model is: a LoRA adapter, a saved module's trained copy, its frozen original,
    or a base parameter."""
    if ".lora_" in name:
        return "adapter"
    return "copy" if ".modules_to_save." in name else "original" if ".original_module." in name else "base"


def check_trains_exactly(model, family, parts: Parts, batch) -> None:
    """requires_grad and gradients per part follow `parts`: a frozen part has neither; a lora part only on its
    adapters; a full part on every parameter (its modules_to_save copy beside LoRA)."""
    expected = {"frozen": set(), "lora": {"adapter"}, "full": {"copy", "base"}}
    for name, parameter in model.named_parameters():
        part = part_of(name, family)
        wanted = part is not None and kind(name) in expected[parts.choice(part)]
        assert parameter.requires_grad == wanted, (name, parts.describe())
    loss = model(**batch).loss
    loss.backward()
    moved = dict.fromkeys(PARTS, 0.0)
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad or parameter.grad is None, name
        if parameter.grad is not None:
            moved[part_of(name, family)] += float(parameter.grad.abs().sum())
    for part in PARTS:
        assert (moved[part] > 0) == (parts.choice(part) != "frozen"), (part, moved, parts.describe())


@pytest.mark.parametrize("parts", COMBINATIONS, ids=lambda parts: "-".join(parts.choice(p) for p in PARTS))
def test_every_combination_trains_exactly_the_parts_it_names(family_models, tmp_path, parts):
    case = BY_NAME["idefics3"]
    model = prepared(family_models.folder(case), case.family, parts)
    check_trains_exactly(model, case.family, parts, image_batch(family_models, case, tmp_path))


@pytest.mark.parametrize("case", cases(VISION))
def test_every_family_tells_its_parts_apart_and_trains_them(family_models, tmp_path, case):
    _, loaded = family_models.load(case)
    counts = parameter_counts(loaded, case.family)
    assert all(counts.values()), counts  # each part has parameters of its own
    decoder = loaded.get_decoder()
    prefix = next(name for name, module in loaded.named_modules() if module is decoder)
    inside = [n for n, _ in loaded.named_parameters() if n.startswith(f"{prefix}.")
              and ".embed_tokens_extend." not in n]  # Phi-4 keeps its towers under the decoder's embedding
    assert {part_of(n, case.family) for n in inside} == {"language_model"}
    batch = image_batch(family_models, case, tmp_path)
    for parts in (Parts(), Parts("lora", "full", "lora")):
        check_trains_exactly(prepared(family_models.folder(case), case.family, parts), case.family, parts, batch)


def test_all_linear_is_every_linear_layer_of_the_lora_parts_and_never_a_frozen_one(family_models):
    case = BY_NAME["mllama"]
    _, model = family_models.load(case)
    head = {n for n, m in model.named_modules() if m is model.get_output_embeddings()}
    for parts in (Parts(), Parts("lora", "frozen", "frozen"), Parts("frozen", "lora", "lora")):
        chosen = {n for n, _ in lora_targets(model, case.family, "all-linear", parts)}
        wanted = {n for n, _ in linear_layers(model) if part_of(n, case.family) in parts.set_to("lora")} - head
        assert chosen == wanted and chosen
    # Names matched anywhere are kept to the LoRA parts: q_proj is also a vision tower layer of Llama 3.2 Vision.
    assert all(part_of(n, case.family) == "language_model" for n, _ in lora_targets(model, case.family, ["q_proj"]))


def test_a_part_without_linear_layers_or_unknown_to_the_table_is_refused_for_lora(family_models):
    gemma = BY_NAME["gemma3"]  # its projector is a bare weight and a norm
    with pytest.raises(UserError, match=r"^train_projector lora: lora_target_modules '\(default\)' picks no linear "):
        lora_targets(family_models.load(gemma)[1], gemma.family, None, Parts("frozen", "lora", "lora"))


@pytest.mark.parametrize(("keys", "message"), [
    ({"train_projector": "half"}, r"^train_projector 'half': choose one of frozen, lora, full$"),
    ({"use_peft": False, "train_vision_tower": "lora"}, r"^use_peft false with train_vision_tower lora: "),
    ({"load_in_8bit": True, "train_language_model": "full"}, r"^train_language_model full with load_in_8bit: "
                                                             r"quantized weights cannot be trained in full"),
    ({"train_language_model": "frozen"}, r"^train_vision_tower, train_projector and train_language_model are all "),
    ({"vision_tower_learning_rate": 1e-5}, r"^vision_tower_learning_rate is set but train_vision_tower is frozen"),
])
def test_contradictory_choices_are_refused_in_one_line_when_the_recipe_loads(tmp_path, keys, message):
    with pytest.raises(UserError, match=message) as refused:
        load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", **keys))
    assert "\n" not in str(refused.value)


def test_the_plan_counts_what_each_choice_trains_and_what_it_costs():
    recipe = REPO / "recipes/qwen2_5_vl_7b_lora.yaml"
    default = make_plan(load_recipe(recipe))
    wide = make_plan(load_recipe(recipe, ["--train_projector", "full", "--train_vision_tower", "lora"]))
    assert default.parts.trainable["projector"] == 0 and default.parts.trainable["vision_tower"] == 0
    assert wide.parts.trainable["projector"] == wide.parts.params["projector"] > 0
    assert 0 < wide.parts.trainable["vision_tower"] < wide.parts.params["vision_tower"]
    assert wide.total(True) > default.total(True)
    assert any(key.startswith("activations (vision tower") for key in wide.memory())
    assert not any(key.startswith("activations (vision tower") for key in default.memory())
    code = sft(["plan", str(REPO / "recipes/llama11b_construction.yaml"), "--train_language_model", "full"])
    assert code == 2  # 8-bit base: refused before anything loads


def capture_model():
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            self.groups = [(g.get("part"), g["lr"]) for g in optimizer.param_groups]

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.model = model

    return Keep()


def test_a_full_projector_run_keeps_frozen_parts_bit_identical_and_round_trips(family_models, tmp_path):
    case = BY_NAME["mllama"]
    base_dir = family_models.folder(case)
    kept = capture_model()
    _run_with(case, base_dir, tmp_path, kept, train_projector="full", projector_learning_rate=1e-3)
    run = tmp_path / "run"
    manifest = json.loads((run / "run_manifest.json").read_text())["model_setup"]
    assert manifest["parts"] == {"vision_tower": "frozen", "projector": "full", "language_model": "lora"}
    assert manifest["modules_to_save"] == ["model.multi_modal_projector"]
    assert manifest["trainable_params"]["projector"] == manifest["params"]["projector"]
    assert manifest["trainable_params"]["vision_tower"] == 0
    assert {part for part, _ in kept.groups} >= {"projector", "language_model"}
    assert {part: lr for part, lr in kept.groups}["projector"] == 1e-3 != dict(kept.groups)["language_model"]

    base, _ = load_base(str(base_dir))
    before = dict(base.named_parameters())
    trained = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
               for n, p in kept.model.named_parameters() if kind(n) in ("base", "original")}
    for name, parameter in trained.items():
        name = name.replace(".original_module", "")
        assert torch.equal(parameter.detach().float().cpu(), before[name].detach().float()), name
    copies = [(n, p) for n, p in kept.model.named_parameters() if kind(n) == "copy"]
    assert copies and any(not torch.equal(p.detach().cpu(), before[n.replace("base_model.model.", "").replace(
        ".modules_to_save.default", "")]) for n, p in copies)  # the projector learnt

    processor = load_processor(str(run), _config(family_models, case), family=case.family)
    batch = make_collator(processor, case.family)([row(tmp_path, IMAGE_ROW, images=1)])
    batch.pop("labels")
    assert_merge_and_predict_agree(run, base_dir, [batch], tmp_path)


def _run_with(case, base_dir, tmp_path, callback, **keys):
    from tests.test_training import recipe_for

    recipe = load_recipe(recipe_for(tmp_path, base_dir, with_images=True, max_length=1024, num_train_epochs=6,
                                    learning_rate=5e-3, eval_strategy="no", **keys))
    from sft.run.train import main as train

    return train(recipe, extra_callbacks=[callback])


def test_a_full_fine_tune_exports_its_model_has_nothing_to_merge_and_predicts_as_trained(family_models, tmp_path):
    case = BY_NAME["idefics3"]
    kept = capture_model()
    _run_with(case, family_models.folder(case), tmp_path, kept, use_peft=False, train_projector="full")
    run = tmp_path / "run"
    assert not (run / "adapter_config.json").exists() and (run / "config.json").is_file()
    with pytest.raises(UserError, match=r": a full fine-tune \(no adapter\): nothing to merge"):
        merge(run, tmp_path / "merged")
    exported = export_adapter(run, tmp_path / "export")
    model, _, _, family = load_for_inference(exported)
    processor = load_processor(str(exported), model.config, family=family)
    batch = make_collator(processor, family)([row(tmp_path, IMAGE_ROW, images=1)])
    batch.pop("labels")
    with torch.no_grad():
        expected = kept.model.eval()(**batch).logits
        assert (model(**batch).logits - expected).abs().max().item() <= 1e-5
    from_run = predict(run, tmp_path / "val.jsonl", tmp_path / "a.jsonl", column_map={"completion": "target"})
    from_export = predict(exported, tmp_path / "val.jsonl", tmp_path / "b.jsonl", column_map={"completion": "target"})
    assert from_run["predictions"] == from_export["predictions"]


def test_lora_keys_without_a_lora_part_are_said_to_do_nothing(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl", lora_r=16)
    assert [n for n in load_recipe(path).notices if "lora_r" in n] == []
    full = load_recipe(path, ["--use_peft", "false"])
    assert [n for n in full.notices if n.startswith("lora_r: no part trains with LoRA")] != []
