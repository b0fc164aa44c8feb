"""The shipped recipes and accelerate configs: plans, data shapes, refused pairs, and real 2-process runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from peft import PeftModel, get_peft_model
from transformers import AutoModelForImageTextToText

from sft.cli import main as sft
from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.family.families import family_for
from sft.model.targets import lora_config
from sft.plan.estimate import make_plan
from sft.run.launch import check_pair, strategy
from tests.conftest import REAL_PROCESSORS, REPO, write_image, write_jsonl, write_recipe

LLAMA_11B = REPO / "recipes/llama11b_construction.yaml"
SMOLVLM = REPO / "recipes/smolvlm_elements.yaml"
CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
needs_real = pytest.mark.skipif(not REAL_PROCESSORS.is_dir(), reason=f"{REAL_PROCESSORS} is absent")


def test_11b_plan_counts_match_the_architecture_formula():
    plan = make_plan(load_recipe(LLAMA_11B))
    assert plan.total_params == 10_670_220_835  # MllamaForConditionalGeneration built on meta
    # LoRA r 8 on q/k/v/o of all 40 language layers (32 self-attention + 8 cross-attention), hidden 4096,
    # 8 key/value heads of 128: q, o are 4096 -> 4096; k, v are 4096 -> 1024. Each adds r x (in + out).
    per_layer = 8 * (2 * (4096 + 4096) + 2 * (4096 + 1024))
    assert plan.lora_params == 40 * per_layer == 8_519_680
    assert plan.fits and plan.gpu_memory_gib == 80


def test_smolvlm_plan_counts_match_the_formula():
    plan = make_plan(load_recipe(SMOLVLM))
    # 30 layers, hidden 576, 3 key/value heads of 64: q, o 576 -> 576; k, v 576 -> 192.
    assert plan.lora_params == 30 * 8 * (2 * (576 + 576) + 2 * (576 + 192)) == 921_600
    assert plan.quantized_params == 0


def test_plan_lora_count_equals_what_peft_trains(tiny_models, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_models["mllama"]),
                                      train_file="t.jsonl"))
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["mllama"])
    config = lora_config(recipe.model, model, family_for("mllama"))
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    plan = make_plan(recipe)
    assert plan.lora_params == trainable
    assert sorted(config.target_modules) == sorted(plan.lora_modules)  # the plan lists what PEFT wraps
    assert plan.lora_modules and not any("vision" in name or "projector" in name for name in plan.lora_modules)


def test_plan_command_prints_the_table(capsys):
    assert sft(["plan", str(LLAMA_11B)]) == 0
    out = capsys.readouterr().out
    assert "10,670,220,835 total" in out and "LoRA trainable 8,519,680" in out and "fits" in out
    assert "family      mllama (config.model_type mllama)" in out
    assert "LoRA on     160 layers (k_proj, o_proj, q_proj, v_proj)" in out  # 40 layers x q/k/v/o
    assert sft(["plan", str(LLAMA_11B), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["lora_params"] == 8_519_680 and len(planned["lora_modules"]) == 160
    assert "model.language_model.layers.0.self_attn.q_proj" in planned["lora_modules"]


@needs_real
def test_11b_recipe_dry_run_checks_rows_with_the_real_llama_processor(capsys):
    args = ["train", str(LLAMA_11B), "--dry-run",
            "--accelerate-config", str(REPO / "accelerate_configs/single_gpu.yaml"),
            "--train_file", str(REPO / "data/construction_terms_sample.jsonl"),
            "--model_name_or_path", str(REAL_PROCESSORS / "Llama-3.2-11B-Vision-Instruct")]
    assert sft(args) == 0
    out = capsys.readouterr().out
    assert "accelerate config" in out and "single" in out
    assert "4 rows, 4 ok, 0 prompt-shortened, 0 dropped" in out and "0 bad" in out


@needs_real
def test_smolvlm_recipe_checks_element_rows_with_the_real_smolvlm_processor(tmp_path, capsys):
    rows = []
    for index, label in enumerate(["water", "fire"]):
        write_image(tmp_path / f"images/{index}.png")
        rows.append({"image": f"images/{index}.png", "prompt": "What element is shown?", "target": label})
    train, val = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", rows)
    args = ["check", str(SMOLVLM), "--train_file", str(train), "--eval_file", str(val),
            "--model_name_or_path", str(REAL_PROCESSORS / "SmolVLM-256M-Instruct")]
    assert sft(args) == 0
    assert capsys.readouterr().out.count("2 rows, 2 ok") == 2


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_accelerate_config_loads_through_accelerate(path):
    config = load_config_from_file(str(path))
    assert config.distributed_type is not None


@pytest.mark.parametrize(("config", "quantization", "refused"), [
    ("deepspeed_zero3.yaml", {"load_in_8bit": True}, "8-bit (load_in_8bit) cannot be sharded with ZERO3"),
    ("fsdp.yaml", {"load_in_8bit": True}, "8-bit (load_in_8bit) cannot be sharded with FSDP"),
    ("fsdp.yaml", {"load_in_4bit": True, "dtype": "bfloat16"}, "4-bit with FSDP needs bnb_4bit_quant_storage"),
    ("deepspeed_zero2.yaml", {"load_in_8bit": True}, None),
    ("multi_gpu.yaml", {"load_in_8bit": True}, None),
    ("fsdp.yaml", {"load_in_4bit": True, "dtype": "bfloat16", "bnb_4bit_quant_storage": "bfloat16"}, None),
    ("deepspeed_zero3.yaml", {"dtype": "bfloat16"}, None),
])
def test_known_bad_pairs_are_refused_before_launch(tmp_path, config, quantization, refused):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="m", train_file="t.jsonl",
                                      **quantization))
    path = REPO / "accelerate_configs" / config
    if refused:
        with pytest.raises(UserError, match=re.escape(refused)):
            check_pair(recipe, path)
    else:
        assert check_pair(recipe, path) == strategy(load_yaml(path))


def load_yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "multi_gpu.yaml"])
def test_two_process_8bit_lora_run_writes_a_loadable_adapter(tiny_models, tmp_path, config):
    rows = []
    for index, label in enumerate(["water", "fire", "earth", "wind"] * 2):
        write_image(tmp_path / f"{index}.png", (40 * index % 255, 90, 220))
        rows.append({"image": f"{index}.png", "prompt": "What element is shown?", "target": label})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "sft.cli", "train", str(REPO / "recipes/smoke.yaml"),
               "--accelerate-config", str(REPO / "accelerate_configs" / config), "--num-processes", "2",
               "--model_name_or_path", str(tiny_models["mllama"]), "--train_file", str(train),
               "--eval_file", str(train), "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1",
               "--per_device_train_batch_size", "2", "--load_best_model_at_end", "false"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert state["log_history"][0]["epoch"] == 0.5  # 2 processes x batch 2 = 4 of 8 rows a step
    base = AutoModelForImageTextToText.from_pretrained(tiny_models["mllama"])
    model = PeftModel.from_pretrained(base, str(out))
    assert any("lora_B" in name and param.abs().sum() > 0 for name, param in model.named_parameters())
    assert torch.isfinite(next(model.parameters())).all()
