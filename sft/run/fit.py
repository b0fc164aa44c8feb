"""Fit, the fourth stage of `sft train`: the old run cleared as decided (overwrite_output_dir), then Trainer's loop,
with Ctrl-C/SIGTERM saving a checkpoint, and a diverged loss or a full disk stopping the run in one line.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from transformers.trainer_utils import TrainOutput

from sft.errors import UserError
from sft.run.build import Built
from sft.run.checkpoints import last_checkpoint
from sft.run.decide import RunSetup
from sft.run.guards import clear_output_dir
from sft.run.log import log

FULL = 1024**2  # bytes free under which a failed save is taken for a full disk


def out_of_space(exc: BaseException, folder: str) -> bool:
    """Whether `exc` came from a full disk: ENOSPC or the OS's words for it anywhere in its chain (safetensors and
    torch.save wrap the OSError in their own errors), or no room left in `folder` now (torch.save's message only says
    the write failed)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC or "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return Path(folder).is_dir() and shutil.disk_usage(folder).free < FULL


def fit(setup: RunSetup, built: Built) -> TrainOutput:
    """Train; raises UserError on divergence and KeyboardInterrupt after a signal's checkpoint."""
    args, trainer = setup.recipe.training, built.trainer
    if trainer.is_world_process_zero():
        clear_output_dir(args.output_dir, setup.replaces, resuming=bool(setup.resume))
    built.interrupt.install()
    try:
        result = trainer.train(resume_from_checkpoint=setup.resume)
    except Exception as exc:
        if not out_of_space(exc, args.output_dir):
            raise
        raise UserError(f"{args.output_dir}: no space left on the device while saving at step "
                        f"{trainer.state.global_step}; last complete checkpoint: "
                        f"{last_checkpoint(args.output_dir) or 'none'}; free space, then resume with "
                        "--resume_from_checkpoint true") from None
    finally:
        built.interrupt.uninstall()
    if built.divergence.bad is not None:
        raise UserError(built.divergence.message(args))
    if built.interrupt.signal_name is not None:
        log(f"stopped by {built.interrupt.signal_name} at step {trainer.state.global_step}; checkpoint: "
            f"{last_checkpoint(args.output_dir)}; resume with: make train RECIPE={setup.recipe.path} "
            f"ARGS=\"--resume_from_checkpoint true\"")
        raise KeyboardInterrupt
    return result
