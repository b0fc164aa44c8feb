"""The processor, the family and the labeller of a recipe, opened one way for every command that reads rows (train,
check, preview, the dry run): the collator always gets the recipe's max_length, pad_to_multiple_of and
completion_only_loss, so what `sft check` measures is what training batches."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sft.config.recipe import Recipe
from sft.family.families import Family
from sft.labels.labelling import Labeller, make_collator
from sft.model.loading import load_processor_and_family


@dataclass(frozen=True)
class Processing:
    processing_class: object  # the processor of a vision model, the tokenizer of a text model
    family: Family
    collator: Labeller


def open_processing(recipe: Recipe) -> Processing:
    """The recipe's processor (its chat template and image/video budgets set) and family, and their labeller."""
    data, args = recipe.data, recipe.training
    processing_class, family = load_processor_and_family(recipe.model, args.trust_remote_code, data.family,
                                                         args.chat_template_path, data.image_budget, data.video_budget)
    if data.box_convention:  # the recipe's choice of how grounding boxes are written (sft/family/boxes.py)
        family = replace(family, boxes=data.box_convention)
    collator = make_collator(processing_class, family, date_string=data.date_string, max_length=args.max_length,
                             pad_to_multiple_of=args.pad_to_multiple_of, completion_only_loss=args.completion_only_loss,
                             enable_thinking=data.enable_thinking,
                             supervise_empty_thinking=data.supervise_empty_thinking)
    return Processing(processing_class, family, collator)
