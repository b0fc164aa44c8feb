"""What keeps a run from being lost or silently wrong: output-dir protection, Ctrl-C/SIGTERM checkpoints and a
divergence guard. The two callbacks use Trainer's own `control` flags, so saving and stopping stay Trainer's job.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback

from sft.errors import UserError
from sft.run.checkpoints import last_checkpoint


def check_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> list[str]:
    """Refuse to train into a folder holding another run, unless resuming or `overwrite_output_dir`. Nothing is removed
    here: returns the old run's checkpoint folders that `clear_output_dir` removes once training is about to start."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*") if p.is_dir())
    finished = (out / "adapter_model.safetensors").is_file() or (out / "model.safetensors").is_file()
    if not (checkpoints or finished) or resuming:
        return []
    if not overwrite:
        held = f"checkpoints {', '.join(checkpoints)}" if checkpoints else "a finished run"
        raise UserError(f"{out}: holds {held} of another run; resume with --resume_from_checkpoint true, "
                        "pass --overwrite_output_dir true to replace it, or choose another output_dir")
    return checkpoints


def clear_output_dir(output_dir: str, checkpoints: list[str], resuming: bool) -> None:
    """Training starts: the old run's checkpoints (overwrite_output_dir) and, unless resuming, an earlier run's eval
    predictions are removed, each said."""
    out = Path(output_dir)
    for name in checkpoints:
        shutil.rmtree(out / name)
    if checkpoints:
        print(f"[sft] overwrite_output_dir: removed {len(checkpoints)} old checkpoint(s) from {out}: "
              f"{', '.join(checkpoints)}", file=sys.stderr)
    if not resuming and (out / "eval_predictions").is_dir():  # a fresh run: no earlier run's predictions beside it
        shutil.rmtree(out / "eval_predictions", ignore_errors=True)
        print(f"[sft] removed an earlier run's eval_predictions/ from {out}", file=sys.stderr)


class SaveOnInterrupt(TrainerCallback):
    """SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. A second signal stops at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal_name is not None:  # asked twice: do not wait for the checkpoint
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\n[sft] {self.signal_name}: saving a checkpoint after this step, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal_name is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class DivergenceGuard(TrainerCallback):
    """Stop at the first non-finite logged loss or gradient norm, without checkpointing the broken weights."""

    def __init__(self):
        self.bad: dict | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                self.bad = {"step": state.global_step, "what": key, "value": value}
                control.should_training_stop = True
                control.should_save = False  # the weights at this step are already broken
                break
        return control

    def message(self, args) -> str:
        last = last_checkpoint(args.output_dir)
        hint = ("fp16 overflows easily: prefer bf16 on Ampere or newer, or lower learning_rate"
                if args.fp16 else "lower learning_rate (or raise warmup_steps), check the data for extreme rows")
        return (f"training diverged: {self.bad['what']} became {self.bad['value']} at step {self.bad['step']}; "
                f"no adapter was written; last good checkpoint: {last or 'none'}; {hint}")
