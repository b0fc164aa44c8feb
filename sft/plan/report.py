"""`sft plan`'s output: the plan as a table for people, or as JSON."""

from __future__ import annotations

import json

from sft.family.parts import PARTS
from sft.model.targets import describe_targets
from sft.plan.estimate import GIB, Plan


def trains(plan: Plan) -> list[str]:
    """One line a part: its choice, and the parameters that train of those it has."""
    choices = dict(item.rsplit(" ", 1) for item in plan.choices.split(", "))
    costs = plan.parts
    return [f"  {part:<16}{choices[part]:<8}{costs.trainable[part]:>15,} of {costs.params[part]:>15,} parameters train"
            for part in PARTS] + ([f"  vision tower activations: {costs.why_patches}"] if costs.vision_patches else [])


def render(plan: Plan) -> str:
    share = plan.lora_params / plan.total_params if plan.total_params else 0.0
    lines = [
        f"model       {plan.name} ({plan.architecture})",
        f"family      {plan.family}",
        f"LoRA on     {describe_targets(plan.lora_modules) if plan.lora_modules else 'nothing (use_peft false)'}",
        f"parameters  {plan.total_params:,} total ({plan.total_params / 1e9:.2f} B); "
        f"{plan.quantized_params:,} quantized; LoRA trainable {plan.lora_params:,} ({share:.3%})",
        "what trains",
        *trains(plan),
        "",
        f"{'memory per GPU (GiB)':<44}{'checkpointing':>14}{'without':>10}",
    ]
    for component, (with_ckpt, without) in plan.memory().items():
        lines.append(f"  {component:<42}{with_ckpt / GIB:>14.2f}{without / GIB:>10.2f}")
    lines.append(f"  {'total':<42}{plan.total(True) / GIB:>14.2f}{plan.total(False) / GIB:>10.2f}")
    used = plan.total(plan.gradient_checkpointing) / GIB
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"\ntarget GPU {plan.gpu_memory_gib:g} GiB (gpu_memory_gib): {verdict} with gradient_checkpointing "
                 f"{'on' if plan.gradient_checkpointing else 'off'}, batch {plan.batch} x accumulation "
                 f"{plan.accumulation} ({used:.1f} GiB estimated)")
    lines += [f"  {decision}" for decision in plan.decisions]
    return "\n".join(lines)


def as_json(plan: Plan) -> str:
    return json.dumps({"model": plan.name, "architecture": plan.architecture, "family": plan.family,
                       "lora_modules": plan.lora_modules, "total_params": plan.total_params,
                       "quantized_params": plan.quantized_params, "lora_params": plan.lora_params,
                       "parts": {part: {"choice": choice, "params": plan.parts.params[part],
                                        "trainable": plan.parts.trainable[part]}
                                 for part, choice in (item.rsplit(" ", 1) for item in plan.choices.split(", "))},
                       "memory_gib": {k: {"checkpointing": a / GIB, "without": b / GIB}
                                      for k, (a, b) in plan.memory().items()},
                       "total_gib": plan.total(plan.gradient_checkpointing) / GIB, "fits": plan.fits,
                       "gradient_checkpointing": plan.gradient_checkpointing,
                       "per_device_train_batch_size": plan.batch,
                       "gradient_accumulation_steps": plan.accumulation, "decisions": plan.decisions})
