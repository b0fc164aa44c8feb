"""The completion-only collator: the processor runs once on the full sequence, labels are set by position.

Why not TRL's `DataCollatorForVisionLanguageModeling` (TRL 1.16.0, transformers 5.23.0): it runs the processor on
prompt and completion separately, so Mllama's `cross_attention_mask` covers only the prompt (the first forward
fails with "size of tensor a (50) must match the size of tensor b (36)") and `MllamaProcessor` puts a
`<|begin_of_text|>` in front of the completion, which is then supervised. Here every processor tensor comes from one
call on the whole conversation, so it matches `input_ids` by construction.

The label contract (shared/DESIGN.md): supervised = for each assistant turn, the text the template writes after
the generation prompt, up to and including the special token that closes the turn; nothing else.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import jinja2
import torch
from transformers import BatchEncoding, ProcessorMixin

from sft.errors import UserError
from sft.families import family_for_processor
from sft.messages import image_count, parts_of, text_of, with_images
from sft.rows import load_image

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One row after the processor: token ids, labels and the character spans they came from."""

    input_ids: list[int]
    labels: list[int]
    text: str

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


def make_collator(processing_class, **kwargs) -> CompletionOnlyCollator:
    """The collator for this tokenizer or processor: by chat template, or through the processor's prefix/suffix call
    for a family that the table marks so (PaliGemma 2)."""
    family = family_for_processor(processing_class) if isinstance(processing_class, ProcessorMixin) else None
    if family is not None and family.prefix_suffix:
        from sft.prefix_suffix import PrefixSuffixCollator  # a subclass of the one below, in its own module

        return PrefixSuffixCollator(processing_class, **kwargs)
    return CompletionOnlyCollator(processing_class, **kwargs)


