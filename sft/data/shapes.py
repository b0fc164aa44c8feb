"""Row shapes: the one place that tells what a row is and turns it into chat messages (sft/data/messages.py's form).

Shapes, detected per row by their keys (after column_map renaming), in this order:
- conversation `{messages: [{role, content}]}`, content a string or a list of parts `{"type": "text", "text"}` /
  `{"type": "image"}` / `{"type": "video"}`; image and video parts stand where the row's images and videos go, in
  order, in user turns (a video part may carry its own path: `{"type": "video", "video": "clip.mp4"}`);
- ShareGPT/LLaVA `{conversations: [{from, value}]}`, `from` human/user, gpt/assistant or system; each `<image>` or
  `<video>` marker in the text becomes an image or video part there (before the collator sees the text, where
  `<image>` may be a special token);
- prompt-completion `{prompt, completion}`;
- instruction `{instruction, input?, output}`.
Any shape may carry a top-level `system`. A shape that places no image (video) leaves them to `with_images` (the
start of the first user turn). Every problem is a ValueError with a short reason; sft/data/rows.py adds where the
row is.
"""

from __future__ import annotations

import json
import re

from sft.data.messages import image_count, with_images
from sft.data.tools import as_json, calls_of, check_tool_turns, reasoning_of

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IMAGE_MARKER, VIDEO_MARKER = "<image>", "<video>"
PART_TYPES = ("text", "image", "video")


def describe(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)[:60] if not isinstance(value, str) \
        else repr(value[:60])


def _string(row: dict, key: str, name: str, required: bool = True, empty_ok: bool = False) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        qualifier = "a string" if empty_ok else "a non-empty string"
        got = "nothing" if key not in row else describe(value)
        raise ValueError(f'"{name}" must be {qualifier}, got {got}')
    return value


