"""What the chat template is given for a row: its messages in the template's own form, and its keywords.

A reply's `reasoning` goes to the template as `reasoning_content` (the field TRL and the Qwen3.5 / Gemma 4 templates
read), its calls as `tool_calls`, a tool message's function as `name` (and `tool_call_id`); a key is passed only
where the row has it (Llama 4's template branches on `'tool_calls' in message`). Keywords: the recipe's
`enable_thinking` (when set), then the row's `chat_template_kwargs`, then `enable_thinking: true` for a row that has
reasoning (it is learnt in thinking mode, as its template writes it), and the row's `tools`.
"""

from __future__ import annotations

import json

from sft.data.messages import parts_of, text_of
from sft.errors import UserError


def split_inline_thinking(messages: list[dict], start: str | None, end: str | None) -> list[dict]:
    """Replies that write their thinking inline (`<think>…</think>answer`, the family's markers) as reasoning +
    answer, as their templates split them; a reply with its own `reasoning` is left as written."""
    if not start or not end:
        return messages
    out = []
    for message in messages:
        text = text_of(message)
        if message["role"] == "assistant" and not message.get("reasoning") and end in text:
            head, _, answer = text.partition(end)
            if start not in head or head.split(start, 1)[0].strip():
                raise UserError(f"a reply writes {end!r} without opening its thinking with {start!r} first")
            reasoning = head.split(start, 1)[1].strip()
            parts = [p for p in parts_of(message["content"]) if p["type"] != "text"]
            message = {**message, "reasoning": reasoning or None,
                       "content": parts + [{"type": "text", "text": answer.strip()}]}
        out.append(message)
    return out


def template_message(message: dict, content) -> dict:
    """One message in the template's form: `content` as the template takes it, plus the row's reasoning, calls and
    tool name where it has them."""
    out = {"role": message["role"], "content": content}
    if message.get("reasoning"):
        out["reasoning_content"] = message["reasoning"]
    if message.get("tool_calls"):
        out["tool_calls"] = json.loads(message["tool_calls"])
        if not text_of(message) and not any(p["type"] != "text" for p in parts_of(message["content"])):
            out["content"] = ""  # a call-only reply: TRL's rows give "" (a list of one empty part reads as content)
    for key in ("name", "tool_call_id"):
        if message.get(key):
            out[key] = message[key]
    return out


def has_reasoning(messages: list[dict]) -> bool:
    return any(m.get("reasoning") for m in messages)


def row_context(example: dict) -> dict:
    """A stored row's tools and chat_template_kwargs, as template keywords."""
    context = json.loads(example["template_kwargs"]) if example.get("template_kwargs") else {}
    if example.get("tools"):
        context["tools"] = json.loads(example["tools"])
    return context


def template_keywords(messages: list[dict], context: dict | None, enable_thinking: bool | None,
                      reads_thinking: bool) -> dict:
    """The keywords of one rendering (see the module docstring)."""
    keywords = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    keywords.update(context or {})
    if has_reasoning(messages):
        keywords["enable_thinking"] = True
    if "enable_thinking" in keywords and not reads_thinking:
        if has_reasoning(messages):
            raise UserError("the row has reasoning but the chat template has no thinking mode (it never reads "
                            "enable_thinking); a model that does not think cannot learn this reasoning")
        raise UserError("enable_thinking is set but the chat template never reads it; remove it (recipe "
                        "enable_thinking or the row's chat_template_kwargs)")
    return keywords
