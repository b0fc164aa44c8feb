"""Data rows: every source's rows checked and normalised to `{where, row, messages, stored_images, stored_videos,
objects, tools, template_kwargs}` (`objects`: a grounding row's boxes, sft/data/objects.py; `tools` and
`template_kwargs`: TRL's `tools` and `chat_template_kwargs` columns as JSON, sft/data/tools.py; None where absent).

A source (sft/data/sources.py) reads a file or dataset; column_map renames the user's columns to the standard names;
sft/data/shapes.py turns the row into chat messages; the row's images become `stored_images`, `{bytes, path}` entries
(a path checked to exist, embedded bytes kept as bytes and only decoded by the collator), its videos
`stored_videos`, paths checked to open and decode a first frame (the collator decodes the sampled frames). Every
problem is reported as `where: what is wrong`, and reading goes on so that one pass shows every bad row.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sft.data.objects import grounding_objects
from sft.data.shapes import describe, inline_videos, messages_of_row
from sft.data.sources import Problem, Source, file_source
from sft.data.tools import as_json, template_kwargs_of, tools_of
from sft.data.video import probe_video
from sft.errors import UserError

STANDARD_NAMES = ("system", "messages", "conversations", "prompt", "completion", "instruction", "input", "output",
                  "image", "images", "video", "videos", "objects", "tools", "chat_template_kwargs")


@dataclass
class RowError:
    """A row that cannot be used, with its place: `where: message`."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _image_entry(value, root: Path | None, name: str) -> dict:
    """One image as `{bytes, path}`: embedded bytes as they are (checked to be an image, not decoded), a path
    resolved against `root` and checked to be a file. A URL is refused: nothing is downloaded while training."""
    if isinstance(value, dict) and value.get("bytes"):
        return {"bytes": _checked_image_bytes(value["bytes"]), "path": value.get("path")}
    if hasattr(value, "save") and hasattr(value, "mode"):  # a decoded PIL image: stored as PNG bytes
        from datasets import Image

        return {"bytes": Image().encode_example(value)["bytes"], "path": None}
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, str) or not path:
        raise ValueError(f'"{name}" must be a path, {{bytes, path}} or a list of them, got {describe(value)}')
    return {"bytes": None, "path": _local_file(path, root, "image")}


def _local_file(path: str, root: Path | None, kind: str) -> str:
    """`path` resolved against `root` and checked to be a file; a URL is refused (nothing is downloaded)."""
    if path.startswith(("http://", "https://")):
        raise ValueError(f"{kind} {path!r} is a URL; download it first (no network at training time)")
    if any(c in path for c in "\r\n"):
        raise ValueError(f"{kind} path has a line break: {path!r}")
    resolved = Path(path) if Path(path).is_absolute() or root is None else root / path
    if resolved.is_dir():
        raise ValueError(f"{kind} path is a folder: {resolved}")
    if not resolved.is_file():
        raise ValueError(f"{kind} not found: {resolved}")
    return str(resolved)


def _videos(row: dict, root: Path | None, names: dict[str, str]) -> list[str]:
    """The row's video paths (its video parts' own, else its video/videos column), each resolved, found and probed
    (a first frame decoded: an unreadable or empty video is named here, before any weights load)."""
    if "video" in row and "videos" in row:
        raise ValueError('give "video" or "videos", not both')
    value = row.get("videos", row.get("video"))
    values = inline_videos(row) or ([] if value is None else value if isinstance(value, list) else [value])
    name = names["videos" if "videos" in row else "video"]
    if value is not None and not values:
        raise ValueError(f'"{name}" is an empty list')
    paths = []
    for entry in values:
        if not isinstance(entry, str) or not entry:
            raise ValueError(f'"{name}" must be a video path or a list of them, got {describe(entry)}')
        paths.append(_local_file(entry, root, "video"))
        probe_video(paths[-1])
    return paths


def _checked_image_bytes(data: bytes) -> bytes:
    """Bytes whose header Pillow recognises (cheap: nothing is decoded); corrupt bytes are refused here."""
    from PIL import Image, UnidentifiedImageError

    try:
        Image.open(io.BytesIO(data)).close()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"embedded image bytes are not an image ({exc})") from None
    return data


def _images(row: dict, root: Path | None, names: dict[str, str]) -> list[dict]:
    if "image" in row and "images" in row:
        raise ValueError('give "image" or "images", not both')
    value = row.get("images", row.get("image"))
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    name = names["images" if "images" in row else "image"]
    if not values:
        raise ValueError(f'"{name}" is an empty list')
    return [_image_entry(v, root, name) for v in values]


def iter_rows(source: Source | str | Path, image_root: str | Path | None = None,
              column_map: dict[str, str] | None = None, require_reply: bool = True) -> Iterator[dict | RowError]:
    """Yield each row as `{where, row, messages, stored_images, stored_videos}` or, for a bad one, a RowError.
    `source` is a Source or a data file path; relative image and video paths resolve against `image_root`, else the
    file's (or folder's) folder."""
    source = source if isinstance(source, Source) else file_source(source)
    root = Path(image_root) if image_root else source.image_root
    column_map = column_map or source.column_map or {}  # a `datasets` entry carries its own
    names = {key: column_map.get(key, key) for key in STANDARD_NAMES}
    for item in source.rows():
        if isinstance(item, Problem):
            yield RowError(item.where, item.message)
            continue
        where, number, row = item
        for standard, theirs in column_map.items():
            if theirs in row:
                row[standard] = row.pop(theirs)
        try:
            images, videos = _images(row, root, names), _videos(row, root, names)
            tools = tools_of(row, names["tools"])
            messages = messages_of_row(row, names, len(images), require_reply, len(videos), tools)
            yield {"where": where, "row": number, "stored_images": images, "stored_videos": videos,
                   "messages": messages, "objects": grounding_objects(row, names["objects"], messages, images),
                   "tools": as_json(tools),
                   "template_kwargs": as_json(template_kwargs_of(row, names["chat_template_kwargs"]))}
        except (ValueError, UserError) as exc:
            yield RowError(where, str(exc))


def load_image(image, where: str):
    """Open and decode one image as RGB: a path, or a `{bytes, path}` entry (embedded bytes win). Any failure is
    a UserError naming the row."""
    from PIL import Image

    if isinstance(image, dict):
        source, shown = (io.BytesIO(image["bytes"]), "(embedded bytes)") if image.get("bytes") else \
            (image.get("path"), image.get("path"))
    else:
        source, shown = image, image
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; an image that large is refused too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                return opened.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{where}: image refused, too many pixels ({shown}): {exc}") from None
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise UserError(f"{where}: cannot decode image {shown}: {exc}") from None
