"""Which checkpoints of a run can be resumed from: the complete ones.

Trainer writes a checkpoint's model, optimizer, scheduler and RNG state first and `trainer_state.json` last
(transformers 5.23 `Trainer._save_checkpoint`), so a checkpoint whose `trainer_state.json` is missing or not valid
JSON was cut off mid-save (SIGKILL, power, a full disk). transformers' own `get_last_checkpoint` takes the
highest-numbered folder whatever it holds; resuming from a half-written one fails or loads broken state.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sft.errors import UserError

STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's checkpoint folders, oldest step first."""
    folder = Path(output_dir)
    found = [path for path in folder.iterdir() if path.is_dir() and STEP.match(path.name)] if folder.is_dir() else []
    return sorted(found, key=lambda path: int(STEP.match(path.name).group(1)))


def complete(checkpoint: Path) -> bool:
    """Whether the save of `checkpoint` finished: its trainer state, written last, is there and whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint, or None."""
    return next((str(path) for path in reversed(checkpoints(output_dir)) if complete(path)), None)


def half_written(output_dir: str | Path) -> list[str]:
    """Checkpoints newer than the last complete one whose save was cut off."""
    found = checkpoints(output_dir)
    last = last_checkpoint(output_dir)
    newer = found[found.index(Path(last)) + 1:] if last else found
    return [path.name for path in newer if not complete(path)]


def resume_point(output_dir: str, resume: bool | str | None) -> tuple[str | None, list[str]]:
    """The checkpoint to resume from (`True`: the newest complete one) and the half-written ones skipped for it."""
    if not resume:
        return None, []
    if resume is not True:
        if not complete(Path(resume)):
            raise UserError(f"{resume}: not a complete checkpoint (no whole trainer_state.json: its save was cut off "
                            "or it is not a checkpoint); resume with --resume_from_checkpoint true for the last "
                            "complete one")
        return str(resume), []
    last, skipped = last_checkpoint(output_dir), half_written(output_dir)
    if last is None:
        cut = f" (only half-written: {', '.join(skipped)})" if skipped else ""
        raise UserError(f"{output_dir}: no checkpoint to resume from{cut}")
    return last, skipped
