"""Fit, the fourth stage of `sft train`: the old run cleared as decided (overwrite_output_dir), then Trainer's loop,
with Ctrl-C/SIGTERM saving a checkpoint and a diverged loss stopping the run in one line.
"""

from __future__ import annotations

from transformers.trainer_utils import TrainOutput

from sft.errors import UserError
from sft.run.build import Built
from sft.run.decide import RunSetup
from sft.run.guards import clear_output_dir, last_checkpoint
from sft.run.log import log


def fit(setup: RunSetup, built: Built) -> TrainOutput:
    """Train; raises UserError on divergence and KeyboardInterrupt after a signal's checkpoint."""
    args, trainer = setup.recipe.training, built.trainer
    if trainer.is_world_process_zero():
        clear_output_dir(args.output_dir, setup.replaces, resuming=bool(setup.resume))
    built.interrupt.install()
    try:
        result = trainer.train(resume_from_checkpoint=setup.resume)
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
