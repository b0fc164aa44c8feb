"""How each real chat template writes a reply's reasoning and its tool calls, written out by hand from the template
files (shared/fixtures/chat-templates) so that the tests compare the toolkit's labels with an independent reading.

Calls are TRL's form, `{"type": "function", "function": {"name", "arguments": {...}}, "id"}`; each writer gives the
text the template writes for a turn's calls, before the token that closes the turn.
"""

from __future__ import annotations

import json


def qwen3_5_calls(calls: list[dict]) -> str:
    """trl_qwen3_5_*.jinja: `<tool_call>\\n<function=NAME>\\n` + a `<parameter=KEY>\\nVALUE\\n</parameter>\\n` block per
    argument + `</function>\\n</tool_call>`; every call after the first starts with a newline (the reply is empty)."""
    written = []
    for call in calls:
        function = call["function"]
        parameters = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in
                             function["arguments"].items())
        written.append(f"<tool_call>\n<function={function['name']}>\n{parameters}</function>\n</tool_call>")
    return "\n".join(written)


def qwen3_vl_calls(calls: list[dict]) -> str:
    """trl_qwen3_vl.jinja: `<tool_call>\\n{"name": NAME, "arguments": JSON}\\n</tool_call>`, newline-separated."""
    return "\n".join(f'<tool_call>\n{{"name": "{c["function"]["name"]}", "arguments": '
                     f'{json.dumps(c["function"]["arguments"])}}}\n</tool_call>' for c in calls)


def llama4_calls(calls: list[dict]) -> str:
    """transformers' Llama 4 template: `<|python_start|>` + the reply + `<|python_end|>`, then each call as
    `{"name": NAME, "parameters": JSON}`, back to back."""
    return "<|python_start|><|python_end|>" + "".join(
        f'{{"name": "{c["function"]["name"]}", "parameters": {json.dumps(c["function"]["arguments"])}}}'
        for c in calls)


def mistral3_calls(calls: list[dict]) -> str:
    """llama.cpp's Mistral Small 3.1 template: `[TOOL_CALLS] [` + each function as JSON with the call id's last 9
    characters added, comma-separated, + `]` (then the EOS that closes the turn)."""
    written = [json.dumps(c["function"])[:-1] + f', "id": "{c["id"][-9:]}"}}' for c in calls]
    return "[TOOL_CALLS] [" + ", ".join(written) + "]"


def gemma4_calls(calls: list[dict]) -> str:
    """axolotl_gemma4.jinja: `<|tool_call>call:NAME{KEY:<|"|>VALUE<|"|>,...}<tool_call|>` per call, keys sorted,
    string values between `<|"|>` quotes (the call turn then ends with `<|tool_response>`)."""
    def argument(value) -> str:
        return f'<|"|>{value}<|"|>' if isinstance(value, str) else json.dumps(value)

    return "".join("<|tool_call>call:" + c["function"]["name"] + "{" + ",".join(
        f"{key}:{argument(value)}" for key, value in sorted(c["function"]["arguments"].items())) + "}<tool_call|>"
        for c in calls)


QWEN3_5_THINKS = "{reasoning}\n</think>\n\n"  # after the generation prompt's `<think>\n`
GEMMA4_THINKS = "<|channel>thought\n{reasoning}\n<channel|>"  # only on a turn that calls tools
