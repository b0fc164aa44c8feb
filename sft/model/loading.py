"""Model loading: the base model (optionally 8-bit or 4-bit through bitsandbytes), its processor, and LoRA."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from peft import prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
)
from trl import ModelConfig

from sft.errors import UserError
from sft.family.chat_template import read_chat_template, with_chat_template
from sft.family.families import Family, family_for, find_family
from sft.family.image_budget import ImageBudget, apply_image_budget
from sft.family.video_budget import VideoBudget, apply_video_budget
from sft.model.targets import not_quantized


def is_vision_config(config) -> bool:
    """Whether the checkpoint is a vision-language model (it has a vision sub-config)."""
    return getattr(config, "vision_config", None) is not None


def model_class_for(config):
    """The Auto class that builds this checkpoint: image-text-to-text for a VLM that transformers maps there, causal
    LM otherwise (a text model, or a VLM such as Phi-4-multimodal that transformers 5.23 maps only to causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if is_vision_config(config) and config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


# Families whose layers Liger's kernels patch (RMSNorm, SwiGLU, RoPE, LayerNorm), by config model_type. Its fused
# linear cross-entropy is never used: TRL 1.16's SFTTrainer refuses it and scores through its own fused LM head
# (add_fused_lm_head, vocabulary tiles, supervised positions only), on every family, Mllama included.
LIGER_FAMILIES = {"mllama", "qwen2_vl", "qwen2_5_vl", "gemma3", "smolvlm", "llama", "qwen2"}


def liger_unavailable(model_type: str | None) -> str | None:
    """Why Liger's kernels cannot run for this model here (one line), or None when they can."""
    if model_type not in LIGER_FAMILIES:
        return f"use_liger_kernel: no Liger kernels for model_type {model_type!r}; training without them"
    if not torch.cuda.is_available():
        return "use_liger_kernel: Liger's kernels need a GPU (Triton); training without them"
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as exc:
        return f"use_liger_kernel: liger-kernel is not installed ({exc.msg}); training without it"
    try:  # the family's patch module: liger-kernel 0.8.5's qwen2_5_vl fails to import beside transformers 5.23
        importlib.import_module(f"liger_kernel.transformers.model.{model_type}")
    except ImportError as exc:
        return f"use_liger_kernel: liger-kernel cannot patch {model_type} here ({exc.msg}); training without it"
    return None


def quantization_config(model_args: ModelConfig, family: Family,
                        int8_threshold: float = 6.0) -> BitsAndBytesConfig | None:
    """8-bit or 4-bit weights for the language model (BitsAndBytesConfig; `load_in_8bit=` was removed); the
    family's vision side and the output head stay unquantized (sft.model.targets.not_quantized)."""
    if model_args.load_in_8bit and model_args.load_in_4bit:
        raise UserError("load_in_8bit and load_in_4bit are both set; choose one")
    skip = not_quantized(family)
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip,
                                  llm_int8_threshold=int8_threshold)
    if model_args.load_in_4bit:
        compute = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else torch.float32
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant, bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage, llm_int8_skip_modules=skip,
        )
    return None


def load_config(model_args: ModelConfig, trust_remote_code: bool = False):
    name = model_args.model_name_or_path
    if not name:
        raise UserError("model_name_or_path is required")
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise UserError(f"model_name_or_path {name!r}: no such folder")
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"model_name_or_path {name!r}: cannot load its config ({str(exc).splitlines()[0]})") from None


def load_processor_and_family(model_args: ModelConfig, trust_remote_code: bool = False,
                              family_name: str | None = None, chat_template_path: str | None = None,
                              image_budget: ImageBudget | None = None, video_budget: VideoBudget | None = None):
    """The processor of a vision model (the tokenizer of a text model) and the model's family: the one lookup of a
    command (sft.family.families.find_family), by the recipe's
    `family:`, the config's model_type or the processor class.
    The recipe's `chat_template_path` replaces the checkpoint's template on both (sft/family/chat_template.py), and its
    image and video budgets are set on the processor (sft/family/image_budget.py, sft/family/video_budget.py)."""
    template = read_chat_template(chat_template_path)
    config = load_config(model_args, trust_remote_code)
    return with_chat_template(*processor_and_family(model_args.model_name_or_path, config, trust_remote_code,
                                                    family_name, image_budget, video_budget), template)


def processor_and_family(path: str, config, trust_remote_code: bool = False, family_name: str | None = None,
                         image_budget: ImageBudget | None = None, video_budget: VideoBudget | None = None):
    """The processor of the checkpoint at `path` (its `config` loaded) and its family: the recipe's `family:` or the
    model type picks the processor's loading arguments; a model type the table lacks is looked up by the processor's
    class once it is loaded. `image_budget` goes to the family's image setting (or is refused, in one line)."""
    known = find_family(config.model_type, None, family_name)
    processing_class = load_processor(path, config, trust_remote_code, known)
    family = known if known.model_types or family_name else find_family(config.model_type, processing_class)
    apply_image_budget(processing_class, family, image_budget)
    apply_video_budget(processing_class, family, video_budget)
    return processing_class, family


