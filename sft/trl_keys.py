"""TRL keys the toolkit does its own way: each is honoured here or refused in one line when the recipe loads, never
left to end in a traceback after the weights load (trl 1.16.0, transformers 5.23.0) or to be silently ignored."""

from __future__ import annotations

from trl import ModelConfig, SFTConfig

from sft.errors import UserError


def check_trl_keys(training: SFTConfig, model: ModelConfig, notices: list[str]) -> None:
    """Refuse what cannot work or would be ignored; note what the toolkit already does (`notices`)."""
    quantized = "load_in_8bit" if model.load_in_8bit else "load_in_4bit" if model.load_in_4bit else None
    if quantized and not model.use_peft:
        # transformers refuses it after loading: "You cannot perform fine-tuning on purely quantized models".
        raise UserError(f"use_peft false with {quantized}: quantized weights cannot be trained in full; keep LoRA "
                        f"(use_peft true) or train a full-precision base (drop {quantized})")
    if training.assistant_only_loss:
        # TRL's own path needs {% generation %} markers in the template; the toolkit's labels already are that.
        notices.append("assistant_only_loss: the toolkit supervises only the assistant replies (and their closing "
                       "token) for every family anyway; TRL's own template-marker path is not used")
        training.assistant_only_loss = False
    if training.completion_only_loss is False:
        raise UserError("completion_only_loss false: training on the whole conversation is not supported yet; "
                        "the toolkit supervises the assistant replies only (leave it unset)")
    if training.activation_offloading:
        # Issue #18 measured it ending in an AttributeError traceback after the weights load (trl 1.16.0).
        raise UserError("activation_offloading true: not supported by the toolkit; use gradient_checkpointing "
                        "(or gradient_checkpointing: auto) to save activation memory")
    if training.dataset_text_field != "text":
        raise UserError(f"dataset_text_field {training.dataset_text_field!r}: the toolkit reads rows by their shape "
                        "(instruction, prompt/completion, messages, conversations), not a text column; map your "
                        "columns with column_map instead")
