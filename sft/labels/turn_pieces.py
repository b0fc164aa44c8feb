"""Where the pieces of one assistant turn lie in the row's rendering: its reasoning and thinking markers, its text,
its tool calls, and (for a tool-calling turn) the token that closes it.

The template writes them in this order after the turn's floor (sft/labels/reply_spans.py): the reasoning (after the
family's `reasoning_start` marker at most), the `reasoning_end` marker, the reply's text, then each call, whose
function name and argument names are found in order (how the arguments are written is the template's own: JSON for
Qwen3-VL and Llama 4, `<parameter=…>` blocks for Qwen3.5, `key:value` for Gemma 4). Whatever lies between the floor
and the closing token is what the template writes for the turn, so that is what is supervised; only an empty thinking
block may be left out (`supervise_empty_thinking` false).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sft.data.messages import text_of
from sft.errors import UserError
from sft.family.families import Family


@dataclass(frozen=True)
class Turn:
    start: int  # where the supervised span starts
    answer: int  # where its answer (its text and calls) starts, after any thinking block
    end: int  # where the turn's own text (its reply, or its last call's name) ends
    closing_at: int | None  # a tool-calling turn: the end of its closing token; None: found by the caller
    reasoning_dropped: bool  # the reply has reasoning the template did not write
    thinking: tuple[int, int] | None = None  # where its thinking block lies (reasoning or an empty block)
    calls: tuple[int, int] | None = None  # where its calls lie (a tool-calling turn), its closing token left out


def _skip_space(text: str, position: int) -> int:
    return len(text) - len(text[position:].lstrip())


def _thinking(full: str, floor: int, message: dict, family: Family | None) -> tuple[int, bool, bool]:
    """(where the thinking block ends, whether the reasoning was written, whether a block was found)."""
    position, written = floor, False
    reasoning = (message.get("reasoning") or "").strip()
    opening = (family.reasoning_start or "").strip() if family else ""
    if reasoning:
        at = full.find(reasoning, floor)
        if at >= 0 and full[floor:at].strip() in ("", opening):
            position, written = at + len(reasoning), True
    closing = family.reasoning_end if family else None
    if closing:
        at = full.find(closing, position)
        if at >= 0 and full[position:at].strip() in ("", opening):  # only whitespace (or the opening) before it
            return at + len(closing), written, True
    return position, written, False


def locate_turn(full: str, floor: int, message: dict, number: int, family: Family | None,
                supervise_empty_thinking: bool = True) -> Turn:
    """The pieces of assistant turn `number` (1-based), written from `floor` on."""
    position, written, block = _thinking(full, floor, message, family)
    start = floor
    if block and not written and not supervise_empty_thinking:
        start = _skip_space(full, position)  # the empty block is context, as a thinking-off prompt writes it
    answer = _skip_space(full, position)
    reply = text_of(message)
    at = full.find(reply, position)  # not before the reasoning, which may repeat the answer's words
    if at < 0:
        raise UserError(f"the chat template does not write assistant turn {number} verbatim")
    position = reply_end = at + len(reply)
    calls = json.loads(message["tool_calls"]) if message.get("tool_calls") else []
    for call in calls:
        function = call["function"]
        for piece in (function["name"], *function["arguments"]):
            found = full.find(piece, position)
            if found < 0:
                raise UserError(f"the chat template does not write the tool call {function['name']!r} of assistant "
                                f"turn {number} (its {piece!r} is missing); does it take tools?")
            position = found + len(piece)
    reasoning_dropped = bool(message.get("reasoning")) and not written
    thinking = (floor, answer) if block or written else None
    if not calls:
        return Turn(start, answer, position, None, reasoning_dropped, thinking)
    closing = (family.tool_call_end or family.closing) if family else None
    end = full.find(closing, position) if closing else -1
    if end < 0:
        raise UserError(f"assistant turn {number} calls tools but its closing token is not known to the family "
                        "table (tool_call_end / closing); cannot tell where the call ends")
    return Turn(start, answer, position, end + len(closing), reasoning_dropped, thinking,
                (_skip_space(full, reply_end), end))