class CompletionOnlyCollator:
    """Builds training batches whose labels supervise the assistant replies and their end-of-turn tokens only."""

    needs_chat_template = True  # labels are located in the template's rendering (not so in sft/prefix_suffix.py)

    def __init__(self, processing_class, date_string: str | None = None, max_length: int | None = None,
                 pad_to_multiple_of: int | None = None):
        self.processing_class = processing_class
        self.is_processor = isinstance(processing_class, ProcessorMixin)
        self.tokenizer = processing_class.tokenizer if self.is_processor else processing_class
        # The family table's entry for this processor (None for a text tokenizer or an unlisted family).
        self.family = family = family_for_processor(processing_class) if self.is_processor else None
        template = getattr(processing_class, "chat_template", None) or self.tokenizer.chat_template
        if self.needs_chat_template and not template:
            raise UserError("the model's tokenizer has no chat template; a chat model is needed to mask by turn")
        # What the template writes per image, counted to know which images lie before a position: the processor's
        # `image_token` unless the family table names another marker; a text tokenizer has none.
        self.image_token = (family.image_marker if family and family.image_marker else
                            getattr(processing_class, "image_token", None)) if self.is_processor else None
        # Only templates that read `date_string` get it (others would warn about an unused keyword).
        self.date_string = date_string if "date_string" in str(template or "") else None
        self.template_kwargs = {"date_string": self.date_string} if self.date_string else {}
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        added = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        self.special_tokens = sorted(added | set(self.tokenizer.all_special_tokens), key=len, reverse=True)

    # ---- rendering -------------------------------------------------------------------------------------------
    def template_messages(self, messages: list[dict]) -> list[dict]:
        """Messages in the form the chat template expects: typed parts for a processor, strings for a tokenizer."""
        if self.is_processor:
            return [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else p
                                                     for p in parts_of(m["content"])]} for m in messages]
        if image_count(messages):
            raise UserError("the row has images but the model is a text model")
        return [{"role": m["role"], "content": text_of(m)} for m in messages]

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.processing_class.apply_chat_template(
                self.template_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                **self.template_kwargs,
            )
        except (jinja2.TemplateError, ValueError) as exc:  # Llama 3.2 Vision: "images are incompatible with system
            raise UserError(f"the chat template refuses this row: {exc}") from None  # messages"

    def refuse_special_text(self, messages: list[dict]) -> None:
        """Data is text: a special token written in it (`<|eot_id|>`, `<image>`) would become a control token
        once tokenized (ending a turn early, or asking for an image that is not there), so such a row is refused."""
        for number, message in enumerate(messages, start=1):
            text = text_of(message)
            found = next((t for t in self.special_tokens if t in text), None)
            if found:
                raise UserError(f"message {number} ({message['role']}) contains {found!r}, a special token of this "
                                "tokenizer; as data it would act as a control token; remove or reword it")

    def supervised_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The full text and, per assistant turn, the character span [start, end) that is supervised.

        A turn's span starts where the rendering of the conversation before it plus the generation prompt stops
        agreeing with the full rendering (right after the generation prompt, or after the role header when the
        generation prompt adds a thinking block that the turn lacks), never inside the reply, and ends with the
        special token that closes the turn. A template that closes a turn with no special token (LLaVA-1.5) gets
        the tokenizer's EOS inserted right after the reply, supervised."""
        self.refuse_special_text(messages)
        full = self.render(messages)
        located, insert_at = [], []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise UserError("the conversation opens with an assistant turn; it needs a user turn before it")
            prompt = self.render(messages[:i], add_generation_prompt=True)
            if full.startswith(prompt):  # the usual case: the reply follows the generation prompt
                floor = len(prompt)
            else:  # the generation prompt adds what the turn lacks (an empty thinking block): from the divergence
                before = self.render(messages[:i])
                if not full.startswith(before):
                    raise UserError(f"the chat template renders the turns before turn {i + 1} differently once it "
                                    "follows; cannot locate the reply by position")
                agree = next(k for k, (a, b) in enumerate(zip(prompt, full)) if a != b)
                floor = max(agree, len(before))
            reply = text_of(message).strip()
            at = full.find(reply, floor)  # not before the divergence: a reply may repeat a word of the role header
            if at < 0:
                raise UserError(f"the chat template does not write assistant turn {i + 1} verbatim")
            start = min(floor, at)  # never inside the reply
            reply_end = at + len(reply)
            closing = self._closing_token(full[reply_end:])
            if closing is None:
                eos = self.tokenizer.eos_token
                if not eos:
                    raise UserError("the chat template closes the assistant turn with no special token and the "
                                    "tokenizer has no EOS; the model could never learn to stop")
                insert_at.append(reply_end)
                located.append((start, reply_end, eos))
            else:
                # The turn ends with the closing token itself: a newline the template writes after it is not learnt.
                located.append((start, full.index(closing, reply_end) + len(closing), ""))
        spans, shift = [], 0
        for start, end, inserted in located:
            spans.append((start + shift, end + shift + len(inserted)))
            shift += len(inserted)
        for position in reversed(insert_at):
            full = full[:position] + self.tokenizer.eos_token + full[position:]
        return full, spans

    def _splits_at(self, text: str, char: int) -> bool:
        """Whether the tokenizer puts a token boundary at `char` (checked on the text around it)."""
        low, high = max(0, char - 32), char + 32
        pieces = [text[low:high], text[low:char], text[char:high]]
        whole, left, right = self.tokenizer(pieces, add_special_tokens=False)["input_ids"]
        return left + right == whole

    def _token_start(self, text: str, char: int) -> int:
        """`char`, or, when the tokenizer joins the whitespace before it with what follows into one token (Qwen's
        `\n\n` across `<think>\n` | `\n</think>`), where that token starts: labels can only start at a token
        boundary. Asked only where a span start is not one (labels) and for the generation prompt."""
        if char == 0 or not text[char - 1].isspace():
            return char  # no whitespace to move over (a merge there is refused when the labels are set)
        start = char
        while start > max(0, char - 32) and not self._splits_at(text, start):
            if not text[start - 1].isspace():
                return char
            start -= 1
        return start

    def generation_prompt(self, messages: list[dict]) -> str:
        """The text the model answers, exactly as training saw it before the last reply: the row's rendering (with
        any EOS the collator inserts) up to where that reply's supervised span starts. It is the template's
        generation prompt wherever that is a prefix of the rendering; it leaves out the empty thought block Gemma 4's
        generation prompt adds (training rows have none), keeps the EOS inserted after LLaVA-1.5's earlier replies,
        and ends where a token merged across the boundary starts. A row without a final reply gets a placeholder one
        to locate the span."""
        if messages[-1]["role"] != "assistant":
            messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": "PLACEHOLDER_REPLY"}]}]
        text, spans = self.supervised_spans(messages)
        return text[:self._token_start(text, spans[-1][0])]

    def inserts_eos(self, messages: list[dict]) -> bool:
        """Whether this row's template writes no closing token, so that EOS is inserted after each reply."""
        text, _ = self.supervised_spans(messages)
        return len(text) != len(self.render(messages))

    def _closing_token(self, after_reply: str) -> str | None:
        stripped = after_reply.lstrip()
        return next((t for t in self.special_tokens if stripped.startswith(t)), None)

    # ---- tokens ----------------------------------------------------------------------------------------------
    def _process(self, texts: list[str], images: list[list] | None, padding_side: str = "right"):
        kwargs = dict(add_special_tokens=False, padding=True, padding_side=padding_side, return_tensors="pt",
                      pad_to_multiple_of=self.pad_to_multiple_of)
        if self.is_processor:
            return self.processing_class(text=texts, images=images, **kwargs)
        # Padded lists made tensors here: transformers 5.23's BatchEncoding flattens the whole batch in Python to
        # test it for emptiness before torch.tensor (a quarter of this collator's time on text rows, measured).
        encoded = self.tokenizer(texts, **{**kwargs, "return_tensors": None})
        return BatchEncoding({key: torch.tensor(value) for key, value in encoded.items()})

    def _tails(self, text: str, chars: list[int], n_images: int) -> list[str]:
        """Text after each boundary that has no image after it (those are counted from the end of the row)."""
        return [text[c:] for c in chars if not self.image_token or text[:c].count(self.image_token) == n_images]

    def _token_indices(self, text: str, chars: list[int], ids: list[int], images: list,
                       tail_ids: list[list[int]] | None = None) -> list[int | None]:
        """Index in `ids` (the full row's tokens) of the token that starts at each character of `chars`; None where
        no token starts there (the tokenizer merged across it)."""
        if tail_ids is None:
            tails = self._tails(text, chars, len(images))
            tail_ids = self.tokenizer(tails, add_special_tokens=False)["input_ids"] if tails else []
        tail_ids = iter(tail_ids)
        indices = []
        for char in chars:
            images_before = text[:char].count(self.image_token) if self.image_token else 0
            if images_before == len(images):
                tail = next(tail_ids)
                index, same = len(ids) - len(tail), ids[len(ids) - len(tail):] == tail
            else:  # an image follows: run the processor on the head, with the images it holds
                head = self._process([text[:char]], [images[:images_before]] if images_before else None)
                head_ids = head["input_ids"][0].tolist()
                index, same = len(head_ids), ids[: len(head_ids)] == head_ids
            if not same and 0 < images_before < len(images) and self._splits_at(text, char):
                raise UserError("the processor expands the images before a later one differently from the whole row "
                                "(LLaVA-OneVision tiles a lone image, not one of several); cannot mask by position; "
                                "put the row's images in its first user turn")
            indices.append(index if same else None)
        return indices

    def labels_for(self, text: str, spans: list[tuple[int, int]], ids: list[int], images: list,
                   tail_ids: list[list[int]] | None = None) -> list[int]:
        labels = [IGNORE_INDEX] * len(ids)
        chars = [c for span in spans for c in span]
        bounds = self._token_indices(text, chars, ids, images, tail_ids)
        for k, char in enumerate(chars):
            if bounds[k] is None and k % 2 == 0:  # a span start inside a token: from that token, if whitespace
                moved = self._token_start(text, char)
                bounds[k] = self._token_indices(text, [moved], ids, images)[0] if moved != char else None
            if bounds[k] is None:
                raise UserError(f"the tokenizer merges tokens across a turn boundary at "
                                f"{text[max(0, char - 20):char]!r}; cannot mask by position")
        for first, last in zip(bounds[::2], bounds[1::2]):
            labels[first:last] = ids[first:last]  # the reply and its closing token; all else stays -100
        return labels

    # ---- public ----------------------------------------------------------------------------------------------
    def load_images(self, example: dict) -> list:
        """The row's images decoded as RGB, from its `stored_images` entries (a path, or `{bytes, path}` as the Arrow
        dataset stores them undecoded); this is the only place a training image is decoded."""
        return [load_image(image, example.get("where", "row")) for image in example.get("stored_images") or []]

    def messages_of(self, example: dict, images: list) -> list[dict]:
        """The row's messages as parts, its images placed (sft/messages.py)."""
        return with_images(example["messages"], len(images))

    def encode(self, example: dict, images: list | None = None) -> Encoded:
        """One row, unpadded and untruncated (for counting, previews and the length check)."""
        images = self.load_images(example) if images is None else images
        with located(example):
            text, spans = self.supervised_spans(self.messages_of(example, images))
            ids = self._process([text], [images] if images else None)["input_ids"][0].tolist()
            return Encoded(ids, self.labels_for(text, spans, ids, images), text)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [self.load_images(example) for example in examples]
        rendered = []
        for example, imgs in zip(examples, images):
            with located(example):
                rendered.append(self.supervised_spans(self.messages_of(example, imgs)))
        texts = [text for text, _ in rendered]
        batch = self._process(texts, images if any(images) else None)
        # Every row's tails in one tokenizer call (a call per row costs more than the tokenizing itself).
        tails = [self._tails(text, [c for span in spans for c in span], len(imgs))
                 for (text, spans), imgs in zip(rendered, images)]
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

    def check_length(self, example: dict, length: int) -> None:
        if self.max_length is not None and length > self.max_length:
            with located(example):
                raise UserError(f"{length} tokens exceed max_length {self.max_length}; rows must pass "
                                "sft.dataset.fit_to_length first")

    def generation_inputs(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Left-padded prompts (`generation_prompt`: every turn before the last reply, as training saw them)."""
        images = [self.load_images(example) for example in examples]
        texts = []
        for example, imgs in zip(examples, images):
            with located(example):
                texts.append(self.generation_prompt(self.messages_of(example, imgs)))
        return self._process(texts, images if any(images) else None, padding_side="left")
