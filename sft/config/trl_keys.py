"""TRL keys the toolkit does its own way: each is honoured here or refused in one line when the recipe loads, never
left to end in a traceback after the weights load (trl 1.16.0, transformers 5.23.0) or to be silently ignored."""

from __future__ import annotations

from trl import ModelConfig, SFTConfig

from sft.config.trl_surface import refuse_unhonoured
from sft.errors import UserError


def check_trl_keys(training: SFTConfig, model: ModelConfig, notices: list[str]) -> None:
    """Refuse what cannot work or would be ignored; note what the toolkit already does (`notices`)."""
    # use_peft false (full fine-tuning) on an 8-bit or 4-bit base: refused with the other choices of what trains
    # (sft.family.parts.choose_parts), right after these keys.
    if training.assistant_only_loss and training.completion_only_loss is False:
        raise UserError("completion_only_loss false with assistant_only_loss true: one supervises the whole "
                        "conversation, the other the assistant replies only; drop one of them")
    if training.assistant_only_loss:
        # TRL's own path needs {% generation %} markers in the template; the toolkit's labels already are that.
        notices.append("assistant_only_loss: the toolkit supervises only the assistant replies (and their closing "
                       "token) for every family anyway; TRL's own template-marker path is not used")
        training.assistant_only_loss = False
    # completion_only_loss false is honoured by the labeller (sft/labels/token_labels.py: the whole conversation but its
    # image placeholders), unset or true is the label contract's default.
    # Every other SFTConfig/ModelConfig field: passed through, done by the toolkit, or refused
    # (sft/config/trl_surface.py).
    refuse_unhonoured(training, model)
