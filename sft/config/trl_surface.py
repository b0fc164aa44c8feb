"""Every field of TRL's SFTConfig (transformers' TrainingArguments included) and ModelConfig, and how the toolkit
handles it (trl 1.16.0, transformers 5.23.0): passed through to the trainer, done by the toolkit itself (where), or
refused in one line when the recipe loads unless left at its default. tests/test_trl_keys.py fails on a field that
none of the three tables names, so a TRL or transformers upgrade that adds one is settled here first.

Why so many SFT keys have no effect of their own: sft/run/train.py loads the model itself (SFTTrainer gets an object,
not a name), passes its own collator and its own measured rows, and sets `dataset_kwargs={"skip_prepare_dataset":
True}`, so TRL's model loading, dataset preparation (tokenizing, truncation, shuffling, packing) and collator never
run.
"""

from __future__ import annotations

from dataclasses import fields

from trl import ModelConfig, SFTConfig

from sft.errors import UserError

# Honoured by transformers' Trainer or TRL's SFTTrainer as they are: the toolkit passes its SFTConfig straight
# through (some only get a toolkit default: sft/config/recipe.py TOOLKIT_DEFAULTS, EVAL_DEFAULTS).
TRAINER = frozenset("""
    num_train_epochs max_steps learning_rate lr_scheduler_type lr_scheduler_kwargs warmup_steps optim optim_args
    weight_decay adam_beta1 adam_beta2 adam_epsilon optim_target_modules gradient_accumulation_steps
    average_tokens_across_devices max_grad_norm label_smoothing_factor bf16_full_eval fp16_full_eval tf32
    activation_checkpointing_kwargs gradient_checkpointing_kwargs torch_compile torch_compile_backend
    torch_compile_mode liger_kernel_config use_cache neftune_noise_alpha torch_empty_cache_steps auto_find_batch_size
    logging_strategy logging_steps logging_first_step log_on_each_node logging_nan_inf_filter
    include_num_input_tokens_seen log_level log_level_replica disable_tqdm report_to run_name project
    trackio_space_id trackio_bucket_id trackio_static_space_id eval_strategy eval_steps eval_delay
    per_device_eval_batch_size eval_on_start eval_do_concat_batches eval_use_gather_object eval_accumulation_steps
    save_only_model save_strategy save_steps save_on_each_node save_total_limit enable_jit_checkpoint push_to_hub
    hub_token hub_private_repo hub_model_id hub_strategy hub_always_push hub_revision load_best_model_at_end
    greater_is_better ignore_data_skip restore_callback_states_from_checkpoint full_determinism seed data_seed
    use_cpu accelerator_config parallelism_config dataloader_drop_last dataloader_num_workers dataloader_pin_memory
    dataloader_persistent_workers dataloader_prefetch_factor dataloader_multiprocessing_context dataloader_in_order
    train_sampling_strategy ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers ddp_static_graph
    ddp_backend ddp_timeout fsdp fsdp_config deepspeed debug skip_memory_metrics local_rank
    router_aux_loss_coef loss_type
""".split())

