"""TRL's SFTTrainer plus what it lacks for this data: metrics on generated replies at eval time, and the replies."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import Trainer
from trl import SFTTrainer

from sft.eval.boxes import box_scores
from sft.eval.generation import generate, max_reply_tokens, reference
from sft.eval.metrics import score
from sft.eval.predictions import prediction_records, report_predictions, write_predictions
from sft.family.families import Family
from sft.family.parts import Parts, split_learning_rates
from sft.labels.packing import EpochSampler


class GenerationMetricsSFTTrainer(SFTTrainer):
    """Adds the generation metrics (`eval_accuracy`, `eval_rouge_l`, `eval_chrf`, ...: sft/eval/metrics.py) of greedy
    replies to every evaluation, and writes the replies to `predictions_dir/step-N.jsonl`.

    The metrics are added inside `evaluation_loop`, before Trainer logs them and hands them to the callbacks, so
    `metric_for_best_model: rouge_l` and EarlyStoppingCallback use them like any other metric.
    """

    def __init__(self, *args, generation_rows: list[dict] | None = None, eval_metrics: list[str] | None = None,
                 predictions_dir: str | Path | None = None, family: Family | None = None, parts: Parts | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.family, self.parts = family, parts
        self.generation_rows = generation_rows
        self.eval_metrics = list(eval_metrics or [])
        self.predictions_dir = Path(predictions_dir) if predictions_dir is not None else None
        self.predictions_name: str | None = None  # set by `evaluate(predictions_name=...)`; else step-N
        # TRL 1.16 casts the LoRA weights of a quantized model to bf16 here, but PEFT's load_adapter restores them
        # in fp32 when a run resumes, so the resumed run would go on at another precision than the one it left
        # (max adapter difference 1.7e-3 after 8 steps on the tiny Mllama). Keep them fp32 from the start; compute
        # still runs in bf16 under autocast on GPUs.
        for param in self.model.parameters():
            if param.requires_grad and param.dtype == torch.bfloat16:
                param.data = param.data.float()

    def _get_train_sampler(self, train_dataset=None):
        """Packs made afresh each epoch (sft/labels/packing.py) come through their own sampler: it asks for the
        epoch's packs, in an order the seed and the epoch decide."""
        packs = getattr(self.data_collator, "packs", None)
        if packs is not None and train_dataset in (None, self.train_dataset):
            return EpochSampler(packs, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def num_examples(self, dataloader) -> int:
        """An epoch's packs, not every planned epoch's (the dataset holds them all; the sampler takes one)."""
        packs = getattr(self.data_collator, "packs", None)
        return len(packs) if packs is not None and dataloader.dataset is self.train_dataset else \
            super().num_examples(dataloader)

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with each part that has its own learning rate in its own parameter groups."""
        optimizer = super().create_optimizer(model)
        if self.parts is not None and self.parts.learning_rates:
            split_learning_rates(optimizer, self.model if model is None else model, self.family, self.parts)
            rates = sorted({(g["part"], g["lr"]) for g in optimizer.param_groups})
            print("[sft] learning rates: " + ", ".join(f"{part} {lr:g}" for part, lr in rates), file=sys.stderr)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # TRL 1.16's fused LM head takes hidden states from `model.base_model`. Llama 4 (transformers 5.23) merges
        # image features in its top-level forward and has no backbone attribute, so `base_model` is the model itself
        # and the fused path fails ("'Llama4CausalLMOutputWithPast' object has no attribute 'last_hidden_state'").
        # Such a model computes the loss from the labels itself, as under transformers' Trainer.
        inner = self.accelerator.unwrap_model(model)
        inner = inner.get_base_model() if isinstance(inner, PeftModel) else inner
        if inner.base_model is inner:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def evaluate(self, *args, predictions_name: str | None = None, **kwargs) -> dict[str, float]:
        """Trainer's evaluate; `predictions_name` names the predictions file instead of `step-N` (the final
        evaluation of the best model runs at the last step, whose own file it must not replace)."""
        self.predictions_name = predictions_name
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.predictions_name = None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if self.generation_rows and self.eval_metrics:
            rows, collator = self.generation_rows, self.data_collator
            references = [reference(row, collator) for row in rows]  # once: a grounding row loads its images
            generated = generate(self.accelerator.unwrap_model(self.model), collator, rows,
                                 batch_size=self.args.per_device_eval_batch_size,
                                 max_new_tokens=max_reply_tokens(collator, references, rows=rows))
            predictions = [g.reply for g in generated]
            scores = score(self.eval_metrics, predictions, references)
            boxes, box_rows = box_scores(collator, rows, predictions)  # grounding rows: IoU of the boxes read back
            output.metrics.update({f"{metric_key_prefix}_{name}": v for name, v in {**scores.overall, **boxes}.items()})
            if self.predictions_dir is not None and self.is_world_process_zero():
                records = prediction_records(rows, [g.prompt for g in generated], predictions, references,
                                             scores.per_row, [g.reasoning for g in generated], box_rows)
                step = self.state.global_step
                path = write_predictions(self.predictions_dir / f"{self.predictions_name or f'step-{step}'}.jsonl",
                                         records)
                report_predictions(records, path, step, self.args.report_to or [],
                                   self.callback_handler.callbacks)
        return output
