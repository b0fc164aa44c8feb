"""Rows for a model with no chat template that trains on its processor's prefix/suffix call (PaliGemma 2).

PaliGemmaProcessor(text=prompt, images=..., suffix=answer) writes `<image>` × 256 (or 1024) + `<bos>` + prompt +
"\\n" as the prefix and answer + `<eos>` as the suffix, tokenized apart (so no merge crosses the boundary), with
`token_type_ids` 0 on the prefix (the model attends to it bidirectionally) and 1 on the suffix (causal). The label
contract for such a family: supervised = the suffix, that is the answer and its EOS; nothing of the prefix. The
processor also returns `labels`; they are rebuilt here from `token_type_ids` and the attention mask so that padding
is never learnt whatever the tokenizer pads its type ids with, and dropped for generation (`generate` would pass them
to every forward).

Such a model takes one prompt, one answer and at least one image per row: other shapes are refused in one line, as
is `completion_only_loss: false` (whole-conversation labels would ask it to predict prefix tokens it already sees).
"""

from __future__ import annotations

import torch

from sft.data.messages import image_count, text_of
from sft.errors import UserError
from sft.labels.collator import IGNORE_INDEX, CompletionOnlyCollator, Encoded, located


class PrefixSuffixCollator(CompletionOnlyCollator):
    """Batches of one prompt + image(s) → one answer, through the processor's own prefix/suffix path."""

    needs_chat_template = False

    def __init__(self, processing_class, family=None, **kwargs):
        super().__init__(processing_class, family, **kwargs)
        if not self.completion_only_loss:  # refused rather than honoured: a prefix token could only be copied
            raise UserError(f"completion_only_loss false: {self.family.name} attends to its prompt in both "
                            "directions (token type 0), so each prompt token is visible where it would be "
                            "predicted; it trains on the answer only (leave completion_only_loss unset)")

    def prefix_and_suffix(self, messages: list[dict]) -> tuple[str, str | None]:
        """The processor's `text` (image markers + prompt) and `suffix` (the answer; None when the row has none)."""
        self.replies.refuse_special_text(messages, self.replies.toolkit_tokens)
        name = self.family.name
        roles = [m["role"] for m in messages]
        if "system" in roles:
            raise UserError(f"{name} has no chat template and takes no system message; put its text into the prompt")
        if roles not in (["user"], ["user", "assistant"]):
            raise UserError(f"{name} has no chat template and takes one prompt and one answer per row (its "
                            f"processor's prefix/suffix); this row has {roles.count('user')} user and "
                            f"{roles.count('assistant')} assistant turn(s)")
        if any(m.get("reasoning") or m.get("tool_calls") for m in messages):
            raise UserError(f"{name} has no chat template to write reasoning or tool calls; this row has them")
        if image_count(messages) == 0:
            raise UserError(f"{name}'s processor needs an image in every row; this row has none")
        if image_count(messages[1:]):
            raise UserError(f"{name} takes its images with the prompt; this row puts one in the answer")
        prompt = self.image_token * image_count(messages) + text_of(messages[0])
        return prompt, text_of(messages[1]).strip() if len(messages) == 2 else None  # as stripped_replies

    def _process(self, texts: list[str], images: list[list] | None, padding_side: str = "right",
                 suffixes: list[str] | None = None):
        """The processor's own call: prompts (and answers, when given, as its `suffix`); its `labels` dropped."""
        kwargs = dict(add_special_tokens=False, padding=True, padding_side=padding_side, return_tensors="pt",
                      pad_to_multiple_of=self.pad_to_multiple_of)
        batch = self.processing_class(text=texts, images=images, suffix=suffixes, **kwargs)
        batch.pop("labels", None)
        return batch

    @staticmethod
    def suffix_labels(batch) -> torch.Tensor:
        """input_ids where the suffix is (token type 1, not padding); -100 elsewhere."""
        supervised = (batch["token_type_ids"] == 1) & (batch["attention_mask"] == 1)
        return torch.where(supervised, batch["input_ids"], torch.full_like(batch["input_ids"], IGNORE_INDEX))

    def _training_batch(self, examples: list[dict], images: list[list]):
        """Processor output for rows that each have an answer."""
        prompts, suffixes = [], []
        for example, imgs in zip(examples, images):
            with located(example):
                prompt, suffix = self.prefix_and_suffix(self.messages_of(example, imgs))
                if suffix is None:
                    raise UserError("the row has no answer to train on")
            prompts.append(prompt)
            suffixes.append(suffix)
        return self._process(prompts, images, suffixes=suffixes)

    # ---- the collator's interface (sft/labels/labelling.py's Labeller) -----------------------------------------
    def inserts_eos(self, messages: list[dict], context: dict | None = None) -> bool:
        return False  # the processor itself appends EOS to the answer

    def generation_prompt(self, messages: list[dict], context: dict | None = None) -> str:
        return self.prefix_and_suffix(messages)[0]  # the processor adds <bos> and "\n" to it

    def encode(self, example: dict, images: list | None = None) -> Encoded:
        images = self.load_images(example) if images is None else images
        batch = self._training_batch([example], [images])
        ids = batch["input_ids"][0].tolist()
        return Encoded(ids, self.suffix_labels(batch)[0].tolist(), self.tokenizer.decode(ids))

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [self.load_images(example) for example in examples]
        batch = self._training_batch(examples, images)
        for example, length in zip(examples, batch["attention_mask"].sum(dim=1).tolist()):
            self.check_length(example, length)
        batch["labels"] = self.suffix_labels(batch)
        return batch