# Done by the toolkit itself, where named.
LORA = "sft/model/targets.py lora_config (TRL's get_peft_config into PEFT's LoraConfig)"
QUANTIZED = "sft/model/loading.py quantization_config (bitsandbytes)"
TOOLKIT = {
    "output_dir": "sft/config/recipe.py (default outputs/<recipe name>), sft/run/guards.py check_output_dir",
    "per_device_train_batch_size": "sft/plan/estimate.py apply_auto (`auto`), then Trainer",
    "gradient_checkpointing": "sft/plan/estimate.py apply_auto (`auto`), sft/model/loading.py load_model "
                              "(8-bit/4-bit), then Trainer",
    "activation_checkpointing": "sft/plan/estimate.py apply_auto (the same switch as gradient_checkpointing), "
                                "then Trainer",
    "bf16": "sft/config/recipe.py (off without a GPU, refused when set there), then Trainer",
    "fp16": "sft/config/recipe.py (off without a GPU, refused when set there), then Trainer",
    "use_liger_kernel": "sft/model/loading.py liger_unavailable (off, said once, where Liger cannot patch the model)",
    "metric_for_best_model": "sft/eval/metrics.py check_metric_for_best_model (the generation metrics), then Trainer",
    "resume_from_checkpoint": "sft/run/train.py (true: the last checkpoint in output_dir)",
    "do_train": "sft/run/train.py (`sft train` always trains; `sft plan` and `sft check` stop before)",
    "trust_remote_code": "sft/model/loading.py load_config, load_processor, load_model",
    "chat_template_path": "sft/family/chat_template.py (a .jinja/.j2 file on the processor before any row renders)",
    "dataset_num_proc": "sft/labels/fit.py fit_to_length (processes measuring the rows)",
    "max_length": "sft/labels/fit.py fit_to_length (drop or shorten_prompt), sft/labels/collator.py, "
                  "sft/labels/packing.py",
    "packing": "sft/labels/packing.py (rows whole, for image rows too)",
    "packing_strategy": "sft/labels/packing.py refuse_unpackable (only bfd keeps every row whole)",
    "padding_free": "sft/labels/packing.py",
    "pad_to_multiple_of": "sft/labels/collator.py (unpacked batches; refused with packing or padding_free)",
    "completion_only_loss": "sft/labels/token_labels.py (the label contract; false: the whole conversation)",
    "assistant_only_loss": "sft/config/trl_keys.py (what the toolkit does for every family; said once)",
    "model_name_or_path": "sft/model/loading.py load_config, load_processor, load_model",
    "dtype": "sft/model/loading.py load_model (float32 without a GPU: sft/config/recipe.py)",
    "attn_implementation": "sft/model/loading.py load_model",
    "use_peft": "sft/family/parts.py choose_parts, " + LORA,
    "lora_r": LORA, "lora_alpha": LORA, "lora_dropout": LORA, "use_rslora": LORA, "use_dora": LORA,
    "lora_target_parameters": LORA + ", beside the chosen target_modules",
    "lora_target_modules": "sft/model/targets.py lora_targets",
    "lora_modules_to_save": "sft/family/parts.py (PEFT modules_to_save beside the `full` parts)",
    "load_in_8bit": QUANTIZED, "load_in_4bit": QUANTIZED,
    "bnb_4bit_quant_type": QUANTIZED + "; refused without load_in_4bit",
    "use_bnb_nested_quant": QUANTIZED + "; refused without load_in_4bit",
    "bnb_4bit_quant_storage": QUANTIZED + "; refused without load_in_4bit",
}

