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

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sft.config.recipe import Recipe
from sft.errors import UserError
from sft.family.families import find_family
from sft.family.parts import refuse_untold
from sft.labels.packing import packing_mode, refuse_unpackable
from sft.model.loading import model_class_for
from sft.model.targets import is_quantized, lora_targets
from sft.plan.part_memory import PartCosts, part_costs

MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "model_configs"
GIB = 1024**3
CUDA_CONTEXT_BYTES = 1.0 * GIB  # context + cuBLAS workspace (~0.5) and the caching allocator's slack (~0.5)
# bitsandbytes 0.50 int8 layers hold about 17 x hidden bytes a token a layer beyond a 16-bit layer, with or
# without checkpointing, and leave ~4 GiB of reserved-but-free blocks (H100, 11B, 2 and 4 x 512 tokens:
# bench/results/gpu-h100.json); measured, not derived.
INT8_TOKEN_LAYER_HIDDEN_BYTES = 17
INT8_ALLOCATOR_SLACK = 4.0 * GIB
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


# A choice counts as fitting only when the estimate leaves this share of gpu_memory_gib free: the estimate is within
# about 10 % of measured peaks (bench/results), and fragmentation grows over a long run.
AUTO_MARGIN = 0.10
# TRL's fused LM head (trl.trainer.utils.add_fused_lm_head) scores the supervised positions in vocabulary tiles of
# this size, so the full (tokens x vocabulary) logits never exist.
LOGIT_TILE = 32768


@dataclass
class Plan:
    name: str
    architecture: str
    family: str  # the family table entry and how it was found (sft.family.families.find_family)
    lora_modules: list[str]  # the linear layers LoRA wraps, by full name (sft.model.targets.lora_targets)
    total_params: int
    quantized_params: int
    lora_params: int
    fixed: dict[str, float]  # component -> bytes that do not depend on the batch
    layers: int
    layer_token_bytes: float  # activation bytes a token keeps in one layer without checkpointing
    checkpoint_token_bytes: float  # ... with checkpointing (each layer's input only)
    logit_token_bytes: float
    max_length: int
    batch: int  # per_device_train_batch_size (chosen by the plan when the recipe says auto)
    accumulation: int
    gpu_memory_gib: float
    gradient_checkpointing: bool
    eager_heads: int = 0  # attention heads whose scores eager attention keeps (0: sdpa or flash attention)
    packed: str | None = None  # packing / padding_free: a micro-batch is one sequence of batch x max_length tokens
    mask_bytes: int = 0  # bytes a query-key pair of a packed sequence's block mask takes (0: flash attention)
    decisions: list[str] = field(default_factory=list)  # what the plan chose for `auto` keys, and why
    parts: PartCosts | None = None  # what each part's choice trains and costs (sft/plan/part_memory.py)
    choices: str = ""  # the recipe's parts, e.g. "vision_tower frozen, projector full, language_model lora"

    def memory(self, batch: int | None = None) -> dict[str, tuple[float, float]]:
        """Component -> (bytes with checkpointing, bytes without) for a micro-batch of `batch` rows."""
        batch = self.batch if batch is None else batch
        tokens = batch * self.max_length  # packed: as many at most, in one sequence
        sequence = tokens if self.packed else self.max_length
        one_layer = tokens * (self.layer_token_bytes + 5 * self.eager_heads * sequence)
        memory = {name: (size, size) for name, size in self.fixed.items()}
        shape = f"1 x {tokens}, {self.packed}" if self.packed else f"batch {batch} x {self.max_length}"
        memory[f"activations ({shape})"] = (
            self.layers * tokens * self.checkpoint_token_bytes + one_layer, self.layers * one_layer)
        memory["logits tiles and loss"] = (tokens * self.logit_token_bytes,) * 2
        if self.packed and self.mask_bytes:  # sdpa/eager get the block-diagonal mask as a dense (L x L) tensor
            memory["block mask of the packed sequence"] = (self.mask_bytes * tokens**2,) * 2
        vision = self.parts.vision_patches * batch * self.parts.vision_hidden if self.parts else 0
        if vision:  # a trainable vision tower keeps its activations, one image a row
            layers = self.parts.vision_layers
            memory[f"activations (vision tower, {batch} x {self.parts.vision_patches} patches)"] = (
                vision * (2 * layers + 34), vision * 34 * layers)
        return memory

    def total(self, checkpointing: bool, batch: int | None = None) -> float:
        return sum(with_ckpt if checkpointing else without for with_ckpt, without in self.memory(batch).values())

    def fits_in(self, checkpointing: bool, batch: int, margin: float = 0.0) -> bool:
        return self.total(checkpointing, batch) <= (1 - margin) * self.gpu_memory_gib * GIB

    @property
    def fits(self) -> bool:
        return self.fits_in(self.gradient_checkpointing, self.batch)


