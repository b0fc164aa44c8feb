"""Where each reply lies in the rendered conversation: the template level of the label contract.

The model's own chat template renders the row; a reply's supervised span is found by rendering the turns before it
(with and without the generation prompt) and comparing with the whole rendering. Tokens are not looked at here
(sft/labels/token_labels.py turns these character spans into labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2
from transformers import ProcessorMixin

from sft.data.messages import image_count, parts_of, stripped_replies, text_of
from sft.errors import UserError
from sft.family.families import Family
from sft.labels.template_inputs import split_inline_thinking, template_keywords, template_message
from sft.labels.turn_pieces import locate_turn


@dataclass(frozen=True)
class Rendering:
    """A row rendered by its template: the text, each reply's supervised span and answer span, and how many
    replies' reasoning the template dropped."""

    full: str
    spans: list[tuple[int, int]]
    answers: list[tuple[int, int]]
    dropped_reasoning: int
    # (start, end, kind) of what pages colour apart: "reasoning" (a thinking block), "call" (a turn's tool calls),
    # "tool_result" (a tool message's text: context)
    segments: list[tuple[int, int, str]] = field(default_factory=list)


class ReplySpans:
    """Renders a row with the model's chat template and locates each assistant reply's supervised characters."""

    def __init__(self, processing_class, family: Family | None, date_string: str | None = None,
                 needs_chat_template: bool = True, enable_thinking: bool | None = None,
                 supervise_empty_thinking: bool = True):
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
        self.family = family
        # Thinking: the recipe's enable_thinking (None: the template's default) and whether the empty thinking block a
        # thinking template writes before a reply without reasoning is learnt (docs/thinking-and-tools.md).
        self.reads_thinking = "enable_thinking" in str(template or "")
        self.writes_tools = "tool_calls" in str(template or "")
        self.enable_thinking, self.supervise_empty_thinking = enable_thinking, supervise_empty_thinking
        if enable_thinking is not None and not self.reads_thinking:
            raise UserError("enable_thinking is set but the chat template never reads it; remove it from the recipe")

    def template_messages(self, messages: list[dict], with_tools: bool = False) -> list[dict]:
        """Messages in the form the chat template expects: typed parts for a processor, strings for a tokenizer.
        A row with tools gets its text-only messages as strings: Llama 4's template writes the first user turn into
        its tools block with `content|trim`, which would print a list of parts as Python text."""
        if self.is_processor:
            return [template_message(m, text_of(m) if with_tools and image_count([m]) + image_count([m], "video") == 0
                                     else [{"type": p["type"]} if p["type"] in ("image", "video") else p
                                           for p in parts_of(m["content"])]) for m in messages]
        for kind in ("image", "video"):
            if image_count(messages, kind):
                raise UserError(f"the row has {kind}s but the model is a text model")
        return [template_message(m, text_of(m)) for m in messages]

    def keywords(self, messages: list[dict], context: dict | None = None) -> dict:
        """The template keywords of a row (sft/labels/template_inputs.py), decided once for all its renderings."""
        return {**self.template_kwargs,
                **template_keywords(messages, context, self.enable_thinking, self.reads_thinking)}

    def render(self, messages: list[dict], add_generation_prompt: bool = False, keywords: dict | None = None) -> str:
        keywords = self.keywords(messages) if keywords is None else keywords
        try:
            return self.processing_class.apply_chat_template(
                self.template_messages(messages, "tools" in keywords), tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **keywords,
            )
        except (jinja2.TemplateError, ValueError) as exc:  # Llama 3.2 Vision: "images are incompatible with system
            raise UserError(f"the chat template refuses this row: {exc}") from None  # messages"

    def refuse_special_text(self, messages: list[dict], allowed: set[str] | frozenset = frozenset()) -> None:
        """Data is text: a special token written in it (`<|eot_id|>`, `<image>`) would become a control token
        once tokenized (ending a turn early, or asking for an image that is not there), so such a row is refused.
        `allowed`: tokens the toolkit wrote into the row itself (checked before it wrote them)."""
        for number, message in enumerate(messages, start=1):
            text = text_of(message) + (message.get("reasoning") or "") + (message.get("tool_calls") or "")
            found = next((t for t in self.special_tokens if t in text and t not in allowed), None)
            if found:
                raise UserError(f"message {number} ({message['role']}) contains {found!r}, a special token of this "
                                "tokenizer; as data it would act as a control token; remove or reword it")

    def prepared(self, messages: list[dict]) -> list[dict]:
        """The messages as every rendering of the row sees them: inline thinking split out, replies stripped."""
        family = self.family
        messages = split_inline_thinking(messages, family and family.reasoning_start, family and family.reasoning_end)
        return stripped_replies(messages)

    def supervised_spans(self, messages: list[dict], context: dict | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The full text and, per assistant turn, the character span [start, end) that is supervised.

        A turn's span starts where the rendering of the conversation before it plus the generation prompt stops
        agreeing with the full rendering (right after the generation prompt, or after the role header when the
        generation prompt adds a thinking block that the turn lacks), never inside the reply, and ends with the
        special token that closes the turn. In between lie, as the template writes them, the reply's reasoning and
        thinking markers (sft/labels/turn_pieces.py), its text and its tool calls. A template that closes a turn with
        no special token (LLaVA-1.5) gets the tokenizer's EOS inserted right after the reply, supervised. Replies are
        rendered without their surrounding whitespace (`stripped_replies`), so the rule is the same whether the
        template trims or not. `context`: the row's tools and chat_template_kwargs."""
        rendering = self.rendering(messages, context)
        return rendering.full, rendering.spans

    def written_answer(self, messages: list[dict], context: dict | None = None) -> str:
        """The last reply's answer (its text and tool calls, no thinking block, no closing token) as the template
        writes it, read back as a generation is: tokenized and decoded without special tokens."""
        rendering = self.rendering(messages, context)
        text = rendering.full[slice(*rendering.answers[-1])]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def rendering(self, messages: list[dict], context: dict | None = None) -> Rendering:
        """`supervised_spans`, each reply's answer span, and the number of replies whose reasoning the template did
        not write (Qwen3.x writes it only after the last user query); the last reply's reasoning unwritten is
        refused."""
        messages = self.prepared(messages)
        self.refuse_special_text(messages, self.toolkit_tokens)
        keywords = self.keywords(messages, context)
        if not self.writes_tools and any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            raise UserError("the chat template writes no tool calls (it never reads tool_calls); this model takes no "
                            "tool-calling rows")
        full = self.render(messages, keywords=keywords)
        written = full.count(self.image_token) if self.image_token else None
        if written is not None and written < image_count(messages):  # Llama 4 with tools writes its first turn as text
            raise UserError(f"the chat template writes {written} of the row's {image_count(messages)} image(s) (with "
                            "this row's tools or roles it drops them); move the images to a turn it writes them in")
        located, insert_at, dropped, answers = [], [], 0, []
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant") if \
            any(m["role"] == "assistant" for m in messages) else -1
        segments, cursor = [], 0
        for i, message in enumerate(messages):
            if message["role"] == "tool" and text_of(message):  # a tool's result: context, shown apart
                at = full.find(text_of(message), cursor)
                if at >= 0:
                    segments.append((at, at + len(text_of(message)), "tool_result"))
                    cursor = at + len(text_of(message))
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise UserError("the conversation opens with an assistant turn; it needs a user turn before it")
            floor = self._reply_floor(messages, i, full, keywords)
            turn = locate_turn(full, floor, message, i + 1, self.family, self.supervise_empty_thinking)
            if turn.reasoning_dropped:
                if i == last:
                    raise UserError(f"the chat template does not write the reasoning of assistant turn {i + 1} (a "
                                    "template without thinking, or one that writes it only beside tool calls)")
                dropped += 1
            closed = turn.closing_at - len(self.family.tool_call_end or self.family.closing) \
                if turn.closing_at is not None else turn.end
            answers.append((turn.answer, closed))
            segments += [(*turn.thinking, "reasoning")] if turn.thinking else []
            segments += [(*turn.calls, "call")] if turn.calls else []
            cursor = max(cursor, closed)
            if turn.closing_at is not None:  # a tool-calling turn, closed where the family's table says
                located.append((turn.start, turn.closing_at, ""))
                continue
            closing = self.closing_token(full[turn.end:])
            if closing is None:
                eos = self.tokenizer.eos_token
                if not eos:
                    raise UserError("the chat template closes the assistant turn with no special token and the "
                                    "tokenizer has no EOS; the model could never learn to stop")
                insert_at.append(turn.end)
                located.append((turn.start, turn.end, eos))
            else:
                # The turn ends with the closing token itself: a newline the template writes after it is not learnt.
                located.append((turn.start, full.index(closing, turn.end) + len(closing), ""))
        spans, shifted, shift = [], [], 0
        for (start, end, inserted), (answer, closed) in zip(located, answers):
            spans.append((start + shift, end + shift + len(inserted)))
            shifted.append((answer + shift, closed + shift))
            shift += len(inserted)
        for position in reversed(insert_at):
            full = full[:position] + self.tokenizer.eos_token + full[position:]
        moved = lambda p: p + len(self.tokenizer.eos_token or "") * sum(q < p for q in insert_at)  # noqa: E731
        return Rendering(full, spans, shifted, dropped, [(moved(a), moved(b), kind) for a, b, kind in segments])

    def _reply_floor(self, messages: list[dict], i: int, full: str, keywords: dict) -> int:
        """Where turn i's span may start at the earliest: after the generation prompt when it is a prefix of the
        full rendering, else where that prompt stops agreeing with it (an empty thinking block the turn lacks)."""
        prompt = self.render(messages[:i], add_generation_prompt=True, keywords=keywords)
        if full.startswith(prompt):  # the usual case: the reply follows the generation prompt
            return len(prompt)
        before = self.render(messages[:i], keywords=keywords)
        if not full.startswith(before):
            raise UserError(f"the chat template renders the turns before turn {i + 1} differently once it "
                            "follows; cannot locate the reply by position")
        agree = next(k for k, (a, b) in enumerate(zip(prompt, full)) if a != b)
        for token in self.special_tokens:  # not inside a special token of either (Gemma 4's `<|channel>` and
            for text in (prompt, full):  # `<|tool_call>` share `<|`)
                at = text.find(token, max(0, agree - len(token) + 1))
                if 0 <= at < agree < at + len(token):
                    agree = at
        return max(agree, len(before))

    def inserts_eos(self, messages: list[dict], context: dict | None = None) -> bool:
        """Whether this row's template writes no closing token, so that EOS is inserted after each reply."""
        text, _ = self.supervised_spans(messages, context)
        prepared = self.prepared(messages)
        return len(text) != len(self.render(prepared, keywords=self.keywords(prepared, context)))

    def closing_token(self, after_reply: str) -> str | None:
        """The special token that closes a reply, when the template writes one (after optional whitespace)."""
        stripped = after_reply.lstrip()
        return next((t for t in self.special_tokens if stripped.startswith(t)), None)