# Refused when the recipe loads unless one of the accepted values: (accepted, "<why>; <what to do instead>"), said
# as "<key> <value>: <why>; <what to do instead>".
REFUSED = {
    "model_init_kwargs": ((None,), "TRL ignores it when it is given a loaded model, and the toolkit loads the model "
                          "itself (sft/model/loading.py); use the recipe keys dtype, attn_implementation, load_in_8bit "
                          "or load_in_4bit instead"),
    "dataset_text_field": (("text",), "the toolkit reads rows by their shape (instruction, prompt/completion, "
                           "messages, conversations), not a text column; map your columns with column_map instead"),
    "dataset_kwargs": ((None,), "the toolkit measures and labels the rows itself and sets it to skip TRL's dataset "
                       "preparation; leave it unset (column_map, truncation and max_length shape the rows)"),
    "eos_token": ((None,), "the toolkit supervises the token with which the chat template closes each reply (the "
                  "tokenizer's EOS only where the template writes none), and TRL would set this after the rows are "
                  "labelled; give a template that closes the turn with it (chat_template_path) instead"),
    "pad_token": ((None,), "TRL reads it only for its own collator, which the toolkit replaces; padding uses the "
                  "tokenizer's pad token and is never supervised; set pad_token in the checkpoint's tokenizer "
                  "instead"),
    "truncation_mode": (("keep_start",), "TRL's truncation is not used (a completion or an image is never cut "
                        "here); a row longer than max_length is dropped or its prompt shortened: set truncation: "
                        "drop or shorten_prompt instead"),
    "shuffle_dataset": ((False,), "only TRL's dataset preparation reads it, which the toolkit skips; Trainer's "
                        "sampler already shuffles the training rows each epoch (seed, data_seed): leave it unset"),
    "eval_packing": ((None, False), "evaluation rows are never packed here (packing applies to training rows "
                     "only); leave it unset"),
    # Issue #18 measured it ending in an AttributeError traceback after the weights load (trl 1.16.0).
    "activation_offloading": ((False,), "not supported by the toolkit; use gradient_checkpointing (or "
                              "gradient_checkpointing: auto) to save activation memory"),
    "remove_unused_columns": ((False,), "Trainer would drop the columns the toolkit's collator reads (messages, "
                              "stored_images, the measured ids) once the weights have loaded; leave it false (the "
                              "toolkit's default)"),
    "length_column_name": (("length",), "the toolkit writes each row's measured tokens to the column `length`, "
                           "which group_by_length reads; leave it unset"),
    "label_names": ((None,), "the toolkit's collator writes the one `labels` tensor that SFTTrainer's loss reads, "
                    "and nothing reads this key; leave it unset"),
    "prediction_loss_only": ((False,), "Trainer's evaluation is the loss only already; the toolkit's metrics of "
                             "generated replies are switched by eval_generation: set eval_generation: false instead"),
    "include_for_metrics": (([],), "it feeds a compute_metrics function, which the toolkit does not take; its "
                            "metrics are scored on generated replies: choose them with eval_metrics instead"),
    "batch_eval_metrics": ((False,), "it feeds a compute_metrics function, which the toolkit does not take; its "
                           "metrics are scored on generated replies: choose them with eval_metrics instead"),
    "do_eval": ((False,), "evaluation runs when the recipe has eval rows (eval_file, eval_split_size or "
                "dataset_test_split), each epoch or as eval_strategy says; give eval rows instead"),
    "do_predict": ((False,), "`sft train` does not predict; run `sft predict` on the finished run instead"),
    "model_revision": (("main",), "the toolkit loads the checkpoint's default revision (sft/model/loading.py passes no "
                       "revision); download that revision to a folder and give it as model_name_or_path instead"),
    "lora_task_type": (("CAUSAL_LM",), "the toolkit trains replies through the language-model head only; leave it "
                       "CAUSAL_LM"),
}

MODEL_KEYS = frozenset(f.name for f in fields(ModelConfig))
FOUR_BIT_KEYS = ("bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")


def shown(value) -> str:
    """A value as a recipe writes it: true, false and null as YAML spells them, text in quotes."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


def accepted(key: str, training: SFTConfig) -> tuple:
    """The values of the refused `key` that pass: its default, and any the toolkit does anyway."""
    if key == "do_eval":  # transformers sets it true with any eval_strategy; alone it changes nothing
        return (training.eval_strategy != "no",)
    return REFUSED[key][0]


def refuse_unhonoured(training: SFTConfig, model: ModelConfig) -> None:
    """One line for the first key that would be ignored or end in a traceback after the weights load."""
    for key, (_, why) in REFUSED.items():
        value = getattr(model if key in MODEL_KEYS else training, key)
        if value not in accepted(key, training):
            raise UserError(f"{key} {shown(value)}: {why}")
    if training.pad_to_multiple_of and (training.packing or training.padding_free):
        mode = "packing" if training.packing else "padding_free"
        raise UserError(f"pad_to_multiple_of {training.pad_to_multiple_of} with {mode}: packed rows are laid end to "
                        "end without padding (sft/labels/packing.py); drop pad_to_multiple_of")
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    for key in FOUR_BIT_KEYS:
        if not model.load_in_4bit and getattr(model, key) != defaults[key]:
            raise UserError(f"{key} {shown(getattr(model, key))}: applies to 4-bit weights only and load_in_4bit is "
                            "off; set load_in_4bit: true or drop it")
