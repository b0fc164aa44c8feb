"""Where each reply lies in the rendered conversation: the template level of the label contract.

The model's own chat template renders the row; a reply's supervised span is found by rendering the turns before it
(with and without the generation prompt) and comparing with the whole rendering. Tokens are not looked at here
(sft/labels/token_labels.py turns these character spans into labels).
"""

from __future__ import annotations

import jinja2
from transformers import ProcessorMixin

from sft.data.messages import image_count, parts_of, stripped_replies, text_of
from sft.errors import UserError
from sft.family.families import Family


class ReplySpans:
    """Renders a row with the model's chat template and locates each assistant reply's supervised characters."""

    def __init__(self, processing_class, family: Family | None, date_string: str | None = None,
                 needs_chat_template: bool = True):
        self.processing_class = processing_class
        self.is_processor = isinstance(processing_class, ProcessorMixin)
        self.tokenizer = processing_class.tokenizer if self.is_processor else processing_class
        template = getattr(processing_class, "chat_template", None) or self.tokenizer.chat_template
        if needs_chat_template and not template:
            raise UserError("the model's tokenizer has no chat template; a chat model is needed to mask by turn")
        # What the template writes per image, counted to know which images lie before a position: the processor's
        # `image_token` unless the family table names another marker; a text tokenizer has none.
        self.image_token = (family.image_marker if family and family.image_marker else
                            getattr(processing_class, "image_token", None)) if self.is_processor else None
        # Only templates that read `date_string` get it (others would warn about an unused keyword).
        self.date_string = date_string if "date_string" in str(template or "") else None
        self.template_kwargs = {"date_string": self.date_string} if self.date_string else {}
        added = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        self.special_tokens = sorted(added | set(self.tokenizer.all_special_tokens), key=len, reverse=True)
        self.toolkit_tokens: set[str] = set()  # special tokens the toolkit writes into rows itself (grounding boxes)

    def template_messages(self, messages: list[dict]) -> list[dict]:
        """Messages in the form the chat template expects: typed parts for a processor, strings for a tokenizer."""
        if self.is_processor:
            return [{"role": m["role"], "content": [{"type": p["type"]} if p["type"] in ("image", "video") else p
                                                     for p in parts_of(m["content"])]} for m in messages]
        for kind in ("image", "video"):
            if image_count(messages, kind):
                raise UserError(f"the row has {kind}s but the model is a text model")
        return [{"role": m["role"], "content": text_of(m)} for m in messages]

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.processing_class.apply_chat_template(
                self.template_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                **self.template_kwargs,
            )
        except (jinja2.TemplateError, ValueError) as exc:  # Llama 3.2 Vision: "images are incompatible with system
            raise UserError(f"the chat template refuses this row: {exc}") from None  # messages"

    def refuse_special_text(self, messages: list[dict], allowed: set[str] | frozenset = frozenset()) -> None:
        """Data is text: a special token written in it (`<|eot_id|>`, `<image>`) would become a control token
        once tokenized (ending a turn early, or asking for an image that is not there), so such a row is refused.
        `allowed`: tokens the toolkit wrote into the row itself (checked before it wrote them)."""
        for number, message in enumerate(messages, start=1):
            text = text_of(message)
            found = next((t for t in self.special_tokens if t in text and t not in allowed), None)
            if found:
                raise UserError(f"message {number} ({message['role']}) contains {found!r}, a special token of this "
                                "tokenizer; as data it would act as a control token; remove or reword it")

    def supervised_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The full text and, per assistant turn, the character span [start, end) that is supervised.

        A turn's span starts where the rendering of the conversation before it plus the generation prompt stops
        agreeing with the full rendering (right after the generation prompt, or after the role header when the
        generation prompt adds a thinking block that the turn lacks), never inside the reply, and ends with the
        special token that closes the turn. A template that closes a turn with no special token (LLaVA-1.5) gets
        the tokenizer's EOS inserted right after the reply, supervised. Replies are rendered without their
        surrounding whitespace (`stripped_replies`), so the rule is the same whether the template trims or not."""
        messages = stripped_replies(messages)
        self.refuse_special_text(messages, self.toolkit_tokens)
        full = self.render(messages)
        located, insert_at = [], []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise UserError("the conversation opens with an assistant turn; it needs a user turn before it")
            floor = self._reply_floor(messages, i, full)
            reply = text_of(message)
            at = full.find(reply, floor)  # not before the divergence: a reply may repeat a word of the role header
            if at < 0:
                raise UserError(f"the chat template does not write assistant turn {i + 1} verbatim")
            start = min(floor, at)  # never inside the reply
            reply_end = at + len(reply)
            closing = self.closing_token(full[reply_end:])
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

    def _reply_floor(self, messages: list[dict], i: int, full: str) -> int:
        """Where turn i's span may start at the earliest: after the generation prompt when it is a prefix of the
        full rendering, else where that prompt stops agreeing with it (an empty thinking block the turn lacks)."""
        prompt = self.render(messages[:i], add_generation_prompt=True)
        if full.startswith(prompt):  # the usual case: the reply follows the generation prompt
            return len(prompt)
        before = self.render(messages[:i])
        if not full.startswith(before):
            raise UserError(f"the chat template renders the turns before turn {i + 1} differently once it "
                            "follows; cannot locate the reply by position")
        agree = next(k for k, (a, b) in enumerate(zip(prompt, full)) if a != b)
        return max(agree, len(before))

    def inserts_eos(self, messages: list[dict]) -> bool:
        """Whether this row's template writes no closing token, so that EOS is inserted after each reply."""
        text, _ = self.supervised_spans(messages)
        return len(text) != len(self.render(stripped_replies(messages)))

    def closing_token(self, after_reply: str) -> str | None:
        """The special token that closes a reply, when the template writes one (after optional whitespace)."""
        stripped = after_reply.lstrip()
        return next((t for t in self.special_tokens if stripped.startswith(t)), None)
