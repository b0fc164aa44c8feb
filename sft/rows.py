"""Data rows: read JSONL, check each row, normalise every shape to chat `messages` plus image paths.

Shapes (shared/DESIGN.md): instruction `{instruction, input?, output}`, prompt-completion `{prompt, completion}`,
conversation `{messages: [{role, content}]}`; any may carry `image` or `images`. Every problem is reported as
`file:line: what is wrong`, and reading goes on so that one pass shows every bad row. Messages come out in the
one form of sft/messages.py (content as text/image parts, images placed).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sft.errors import UserError
from sft.messages import with_images

ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 8 * 2**20  # a longer line is refused without being held in memory


def _lines(handle) -> Iterator[bytes | None]:
    """The file's lines; None in place of a line longer than MAX_LINE_BYTES (its rest is skipped)."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = handle.readline(MAX_LINE_BYTES)
            yield None
        else:
            yield line


@dataclass
class RowError:
    """A row that cannot be used, with its place: `file:line: message`."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _describe(value) -> str:
    return json.dumps(value, ensure_ascii=False)[:60] if not isinstance(value, str) else repr(value[:60])


def _string(row: dict, key: str, name: str, required: bool = True, empty_ok: bool = False) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        qualifier = "a string" if empty_ok else "a non-empty string"
        got = "nothing" if key not in row else _describe(value)
        raise ValueError(f'"{name}" must be {qualifier}, got {got}')
    return value


def _messages(row: dict, names: dict[str, str], require_reply: bool = True) -> list[dict]:
    """The row as chat messages; raises ValueError with a short reason. Without `require_reply` (prediction) the
    reply may be absent and the messages then end with the user's turn."""
    system = _string(row, "system", names["system"], required=False, empty_ok=True)
    head = [{"role": "system", "content": system}] if system else []
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f'"{names["messages"]}" must be a non-empty list of {{role, content}} objects')
        out = []
        for number, message in enumerate(messages, start=1):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise ValueError(f"message {number} needs a role of {', '.join(ROLES)}")
            is_reply = message["role"] == "assistant"
            content = _string(message, "content", f"message {number} content", empty_ok=not is_reply)
            out.append({"role": message["role"], "content": content})
        if require_reply and out[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's reply (it is what gets supervised)")
        return head + out
    if "prompt" in row or "completion" in row:
        prompt = [{"role": "user", "content": _string(row, "prompt", names["prompt"], empty_ok=True)}]
        if not require_reply and "completion" not in row:
            return head + prompt
        return head + prompt + [{"role": "assistant", "content": _string(row, "completion", names["completion"])}]
    if "instruction" in row or "output" in row:
        instruction = _string(row, "instruction", names["instruction"])
        extra = _string(row, "input", names["input"], required=False, empty_ok=True)
        user = [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction}]
        if not require_reply and "output" not in row:
            return head + user
        return head + user + [{"role": "assistant", "content": _string(row, "output", names["output"])}]
    keys = ", ".join(sorted(row)) or "none"
    raise ValueError(f"no known row shape (instruction/output, prompt/completion or messages); keys: {keys}")


def _image_paths(row: dict, root: Path, names: dict[str, str]) -> list[str]:
    if "image" in row and "images" in row:
        raise ValueError('give "image" or "images", not both')
    value = row.get("images", row.get("image"))
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    name = names["images" if "images" in row else "image"]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f'"{name}" must be a path or a list of paths, got {_describe(value)}')
    paths = []
    for v in values:
        if any(c in v for c in "\r\n"):
            raise ValueError(f"image path has a line break: {v!r}")
        path = Path(v) if Path(v).is_absolute() else root / v
        if path.is_dir():
            raise ValueError(f"image path is a folder: {path}")
        if not path.is_file():
            raise ValueError(f"image not found: {path}")
        paths.append(str(path))
    return paths


def iter_rows(path: str | Path, image_root: str | Path | None = None, column_map: dict[str, str] | None = None,
              require_reply: bool = True) -> Iterator[dict | RowError]:
    """Yield each row as `{where, row, messages, image_paths}` or, for a bad one, a RowError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found")
    root = Path(image_root) if image_root else path.parent
    column_map = column_map or {}
    names = {key: column_map.get(key, key) for key in
             ("system", "messages", "prompt", "completion", "instruction", "input", "output", "image", "images")}
    with path.open("rb") as handle:
        for number, raw in enumerate(_lines(handle), start=1):
            where = f"{path}:{number}"
            if raw is None:
                yield RowError(where, f"line longer than {MAX_LINE_BYTES // 2**20} MiB; not read")
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as exc:
                yield RowError(where, f"not valid UTF-8 (byte {exc.start + 1})")
                continue
            if not line.strip():
                continue  # blank lines (and CRLF ends) are fine
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RowError(where, f"not JSON ({exc.msg}, column {exc.colno})")
                continue
            if not isinstance(row, dict):
                yield RowError(where, f"not a JSON object (got {type(row).__name__})")
                continue
            for standard, theirs in column_map.items():
                if theirs in row:
                    row[standard] = row.pop(theirs)
            try:
                paths = _image_paths(row, root, names)
                yield {"where": where, "row": number, "image_paths": paths,
                       "messages": with_images(_messages(row, names, require_reply), len(paths))}
            except (ValueError, UserError) as exc:
                yield RowError(where, str(exc))


def load_image(path: str, where: str):
    """Open and decode one image as RGB; any failure is a UserError naming the row."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; an image that large is refused too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{where}: image refused, too many pixels ({path}): {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{where}: cannot decode image {path}: {exc}") from None
