"""How a family's rows become labelled batches: the interface the rest of the toolkit calls, and the one place that
maps the family table's `labels` field to the class that implements it.

- `chat_template` (sft/labels/collator.py): the model's chat template renders the row; each reply's span is located
  in the rendering (sft/labels/reply_spans.py) and placed on the tokens of one processor call
  (sft/labels/token_labels.py).
- `prefix_suffix` (sft/labels/prefix_suffix.py): a model without a chat template (PaliGemma 2) takes prompt and answer
  through its processor's own prefix/suffix call; its token type ids say which tokens are the answer.
"""

from __future__ import annotations

from typing import Protocol

import torch

from sft.family.families import Family, find_family
from sft.labels.collator import CompletionOnlyCollator, Encoded
from sft.labels.prefix_suffix import PrefixSuffixCollator
from sft.labels.reply_spans import ReplySpans


class Labeller(Protocol):
    """What training (SFTTrainer's data_collator), `sft check`/`preview`, generation and predict call."""

    family: Family  # the table entry (its `closing` token stops generation; `reasoning_end` cuts the answer)
    tokenizer: object  # the text tokenizer (decoding, counting reference tokens)
    processing_class: object  # the processor (or the tokenizer of a text model) saved with the run
    date_string: str | None  # what the template got for `date_string` (part of the dataset cache key)
    completion_only_loss: bool  # TRL's key: False supervises the whole conversation but image placeholders (too)
    needs_chat_template: bool  # False: the processor's prefix/suffix call (no template renders the row)
    replies: ReplySpans  # the template's rendering of a row: spans, answers, reasoning (sft/labels/reply_spans.py)
    enable_thinking: bool | None  # the recipe's: rows without reasoning render with it (None: the template's default)
    supervise_empty_thinking: bool  # whether the empty thinking block before a reply without reasoning is learnt

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """A training batch: every processor tensor, plus `labels` (-100 wherever nothing is supervised)."""

    def encode(self, example: dict, images: list | None = None) -> Encoded:
        """One row unpadded: its token ids and labels (for measuring, previews and the length check)."""

    def load_images(self, example: dict) -> list:
        """The row's images, decoded."""

    def messages_of(self, example: dict, images: list) -> list[dict]:
        """The row's messages as parts with its images placed."""

    def generation_prompt(self, messages: list[dict], context: dict | None = None) -> str:
        """The text the model is asked to continue: what training saw before the last reply (`context`: the row's
        tools and chat_template_kwargs, sft/labels/template_inputs.py row_context)."""

    def generation_inputs(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Left-padded generation prompts of the rows, with their images."""

    def inserts_eos(self, messages: list[dict], context: dict | None = None) -> bool:
        """Whether EOS is inserted after each reply (a template that closes no turn)."""


STRATEGIES: dict[str, type] = {"chat_template": CompletionOnlyCollator, "prefix_suffix": PrefixSuffixCollator}


def make_collator(processing_class, family: Family | None = None, **kwargs) -> Labeller:
    """The labeller of this family (found from the processor's class when none is passed); `kwargs`: date_string,
    max_length, pad_to_multiple_of, completion_only_loss, enable_thinking, supervise_empty_thinking (the recipe's
    keys of those names)."""
    family = family or find_family(None, processing_class)
    return STRATEGIES[family.labels](processing_class, family=family, **kwargs)
