"""Adapters out of a run trained in 8-bit: export round trip, merge into an unquantized base, predict, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig

from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.labels.collator import CompletionOnlyCollator
from sft.model.loading import load_processor
from sft.outputs.export import export_adapter, load_base, load_with_adapter, merge
from sft.outputs.predict import predict
from sft.run.train import main as train
from tests.conftest import REPO, write_image
from tests.test_training import recipe_for


@pytest.fixture(scope="module")
def run_dir(tiny_models, tmp_path_factory):
    """A short 8-bit LoRA run on the tiny Mllama (image rows)."""
    tmp = tmp_path_factory.mktemp("export")
    train(load_recipe(recipe_for(tmp, tiny_models["mllama"], True, load_in_8bit=True, num_train_epochs=3)))
    return tmp / "run"


@pytest.fixture(scope="module")
def inputs(run_dir, tiny_models, tmp_path_factory):
    """One batch with an image row and one text-only row, built by the training collator."""
    image = write_image(tmp_path_factory.mktemp("img") / "a.png", (230, 60, 30))
    collator = CompletionOnlyCollator(load_processor(str(run_dir), AutoConfig.from_pretrained(tiny_models["mllama"])))
    rows = [{"messages": [{"role": "user", "content": "What element is shown?"},
                          {"role": "assistant", "content": "fire"}], "stored_images": [str(image)]},
            {"messages": [{"role": "user", "content": "Define a beam."},
                          {"role": "assistant", "content": "A load carrier."}], "stored_images": []}]
    return [collator([row]) for row in rows]


def logits(model, batches) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches]


def test_merged_fp32_logits_equal_base_plus_adapter(run_dir, inputs, tmp_path):
    unmerged, _ = load_with_adapter(run_dir, torch.float32)
    merged_dir = merge(run_dir, tmp_path / "merged", dtype="fp32")
    merged, _ = load_base(str(merged_dir), torch.float32)
    for expected, got in zip(logits(unmerged, inputs), logits(merged.eval(), inputs)):
        assert (expected - got).abs().max().item() <= 1e-4
    assert not (merged_dir / "adapter_config.json").exists()
    assert not any("lora" in key for key in load_file(merged_dir / "model.safetensors"))


def test_merged_folder_loads_with_peft_unimportable(run_dir, tmp_path):
    merged_dir = merge(run_dir, tmp_path / "merged", dtype="bf16")
    code = ("import sys; sys.modules['peft'] = None\n"
            "from transformers import AutoModelForImageTextToText, AutoProcessor\n"
            f"m = AutoModelForImageTextToText.from_pretrained({str(merged_dir)!r}); "
            f"AutoProcessor.from_pretrained({str(merged_dir)!r}); print(m.dtype)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("torch.bfloat16")


def test_predict_gives_the_same_strings_on_run_dir_and_merged_model(run_dir, tmp_path):
    merged_dir = merge(run_dir, tmp_path / "merged", dtype="fp32")
    data = run_dir.parent / "val.jsonl"
    from_run = predict(run_dir, data, tmp_path / "a.jsonl", column_map={"completion": "target"})
    from_merged = predict(merged_dir, data, tmp_path / "b.jsonl", column_map={"completion": "target"})
    assert from_run["predictions"] == from_merged["predictions"]
    assert from_run["scored"] == 4 and from_run["accuracy"] == from_merged["accuracy"]
    first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert set(first) == {"row", "prediction", "reference"} and first["row"] == 1


def test_export_round_trip_reproduces_the_runs_logits(run_dir, inputs, tmp_path):
    out = export_adapter(run_dir, tmp_path / "export", state_dict=True)
    for name in ("adapter_model.safetensors", "adapter_config.json", "run_manifest.json", "README.md",
                 "tokenizer.json", "lora_state_dict.safetensors"):
        assert (out / name).is_file(), name
    config = json.loads((out / "adapter_config.json").read_text())
    run_base = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert config["base_model_name_or_path"] == str(Path(run_base).resolve())
    assert "sha256" in (out / "README.md").read_text()
    base, _ = load_base(config["base_model_name_or_path"])
    exported = PeftModel.from_pretrained(base, str(out)).eval()
    from_run, _ = load_with_adapter(run_dir)
    for expected, got in zip(logits(from_run, inputs), logits(exported, inputs)):
        assert torch.equal(expected, got)
    state = load_file(out / "lora_state_dict.safetensors")
    assert state.keys() == load_file(run_dir / "adapter_model.safetensors").keys()


def test_existing_non_empty_out_is_refused_unless_forced(run_dir, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=r"exists and is not empty; choose another OUT or pass --force"):
        export_adapter(run_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_adapter(run_dir, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()


def test_run_without_adapter_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=r"no adapter here \(missing adapter_model.safetensors, adapter_config.json\)"):
        export_adapter(tmp_path / "run", tmp_path / "out")


def test_missing_base_model_is_refused(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((run / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (run / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"base model '.*gone' not found"):
        merge(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_base_with_another_architecture_is_refused(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*"))
    manifest = json.loads((run / "run_manifest.json").read_text())
    manifest["base_model"]["architectures"] = ["LlamaForCausalLM"]
    (run / "run_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"trained on LlamaForCausalLM but the base is MllamaForConditionalGeneration"):
        merge(run, tmp_path / "merged", dtype="fp32")


def test_export_killed_midway_leaves_no_final_folder(run_dir, tmp_path):
    out = tmp_path / "export"
    code = ("import os, signal, sft.outputs.export as e\n"
            "e.copy_processor_files = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"e.export_adapter({str(run_dir)!r}, {str(out)!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=120)
    assert result.returncode == -9
    assert not out.exists()
    assert [p.name.startswith(".export.partial-") for p in tmp_path.iterdir()] == [True]
