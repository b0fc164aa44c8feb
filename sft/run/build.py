"""Build, the third stage of `sft train`: the model loaded as decided (what trains, LoRA targets), then TRL's
SFTTrainer around it with the prepared rows and the toolkit's collator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers import EarlyStoppingCallback

from sft.family.image_budget import match_model_to_processor
from sft.family.parts import PARTS, parameter_counts, set_trainable
from sft.labels.packing import PackedBatches
from sft.model.loading import load_model
from sft.model.packed_model import ready_for_packing
from sft.model.targets import describe_targets, not_quantized
from sft.run.decide import RunSetup
from sft.run.guards import DivergenceGuard, SaveOnInterrupt
from sft.run.log import log
from sft.run.prepare import RunData
from sft.run.trainer import GenerationMetricsSFTTrainer

# TRL keys the toolkit does itself: SFTTrainer would act on them again (it refuses a custom collator with `packing` or
# `padding_free`, and would apply `chat_template_path`, already on the processor, a second time).
DONE_BY_THE_TOOLKIT = ("packing", "padding_free", "chat_template_path")


@dataclass
class Built:
    model: object
    trainer: GenerationMetricsSFTTrainer
    model_setup: dict  # what the manifest records of the model: family, parts, LoRA modules, parameter counts
    interrupt: SaveOnInterrupt
    divergence: DivergenceGuard


@contextmanager
def set_aside(args, keys: tuple[str, ...] = DONE_BY_THE_TOOLKIT) -> Iterator[None]:
    """`keys` unset on the training arguments while SFTTrainer is built, then restored, so the manifest's resolved
    recipe says what was asked (TRL reads them only when it is built)."""
    asked = {key: getattr(args, key) for key in keys}
    for key, value in asked.items():
        setattr(args, key, False if isinstance(value, bool) else None)
    try:
        yield
    finally:
        for key, value in asked.items():
            setattr(args, key, value)


def model_setup_of(setup: RunSetup, data: RunData, model) -> dict:
    """The manifest's `model_setup`: how the model was set up to train."""
    recipe, family, peft = setup.recipe, setup.processing.family, setup.peft_config
    quantized = recipe.model.load_in_8bit or recipe.model.load_in_4bit
    return {"family": family.name, "found_by": family.found_by, "packing": data.packing,
            "lora_modules": sorted(peft.target_modules) if peft else [],
            "parts": {part: recipe.parts.choice(part) for part in PARTS},
            "modules_to_save": list(peft.modules_to_save or []) if peft else [],
            "learning_rates": dict(recipe.parts.learning_rates),
            "not_quantized": not_quantized(family) if quantized else None, "params": parameter_counts(model, family)}


def build(setup: RunSetup, data: RunData, extra_callbacks: list | None = None) -> Built:
    """The model and its trainer."""
    recipe, family, peft_config = setup.recipe, setup.processing.family, setup.peft_config
    args, model_args = recipe.training, recipe.model
    model = load_model(model_args, args.gradient_checkpointing, args.trust_remote_code,
                       fp32_upcast=recipe.data.kbit_fp32_upcast, int8_threshold=recipe.data.llm_int8_threshold,
                       family=family)
    match_model_to_processor(model, setup.processing.processing_class)  # LLaVA-NeXT: the grids an image budget left
    if peft_config is None:
        set_trainable(model, family, recipe.parts)  # full fine-tuning of the `full` parts, the rest frozen
    model_setup = model_setup_of(setup, data, model)
    saved = peft_config.modules_to_save if peft_config else None
    log(f"trains: {recipe.parts.describe()}"
        + (f"; LoRA on {describe_targets(model_setup['lora_modules'])}" if model_setup["lora_modules"] else "")
        + (f"; saved whole: {', '.join(saved)}" if saved else ""))
    if isinstance(data.batches, PackedBatches) and (said := ready_for_packing(model, data.batches)):
        log(said)
    args.dataset_kwargs = {"skip_prepare_dataset": True}  # the collator builds ids and labels: TRL must not tokenize
    interrupt, divergence = SaveOnInterrupt(), DivergenceGuard()
    callbacks = [interrupt, divergence, *(extra_callbacks or [])]
    if data.eval_rows is not None and recipe.data.early_stopping_patience > 0 and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.data.early_stopping_patience))
    with set_aside(args):
        trainer = GenerationMetricsSFTTrainer(
            model=model, args=args, train_dataset=data.train_set, eval_dataset=data.eval_rows,
            data_collator=data.batches, processing_class=setup.processing.processing_class, peft_config=peft_config,
            callbacks=callbacks, generation_rows=list(data.eval_rows) if data.eval_metrics else None,
            eval_metrics=data.eval_metrics, predictions_dir=Path(args.output_dir) / "eval_predictions", family=family,
            parts=recipe.parts)
    model_setup["trainable_params"] = parameter_counts(trainer.model, family, trainable_only=True)
    log("trainable parameters: " + ", ".join(f"{part} {count:,}" for part, count in
                                            model_setup["trainable_params"].items()))
    return Built(model, trainer, model_setup, interrupt, divergence)
