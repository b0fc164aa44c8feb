"""Which linear layers LoRA wraps and which stay out of quantization, chosen per model from its own module tree and
its family entry (the vision side is the family table's `vision_modules`).

The default LoRA targets are the language model's attention projections: q_proj, k_proj, v_proj and o_proj, or the
fused qkv_proj + o_proj of Phi-3/Phi-4 style models. A model that has an output projection but none of the input
ones is refused rather than trained with LoRA on o_proj alone.
"""

from __future__ import annotations

import re

import torch

from sft.errors import UserError
from sft.families import Family

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


def lora_targets(model: torch.nn.Module, family: Family, target_modules=None) -> list[tuple[str, torch.nn.Linear]]:
    """The layers LoRA wraps: the recipe's `lora_target_modules` when set, else the language model's attention."""
    if target_modules:
        return matched(model, target_modules)
    chosen = set(language_attention(model, family))
    return [(n, m) for n, m in linear_layers(model) if n in chosen]


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
