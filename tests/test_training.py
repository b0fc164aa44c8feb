"""A short real training run per family writes the run directory DESIGN.md promises."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.run.train import main as train
from tests.conftest import write_image, write_jsonl, write_recipe

ELEMENTS = {"water": (40, 90, 220), "fire": (230, 60, 30)}


def element_rows(tmp_path, count: int, with_images: bool) -> list[dict]:
    rows = []
    for index in range(count):
        label = list(ELEMENTS)[index % 2]
        row = {"prompt": "What element is shown?", "target": label}
        if with_images:
            write_image(tmp_path / f"img{index}.png", ELEMENTS[label])
            row["image"] = f"img{index}.png"
        rows.append(row)
    return rows


def recipe_for(tmp_path, model_dir, with_images: bool, **extra):
    train_file = write_jsonl(tmp_path / "train.jsonl", element_rows(tmp_path, 8, with_images))
    eval_file = write_jsonl(tmp_path / "val.jsonl", element_rows(tmp_path, 4, with_images))
    keys = dict(model_name_or_path=str(model_dir), train_file=str(train_file), eval_file=str(eval_file),
                column_map={"completion": "target"}, output_dir=str(tmp_path / "run"), max_length=64,
                num_train_epochs=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                learning_rate=3e-3, gradient_checkpointing=False, logging_steps=1, seed=0) | extra
    return write_recipe(tmp_path / "recipe.yaml", **keys)


@pytest.mark.parametrize(("family", "quantized"), [("llama", False), ("mllama", True), ("idefics3", False)])
def test_short_run_writes_adapter_processor_manifest_and_loss_curve(tiny_models, tmp_path, family, quantized):
    with_images = family != "llama"
    extra = {"load_in_8bit": True} if quantized else {}
    recipe = load_recipe(recipe_for(tmp_path, tiny_models[family], with_images, **extra))
    metrics = train(recipe)

    run = tmp_path / "run"
    for name in ("adapter_model.safetensors", "adapter_config.json", "run_manifest.json", "loss_curve.png",
                 "report.html", "trainer_state.json", "tokenizer.json", "chat_template.jinja"):
        assert (run / name).is_file(), name
    adapter = load_file(run / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    assert not any("vision" in key or "projector" in key or "connector" in key for key in adapter)
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert set(manifest["data_files"]) == {"train_file", "eval_file"}
    assert len(manifest["data_files"]["train_file"]["sha256"]) == 64
    assert manifest["rows"]["train"] == {"ok": 8}
    assert manifest["versions"]["trl"]
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["first_loss"] > 0


def test_training_refuses_when_too_many_rows_would_be_dropped(tiny_models, tmp_path):
    recipe = load_recipe(recipe_for(tmp_path, tiny_models["llama"], False, max_length=8))
    with pytest.raises(UserError, match=r"train: no row fits max_length"):
        train(recipe)


def test_training_refuses_a_dropped_share_above_the_threshold(tiny_models, tmp_path):
    path = recipe_for(tmp_path, tiny_models["llama"], False)
    rows = element_rows(tmp_path, 8, False)
    rows[0]["prompt"] = "Formwork is a temporary mould for concrete. " * 20  # one of 8 rows (12.5%) too long
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError, match=r"1 of 8 rows \(12.5%\) do not fit max_length"):
        train(load_recipe(path))
