"""Tool-calling and reasoning rows in TRL's conventions, checked and stored.

- a row's `tools`: a list of JSON schemas (`{"type": "function", "function": {"name", ...}}`, or the bare function
  object), or that list as a JSON string; it goes to the chat template as `tools`;
- an assistant message's `tool_calls`: `[{"type": "function", "function": {"name", "arguments"}}]`, `arguments` a
  mapping or a JSON string of one (stored as a mapping: every template in the table writes a mapping, not all a
  string); its content may then be empty;
- a `tool` message: a tool's result, context that is never supervised; its function `name` is its own, else found by
  its `tool_call_id`, else the call in the same place of the turn before it (Gemma 4's template writes the name), and
  its `tool_call_id` likewise (Mistral 3's template writes it);
- an assistant message's `reasoning_content`: its thinking, written by templates that think (Qwen3.5, Gemma 4);
- a row's `chat_template_kwargs` (TRL's per-row keywords for the template, e.g. `{"enable_thinking": false}`).

Calls, tools and keywords are kept as JSON strings in the Arrow rows (one schema for every row, whatever the
arguments hold). Every problem is a ValueError with a short reason; sft/data/rows.py adds where the row is.
"""

from __future__ import annotations

import json


def _json(value, what: str):
    """`value`, parsed when it is a JSON string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not JSON ({exc.msg} at character {exc.pos})") from None


def function_name(tool) -> str | None:
    """The name a tool schema declares (TRL/OpenAI form or the bare function object)."""
    function = tool.get("function", tool) if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


def tools_of(row: dict, name: str) -> list[dict] | None:
    """The row's tool schemas (None when it has none)."""
    value = _json(row.get("tools"), f'"{name}"')
    if value is None:
        return None
    if not isinstance(value, list) or not all(function_name(tool) for tool in value):
        raise ValueError(f'"{name}" must be a list of function schemas, each with a "name" (TRL\'s tools column)')
    return value


def calls_of(message: dict, number: int) -> list[dict] | None:
    """An assistant message's tool calls, normalised to `{"type": "function", "function": {"name", "arguments"}}`
    with the arguments a mapping (None when it makes none)."""
    calls = message.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list) or not calls:
        raise ValueError(f'message {number} "tool_calls" must be a non-empty list')
    out = []
    for index, call in enumerate(calls, start=1):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"message {number} tool call {index} needs a function name "
                             '({"type": "function", "function": {"name", "arguments"}})')
        arguments = _json(function.get("arguments", {}), f"message {number} tool call {index} ({name}) arguments")
        if not isinstance(arguments, dict):
            raise ValueError(f"message {number} tool call {index} ({name}): arguments must be a JSON object")
        out.append({"type": "function", "function": {"name": name, "arguments": arguments},
                    **({"id": call["id"]} if call.get("id") is not None else {})})
    return out


def reasoning_of(message: dict, number: int) -> str | None:
    """An assistant message's `reasoning_content` (None when absent or blank)."""
    value = message.get("reasoning_content")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f'message {number} "reasoning_content" must be a string')
    if message.get("role") != "assistant":
        raise ValueError(f"message {number} ({message.get('role')}) has reasoning_content; only replies think")
    return value if value.strip() else None


def check_tool_turns(messages: list[dict], raw: list[dict], tools: list[dict] | None) -> None:
    """Calls name tools the row declares, and every tool message answers a call made before it; each tool message
    gets its function's `name`."""
    declared = {function_name(tool) for tool in tools or ()}
    calls, answered = None, 0
    for number, (message, given) in enumerate(zip(messages, raw), start=1):
        if message["role"] == "tool":
            if calls is None:
                raise ValueError(f"message {number} (tool) answers no call: the message before it makes none")
            by_id = {call["id"]: call for call in calls if call.get("id") is not None}
            answers = by_id.get(given.get("tool_call_id")) or (calls[answered] if answered < len(calls) else None)
            if answers is None and not given.get("name"):
                raise ValueError(f"message {number} (tool): {len(calls)} call(s) made, and this is result "
                                 f"{answered + 1}; give it the `name` or `tool_call_id` of its call")
            message["name"] = given.get("name") or answers["function"]["name"]
            message["tool_call_id"] = given.get("tool_call_id") or (answers or {}).get("id")
            answered += 1
            continue
        calls = json.loads(message["tool_calls"]) if message.get("tool_calls") else None
        answered = 0
        for call in calls or ():
            called = call["function"]["name"]
            if tools is None:
                raise ValueError(f'message {number} calls {called!r} but the row has no "tools" column to declare it')
            if called not in declared:
                raise ValueError(f"message {number} calls {called!r}, which is not in the row's tools "
                                 f"({', '.join(sorted(declared))})")


def template_kwargs_of(row: dict, name: str) -> dict | None:
    """TRL's per-row `chat_template_kwargs` (None when absent)."""
    value = _json(row.get("chat_template_kwargs"), f'"{name}"')
    if value is not None and not isinstance(value, dict):
        raise ValueError(f'"{name}" must be a mapping of keyword to value, e.g. {{"enable_thinking": false}}')
    return value or None


def as_json(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)
