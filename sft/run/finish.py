"""Finish, the last stage of `sft train`: the final evaluation, the model and processor saved, the manifest, the loss
curve and the run's report page, then one summary line.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.trainer_utils import TrainOutput

from sft.outputs.manifest import losses, plot_loss, write_manifest
from sft.pages.run_report import write_report
from sft.run.build import Built
from sft.run.decide import RunSetup
from sft.run.log import log
from sft.run.prepare import RunData


def finish(setup: RunSetup, data: RunData, built: Built, result: TrainOutput) -> dict:
    """Evaluate and save; returns the run's metrics (first/last loss, eval metrics, GPU peak memory)."""
    recipe, trainer = setup.recipe, built.trainer
    metrics = dict(result.metrics)
    if torch.cuda.is_available():
        metrics["gpu_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    if data.eval_rows is not None:
        metrics |= trainer.evaluate(predictions_name="final")  # the model saved below (the best one, if kept)
    out = Path(recipe.training.output_dir)
    trainer.save_model(str(out))  # every rank takes part (DeepSpeed gathers); only the main one writes
    trainer.save_state()
    first, last = losses(trainer.state.log_history)
    metrics |= {"first_loss": first, "last_loss": last}
    if not trainer.is_world_process_zero():
        return metrics
    setup.processing.processing_class.save_pretrained(str(out))
    evaluation = ({"metrics": data.eval_metrics, "why": data.metrics_why, "split": data.eval_split}
                  if data.eval_rows is not None else None)
    write_manifest(recipe, out, data.reports, metrics, base_config=built.model.config, evaluation=evaluation,
                   model_setup=built.model_setup, datasets=data.mixture.manifest() if data.mixture else None)
    plot_loss(trainer.state.log_history, out / "loss_curve.png")
    log(f"report: {write_report(out)}")  # recipe, curves, each evaluation's predictions beside the rows' images
    shown = ("first_loss", "last_loss", "eval_loss", *(f"eval_{m}" for m in data.eval_metrics))
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in shown and v is not None)
    log(f"done: {summary}; wrote {out}")
    return metrics
