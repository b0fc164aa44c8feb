"""The recipe keys the toolkit adds to TRL's (`SFTConfig`, `ModelConfig`): the data keys of DESIGN.md and the
toolkit's own switches, each a documented dataclass field that TRL's parser reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sft.data.mixture_entry import MixtureEntry, mixture_entries
from sft.errors import UserError
from sft.eval.metrics import METRICS, metric_names
from sft.family.boxes import CONVENTIONS
from sft.family.families import family_named
from sft.family.image_budget import ImageBudget
from sft.family.video_budget import VideoBudget

TRUNCATION_MODES = ("drop", "shorten_prompt")


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
    enable_thinking: bool | None = field(
        default=None,
        metadata={"help": "Thinking mode of rows without reasoning, for a template that has one (Qwen3.5, Gemma 4): "
                  "true, false, or unset for the template's default. A row with reasoning always renders in thinking "
                  "mode; a row's chat_template_kwargs override this (docs/thinking-and-tools.md)."},
    )
    supervise_empty_thinking: bool = field(
        default=True,
        metadata={"help": "Learn the empty thinking block a thinking template writes before a reply without "
                  "reasoning (it teaches not to think for such prompts); false keeps it as context, so the model's "
                  "own thinking is left alone (docs/thinking-and-tools.md)."},
    )
    family: str | None = field(
        default=None,
        metadata={"help": "The family table entry to use (sft/family/families.py: e.g. qwen2_5_vl), for a "
                  "remote-code or renamed checkpoint; default: found from the checkpoint's model_type, then its "
                  "processor class."},
    )
    box_convention: str | None = field(
        default=None,
        metadata={"help": "How grounding rows' boxes are written (docs/grounding.md): qwen2_vl, qwen2_5_vl, qwen3_vl, "
                  "internvl, paligemma, or norm1000 (`[x1, y1, x2, y2]` in 0-1000); default: the family's own, "
                  "refused for a grounding row of a family without one."},
    )
    # What trains (sft/family/parts.py): each part of a vision model `frozen`, `lora` or `full` (torchtune's
    # three-way choice).
    train_vision_tower: str = field(
        default="frozen", metadata={"help": "The vision encoder: frozen, lora or full."})
    train_projector: str = field(
        default="frozen", metadata={"help": "The projector from vision features into the language model: frozen, "
                                            "lora or full (full beside LoRA trains as PEFT modules_to_save)."})
    train_language_model: str | None = field(
        default=None, metadata={"help": "The language model: frozen, lora or full; default lora, or full with "
                                        "use_peft false."})
    vision_tower_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the vision tower's parameters (default learning_rate)."})
    projector_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the projector's parameters (default learning_rate)."})
    # Image budgets (sft/family/image_budget.py): set on the family's own processor setting when the processor loads.
    image_max_pixels: int | None = field(
        default=None, metadata={"help": "Most pixels of a resized image (the canvas the processor cuts into patches "
                                        "or tiles), through the family's own setting (docs/data.md: Image budgets); "
                                        "default: the processor's. Refused for families of one fixed image size."})
    image_min_pixels: int | None = field(
        default=None, metadata={"help": "Fewest pixels of a resized image (small images are scaled up), where the "
                                        "family's processor has such a setting; default: the processor's."})
    # Video budgets (sft/family/video_budget.py): kept on the processor's video processor when it loads.
    video_fps: float | None = field(
        default=None, metadata={"help": "Frames sampled per second of video, evenly spread (default 2); refused for "
                                        "families that take exactly video_max_frames frames a clip."})
    video_max_frames: int | None = field(
        default=None, metadata={"help": "Most frames sampled from one video (default 32); exactly this many for "
                                        "InternVL 3 and LLaVA-OneVision, whose processors stack a batch's clips."})
    video_max_pixels: int | None = field(
        default=None, metadata={"help": "Most pixels of one resized video frame, through the family's own setting "
                                        "(docs/data.md: Video); default: the processor's. Refused where every frame is "
                                        "one fixed size."})
    # Several sources in one run (sft/data/mixture.py): TRL's `datasets` list (trl 1.16 DatasetConfig keys and meanings)
    # plus weight, column_map, image_root and test_split per entry (sft/data/mixture_entry.py).
    datasets: list[MixtureEntry] = field(
        default_factory=list,
        metadata={"help": "Several training sources, instead of train_file / dataset_name: a list of entries with "
                  "TRL's keys (path, name, data_dir, data_files, split, columns, fraction) and weight (rows x "
                  "weight, repeated above 1), column_map, image_root and test_split (its eval rows)."},
    )

    @property
    def image_budget(self) -> ImageBudget:
        """image_min_pixels and image_max_pixels, for sft.model.loading.load_processor_and_family."""
        return ImageBudget(self.image_min_pixels, self.image_max_pixels)

    @property
    def video_budget(self) -> VideoBudget:
        """video_fps, video_max_frames and video_max_pixels, for sft.model.loading.load_processor_and_family."""
        return VideoBudget(self.video_fps, self.video_max_frames, self.video_max_pixels)

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
        if self.box_convention is not None and self.box_convention not in CONVENTIONS:
            raise UserError(f"box_convention must be one of {', '.join(CONVENTIONS)}, got {self.box_convention!r}")
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
        if self.family is not None:
            family_named(self.family)  # an unknown name is refused here, before anything loads
        for key in ("image_min_pixels", "image_max_pixels"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"{key} must be a positive number of pixels, got {getattr(self, key)}")
        if self.image_min_pixels and self.image_max_pixels and self.image_min_pixels > self.image_max_pixels:
            raise UserError(f"image_min_pixels {self.image_min_pixels} is above image_max_pixels "
                            f"{self.image_max_pixels}")
        if self.eval_split_size and (self.eval_file or self.dataset_test_split):
            raise UserError("eval_split_size is set with eval_file or dataset_test_split; give one source of eval rows")
        self.datasets = mixture_entries(self.datasets)
        if self.datasets:
            given = [key for key in ("train_file", "eval_file", "dataset_name", "image_root", "column_map")
                     if getattr(self, key)]
            if given:
                raise UserError(f"datasets is set with {', '.join(given)}: give every source as a datasets entry, "
                                "each with its own column_map and image_root")
            if self.eval_split_size and any(entry.test_split for entry in self.datasets):
                raise UserError("eval_split_size is set with a datasets entry's test_split; give one source of eval "
                                "rows")