def _parts(content, number: int) -> list[dict]:
    """A message's content list as parts; an unknown part type or a malformed part is refused."""
    parts = []
    for index, part in enumerate(content, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES:
            got = f"type {kind!r}" if isinstance(part, dict) else describe(part)
            raise ValueError(f"message {number} part {index}: {got} is not a text, image or video part")
        text = part.get("text")
        if kind == "text" and not isinstance(text, str):
            raise ValueError(f"message {number} part {index}: a text part needs a string \"text\", got "
                             f"{describe(text)}")
        parts.append({"type": kind, "text": text if kind == "text" else ""})
    return parts


def _checked(messages: list[dict], require_reply: bool) -> list[dict]:
    """Replies carry text, images sit in user turns, and (for training) the row ends with the reply."""
    for number, message in enumerate(messages, start=1):
        texts = [p["text"] for p in message["content"] if p["type"] == "text"]
        if message["role"] == "assistant" and not "".join(texts).strip() and not message.get("tool_calls"):
            raise ValueError(f"message {number} (assistant) must have non-empty text or tool_calls")
        for kind in ("image", "video"):
            if message["role"] not in ("user", "tool") and any(p["type"] == kind for p in message["content"]):
                raise ValueError(f"message {number} ({message['role']}) has an {kind}; {kind}s go in user (or tool) "
                                 "turns")
    if require_reply and messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's reply (it is what gets supervised)")
    return messages


def _conversation(turns, name: str, require_reply: bool, tools: list[dict] | None = None) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise ValueError(f'"{name}" must be a non-empty list of {{role, content}} objects')
    out = []
    for number, message in enumerate(turns, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"message {number} needs a role of {', '.join(ROLES)}")
        content = message.get("content")
        calls = calls_of(message, number) if message["role"] == "assistant" else None
        if isinstance(content, list):
            parts = _parts(content, number)
        elif content is None and calls:  # a reply that only calls tools (TRL writes its content as None or "")
            parts = [{"type": "text", "text": ""}]
        else:
            empty_ok = message["role"] != "assistant" or bool(calls)  # a reply must say or call something
            parts = [{"type": "text", "text": _string(message, "content", f"message {number} content",
                                                      empty_ok=empty_ok)}]
        out.append({"role": message["role"], "content": parts, "reasoning": reasoning_of(message, number),
                    "tool_calls": as_json(calls), "name": None, "tool_call_id": None})
    check_tool_turns(out, turns, tools)
    return _checked(out, require_reply)


def _split_markers(text: str) -> list[dict]:
    """Text with `<image>` / `<video>` markers as parts: an image or video part for each marker, the text between
    kept as it is."""
    parts = []
    for piece in re.split(f"({re.escape(IMAGE_MARKER)}|{re.escape(VIDEO_MARKER)})", text):
        if piece in (IMAGE_MARKER, VIDEO_MARKER):
            parts.append({"type": "image" if piece == IMAGE_MARKER else "video", "text": ""})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts or [{"type": "text", "text": ""}]


def _sharegpt(turns, name: str, require_reply: bool) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise ValueError(f'"{name}" must be a non-empty list of {{from, value}} objects')
    out = []
    for number, turn in enumerate(turns, start=1):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in SHAREGPT_ROLES:
            raise ValueError(f"turn {number}: unknown \"from\" {describe(speaker)}; use one of "
                             f"{', '.join(SHAREGPT_ROLES)}")
        value = _string(turn, "value", f"turn {number} value", empty_ok=True)
        out.append({"role": SHAREGPT_ROLES[speaker], "content": _split_markers(value)})
    return _checked(out, require_reply)


def _place_images(messages: list[dict], n_images: int, marker: str, kind: str = "image") -> list[dict]:
    """Messages holding exactly the row's images (`kind` "video": videos): placed ones checked in count, none placed
    → first user turn."""
    placed = image_count(messages, kind)
    counted = f"{placed} {marker}{'s' if placed != 1 else ''} for {n_images} {kind}(s)"
    if placed > n_images:
        raise ValueError(f"{counted}: {marker} {n_images + 1} has no {kind} left")
    if 0 < placed < n_images:
        raise ValueError(f"{counted}; place each {kind} once, or none to put them all at the start of the first "
                         "user turn")
    return with_images(messages, n_images, kind)


def _place_visuals(messages: list[dict], n_images: int, n_videos: int, kind: str) -> list[dict]:
    """`_place_images` for the row's videos, then its images (`kind`: "part" or "marker", how the shape places)."""
    marker = {"part": ("video part", "image part"), "marker": (f"{VIDEO_MARKER} marker", f"{IMAGE_MARKER} marker")}
    videos, images = marker[kind]
    return _place_images(_place_images(messages, n_videos, videos, "video"), n_images, images)


def inline_videos(row: dict) -> list[str]:
    """The paths a conversation row's video parts carry (`{"type": "video", "video": path}`), in order; every video
    part carries one or none does (the row's video/videos column fills them)."""
    turns = row.get("messages")
    parts = [part for message in turns if isinstance(message, dict) and isinstance(message.get("content"), list)
             for part in message["content"] if isinstance(part, dict) and part.get("type") == "video"] \
        if isinstance(turns, list) else []
    paths = [part["video"] for part in parts if part.get("video") is not None]
    if paths and len(paths) < len(parts):
        raise ValueError(f"{len(paths)} of {len(parts)} video parts carry a \"video\" path; give each one its path, "
                         "or none (the row's video/videos column fills them)")
    if paths and ("video" in row or "videos" in row):
        raise ValueError('video parts carry their paths and the row has a video/videos column too; give one')
    return paths


def messages_of_row(row: dict, names: dict[str, str], n_images: int, require_reply: bool = True,
                    n_videos: int = 0, tools: list[dict] | None = None) -> list[dict]:
    """The row as chat messages in parts form, its `n_images` images and `n_videos` videos placed; ValueError with a
    short reason. Without `require_reply` (prediction) the reply may be absent and the messages then end with the
    user's turn."""
    system = _string(row, "system", names["system"], required=False, empty_ok=True)
    head = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    if "messages" in row:
        return _place_visuals(head + _conversation(row["messages"], names["messages"], require_reply, tools),
                              n_images, n_videos, "part")
    if "conversations" in row:
        return _place_visuals(head + _sharegpt(row["conversations"], names["conversations"], require_reply),
                              n_images, n_videos, "marker")
    if "prompt" in row or "completion" in row:
        prompt = [{"role": "user", "content": _string(row, "prompt", names["prompt"], empty_ok=True)}]
        if require_reply or "completion" in row:
            prompt.append({"role": "assistant", "content": _string(row, "completion", names["completion"])})
        return with_images(with_images(head + prompt, n_videos, "video"), n_images)
    if "instruction" in row or "output" in row:
        instruction = _string(row, "instruction", names["instruction"])
        extra = _string(row, "input", names["input"], required=False, empty_ok=True)
        user = [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction}]
        if require_reply or "output" in row:
            user.append({"role": "assistant", "content": _string(row, "output", names["output"])})
        return with_images(with_images(head + user, n_videos, "video"), n_images)
    keys = ", ".join(sorted(row)) or "none"
    raise ValueError("no known row shape (instruction/output, prompt/completion, messages or conversations); "
                     f"keys: {keys}")
