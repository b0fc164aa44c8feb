"""Recipes: flat YAML read by TRL's own parser into `DataArguments`, `SFTConfig` and `ModelConfig`.

Every key is a documented dataclass field (TRL's, transformers' or ours below); `--key value` on the command line
overrides the file; an unknown key is an error that names it and its line.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import ModelConfig, SFTConfig, TrlParser

from sft.errors import UserError
from sft.families import vision_module_names
from sft.metrics import METRICS, metric_names

# q/k/v/o of the language model only: the vision tower and projector have q/k/v/o too, and PEFT matches a string
# target as a full regex, so they are excluded by the family table's vision module names.
LANGUAGE_MODEL_ATTENTION = rf"^(?!.*({'|'.join(vision_module_names())})).*\.(q_proj|k_proj|v_proj|o_proj)$"

# The toolkit's defaults where they differ from TRL's (a recipe or the command line overrides each).
TOOLKIT_DEFAULTS = {
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": LANGUAGE_MODEL_ATTENTION,
    "report_to": "none",
    # Batches of similar length (the `length` column measured before training) waste little on padding.
    "train_sampling_strategy": "group_by_length",
    "logging_steps": 5,
    # Our dataset keeps `messages`/`stored_images` for the collator; Trainer would drop them as "unused".
    "remove_unused_columns": False,
}

EVAL_DEFAULTS = {"eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True,
                 "save_total_limit": 2}

TRUNCATION_MODES = ("drop", "shorten_prompt")

# SFTConfig keys that also take the value `auto`: the plan chooses them for the recipe's GPU (sft.plan.apply_auto).
# TRL's parser knows only their own types (bool, int), so `auto` is taken out before it parses.
AUTO_KEYS = ("gradient_checkpointing", "per_device_train_batch_size")


@dataclass
class DataArguments:
    """The data keys of a recipe (DESIGN.md) and the toolkit's own training switches."""

    train_file: str | None = field(
        default=None,
        metadata={"help": "Training rows: .jsonl, .json (array or JSON lines), .parquet, .csv or .arrow "
                  "(this or dataset_name)."},
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Evaluation rows, same formats as train_file; evaluated each epoch."}
    )
    # TRL's ScriptArguments names (trl 1.16.0); the parser reads DataArguments in its place, so no field collides.
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset id or a local folder (save_to_disk output or a folder of data files); "
                  "used when train_file is not set."},
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration (subset) name of dataset_name, when it has several."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split of dataset_name to train on."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={"help": "Split of dataset_name to evaluate on each epoch (none by default; e.g. test)."},
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image paths resolve against (default: the data file's folder, "
                  "or dataset_name when it is a folder)."},
    )
    column_map: str | None = field(
        default=None,
        metadata={"help": "Rename columns to the standard names, e.g. {completion: target} (YAML map or JSON)."},
    )
    truncation: str = field(
        default="drop",
        metadata={
            "help": "A row longer than max_length is 'drop'ped and counted, or its prompt text is shortened "
            "('shorten_prompt'). A completion or an image is never cut.",
            "choices": list(TRUNCATION_MODES),
        },
    )
    max_dropped_fraction: float = field(
        default=0.05, metadata={"help": "Refuse to train when more than this share of rows is dropped."}
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Evaluations without improvement before stopping (needs eval rows; 0 = off)."}
    )
    eval_generation: bool = field(
        default=True, metadata={"help": "Also generate greedy replies on eval rows and score them (eval_metrics)."}
    )
    eval_metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "Metrics of the generated replies, each logged as eval_<name> and usable as "
            f"metric_for_best_model: {', '.join(METRICS)} (exact_match also as eval_accuracy). Default: chosen "
            "from the eval references (short one-line answers: exact_match; longer: rouge_l and chrf).",
        },
    )
    eval_split_size: float = field(
        default=0.0,
        metadata={
            "help": "Hold out train_file rows as the eval split: a share (0 < x < 1) or a number of rows (x >= 1); "
            "the same rows every run for the same file and eval_split_seed. Not together with eval_file; 0 = off.",
        },
    )
    eval_split_seed: int = field(
        default=42, metadata={"help": "Seed choosing the eval_split_size rows (independent of the training seed)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace another run's checkpoints in output_dir (refused otherwise)."}
    )
    gpu_memory_gib: float = field(
        default=80.0, metadata={"help": "Memory of one target GPU; `sft plan` says whether the recipe fits it."}
    )
    effective_batch_size: int | None = field(
        default=None,
        metadata={"help": "Rows per optimizer step on one GPU (micro-batch x accumulation). With "
                  "per_device_train_batch_size: auto the plan picks the micro-batch and sets "
                  "gradient_accumulation_steps so that this stays the same."},
    )
    kbit_fp32_upcast: bool = field(
        default=False,
        metadata={"help": "8-bit/4-bit: upcast every non-quantized parameter to fp32 as PEFT's "
                  "prepare_model_for_kbit_training does (slower, more memory); off keeps them in `dtype` "
                  "as TRL does."},
    )
    llm_int8_threshold: float = field(
        default=6.0,
        metadata={"help": "8-bit: bitsandbytes' outlier threshold (activations above it run in 16-bit); "
                  "0 = pure int8 (faster, can cost quality on real weights)."},
    )
    date_string: str = field(
        default="26 Jul 2024",
        metadata={"help": "Date passed to the chat template (Llama 3.x writes today's date otherwise)."},
    )

    def __post_init__(self):
        if isinstance(self.column_map, str):
            try:
                self.column_map = json.loads(self.column_map)
            except json.JSONDecodeError as exc:
                raise UserError(f"column_map: not a JSON object: {self.column_map!r} ({exc.msg})") from None
        if self.column_map is not None and not (
            isinstance(self.column_map, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.column_map.items())
        ):
            raise UserError(f"column_map must map standard names to your column names, got {self.column_map!r}")
        if self.truncation not in TRUNCATION_MODES:
            raise UserError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {self.truncation!r}")
        if self.effective_batch_size is not None and self.effective_batch_size < 1:
            raise UserError(f"effective_batch_size must be at least 1, got {self.effective_batch_size}")
        if self.train_file and self.dataset_name:
            raise UserError("give train_file or dataset_name, not both")
        if self.dataset_test_split and not self.dataset_name:
            raise UserError("dataset_test_split needs dataset_name")
        if self.eval_file and self.dataset_test_split:
            raise UserError("give eval_file or dataset_test_split, not both")
        if not 0.0 <= self.max_dropped_fraction <= 1.0:
            raise UserError(f"max_dropped_fraction must lie in [0, 1], got {self.max_dropped_fraction}")
        if self.eval_metrics is not None:  # a list, or `eval_metrics: rouge_l, chrf` in YAML
            self.eval_metrics = metric_names(self.eval_metrics)
        size = self.eval_split_size
        if size < 0 or (size >= 1 and size != int(size)):
            raise UserError(f"eval_split_size must be a share in (0, 1) or a whole number of rows, got {size}")
        if self.eval_split_size and (self.eval_file or self.dataset_test_split):
            raise UserError("eval_split_size is set with eval_file or dataset_test_split; give one source of eval rows")


@dataclass
class Recipe:
    """A parsed recipe: where it came from and its three groups of settings."""

    path: Path | None
    data: DataArguments
    training: SFTConfig
    model: ModelConfig
    notices: list[str] = field(default_factory=list)  # printed when training starts
    declared_dtype: str | None = None  # the recipe's dtype before any CPU fallback (what `sft plan` plans for)
    auto: frozenset[str] = frozenset()  # keys set to `auto`, chosen by the plan (sft.plan.apply_auto)
    auto_choices: dict = field(default_factory=dict)  # key -> {"value", "why"}, once chosen (written to the manifest)


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
    has_eval = data.eval_file or data.eval_split_size or (data.dataset_name and data.dataset_test_split)
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
    if data.train_file is None and data.dataset_name is None:
        raise UserError(f"{path or 'recipe'}: train_file is required (or dataset_name)")
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
                  declared_dtype=declared_dtype, auto=frozenset(auto))

