"""Chat messages in the one form every step after the data rows uses.

A message is `{"role", "content"}` with `content` a list of parts, `{"type": "text", "text": str}`,
`{"type": "image", "text": ""}` or `{"type": "video", "text": ""}` (the empty text keeps one Arrow schema for all),
image and video parts standing where the row's images and videos go, in order. A plain string content is accepted
and read as one text part.
"""

from __future__ import annotations

from sft.errors import UserError


def parts_of(content) -> list[dict]:
    """The content as a list of parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{"type": part["type"], "text": part.get("text") or ""} for part in content]


def text_of(message: dict) -> str:
    """All the text of a message (its image parts left out)."""
    return "".join(part["text"] for part in parts_of(message["content"]) if part["type"] == "text")


def image_count(messages: list[dict], kind: str = "image") -> int:
    """The image parts of the messages (`kind` "video": the video parts)."""
    return sum(part["type"] == kind for m in messages for part in parts_of(m["content"]))


def with_images(messages: list[dict], n_images: int, kind: str = "image") -> list[dict]:
    """Messages as parts, holding exactly `n_images` image parts (`kind` "video": video parts): a row that places
    none gets them at the start of its first user turn (as TRL and LLaMA-Factory do); one that places a different
    number is refused."""
    out = [{**m, "content": parts_of(m["content"])} for m in messages]
    placed = image_count(out, kind)
    if placed == 0 and n_images:
        first_user = next((m for m in out if m["role"] == "user"), None)
        if first_user is None:
            raise UserError(f"{n_images} {kind}(s) but no user turn to put them in")
        first_user["content"] = [{"type": kind, "text": ""}] * n_images + first_user["content"]
    elif placed != n_images:
        raise UserError(f"the messages place {placed} {kind}(s) but the row has {n_images}")
    return out


def with_text(message: dict, text: str) -> dict:
    """The message with its text replaced by `text` (in its first text part), its images kept in place."""
    parts, done = [], False
    for part in parts_of(message["content"]):
        if part["type"] == "text":
            if done:
                continue
            part, done = {"type": "text", "text": text}, True
        parts.append(part)
    return {**message, "content": parts if done else parts + [{"type": "text", "text": text}]}


def stripped_replies(messages: list[dict]) -> list[dict]:
    """The messages with each assistant reply's surrounding whitespace removed (its first text part's leading, its
    last text part's trailing): one rule for every family, whether its template trims replies (Llama 3, Gemma) or
    writes them as given, and whether the toolkit inserts EOS after them (LLaVA-1.5)."""
    out = []
    for message in messages:
        if message["role"] == "assistant":
            parts = parts_of(message["content"])
            texts = [k for k, part in enumerate(parts) if part["type"] == "text"]
            if texts:
                parts[texts[0]] = {**parts[texts[0]], "text": parts[texts[0]]["text"].lstrip()}
                parts[texts[-1]] = {**parts[texts[-1]], "text": parts[texts[-1]]["text"].rstrip()}
                message = {**message, "content": parts}
        out.append(message)
    return out
