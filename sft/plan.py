"""`sft plan RECIPE`: parameters and a per-GPU memory estimate, from the architecture alone (meta device).

No weights load: the model is built on PyTorch's meta device from its config (the local folder's, or the copy
shipped in recipes/model_configs/ for hub ids), so the 11B plan runs on a laptop.

Memory model (bytes; an estimate, not a measurement — `make bench` and the issue notes hold measured figures):
- weights: linear layers of the language model at 1 byte (8-bit) or 0.5 byte + absmax blocks (4-bit); everything
  kept out of quantization (vision tower, projector, lm_head, embeddings, norms) at the recipe's dtype, or in fp32
  when the model is quantized (PEFT's prepare_model_for_kbit_training upcasts them);
- LoRA: weights, gradients and AdamW's two moments, all fp32 (16 bytes a parameter);
- activations of the language model for per_device_train_batch_size x max_length tokens, after Korthikanti et al.
  2022 (34·h bytes a token a layer in 16-bit, plus 5·heads·seq bytes with eager attention); with gradient
  checkpointing only each layer's input (2·h bytes a token) is kept, plus one layer recomputed;
- logits: 16-bit logits, their fp32 copy for the loss and its gradient (10 bytes a token a vocabulary entry);
- a fixed allowance for the CUDA context and allocator slack.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sft.errors import UserError
from sft.model import NOT_QUANTIZED, model_class_for
from sft.recipe import Recipe

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "model_configs"
GIB = 1024**3
CUDA_CONTEXT_BYTES = 1.5 * GIB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2, None: 2}


def config_source(name: str) -> Path:
    """Where the architecture of `name` is read from: its folder, or the shipped copy for a hub id."""
    if Path(name).is_dir():
        return Path(name) / "config.json"
    shipped = MODEL_CONFIGS / f"{name.replace('/', '--')}.json"
    if shipped.is_file():
        return shipped
    raise UserError(f"model_name_or_path {name!r}: no local folder and no shipped config "
                    f"({shipped.relative_to(MODEL_CONFIGS.parents[1])}); add its config.json there to plan it")


def build_on_meta(name: str):
    """The model built from its config on the meta device (no memory, no weights)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(config_source(name)))
    with torch.device("meta"):
        return model_class_for(config).from_config(config), config


def _is_quantized(name: str) -> bool:
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(name, NOT_QUANTIZED)


def lora_targets(model: torch.nn.Module, target_modules) -> list[tuple[str, torch.nn.Linear]]:
    """The linear layers LoRA wraps, matched as PEFT does (a string is a full regex; a list, name suffixes)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if isinstance(target_modules, str):
        return [(n, m) for n, m in linears if re.fullmatch(target_modules, n)]
    keys = list(target_modules or ())
    return [(n, m) for n, m in linears if any(n == k or n.endswith(f".{k}") for k in keys)]


@dataclass
class Plan:
    name: str
    architecture: str
    total_params: int
    quantized_params: int
    lora_params: int
    memory: dict[str, tuple[float, float]]  # component -> (bytes with checkpointing, bytes without)
    gpu_memory_gib: float
    gradient_checkpointing: bool

    def total(self, checkpointing: bool) -> float:
        return sum(with_ckpt if checkpointing else without for with_ckpt, without in self.memory.values())

    @property
    def fits(self) -> bool:
        return self.total(self.gradient_checkpointing) <= self.gpu_memory_gib * GIB


def make_plan(recipe: Recipe) -> Plan:
    args, model_args = recipe.training, recipe.model
    model, config = build_on_meta(model_args.model_name_or_path)
    text = config.get_text_config()
    bits = 8 if model_args.load_in_8bit else 4 if model_args.load_in_4bit else 16
    dtype_bytes = DTYPE_BYTES.get(recipe.declared_dtype, 2)

    total = sum(p.numel() for p in model.parameters())
    quantized = 0
    if bits < 16:
        quantized = sum(m.weight.numel() for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and _is_quantized(n))
    lora = 0
    if model_args.use_peft:
        r = model_args.lora_r
        lora = sum(r * (m.in_features + m.out_features) for _, m in lora_targets(model, model_args.lora_target_modules))

    quantized_bytes = quantized * (1 if bits == 8 else 0.5 + 4 / 64)  # 4-bit: fp32 absmax per 64-value block
    # prepare_model_for_kbit_training (PEFT) upcasts every non-quantized parameter to fp32.
    kept_bytes = 4 if bits < 16 else dtype_bytes
    weights = quantized_bytes + (total - quantized) * kept_bytes
    tokens = args.per_device_train_batch_size * (args.max_length or 1024)
    hidden, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
    eager = (model_args.attn_implementation or "sdpa") == "eager"
    layer_bytes = tokens * (34 * hidden + (5 * heads * (args.max_length or 1024) if eager else 0))
    activations_full = layers * layer_bytes
    activations_ckpt = layers * tokens * hidden * 2 + layer_bytes
    vocab = model.get_output_embeddings().out_features
    memory = {
        f"weights ({bits}-bit linear layers)" if bits < 16 else "weights": (weights, weights),
        "LoRA weights + grads + AdamW (fp32)": (lora * 16, lora * 16),
        f"activations (batch {args.per_device_train_batch_size} x {args.max_length})":
            (activations_ckpt, activations_full),
        "logits and loss": (tokens * vocab * 10, tokens * vocab * 10),
        "CUDA context + allocator slack": (CUDA_CONTEXT_BYTES, CUDA_CONTEXT_BYTES),
    }
    return Plan(model_args.model_name_or_path, type(model).__name__, total, quantized, lora, memory,
                recipe.data.gpu_memory_gib, bool(args.gradient_checkpointing))


def render(plan: Plan) -> str:
    share = plan.lora_params / plan.total_params if plan.total_params else 0.0
    lines = [
        f"model       {plan.name} ({plan.architecture})",
        f"parameters  {plan.total_params:,} total ({plan.total_params / 1e9:.2f} B); "
        f"{plan.quantized_params:,} quantized; LoRA trainable {plan.lora_params:,} ({share:.3%})",
        "",
        f"{'memory per GPU (GiB)':<44}{'checkpointing':>14}{'without':>10}",
    ]
    for component, (with_ckpt, without) in plan.memory.items():
        lines.append(f"  {component:<42}{with_ckpt / GIB:>14.2f}{without / GIB:>10.2f}")
    lines.append(f"  {'total':<42}{plan.total(True) / GIB:>14.2f}{plan.total(False) / GIB:>10.2f}")
    used = plan.total(plan.gradient_checkpointing) / GIB
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"\ntarget GPU {plan.gpu_memory_gib:g} GiB (gpu_memory_gib): {verdict} with gradient_checkpointing "
                 f"{'on' if plan.gradient_checkpointing else 'off'} ({used:.1f} GiB estimated)")
    return "\n".join(lines)


def as_json(plan: Plan) -> str:
    return json.dumps({"model": plan.name, "architecture": plan.architecture, "total_params": plan.total_params,
                       "quantized_params": plan.quantized_params, "lora_params": plan.lora_params,
                       "memory_gib": {k: {"checkpointing": a / GIB, "without": b / GIB}
                                      for k, (a, b) in plan.memory.items()},
                       "total_gib": plan.total(plan.gradient_checkpointing) / GIB, "fits": plan.fits})
