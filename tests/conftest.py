"""Shared fixtures: tiny random models (built once per session, offline) and small data files."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("DS_ACCELERATOR", "cpu")
warnings.filterwarnings("ignore", message="MatMul8bitLt")

REPO = Path(__file__).resolve().parents[1]
# shared/fixtures: beside the checkout (/work/shared next to /work/main), above a worktree, or inside the copy that
# the device machine gets. Tests that need it skip when it is absent.
FIXTURES = next((folder / "shared" / "fixtures" for folder in (REPO, *REPO.parents)
                 if (folder / "shared" / "fixtures").is_dir()), REPO.parent / "shared" / "fixtures")
REAL_PROCESSORS = FIXTURES / "real-processors"
CHAT_TEMPLATES = FIXTURES / "chat-templates"


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    """Every registry case's tiny model (tests/families/registry.py), built once a session on first use."""
    from tests.families.registry import Built

    return Built(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="session")
def tiny_models(family_models) -> dict[str, Path]:
    """The folders of sft.model.tiny's three families (text Llama, Llama 3.2 Vision, SmolVLM)."""
    return {name: family_models.folder(name) for name in ("llama", "mllama", "idefics3")}


def write_image(path: Path, colour=(40, 90, 220), size=(30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((*size, 3), dtype=np.uint8) + np.array(colour, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_video(path: Path, colour=(40, 90, 220), frames: int = 4, size=(32, 32), fps: int = 2) -> Path:
    """A tiny clip of `frames` solid-colour frames (height, width `size`, even), written with PyAV (mpeg4 in mp4)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((*size, 3), dtype=np.uint8) + np.array(colour, dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSONL; a str item is written verbatim (for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def write_recipe(path: Path, **keys) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(keys, sort_keys=False), encoding="utf-8")
    return path
