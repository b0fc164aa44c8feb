"""The completion-only collator: the processor runs once on the full sequence, labels are set by position.

Why not TRL's `DataCollatorForVisionLanguageModeling` (TRL 1.16.0, transformers 5.23.0): it runs the processor on
prompt and completion separately, so Mllama's `cross_attention_mask` covers only the prompt (the first forward
fails with "size of tensor a (50) must match the size of tensor b (36)") and `MllamaProcessor` puts a
`<|begin_of_text|>` in front of the completion, which is then supervised. Here every processor tensor comes from one
call on the whole conversation, so it matches `input_ids` by construction.

The label contract (shared/DESIGN.md) lives in two places: sft/labels/reply_spans.py finds each reply's characters
in the template's rendering, sft/labels/token_labels.py places them on the tokens. This module batches rows and
builds generation inputs; sft/labels/labelling.py writes down the interface and chooses the class for a family.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import BatchEncoding

from sft.data.messages import with_images
from sft.data.rows import load_image
from sft.data.video import decode_clip, frame_budget
from sft.errors import UserError
from sft.family.boxes import CONVENTIONS, convention_named
from sft.family.families import Family, find_family
from sft.family.video_budget import video_refusal
from sft.labels.grounding import convention_tokens, fill_objects
from sft.labels.reply_spans import ReplySpans
from sft.labels.template_inputs import row_context
from sft.labels.token_labels import IGNORE_INDEX, TokenLabels
from sft.labels.video_batch import process_visuals, split_visuals

__all__ = ["IGNORE_INDEX", "CompletionOnlyCollator", "Encoded", "located"]


@dataclass
class Encoded:
    """One row after the processor: token ids, labels and the text they came from."""

    input_ids: list[int]
    labels: list[int]
    text: str
    # The processor made nothing but input_ids and attention_mask for this row (a text row of most families), so a
    # batch of such rows can be built from the stored ids and labels alone (`row_ids`, `row_labels`).
    tokens_only: bool = False
    dropped_reasoning: int = 0  # replies whose reasoning the template did not write (sft/labels/reply_spans.py)
    segments: list[tuple[int, int, str]] = field(default_factory=list)  # thinking, calls, tool results in `text`

    @property
    def prompt_tokens(self) -> int:
        """Tokens before the first supervised one."""
        return next((i for i, label in enumerate(self.labels) if label != IGNORE_INDEX), len(self.labels))

    @property
    def supervised_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@contextmanager
def located(example: dict):
    """Prefix a UserError raised for this row with its `file:line`."""
    try:
        yield
    except UserError as exc:
        where = example.get("where", "row")
        if str(exc).startswith(f"{where}: "):
            raise
        raise UserError(f"{where}: {exc}") from None


class CompletionOnlyCollator:
    """Builds training batches whose labels supervise the assistant replies and their end-of-turn tokens only (or,
    with `completion_only_loss` false, the whole conversation but padding and image placeholders)."""

    needs_chat_template = True  # labels are located in the template's rendering (not so in sft/labels/prefix_suffix.py)

    def __init__(self, processing_class, family: Family | None = None, date_string: str | None = None,
                 max_length: int | None = None, pad_to_multiple_of: int | None = None,
                 completion_only_loss: bool | None = None, enable_thinking: bool | None = None,
                 supervise_empty_thinking: bool = True):
        self.processing_class = processing_class
        # Commands find the family once from the checkpoint (sft.family.families.find_family) and pass it; a caller that
        # passes none (a test, a tool) gets the one the processor's class names.
        self.family = family or find_family(None, processing_class)
        # TRL's key: unset or true, the replies only; false, the whole conversation but its image placeholders.
        self.completion_only_loss = completion_only_loss is not False
        self.replies = ReplySpans(processing_class, self.family, date_string, self.needs_chat_template,
                                  enable_thinking, supervise_empty_thinking)
        self.is_processor, self.tokenizer = self.replies.is_processor, self.replies.tokenizer
        self.image_token, self.date_string = self.replies.image_token, self.replies.date_string
        self.enable_thinking, self.supervise_empty_thinking = enable_thinking, supervise_empty_thinking
        # What the template writes per video, counted as the image marker is (every video family's template writes
        # its processor's video_token: Qwen's <|video_pad|>, <video>, Gemma 4's <|video|>).
        self.video_token = getattr(processing_class, "video_token", None) if self.is_processor else None
        self.render, self.supervised_spans = self.replies.render, self.replies.supervised_spans
        if self.family.boxes in CONVENTIONS:  # its grounding markup is the toolkit's to write (sft/labels/grounding.py)
            self.replies.toolkit_tokens = convention_tokens(CONVENTIONS[self.family.boxes],
                                                            self.replies.special_tokens)
        self.tokens = TokenLabels(self.tokenizer, self.image_token, self._process, self._placeholder_ids(),
                                  self.video_token)
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def _process(self, texts: list[str], images: list[list] | None, padding_side: str = "right"):
        kwargs = dict(add_special_tokens=False, padding=True, padding_side=padding_side, return_tensors="pt",
                      pad_to_multiple_of=self.pad_to_multiple_of)
        if self.is_processor:  # `images`: each row's images and video clips (sft/labels/video_batch.py)
            return process_visuals(self.processing_class, self.family, texts, images, **kwargs)
        # Padded lists made tensors here: transformers 5.23's BatchEncoding flattens the whole batch in Python to
        # test it for emptiness before torch.tensor (a quarter of this collator's time on text rows, measured).
        encoded = self.tokenizer(texts, **{**kwargs, "return_tensors": None})
        return BatchEncoding({key: torch.tensor(value) for key, value in encoded.items()})

    def _placeholder_ids(self) -> frozenset:
        """The image marker's tokens and the processor's image/video token ids: never supervised (the rest of an
        image's expansion is found by position, sft.labels.token_labels.TokenLabels.conversation_labels)."""
        marker = [token for text in (self.image_token, self.video_token) if text
                  for token in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        own = [token for name in ("image_token_ids", "video_token_ids")
               for token in getattr(self.processing_class, name, None) or ()]
        return frozenset(token for token in [*marker, *own] if token is not None)

    def labels_for(self, text: str, spans: list[tuple[int, int]], ids: list[int], images: list,
                   tail_ids: list[list[int]] | None = None) -> list[int]:
        """The row's labels: its replies' spans, or with `completion_only_loss` false the whole conversation."""
        if self.completion_only_loss:
            return self.tokens.labels_for(text, spans, ids, images, tail_ids)
        return self.tokens.conversation_labels(text, ids, images)

    def load_images(self, example: dict) -> list:
        """The row's images decoded as RGB, from its `stored_images` entries (a path, or `{bytes, path}` as the Arrow
        dataset stores them undecoded), then its video clips, from its `stored_videos` paths, sampled by the frame
        budget (sft/data/video.py); this is the only place a training image or frame is decoded."""
        where = example.get("where", "row")
        images = [load_image(image, where) for image in example.get("stored_images") or []]
        paths = example.get("stored_videos") or []
        refusal = video_refusal(self.processing_class, self.family) if paths else None
        if refusal:
            raise UserError(f"{where}: {refusal}")
        fps, max_frames = frame_budget(self.processing_class)
        return images + [decode_clip(path, where, fps, max_frames, self.family.video_fixed_frames) for path in paths]

    def messages_of(self, example: dict, images: list) -> list[dict]:
        """The row's messages as parts, its images and video clips placed (sft/data/messages.py), a grounding row's
        objects written in the family's convention (sft/labels/grounding.py)."""
        pictures, clips = split_visuals(images)
        messages = with_images(with_images(example["messages"], len(clips), "video"), len(pictures))
        if not example.get("objects"):
            return messages
        self.replies.refuse_special_text(messages)  # the row as written, before the convention's own tokens
        convention = convention_named(self.family.boxes, self.family.name)
        return fill_objects(messages, example["objects"], images, convention, self.processing_class)

    def encode(self, example: dict, images: list | None = None) -> Encoded:
        """One row, unpadded and untruncated (for counting, previews and the length check)."""
        images = self.load_images(example) if images is None else images
        with located(example):
            rendering = self.replies.rendering(self.messages_of(example, images), row_context(example))
            text = rendering.full
            processed = self._process([text], [images] if images else None)
            # Without the padding that pad_to_multiple_of adds even to one row (it would shift every tail).
            ids = processed["input_ids"][0][processed["attention_mask"][0].bool()].tolist()
            tokens_only = not images and set(processed) <= {"input_ids", "attention_mask"}
            return Encoded(ids, self.labels_for(text, rendering.spans, ids, images), text, tokens_only,
                           rendering.dropped_reasoning, rendering.segments)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if all(example.get("row_ids") for example in examples):
            return self.from_row_ids(examples)
        images = [self.load_images(example) for example in examples]
        rendered = []
        for example, imgs in zip(examples, images):
            with located(example):
                rendered.append(self.supervised_spans(self.messages_of(example, imgs), row_context(example)))
        batch = self._process([text for text, _ in rendered], images if any(images) else None)
        # Every row's tails in one tokenizer call (a call per row costs more than the tokenizing itself).
        tails = [self.tokens.tails(text, [c for span in spans for c in span], imgs)
                 if self.completion_only_loss else [] for (text, spans), imgs in zip(rendered, images)]
        flat = [tail for row_tails in tails for tail in row_tails]
        flat_ids = iter(self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
        tail_ids = [[next(flat_ids) for _ in row_tails] for row_tails in tails]
        all_ids, lengths = batch["input_ids"].tolist(), batch["attention_mask"].sum(dim=1).tolist()
        labels = []
        for row, ((text, spans), imgs, example) in enumerate(zip(rendered, images, examples)):
            length = lengths[row]  # right padding: the row is its first `length` tokens
            self.check_length(example, length)
            with located(example):
                row_labels = self.labels_for(text, spans, all_ids[row][:length], imgs, tail_ids[row])
            labels.append(row_labels + [IGNORE_INDEX] * (len(all_ids[row]) - length))  # padding is never learnt
        batch["labels"] = torch.tensor(labels, dtype=batch["input_ids"].dtype)
        return batch

    def from_row_ids(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """The batch of rows whose ids and labels were placed once when they were measured (sft.labels.fit.measure):
        right-padded as the processor pads, padding never learnt. What TRL's pre-tokenized path costs, no render."""
        longest = max(len(example["row_ids"]) for example in examples)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad = self.tokenizer.pad_token_id
        ids, mask, labels = [], [], []
        for example in examples:
            length = len(example["row_ids"])
            self.check_length(example, length)
            ids.append(example["row_ids"] + [pad] * (longest - length))
            mask.append([1] * length + [0] * (longest - length))
            labels.append(example["row_labels"] + [IGNORE_INDEX] * (longest - length))
        return BatchEncoding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                              "labels": torch.tensor(labels)})

    def check_length(self, example: dict, length: int) -> None:
        if self.max_length is not None and length > self.max_length:
            with located(example):
                raise UserError(f"{length} tokens exceed max_length {self.max_length}; rows must pass "
                                "sft.labels.fit.fit_to_length first")

    def inserts_eos(self, messages: list[dict], context: dict | None = None) -> bool:
        """Whether this row's template writes no closing token, so that EOS is inserted after each reply."""
        return self.replies.inserts_eos(messages, context)

    def generation_prompt(self, messages: list[dict], context: dict | None = None) -> str:
        """The text the model answers, exactly as training saw it before the last reply: the row's rendering (with
        any EOS the collator inserts) up to where that reply's supervised span starts. It is the template's
        generation prompt wherever that is a prefix of the rendering; it leaves out the empty thought block Gemma 4's
        generation prompt adds (training rows have none), keeps the EOS inserted after LLaVA-1.5's earlier replies,
        and ends where a token merged across the boundary starts. A row without a final reply gets a placeholder one
        to locate the span. A row whose reply has reasoning is asked in thinking mode, as it was trained."""
        if messages[-1]["role"] != "assistant":
            messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": "PLACEHOLDER_REPLY"}]}]
        text, spans = self.supervised_spans(messages, context)
        return text[:self.tokens.token_start(text, spans[-1][0])]

    def generation_inputs(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Left-padded prompts (`generation_prompt`: every turn before the last reply, as training saw them)."""
        images = [self.load_images(example) for example in examples]
        texts = []
        for example, imgs in zip(examples, images):
            with located(example):
                texts.append(self.generation_prompt(self.messages_of(example, imgs), row_context(example)))
        return self._process(texts, images if any(images) else None, padding_side="left")
