"""Checks before `accelerate launch`: the accelerate config is readable and not a known-bad pair with the recipe."""

from __future__ import annotations

from pathlib import Path

import yaml

from sft.config.recipe import Recipe
from sft.errors import UserError


def read_accelerate_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: accelerate config not found")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(config, dict) or "distributed_type" not in config:
        raise UserError(f"{path}: not an accelerate config (no distributed_type)")
    return config


def strategy(config: dict) -> str:
    """`single`, `ddp`, `zero2`, `zero3` or `fsdp`."""
    kind = str(config["distributed_type"]).upper()
    if kind == "DEEPSPEED":
        return f"zero{(config.get('deepspeed_config') or {}).get('zero_stage', 0)}"
    return {"FSDP": "fsdp", "NO": "single"}.get(kind, "ddp")


def check_pair(recipe: Recipe, path: str | Path) -> str:
    """Refuse, with the reason, the pairs known to fail; returns the strategy's name."""
    config = read_accelerate_config(path)
    kind = strategy(config)
    model = recipe.model
    if model.load_in_8bit and kind in ("zero3", "fsdp"):
        raise UserError(f"{path}: 8-bit (load_in_8bit) cannot be sharded with {kind.upper()}: bitsandbytes int8 "
                        "weights are not partitionable (bitsandbytes#1451, axolotl#2068); use "
                        "deepspeed_zero2.yaml or multi_gpu.yaml, or 4-bit / bf16 LoRA")
    if model.load_in_4bit and kind == "fsdp":
        storage, dtype = model.bnb_4bit_quant_storage, recipe.declared_dtype
        if storage is None or storage == "uint8" or storage != dtype:
            raise UserError(f"{path}: 4-bit with FSDP needs bnb_4bit_quant_storage equal to dtype so FSDP can "
                            f"flatten the packed weights (got bnb_4bit_quant_storage {storage}, dtype {dtype}); "
                            "set both to bfloat16")
    return kind
