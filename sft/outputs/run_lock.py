"""One run per folder: `output_dir/.sft-run.lock` names the live run that owns the folder (pid, host, start time).

A second `sft train` (or a resume) into a folder a live run holds would interleave two runs' checkpoints and leave a
folder of mixed files behind two exit codes of 0; an export, merge or predict of it would read an adapter mid-write.
Each is refused in one line naming the holder. The main process takes the lock before it writes anything and removes
it on exit; a lock left by a process that died on this host is said and taken over; one from another host is never
taken over silently (its process cannot be checked from here). Multi-process runs (accelerate, DeepSpeed) take it
once, in global rank 0.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sft.errors import UserError

LOCK_NAME = ".sft-run.lock"


def main_process() -> bool:
    """Global rank 0 (or no launcher): launchers set RANK for every process before Python starts."""
    return int(os.environ.get("RANK", "0")) == 0


def holder_of(folder: str | Path) -> dict | None:
    """The lock's holder, or None when the folder has no lock (an unreadable lock is a holder of unknown pid)."""
    path = Path(folder) / LOCK_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "started": "?"}


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def alive(holder: dict) -> bool | None:
    """True or False for a holder on this host; None where it cannot be told (another host, unreadable lock)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def refuse_if_live(folder: str | Path, doing: str) -> None:
    """Refuse `doing` on a folder a live run holds (the calling process itself excepted)."""
    holder = holder_of(folder)
    if holder is None or holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        return
    state = alive(holder)
    if state is False:
        return
    lock = Path(folder) / LOCK_NAME
    where = "a live run" if state else f"a run on another host ({lock}: remove it if that run is gone)"
    raise UserError(f"{folder}: held by {where}, {describe(holder)}; {doing} would mix with its files; wait for it "
                    "to end or choose another folder")


def _create(path: Path) -> bool:
    """Write the lock if none exists; False if one does."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(holder, handle)
    return True


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder` for this run; a folder this created and left empty (a refused run) is removed again."""
    if not main_process():
        yield
        return
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if not _create(path):
        refuse_if_live(folder, "training into it")
        print(f"[sft] {path}: left by a process that is gone ({describe(holder_of(folder))}); taking it over",
              file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
        if not _create(path):  # another run took it in between
            refuse_if_live(folder, "training into it")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
