"""Decide, the first stage of `sft train`: every choice of the run settled before any row is read or weight loaded.

The plan's `auto` choices, fused kernels where they run, the seed, the processor with its family and labeller, what
trains and its LoRA targets (chosen on the meta device), packing, and the output folder's state: checked here,
nothing in it removed until training is about to start (sft/run/fit.py). Everything after reads `RunSetup`.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig
from transformers import set_seed

from sft.config.recipe import Recipe
from sft.family.parts import refuse_untold
from sft.labels.packing import packing_mode, refuse_unpackable
from sft.model.loading import liger_unavailable, load_config, meta_model
from sft.model.processing import Processing, open_processing
from sft.model.targets import lora_config
from sft.plan.estimate import apply_auto
from sft.run.checkpoints import resume_point
from sft.run.guards import check_output_dir
from sft.run.log import log


@dataclass
class RunSetup:
    recipe: Recipe
    processing: Processing  # processor, family, labeller: opened once, here
    peft_config: LoraConfig | None  # None: no part trains with LoRA (plain fine-tuning of the `full` parts)
    packing: str | None  # "packing", "padding_free" or None (sft/labels/packing.py packing_mode)
    resume: str | None  # the complete checkpoint to resume from, or None
    replaces: list[str]  # the old run's checkpoints that overwrite_output_dir removes when training starts


def resume_choice(value) -> bool | str | None:
    """`resume_from_checkpoint` as Trainer takes it: the string "true" from the command line means the last one."""
    return True if str(value).lower() == "true" else value


def decide(recipe: Recipe) -> RunSetup:
    """Every choice of the run, refused in one line where it cannot hold, before any data or weights."""
    args, model_args = recipe.training, recipe.model
    for notice in recipe.notices:
        log(f"notice: {notice}")
    plan = apply_auto(recipe)  # `auto` checkpointing and micro-batch
    for decision in plan.decisions if plan else ():
        log(f"plan: {decision}")
    if args.use_liger_kernel and (reason := liger_unavailable(load_config(model_args,
                                                                          args.trust_remote_code).model_type)):
        log(f"notice: {reason}")
        args.use_liger_kernel = False
    set_seed(args.seed)
    processing = open_processing(recipe)  # the family is found here once and passed on
    family = processing.family
    log(f"family: {family.name}, found by {family.found_by}")
    refuse_untold(family, recipe.parts)  # a part the table cannot tell apart stays frozen
    refuse_unpackable(family, args)  # packing / padding_free: refused here if not exact for the family
    resume, skipped = resume_point(args.output_dir, resume_choice(args.resume_from_checkpoint))
    for name in skipped:
        log(f"resume: skipping {name}: half-written (its save was cut off; no whole trainer_state.json)")
    replaces = check_output_dir(args.output_dir, resuming=bool(resume), overwrite=recipe.data.overwrite_output_dir)
    # What trains is chosen on the architecture (meta device), so a bad choice costs no weight load.
    peft_config = lora_config(model_args, meta_model(model_args, args.trust_remote_code), family, recipe.parts)
    return RunSetup(recipe, processing, peft_config, packing_mode(args), resume, replaces)
