"""`sft export-adapter` and `sft merge`: a run's adapter out of the training box, checked and never half-written.

Merging always reloads the base unquantized: PEFT refuses to merge into 8-bit weights ("Cannot merge adapters to
a quantized model") and merging into 4-bit rounds the update away, so a run trained in 8-bit or 4-bit is merged
into a bf16/fp16/fp32 copy of its base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from sft.errors import UserError
from sft.family.image_budget import match_model_to_processor
from sft.model.loading import load_processor, model_class_for
from sft.outputs.artifacts import (
    base_model_path,
    check_architecture,
    copy_processor_files,
    is_full_run,
    read_run,
    staged_folder,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_base(base: str, dtype: torch.dtype = torch.float32):
    """The base model in full precision (no quantization), vision or text."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base)
    return model_class_for(config).from_pretrained(base, dtype=dtype), config


def load_with_adapter(run: str | Path, dtype: torch.dtype = torch.float32):
    """Base (unquantized, `dtype`) + the run's adapter, unmerged, in eval mode."""
    from peft import PeftModel

    info = read_run(run)
    base, config = load_base(base_model_path(run, info), dtype)
    check_architecture(run, info, config)
    return PeftModel.from_pretrained(base, str(run)).eval(), info


def _model_card(run: Path, info: dict, base: str) -> str:
    manifest = info["manifest"]
    recipe = manifest.get("recipe", {})
    metrics = {k: v for k, v in manifest.get("metrics", {}).items() if k.startswith("eval_") or "loss" in k}
    data = "\n".join(f"- {name}: `{d['path']}` (sha256 `{d['sha256']}`)"
                     for name, d in manifest.get("data_files", {}).items()) or "- (no manifest)"
    lora = recipe.get("model", {})
    return f"""---
base_model: {base}
library_name: peft
tags: [lora, sft, trl]
---
# LoRA adapter for `{base}`

Trained with sft-toolkit from `{manifest.get('recipe_file')}` (git {manifest.get('git_commit')}).
LoRA r {lora.get('lora_r')}, alpha {lora.get('lora_alpha')}, dropout {lora.get('lora_dropout')};
quantized base during training: 8-bit {lora.get('load_in_8bit')}, 4-bit {lora.get('load_in_4bit')}.

## Data
{data}

## Eval metrics
```json
{json.dumps(metrics, indent=2)}
```

## Use
```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "<this folder>")
```
"""


def export_model(run: Path, out: Path, force: bool = False) -> Path:
    """A full fine-tune's export: the model it saved (config, weights) with its processor and manifest."""
    with staged_folder(out, force) as staging:
        for path in run.iterdir():
            if path.is_file() and (path.name.startswith("model") or path.name in ("config.json",
                                                                                  "generation_config.json")):
                shutil.copy2(path, staging / path.name)
        copy_processor_files(run, staging)
    return out


def export_adapter(run: str | Path, out: str | Path, force: bool = False, state_dict: bool = False) -> Path:
    """Adapter + processor + manifest + model card in `out`; `state_dict` adds the bare LoRA state dict. A full
    fine-tune (no adapter) exports its model."""
    run, out = Path(run), Path(out)
    if is_full_run(run):
        if state_dict:
            raise UserError(f"{run}: a full fine-tune has no LoRA state dict; drop --state-dict")
        return export_model(run, out, force)
    info = read_run(run)
    base = base_model_path(run, info)
    with staged_folder(out, force) as staging:
        shutil.copy2(run / "adapter_model.safetensors", staging / "adapter_model.safetensors")
        adapter_config = dict(info["adapter"], base_model_name_or_path=base)
        (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
        copy_processor_files(run, staging)
        (staging / "README.md").write_text(_model_card(run, info, base), encoding="utf-8")
        if state_dict:
            from peft import get_peft_model_state_dict

            model, _ = load_with_adapter(run)
            tensors = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
            save_file(tensors, staging / "lora_state_dict.safetensors")
    return out


def merge(run: str | Path, out: str | Path, dtype: str = "bf16", force: bool = False) -> Path:
    """Base reloaded unquantized in `dtype`, adapter merged in, saved as sharded safetensors + processor."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    run, out = Path(run), Path(out)
    if is_full_run(run):
        raise UserError(f"{run}: a full fine-tune (no adapter): nothing to merge; the run folder is the model "
                        "(sft predict, or copy it out with sft export-adapter)")
    with staged_folder(out, force) as staging:
        model, _ = load_with_adapter(run, DTYPES[dtype])
        merged = model.merge_and_unload()
        match_model_to_processor(merged, load_processor(str(run), merged.config))  # a budget's grids (LLaVA-NeXT)
        merged.save_pretrained(staging, max_shard_size="2GB")
        copy_processor_files(run, staging)
    leftover = [p.name for p in out.iterdir() if p.name.startswith("adapter_")]
    if leftover:
        raise UserError(f"{out}: merge left adapter files behind: {', '.join(leftover)}")
    return out
