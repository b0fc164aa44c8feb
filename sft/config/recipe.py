"""Recipes: flat YAML read by TRL's own parser into `DataArguments`, `SFTConfig` and `ModelConfig`.

Every key is a documented dataclass field (TRL's, transformers' or ours below); `--key value` on the command line
overrides the file; an unknown key is an error that names it and its line.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import ModelConfig, SFTConfig, TrlParser

from sft.config.data_arguments import DataArguments
from sft.config.trl_keys import check_trl_keys
from sft.errors import UserError
from sft.family.parts import DEFAULT_PARTS, Parts, choose_parts

# The toolkit's defaults where they differ from TRL's (a recipe or the command line overrides each).
TOOLKIT_DEFAULTS = {
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    # lora_target_modules stays unset: the language model's attention layers, chosen on the loaded model
    # (sft.model.targets.lora_targets), written to the manifest and printed by `sft plan`.
    "report_to": "none",
    # Batches of similar length (the `length` column measured before training) waste little on padding.
    "train_sampling_strategy": "group_by_length",
    "logging_steps": 5,
    # Our dataset keeps `messages`/`stored_images` for the collator; Trainer would drop them as "unused".
    "remove_unused_columns": False,
}

EVAL_DEFAULTS = {"eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True,
                 "save_total_limit": 2}


# SFTConfig keys that also take the value `auto`: the plan chooses them for the recipe's GPU
# (sft.plan.estimate.apply_auto). TRL's parser knows only their own types (bool, int), so `auto` is taken out
# before it parses.
AUTO_KEYS = ("gradient_checkpointing", "per_device_train_batch_size")


@dataclass
class Recipe:
    """A parsed recipe: where it came from and its three groups of settings."""

    path: Path | None
    data: DataArguments
    training: SFTConfig
    model: ModelConfig
    notices: list[str] = field(default_factory=list)  # printed when training starts
    declared_dtype: str | None = None  # the recipe's dtype before any CPU fallback (what `sft plan` plans for)
    auto: frozenset[str] = frozenset()  # keys set to `auto`, chosen by the plan (sft.plan.estimate.apply_auto)
    auto_choices: dict = field(default_factory=dict)  # key -> {"value", "why"}, once chosen (written to the manifest)
    parts: Parts = DEFAULT_PARTS  # what trains (sft/family/parts.py)


def _parse(parser: TrlParser, overrides: list[str] | None, path: Path | None):
    try:
        return parser.parse_args_and_config(args=list(overrides or []), return_remaining_strings=True)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path or 'recipe'}: {exc}") from None


def make_parser() -> TrlParser:
    parser = TrlParser((DataArguments, SFTConfig, ModelConfig), allow_abbrev=False)  # no silent prefixes
    parser.set_defaults_with_config(**TOOLKIT_DEFAULTS)
    return parser


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"\s*{re.escape(key)}\s*:", line):
            return number
    return 1


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _cpu_only(config: dict, notices: list[str]) -> None:
    """Without a GPU a recipe still runs: mixed precision off, weights in fp32."""
    switched = [key for key in ("bf16", "fp16") if config.get(key)]
    config["bf16"], config["fp16"] = False, False
    config.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator
    # Several CPU processes (accelerate launch): DDP needs accelerate's CPU mode (gloo); DeepSpeed refuses CPU
    # mode but runs over gloo when the backend is named (accelerate 1.15, deepspeed 0.19).
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        config.setdefault("ddp_backend", "gloo")
    else:
        config.setdefault("use_cpu", True)
    if config.get("dtype") in ("bfloat16", "float16"):
        switched.append(f"dtype {config['dtype']}")
        config["dtype"] = "float32"
    notices.append("no GPU found: training on CPU in fp32" + (f" ({', '.join(switched)} off)" if switched else ""))


def _take_auto(config: dict, overrides: list[str]) -> tuple[set[str], list[str], dict]:
    """Keys set to `auto` in the file or on the command line (a command-line value replaces the file's `auto`).

    Returns the auto keys, the overrides without them, and the file's own values of keys the command line set to
    `auto` (the effective batch a file states stays the target when `--per_device_train_batch_size auto`).
    """
    auto = {key for key in AUTO_KEYS if str(config.get(key)).lower() == "auto"}
    for key in auto:
        del config[key]
    kept, stated, index = [], {}, 0
    while index < len(overrides):
        item = overrides[index]
        key, _, inline = item[2:].partition("=") if item.startswith("--") else ("", "", "")
        if key in AUTO_KEYS:
            value = inline if "=" in item else (overrides[index + 1] if index + 1 < len(overrides) else "")
            step = 1 if "=" in item else 2
            if value.lower() == "auto":
                auto.add(key)
                if key in config:
                    stated[key] = config.pop(key)
                index += step
                continue
            auto.discard(key)
        kept.append(item)
        index += 1
    return auto, kept, stated


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, cuda: bool | None = None) -> Recipe:
    """Parse `path` (YAML) with command-line style `overrides` (`--key value`) into a Recipe."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    parser = make_parser()
    known = {action.dest for action in parser._actions}
    config: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: recipe not found")
        text = path.read_text(encoding="utf-8")
        try:
            config = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(config, dict):
            raise UserError(f"{path}:1: a recipe is a YAML mapping of keys to values")
        for key in config:
            if key not in known:
                raise UserError(f"{path}:{_line_of(text, key)}: unknown key {key!r}{_did_you_mean(key, known)}")
    notices: list[str] = []
    auto, overrides, stated = _take_auto(config, list(overrides or []))
    declared_dtype = config.get("dtype")
    if not cuda:
        _cpu_only(config, notices)
    parser.set_defaults_with_config(**config)
    data, training, model, extra = _parse(parser, overrides, path)
    has_eval = data.eval_file or data.eval_split_size or (data.dataset_name and data.dataset_test_split) or any(
        entry.test_split for entry in data.datasets)
    if has_eval and "eval_strategy" not in config and training.eval_strategy == "no":
        # Eval rows (a file, a test split or a held-out share) mean: evaluate and checkpoint each epoch, keep the
        # best (what early stopping needs).
        parser.set_defaults_with_config(**EVAL_DEFAULTS)
        data, training, model, extra = _parse(parser, overrides, path)
    for item in extra:
        if item.startswith("--"):
            raise UserError(f"unknown option {item}{_did_you_mean(item[2:], known)}")
    if extra:
        raise UserError(f"unexpected arguments: {' '.join(extra)}")
    check_trl_keys(training, model, notices)
    parts = choose_parts(data, model)
    given = set(config) | {item[2:].partition("=")[0] for item in overrides if item.startswith("--")}
    idle = sorted(key for key in given if key.startswith("lora_") or key in ("use_rslora", "use_dora"))
    if idle and not parts.uses_peft:
        notices.append(f"{', '.join(idle)}: no part trains with LoRA ({parts.describe()}), so they do nothing")
    if data.train_file is None and data.dataset_name is None and not data.datasets:
        raise UserError(f"{path or 'recipe'}: train_file is required (or dataset_name, or datasets)")
    if not cuda and (training.bf16 or training.fp16):
        raise UserError("bf16/fp16 need a GPU; none was found")
    if training.output_dir in (None, "trainer_output"):
        training.output_dir = str(Path("outputs") / (path.stem if path else "run"))
    if "--dtype" in (overrides or []):
        declared_dtype = model.dtype
    if "per_device_train_batch_size" in auto and data.effective_batch_size is None:
        if "per_device_train_batch_size" not in stated:
            raise UserError("per_device_train_batch_size: auto needs effective_batch_size (rows per optimizer step "
                            "on one GPU), e.g. effective_batch_size: 4")
        data.effective_batch_size = int(stated["per_device_train_batch_size"]) * training.gradient_accumulation_steps
    return Recipe(path=path, data=data, training=training, model=model, notices=notices,
                  declared_dtype=declared_dtype, auto=frozenset(auto), parts=parts)

