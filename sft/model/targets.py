"""Which linear layers LoRA wraps and which stay out of quantization, chosen per model from its own module tree, its
family entry (the parts: sft/family/parts.py) and the recipe's choice of what trains.

LoRA goes on the parts set to `lora` only. Within them `lora_target_modules` picks the layers: unset, the language
model's attention projections (q_proj, k_proj, v_proj and o_proj, or the fused qkv_proj + o_proj of Phi-3/Phi-4
style models) and every linear layer of a vision tower or projector (their attention layers are named differently in
every tower: qkv, out_proj, projection_layer); `all-linear`, every linear layer of those parts but the output head
(as PEFT's shorthand, which would otherwise reach into frozen parts); names or a regex, the matching layers of
those parts. A model that has an output projection but none of the input ones is refused rather than trained with
LoRA on o_proj alone.
"""

from __future__ import annotations

import re

import torch

from sft.errors import UserError
from sft.family.families import Family
from sft.family.parts import DEFAULT_PARTS, Parts, modules_to_save, part_of

INPUT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "qkv_proj")
OUTPUT_PROJECTIONS = ("o_proj",)


def is_vision_side(name: str, family: Family) -> bool:
    """Whether module `name` lies in the vision tower or projector (a dotted part is one of the family's names)."""
    return bool(set(name.split(".")) & set(family.vision_modules))


def linear_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Every linear layer by name (bitsandbytes' 8-bit and 4-bit layers are nn.Linear subclasses)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def language_attention(model: torch.nn.Module, family: Family) -> list[str]:
    """The attention projections of the language model, by full module name."""
    names = [name for name, _ in linear_layers(model) if not is_vision_side(name, family)
             and name.rsplit(".", 1)[-1] in INPUT_PROJECTIONS + OUTPUT_PROJECTIONS]
    leaves = {name.rsplit(".", 1)[-1] for name in names}
    if not leaves & set(INPUT_PROJECTIONS):
        found = ", ".join(sorted(leaves)) or "none"
        raise UserError(f"family {family.name}: the language model has no q_proj/k_proj/v_proj or fused qkv_proj "
                        f"linear layer (attention projections found: {found}); set lora_target_modules to its "
                        "attention layers' names")
    return names


def matched(model: torch.nn.Module, target_modules) -> list[tuple[str, torch.nn.Linear]]:
    """The linear layers a recipe's `lora_target_modules` names, matched as PEFT does (a string is a full regex;
    a list, module names or their dotted suffixes)."""
    linears = linear_layers(model)
    if isinstance(target_modules, str):
        return [(n, m) for n, m in linears if re.fullmatch(target_modules, n)]
    keys = list(target_modules or ())
    return [(n, m) for n, m in linears if any(n == k or n.endswith(f".{k}") for k in keys)]


def lora_targets(model: torch.nn.Module, family: Family, target_modules=None,
                 parts: Parts = DEFAULT_PARTS) -> list[tuple[str, torch.nn.Linear]]:
    """The layers LoRA wraps: those of the parts set to `lora` that `lora_target_modules` picks (module docstring)."""
    lora_parts = parts.set_to("lora")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers = [(n, m) for n, m in linear_layers(model) if part_of(n, family) in lora_parts]
    if target_modules in ("all-linear", ["all-linear"]):
        chosen = [(n, m) for n, m in layers if m is not head]
    elif target_modules:
        picked = {n for n, _ in matched(model, target_modules)}
        chosen = [(n, m) for n, m in layers if n in picked]
    else:
        attention = set(language_attention(model, family)) if "language_model" in lora_parts else set()
        chosen = [(n, m) for n, m in layers if n in attention or part_of(n, family) != "language_model"]
    for part in lora_parts:
        if not any(part_of(n, family) == part for n, _ in chosen):
            raise UserError(f"train_{part} lora: lora_target_modules {target_modules or '(default)'!r} picks no "
                            f"linear layer of the {part} of {family.name}; name its layers, or choose full or frozen")
    return chosen


def lora_config(model_args, model: torch.nn.Module, family: Family, parts: Parts = DEFAULT_PARTS):
    """LoRA from the recipe (TRL's ModelConfig keys) for the parts set to `lora`, with the `full` parts as PEFT
    modules_to_save; None when no part is LoRA (full fine-tuning: sft.family.parts.set_trainable). Module names are the
    loaded model's (or its meta-device twin's) full names, so PEFT wraps exactly those."""
    from trl.trainer.utils import get_peft_config

    config = get_peft_config(model_args) if parts.uses_peft else None
    if config is not None:
        config.target_modules = [name for name, _ in lora_targets(model, family, model_args.lora_target_modules,
                                                                  parts)]
        config.modules_to_save = modules_to_save(model, family, parts) + list(config.modules_to_save or [])
    return config


def not_quantized(family: Family) -> list[str]:
    """Kept in full precision when the language model is quantized: bitsandbytes' int8 layer fails on the
    projector's 4-D input on CPU, and quantizing the vision tower and output head costs quality for little memory.
    Patterns are matched by transformers as a regex from the start of the module name, or as its suffix."""
    return [f".*{name}" for name in family.vision_modules] + ["lm_head"]


def is_quantized(name: str, family: Family) -> bool:
    """Whether transformers quantizes linear layer `name` with the family's skip list."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(name, not_quantized(family))


def describe_targets(names: list[str]) -> str:
    """`N layers: leaf names` for the log and `sft plan` (the manifest keeps the full list)."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
    return f"{len(names)} layers ({', '.join(leaves)})"