def make_plan(recipe: Recipe, measured: dict | None = None) -> Plan:
    """The estimate for the recipe, with its `auto` keys chosen (see `choose`). `measured` (from `sft train
    --dry-run`, which reads every row: sft.check.inspect_data.check) plans rows at the longest measured row and a
    trainable vision tower at the most visual tokens a row has, instead of max_length and an assumed image."""
    measured = measured or {}
    args, model_args = recipe.training, recipe.model
    model, config = build_on_meta(model_args.model_name_or_path)
    family = find_family(config.model_type, None, recipe.data.family)
    refuse_unpackable(family, args)
    refuse_untold(family, recipe.parts)
    text = config.get_text_config()
    bits = 8 if model_args.load_in_8bit else 4 if model_args.load_in_4bit else 16
    dtype_bytes = DTYPE_BYTES.get(recipe.declared_dtype, 2)

    total = sum(p.numel() for p in model.parameters())
    quantized = 0
    if bits < 16:
        quantized = sum(m.weight.numel() for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and is_quantized(n, family))
    parts = recipe.parts
    targets = lora_targets(model, family, model_args.lora_target_modules, parts) if parts.uses_peft else []
    lora = sum(model_args.lora_r * (m.in_features + m.out_features) for _, m in targets)

    quantized_bytes = quantized * (1 if bits == 8 else 0.5 + 4 / 64)  # 4-bit: fp32 absmax per 64-value block
    # PEFT's prepare_model_for_kbit_training upcasts every non-quantized parameter to fp32; the toolkit skips that
    # unless kbit_fp32_upcast is set (sft.model.loading.prepare_quantized).
    kept_bytes = 4 if bits < 16 and recipe.data.kbit_fp32_upcast else dtype_bytes
    weights = quantized_bytes + (total - quantized) * kept_bytes
    costs = part_costs(model, config, family, parts, targets, model_args.lora_r, kept_bytes,
                       recipe.data.image_max_pixels, measured.get("visual_tokens"))
    hidden, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
    max_length = args.max_length or 1024
    longest = measured.get("longest") if not packing_mode(args) else None  # a padded batch: its longest row
    max_length = min(max_length, longest) if longest else max_length
    attention = model_args.attn_implementation or "sdpa"
    vocab = model.get_output_embeddings().out_features
    plan = Plan(
        model_args.model_name_or_path, type(model).__name__, f"{family.name} ({family.found_by})",
        [name for name, _ in targets], total, quantized, lora,
        fixed={f"weights ({bits}-bit linear layers)" if bits < 16 else "weights": weights,
               "LoRA weights + grads + AdamW (fp32)": lora * 16,
               "full parts: fp32 weights + grads + AdamW": costs.full_state_bytes,
               "CUDA context + allocator slack": CUDA_CONTEXT_BYTES + (INT8_ALLOCATOR_SLACK if bits == 8 else 0)},
        layers=layers,
        layer_token_bytes=(34 + (INT8_TOKEN_LAYER_HIDDEN_BYTES if bits == 8 else 0)) * hidden,
        checkpoint_token_bytes=2 * hidden + (INT8_TOKEN_LAYER_HIDDEN_BYTES * hidden if bits == 8 else 0),
        logit_token_bytes=min(vocab, LOGIT_TILE) * 6,  # one tile's 16-bit logits and their fp32 softmax
        max_length=max_length, batch=args.per_device_train_batch_size,
        accumulation=args.gradient_accumulation_steps, gpu_memory_gib=recipe.data.gpu_memory_gib,
        gradient_checkpointing=bool(args.gradient_checkpointing), eager_heads=heads if attention == "eager" else 0,
        packed=packing_mode(args), mask_bytes=0 if attention.startswith("flash") else dtype_bytes,
        parts=costs, choices=parts.describe())
    if longest and longest < (args.max_length or 1024):
        plan.decisions.append(f"rows planned at {longest} tokens, the longest measured row "
                              f"(max_length {args.max_length})")
    choose(plan, recipe)
    return plan


