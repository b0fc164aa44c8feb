"""`sft train RECIPE`: one linear main() — recipe, seed, processor, data, model, trainer, train, save."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, set_seed

from sft.config.recipe import Recipe
from sft.data.arrow_rows import load_rows
from sft.data.eval_split import split_rows
from sft.data.mixture import Mixture, load_mixture
from sft.data.sources import split_sources
from sft.errors import UserError
from sft.eval.generation import reference
from sft.eval.metrics import bleu_tokenizer, check_metric_for_best_model, default_metrics
from sft.family.image_budget import match_model_to_processor
from sft.family.parts import PARTS, parameter_counts, refuse_untold, set_trainable
from sft.labels.fit import FitReport, fit_to_length
from sft.labels.labelling import Labeller, make_collator
from sft.labels.packing import PackedBatches, pack_rows, pack_summary, packing_mode, refuse_unpackable
from sft.model.loading import liger_unavailable, load_config, load_model, load_processor_and_family, meta_model
from sft.model.targets import describe_targets, lora_config, not_quantized
from sft.outputs.manifest import losses, plot_loss, write_manifest
from sft.pages.run_report import write_report
from sft.plan.estimate import apply_auto
from sft.run.guards import DivergenceGuard, SaveOnInterrupt, check_output_dir, last_checkpoint
from sft.run.trainer import GenerationMetricsSFTTrainer


def log(message: str) -> None:
    print(f"[sft] {message}", file=sys.stderr, flush=True)


def prepare_split(recipe: Recipe, collator: Labeller, name: str, rows, mixture: Mixture | None = None):
    """Rows of one split, measured against max_length; prints the kept/dropped/truncated counts (and, for a
    `datasets` mixture, each source's)."""
    kept, report = fit_to_length(rows, collator, recipe.training.max_length, recipe.data.truncation, name,
                                 num_proc=recipe.training.dataset_num_proc)
    log(str(report))
    for line in mixture.fitted(name, kept) if mixture else ():
        log(line)
    return kept, report


def check_fit(report: FitReport, kept_rows: int, limit: float) -> None:
    """Refuse to train on data that mostly does not fit, or that supervises nothing."""
    if kept_rows == 0:
        raise UserError(f"{report.name}: no row fits max_length; nothing would be supervised")
    if report.dropped_fraction > limit:
        raise UserError(f"{report.name}: {report.counts['dropped']} of {report.total} rows "
                        f"({report.dropped_fraction:.1%}) do not fit max_length, more than max_dropped_fraction "
                        f"{limit:.0%}; raise max_length, set truncation: shorten_prompt, or clean the data")


def choose_eval_metrics(recipe: Recipe, eval_rows) -> tuple[list[str], str]:
    """The generation metrics of this run and why (the recipe's `eval_metrics`, or what fits the references)."""
    if eval_rows is None or not recipe.data.eval_generation:
        return [], "no generation at eval"
    if recipe.data.eval_metrics:
        return list(recipe.data.eval_metrics), "eval_metrics in the recipe"
    metrics, why = default_metrics([reference(row) for row in eval_rows])
    return metrics, f"chosen from the data: {why}; set eval_metrics to choose"


def main(recipe: Recipe, extra_callbacks: list | None = None) -> dict:
    data, args, model_args = recipe.data, recipe.training, recipe.model
    for notice in recipe.notices:
        log(f"notice: {notice}")

    # ---- plan: `auto` checkpointing and micro-batch, fused kernels where they run ---------------------------------
    plan = apply_auto(recipe)
    for decision in plan.decisions if plan else ():
        log(f"plan: {decision}")
    if args.use_liger_kernel:
        reason = liger_unavailable(load_config(model_args, args.trust_remote_code).model_type)
        if reason:
            log(f"notice: {reason}")
            args.use_liger_kernel = False

    # ---- seed ------------------------------------------------------------------------------------------------
    set_seed(args.seed)

    # ---- processor, family and collator: the family is found here once and passed on ------------------------
    processing_class, family = load_processor_and_family(model_args, args.trust_remote_code, data.family,
                                                         args.chat_template_path, data.image_budget,
                                                         data.video_budget)
    log(f"family: {family.name}, found by {family.found_by}")
    refuse_untold(family, recipe.parts)  # a part the table cannot tell apart stays frozen
    refuse_unpackable(family, args)  # packing / padding_free: refused here, before any weights load, if not exact
    collator = make_collator(processing_class, family, date_string=data.date_string, max_length=args.max_length,
                             pad_to_multiple_of=args.pad_to_multiple_of, completion_only_loss=args.completion_only_loss)

    # ---- output dir: never another run's checkpoints by accident -------------------------------------------
    resume = args.resume_from_checkpoint
    resume = True if str(resume).lower() == "true" else resume
    check_output_dir(args.output_dir, resuming=bool(resume), overwrite=data.overwrite_output_dir)
    if resume is True and last_checkpoint(args.output_dir) is None:
        raise UserError(f"{args.output_dir}: no checkpoint to resume from")

    # ---- data: validated, measured, counted before any weights load ----------------------------------------
    # train_file or dataset_name[dataset_train_split]; eval_file, dataset_name[dataset_test_split] or a held-out share.
    if data.datasets:  # several sources, each sized by fraction or weight, eval rows per source (sft/data/mixture.py)
        mixture = load_mixture(data, args.seed)
        train_rows, eval_rows, eval_split = mixture.train, mixture.eval, mixture.eval_split
    else:
        mixture, sources = None, dict(split_sources(data))
        train_rows = load_rows(sources["train"], data.image_root, data.column_map)
        eval_rows = load_rows(sources["eval"], data.image_root, data.column_map) if "eval" in sources else None
        eval_split = None
    if data.eval_split_size and not mixture:
        where = sources["train"].name
        train_rows, eval_rows, eval_split = split_rows(train_rows, data.eval_split_size, data.eval_split_seed, where)
        log(f"eval split: {eval_split['eval_rows']} of {len(train_rows) + len(eval_rows)} rows of "
            f"{where} held out (eval_split_size {data.eval_split_size:g}, seed {data.eval_split_seed})")
    train_rows, train_report = prepare_split(recipe, collator, "train", train_rows, mixture)
    check_fit(train_report, len(train_rows), data.max_dropped_fraction)
    train_set, batches, packed = train_rows, collator, packing_mode(args)
    if packed:  # packs of rows laid end to end (sft/labels/packing.py); evaluation and generation stay unpacked
        refuse_unpackable(family, args, image_rows=sum(count > 0 for count in train_rows["image_count"]))
        train_set, batches = pack_rows(train_rows, args.max_length, packed), PackedBatches(collator, train_rows, family)
        packed = f"{packed}: {pack_summary(train_set, args.per_device_train_batch_size)}"
        log(packed)
        requested, args.packing, args.padding_free = (args.packing, args.padding_free), False, False  # done here:
        # TRL's SFTTrainer refuses a custom collator with either key; they are set back once it is built.
    reports = [train_report]
    if eval_rows is not None:
        eval_rows, eval_report = prepare_split(recipe, collator, "eval", eval_rows, mixture)
        check_fit(eval_report, len(eval_rows), data.max_dropped_fraction)
        reports.append(eval_report)

    # ---- eval metrics: what fits the references; refused before weights load if best-model needs another -----
    eval_metrics, why = choose_eval_metrics(recipe, eval_rows)
    if eval_metrics:
        bleu = f"; BLEU tokenize {bleu_tokenizer([reference(r) for r in eval_rows])}" if "bleu" in eval_metrics else ""
        log(f"eval metrics: {', '.join(eval_metrics)} ({why}{bleu})")
        check_metric_for_best_model(args.metric_for_best_model, eval_metrics)
    elif eval_rows is not None and args.metric_for_best_model not in (None, "loss", "eval_loss"):
        # Kept as before this check existed (runs shorter than an epoch never evaluate); Trainer names it if one does.
        log(f"notice: eval_generation is off, so no evaluation reports metric_for_best_model "
            f"{args.metric_for_best_model!r}")
    predictions_dir = Path(args.output_dir) / "eval_predictions"
    if not resume and predictions_dir.is_dir():
        shutil.rmtree(predictions_dir, ignore_errors=True)  # a fresh run: no earlier run's predictions beside it

    # ---- model: what trains is chosen on the architecture first (meta device), so a bad choice costs no load -----
    peft_config = lora_config(model_args, meta_model(model_args, args.trust_remote_code), family, recipe.parts)
    model = load_model(model_args, args.gradient_checkpointing, args.trust_remote_code,
                       fp32_upcast=data.kbit_fp32_upcast, int8_threshold=data.llm_int8_threshold, family=family)
    match_model_to_processor(model, processing_class)  # LLaVA-NeXT: the grids an image budget left (image_budget.py)
    if peft_config is None:
        set_trainable(model, family, recipe.parts)  # full fine-tuning of the `full` parts, the rest frozen
    lora_modules = sorted(peft_config.target_modules) if peft_config else []
    log(f"trains: {recipe.parts.describe()}" + (f"; LoRA on {describe_targets(lora_modules)}" if lora_modules else "")
        + (f"; saved whole: {', '.join(peft_config.modules_to_save)}" if peft_config and peft_config.modules_to_save
           else ""))
    if family.packing == "mrope" and isinstance(batches, PackedBatches):
        batches.rope_index = model.model.get_rope_index  # Qwen's M-RoPE positions of each packed example
    model_setup = {"family": family.name, "found_by": family.found_by, "packing": packed, "lora_modules": lora_modules,
                   "parts": {part: recipe.parts.choice(part) for part in PARTS},
                   "modules_to_save": list(peft_config.modules_to_save or []) if peft_config else [],
                   "learning_rates": dict(recipe.parts.learning_rates),
                   "not_quantized": not_quantized(family) if model_args.load_in_8bit or model_args.load_in_4bit
                   else None, "params": parameter_counts(model, family)}

    # ---- trainer -----------------------------------------------------------------------------------------------
    # The collator builds input_ids and labels itself, so TRL must not tokenize the rows again.
    args.dataset_kwargs = {"skip_prepare_dataset": True}
    interrupt, divergence = SaveOnInterrupt(), DivergenceGuard()
    callbacks = [interrupt, divergence, *(extra_callbacks or [])]
    if eval_rows is not None and data.early_stopping_patience > 0 and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data.early_stopping_patience))
    # chat_template_path is already on the processor (sft/family/chat_template.py): TRL must not apply it again.
    chat_template_path, args.chat_template_path = args.chat_template_path, None
    trainer = GenerationMetricsSFTTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_rows, data_collator=batches,
        processing_class=processing_class, peft_config=peft_config, callbacks=callbacks,
        generation_rows=list(eval_rows) if eval_metrics else None, eval_metrics=eval_metrics,
        predictions_dir=predictions_dir, family=family, parts=recipe.parts,
    )
    model_setup["trainable_params"] = parameter_counts(trainer.model, family, trainable_only=True)
    log("trainable parameters: " + ", ".join(f"{part} {count:,}" for part, count in
                                            model_setup["trainable_params"].items()))
    args.chat_template_path = chat_template_path  # the manifest's resolved recipe records it
    if packed:  # the manifest's resolved recipe says what was asked (TRL reads both keys only when it is built)
        args.packing, args.padding_free = requested

    # ---- train -------------------------------------------------------------------------------------------------
    interrupt.install()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        interrupt.uninstall()
    if divergence.bad is not None:
        raise UserError(divergence.message(args))
    if interrupt.signal_name is not None:
        log(f"stopped by {interrupt.signal_name} at step {trainer.state.global_step}; checkpoint: "
            f"{last_checkpoint(args.output_dir)}; resume with: make train RECIPE={recipe.path} "
            f"ARGS=\"--resume_from_checkpoint true\"")
        raise KeyboardInterrupt

    # ---- evaluate and save -----------------------------------------------------------------------------------
    metrics = dict(result.metrics)
    if torch.cuda.is_available():
        metrics["gpu_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    if eval_rows is not None:
        metrics |= trainer.evaluate(predictions_name="final")  # the model saved below (the best one, if kept)
    out = Path(args.output_dir)
    trainer.save_model(str(out))  # every rank takes part (DeepSpeed gathers); only the main one writes
    trainer.save_state()
    first, last = losses(trainer.state.log_history)
    metrics |= {"first_loss": first, "last_loss": last}
    if not trainer.is_world_process_zero():
        return metrics
    processing_class.save_pretrained(str(out))
    write_manifest(recipe, out, reports, metrics, base_config=model.config,
                   evaluation={"metrics": eval_metrics, "why": why, "split": eval_split} if eval_rows is not None
                   else None, model_setup=model_setup, datasets=mixture.manifest() if mixture else None)
    plot_loss(trainer.state.log_history, out / "loss_curve.png")
    log(f"report: {write_report(out)}")  # recipe, curves, each evaluation's predictions beside the rows' images
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                        if k in ("first_loss", "last_loss", "eval_loss", *(f"eval_{m}" for m in eval_metrics))
                        and v is not None)
    log(f"done: {summary}; wrote {out}")
    return metrics
