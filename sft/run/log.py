"""The run's log lines: `[sft] ...` on stderr, flushed, so they interleave with Trainer's own output in order."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    print(f"[sft] {message}", file=sys.stderr, flush=True)
