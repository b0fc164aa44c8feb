"""TRL's SFTTrainer plus one thing it lacks for this data: generation-based exact-match accuracy at eval time."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import Trainer
from trl import SFTTrainer

from sft.generation import exact_match, generate_replies, max_reply_tokens, reference


class GenerationAccuracySFTTrainer(SFTTrainer):
    """Adds `eval_accuracy` (greedy generation vs. the reference reply) to every evaluation's metrics.

    It is added inside `evaluation_loop`, before Trainer logs the metrics and hands them to the callbacks, so
    `metric_for_best_model: accuracy` and EarlyStoppingCallback can use it like any other metric.
    """

    def __init__(self, *args, generation_rows: list[dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.generation_rows = generation_rows
        # TRL 1.16 casts the LoRA weights of a quantized model to bf16 here, but PEFT's load_adapter restores them
        # in fp32 when a run resumes, so the resumed run would go on at another precision than the one it left
        # (max adapter difference 1.7e-3 after 8 steps on the tiny Mllama). Keep them fp32 from the start; compute
        # still runs in bf16 under autocast on GPUs.
        for param in self.model.parameters():
            if param.requires_grad and param.dtype == torch.bfloat16:
                param.data = param.data.float()

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

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if self.generation_rows:
            collator = self.data_collator
            model = self.accelerator.unwrap_model(self.model)
            replies = generate_replies(model, collator, self.generation_rows,
                                       batch_size=self.args.per_device_eval_batch_size,
                                       max_new_tokens=max_reply_tokens(collator, self.generation_rows))
            output.metrics[f"{metric_key_prefix}_accuracy"] = exact_match(
                replies, [reference(row) for row in self.generation_rows])
        return output
