"""What only some of the families do, beyond the contract every family meets (tests/test_family_contract.py): a
processor that needs an optional package, `sft preview` saying when EOS is inserted, and Gemma 3's, SmolVLM2's and
LLaVA-OneVision's plans from their shipped configs and recipe. Tiny models from tests/families/registry.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from sft.config.recipe import load_recipe
from sft.plan.estimate import make_plan
from tests.conftest import REAL_PROCESSORS, REPO, write_image, write_jsonl, write_recipe
from tests.families.checks import lora_count
from tests.families.registry import BY_NAME, CASES, NO_TEMPLATES, cases
from tests.families.rows import SHAPES
from tests.test_training import recipe_for

SMOLVLM = REAL_PROCESSORS / "SmolVLM-256M-Instruct"


MISSING = """
import sys
sys.modules[{package!r}] = None  # the import fails as if the package were not installed
from sft.cli import main
sys.exit(main(["preview", {recipe!r}, "--limit", "1"]))
"""


def run_without(package: str, recipe: Path) -> subprocess.CompletedProcess:
    code = MISSING.format(package=package, recipe=str(recipe))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]


@pytest.mark.parametrize("case", cases([BY_NAME["mistral3"], BY_NAME["llama4"]]))
def test_missing_torchvision_is_one_line_naming_it_and_its_pip_command(family_models, tmp_path, case):
    folder = family_models.folder(case)
    result = run_without("torchvision", recipe_for(tmp_path, folder, with_images=True))
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"error: {folder}: the processor needs the package 'torchvision', "
                                   "which is not installed; install it with: pip install torchvision"]


@pytest.mark.skipif(not SMOLVLM.is_dir(), reason=f"{SMOLVLM} is absent")
def test_missing_num2words_is_one_line_naming_it_and_its_pip_command(tmp_path):
    """SmolVLM2's processor class around the real SmolVLM-256M tokenizer and image processor."""
    from transformers import AutoProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    real = AutoProcessor.from_pretrained(SMOLVLM)
    folder = tmp_path / "smolvlm2"
    SmolVLMProcessor(image_processor=real.image_processor, tokenizer=real.tokenizer,
                     video_processor=SmolVLMVideoProcessor(), image_seq_len=real.image_seq_len,
                     chat_template=real.chat_template).save_pretrained(folder)
    AutoConfig.from_pretrained(SMOLVLM).save_pretrained(folder)
    result = run_without("num2words", recipe_for(tmp_path, folder, with_images=True))
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"error: {folder}: the processor needs the package 'num2words', "
                                   "which is not installed; install it with: pip install num2words"]


# The cases whose template closes no turn, and one whose template does.
PREVIEWED = [case for case in CASES if case.inserts_eos] + [BY_NAME["gemma3"]]


@pytest.mark.parametrize("case", cases(PREVIEWED))
def test_preview_says_when_eos_is_inserted_because_the_template_closes_no_turn(family_models, tmp_path, capsys,
                                                                             case):
    from sft.cli import main as cli

    train_file = tmp_path / "train.jsonl"
    train_file.write_text('{"prompt": "What element?", "completion": "water"}\n', encoding="utf-8")
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder(case)),
                          train_file=str(train_file), max_length=256)
    assert cli(["preview", str(recipe), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["supervised_text"] == case.expected(SHAPES["prompt_completion"])
    note = [line for line in captured.err.splitlines() if line.startswith("note: the chat template closes")]
    eos = family_models.load(case)[0].tokenizer.eos_token
    assert note == ([f"note: the chat template closes an assistant turn with no special token; the tokenizer's "
                     f"EOS '{eos}' is inserted right after each reply and supervised"] if case.inserts_eos else [])


# ---- Gemma 3: shipped configs and recipe -----------------------------------------------------------------------
GEMMA3_4B_RECIPE = REPO / "recipes" / "gemma3_4b_lora.yaml"


@pytest.mark.parametrize(("hub_id", "params", "layers", "hidden", "heads", "kv_heads"),
                         [("google/gemma-3-4b-it", 4_300_079_472, 34, 2560, 8, 4),
                          ("google/gemma-3-12b-it", 12_187_325_040, 48, 3840, 16, 8)])
def test_gemma3_plans_from_the_shipped_configs(tmp_path, hub_id, params, layers, hidden, heads, kv_heads):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path=hub_id, train_file="t.jsonl",
                                      dtype="bfloat16"))
    plan = make_plan(recipe)
    assert plan.architecture == "Gemma3ForConditionalGeneration"
    assert plan.total_params == params  # the model cards' 4.3B / 12.2B
    head_dim = 256  # q/k/v/o: hidden -> heads x 256 (k and v: kv_heads x 256) and back; r (8) x (in + out) each
    assert plan.lora_params == layers * 8 * ((hidden + heads * head_dim) * 2 + (hidden + kv_heads * head_dim) * 2)


@NO_TEMPLATES
def test_gemma3_4b_recipe_plans_and_dry_runs_with_a_gemma3_processor(family_models, tmp_path, capsys):
    from sft.cli import main as cli

    assert make_plan(load_recipe(GEMMA3_4B_RECIPE)).fits
    rows = [{"image": f"{i}.png", "prompt": "What element is shown?", "target": label}
            for i, label in enumerate(["water", "fire"])]
    for i in range(2):
        write_image(tmp_path / f"{i}.png")
    train_file, eval_file = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", rows)
    args = ["train", str(GEMMA3_4B_RECIPE), "--dry-run", "--train_file", str(train_file),
            "--eval_file", str(eval_file), "--model_name_or_path", str(family_models.folder("gemma3"))]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert out.count("2 rows, 2 ok") == 2 and "0 bad" in out


# ---- SmolVLM2 and LLaVA-OneVision: plans from the shipped configs ------------------------------------------------
SHIPPED = {
    # 24 layers, hidden 2048, 32 heads of 64 for queries and for keys/values; the hub's "2.25B params".
    "HuggingFaceTB/SmolVLM2-2.2B-Instruct": ("SmolVLMForConditionalGeneration", 2_246_784_880,
                                             lora_count(8, 24, 2048, 2048, 2048)),
    # 28 layers, hidden 3584, 28 query and 4 key/value heads of 128; the hub's "8.03B params".
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": ("LlavaOnevisionForConditionalGeneration", 8_030_807_584,
                                                lora_count(8, 28, 3584, 3584, 512)),
}


@pytest.mark.parametrize("hub_id", list(SHIPPED))
def test_plan_from_the_shipped_config_quantizes_only_the_language_model(tmp_path, hub_id):
    from sft.plan.estimate import build_on_meta

    architecture, total, lora = SHIPPED[hub_id]
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=hub_id, train_file="t.jsonl", load_in_4bit=True,
                          dtype="bfloat16", lora_r=8)
    plan = make_plan(load_recipe(recipe))
    assert (plan.architecture, plan.total_params, plan.lora_params) == (architecture, total, lora)
    model, _ = build_on_meta(hub_id)
    language = sum(m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and re.search(r"\.(language|text)_model\.", n))
    assert plan.quantized_params == language  # 4-bit: no vision tower, projector or lm_head weight