# Optional packages that transformers 5.23 asks for when a processor loads, as its error messages name them, and the
# command that installs each (torchvision: video processors, Pixtral's and Llama 4's image processors; num2words:
# SmolVLM2's processor).
OPTIONAL_PACKAGES = {"torchvision": "pip install torchvision", "num2words": "pip install num2words",
                     "timm": "pip install timm", "decord": "pip install decord",
                     "sentencepiece": "pip install sentencepiece", "protobuf": "pip install protobuf",
                     "tiktoken": "pip install tiktoken", "einops": "pip install einops"}


def missing_package(exc: Exception) -> str | None:
    """The optional package an error from transformers says is missing: an ImportError's module, or the package its
    message names (an image processor class with no backend available is a ValueError: "Missing optional
    dependencies: torchvision")."""
    named = re.search(r"Missing optional dependencies: (\w[\w-]*)", str(exc))
    if named:
        return named.group(1)
    if not isinstance(exc, ImportError):
        return None
    if exc.name and exc.name.split(".")[0] in OPTIONAL_PACKAGES:
        return exc.name.split(".")[0]
    words = set(re.findall(r"[a-z0-9_]+", str(exc).lower()))
    return next((package for package in OPTIONAL_PACKAGES if package in words), exc.name)


def load_processor(path: str, config, trust_remote_code: bool = False, family: Family | None = None):
    """AutoProcessor (vision) or AutoTokenizer (text) for `path`, with its family's loading arguments."""
    try:
        if not is_vision_config(config):
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        family = family or family_for(getattr(config, "model_type", None))
        kwargs = family.processor_kwargs if family else {}
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        # transformers 5.23's Phi4MultimodalProcessor takes no chat_template argument, so from_pretrained drops the
        # saved one; its tokenizer loads the same chat_template.jinja.
        if not getattr(processor, "chat_template", None) and getattr(processor.tokenizer, "chat_template", None):
            processor.chat_template = processor.tokenizer.chat_template
        return processor
    except (ImportError, ValueError) as exc:  # transformers raises these from the processor class it loads
        package = missing_package(exc)
        if package is None:
            raise
        install = OPTIONAL_PACKAGES.get(package, f"pip install {package}")
        raise UserError(f"{path}: the processor needs the package {package!r}, which is not installed; "
                        f"install it with: {install}") from None


def _device() -> str:
    # Quantized weights are placed at load time: each process takes its own GPU (accelerate's local index).
    if torch.cuda.is_available():
        from accelerate import PartialState

        return f"cuda:{PartialState().local_process_index}"
    return "cpu"


def prepare_quantized(model, gradient_checkpointing: bool, fp32_upcast: bool):
    """A quantized base made ready for LoRA: frozen, and input gradients on when checkpointing needs them.

    PEFT's prepare_model_for_kbit_training also upcasts every non-quantized parameter (embeddings, norms, lm_head,
    the vision tower) to fp32; the hidden states then run in fp32 between the int8 layers, which bitsandbytes casts
    back to 16-bit at each one. TRL's own script does not upcast, so by default neither does the toolkit.
    """
    if fp32_upcast:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if gradient_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable()  # as PEFT does: transformers' default kwargs
    return model


def load_model(model_args: ModelConfig, gradient_checkpointing: bool = False, trust_remote_code: bool = False,
               fp32_upcast: bool = False, int8_threshold: float = 6.0, family: Family | None = None):
    """The base model, quantized when the recipe asks, ready for LoRA (PEFT is applied by SFTTrainer)."""
    config = load_config(model_args, trust_remote_code)
    family = family or find_family(config.model_type)
    quantization = quantization_config(model_args, family, int8_threshold)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code,
                  attn_implementation=model_args.attn_implementation)
    if quantization is not None:
        kwargs |= dict(quantization_config=quantization,
                       device_map={"": _device()})
    model = model_class_for(config).from_pretrained(model_args.model_name_or_path, **kwargs)
    if quantization is not None:
        model = prepare_quantized(model, gradient_checkpointing, fp32_upcast)
    cast_images_to_vision_dtype(model, family)
    return model


def cast_images_to_vision_dtype(model: torch.nn.Module, family: Family) -> None:
    """Floating-point inputs of each vision tower (pixel values) arrive in the tower's own dtype.

    transformers 5.23's Llama4ImageProcessor always returns bfloat16 pixel_values (as Meta's reference code does),
    so a vision tower held in float32 (a float32 run, or one kept out of 4-bit and upcast by PEFT's
    prepare_model_for_kbit_training) fails with "expected m1 and m2 to have the same dtype". Most families cast
    inside their model; this does it once for all, before the tower's first layer."""
    names = set(family.vision_modules)

    def cast(value, dtype):
        return value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value

    hooked: list[str] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in names or any(name.startswith(f"{outer}.") for outer in hooked):
            continue
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
        if dtype is None:
            continue
        hooked.append(name)
        module.register_forward_pre_hook(
            lambda _, args, kwargs, dtype=dtype: (tuple(cast(a, dtype) for a in args),
                                                  {k: cast(v, dtype) for k, v in kwargs.items()}),
            with_kwargs=True,
        )


def meta_model(model_args: ModelConfig, trust_remote_code: bool = False):
    """The checkpoint's architecture on PyTorch's meta device (no memory, no weights): its module names decide the
    LoRA targets and saved modules before any weights load, so a bad choice is refused first."""
    config = load_config(model_args, trust_remote_code)
    with torch.device("meta"):
        return model_class_for(config).from_config(config, trust_remote_code=trust_remote_code)