def _divisors_descending(number: int) -> list[int]:
    return [d for d in range(number, 0, -1) if number % d == 0]


def choose(plan: Plan, recipe: Recipe) -> None:
    """Fill the recipe's `auto` keys into `plan` (batch, accumulation, checkpointing), each with its reason.

    Recomputing the forward costs about a third of a step, and a larger micro-batch keeps the GPU busier than more
    accumulation steps, so: checkpointing stays off when the largest micro-batch fits without it; otherwise the
    largest micro-batch that fits without it is taken; only when none does is checkpointing turned on, with the
    largest micro-batch that fits then. The effective batch (micro-batch x accumulation) never changes.
    """
    auto_ckpt = "gradient_checkpointing" in recipe.auto
    auto_batch = "per_device_train_batch_size" in recipe.auto
    if not (auto_ckpt or auto_batch):
        return
    limit = (1 - AUTO_MARGIN) * plan.gpu_memory_gib
    effective = recipe.data.effective_batch_size if auto_batch else plan.batch
    batches = _divisors_descending(effective) if auto_batch else [plan.batch]
    checkpointing = [False, True] if auto_ckpt else [plan.gradient_checkpointing]
    choice = next(((ckpt, batch) for ckpt in checkpointing for batch in batches
                   if plan.fits_in(ckpt, batch, AUTO_MARGIN)), (checkpointing[-1], batches[-1]))
    plan.gradient_checkpointing, plan.batch = choice
    plan.accumulation = effective // plan.batch if auto_batch else plan.accumulation
    need = plan.total(plan.gradient_checkpointing) / GIB
    fits = need <= limit
    if auto_ckpt:
        without = plan.total(False) / GIB
        if not plan.gradient_checkpointing:
            why = f"without it the estimate is {without:.1f} GiB, within {limit:.0f} of {plan.gpu_memory_gib:g} GiB"
        else:
            why = (f"without it the estimate is {without:.1f} GiB, over {limit:.0f} of {plan.gpu_memory_gib:g} GiB; "
                   f"with it {need:.1f} GiB" + ("" if fits else " (still over: lower max_length or quantize)"))
        plan.decisions.append(f"gradient_checkpointing auto -> {'on' if plan.gradient_checkpointing else 'off'}: "
                              f"{why}")
    if auto_batch:
        why = (f"the largest divisor of effective_batch_size {effective} whose estimate ({need:.1f} GiB) is "
               f"within {limit:.0f} of {plan.gpu_memory_gib:g} GiB" if fits
               else f"nothing fits within {limit:.0f} of {plan.gpu_memory_gib:g} GiB; smallest micro-batch taken")
        plan.decisions.append(f"per_device_train_batch_size auto -> {plan.batch} x gradient_accumulation_steps "
                              f"{plan.accumulation} = {effective} rows a step: {why}")


def apply_auto(recipe: Recipe) -> Plan | None:
    """Write the plan's choices for the recipe's `auto` keys into its training arguments; None when it has none."""
    if not recipe.auto:
        return None
    plan = make_plan(recipe)
    args = recipe.training
    # transformers 5.23 reads `activation_checkpointing`; `gradient_checkpointing` is its deprecated mirror, copied
    # only in __post_init__, so both are set (setting the old name alone left checkpointing on: measured on H100).
    args.activation_checkpointing = args.gradient_checkpointing = plan.gradient_checkpointing
    args.per_device_train_batch_size = plan.batch
    args.gradient_accumulation_steps = plan.accumulation
    reasons = {line.split(" auto -> ")[0]: line for line in plan.decisions}
    recipe.auto_choices = {key: {"value": getattr(args, key), "why": reasons.get(key, "")}
                           for key in sorted(recipe.auto)}
    if "per_device_train_batch_size" in recipe.auto:
        recipe.auto_choices["gradient_accumulation_steps"] = {"value": plan.accumulation,
                                                              "why": "effective_batch_size / micro-batch"}
    return plan
