"""What differs per model family, as data: one entry a family, read by the collator, the model loader and the plan.

The label contract (shared/DESIGN.md) is the same for all of them and lives in sft/labels/reply_spans.py and
sft/labels/token_labels.py; what is here is only what cannot be read off the processor or the config: which module names
are the vision side (never LoRA'd, never quantized), what the chat template writes for an image when that is not
`processor.image_token`, how the processor must be loaded, how the family's rows are labelled (`labels`, mapped to
a class in sft/labels/labelling.py), and the token that closes an assistant turn (where generation stops;
docs/families.md and the tests check it against the template).

The family is found once per command (`find_family`): by the checkpoint's `config.model_type`, else by its
processor's class, and a recipe's `family:` key overrides both (remote-code or renamed checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sft.errors import UserError
from sft.family.packing_blocks import PackingBlocks

LABELLING = ("chat_template", "prefix_suffix")  # how a family's rows are labelled (sft/labels/labelling.py)


@dataclass(frozen=True)
class Family:
    """One model family."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values of its checkpoints
    example: str  # a hub id of the family
    closing: str | None  # the token that ends a supervised assistant turn; generation stops there too
    # The parts a recipe trains (sft/family/parts.py), as module-name parts (one dotted piece of a module or
    # parameter name):
    vision_tower: tuple[str, ...] = ()  # the vision encoder
    projector: tuple[str, ...] = ()  # what maps its features into the language model (looked for first: Qwen's
    # merger lies inside its vision tower `visual`)
    other_towers: tuple[str, ...] = ()  # other encoders (audio): always frozen, kept out of LoRA and quantization
    extra_inputs: tuple[str, ...] = ()  # processor tensors beyond input_ids, attention_mask and the pixels
    pixel_input: str = "pixel_values"  # the processor's pixel tensor
    image_marker: str | None = None  # what the template writes per image, when it is not processor.image_token
    processor_kwargs: dict = field(default_factory=dict)  # extra arguments to AutoProcessor.from_pretrained
    # Thinking (docs/thinking-and-tools.md): the markers that open and close a reply's thinking block as its template
    # writes it (a reply may write them inline; generation's answer is what follows the end marker).
    reasoning_start: str | None = None
    reasoning_end: str | None = None
    tool_call_end: str | None = None  # what ends a tool-calling turn when it is not `closing` (generation stops there)
    labels: str = "chat_template"  # or "prefix_suffix": no chat template, the processor's prefix/suffix call
    # How packed rows (sft/labels/packing.py) give the model each example's positions: "positions" (1-D, restarting per
    # example), "mrope" (Qwen: the text row and the three M-RoPE rows), or None: refused, for `packing_refusal`.
    packing: str | None = "positions"
    packing_refusal: str = ""
    packing_max_tokens: int | None = None  # exact only up to this many tokens in one packed sequence
    packing_images: bool = True  # False: only text rows pack exactly (image rows refused for `packing_refusal`)
    linear_attention: tuple[str, ...] = ()  # stateful layers, run per packed example: sft/model/linear_attention.py
    packing_blocks: PackingBlocks | None = None  # image blocks attended both ways: packed masks built by the toolkit
    # The processor setting a recipe's image_max_pixels / image_min_pixels go to
    # (sft/family/image_budget.py IMAGE_BUDGETS):
    # "pixels" (Qwen's min/max pixel counts), "longest_edge", "tiled_longest_edge", "pinpoints", "max_patches",
    # "dynamic_hd", "soft_tokens"; "fixed_size" / "fixed_tiles": refused, the image size cannot change; None: unknown.
    image_budget: str | None = None
    # Video (sft/data/video.py, sft/family/video_budget.py): the processor tensors a video row adds (none: the family
    # takes no video, refused in one line for `video_refusal`); the setting video_max_pixels goes to ("pixels": Qwen's
    # per-frame pixel counts, "soft_tokens": Gemma 4's, "fixed_size": refused, every frame is one size);
    # `video_fixed_frames`: its processor stacks a batch's clips into one tensor, so every clip is sampled to exactly
    # video_max_frames frames; `video_frames_as_images`: its processor returns a clip's frames as the images'
    # pixel_values (SmolVLM2), so a batch with both is merged row by row in the template's order.
    video_inputs: tuple[str, ...] = ()
    video_budget: str | None = None
    video_fixed_frames: bool = False
    video_frames_as_images: bool = False
    video_refusal: str = "its processor takes no videos"
    boxes: str | None = None  # its grounding convention (sft/family/boxes.py CONVENTIONS); None: none native
    found_by: str = "the family table"  # how find_family chose it (printed once in the run log, in the manifest)

    @property
    def vision_modules(self) -> tuple[str, ...]:
        """Everything outside the language model: never LoRA'd unless a recipe trains it, never quantized."""
        return self.vision_tower + self.projector + self.other_towers


QWEN_VIDEO = ("pixel_values_videos", "video_grid_thw")  # Qwen-VL's video tensors (Qwen2.5-VL adds second_per_grid_ts)

FAMILIES = (
    Family("llama", ("llama",), "meta-llama/Llama-3.2-1B-Instruct", "<|eot_id|>"),
    Family("mllama", ("mllama",), "meta-llama/Llama-3.2-11B-Vision-Instruct", "<|eot_id|>",
           vision_tower=("vision_model",), projector=("multi_modal_projector",),
           extra_inputs=("cross_attention_mask", "aspect_ratio_ids", "aspect_ratio_mask"), image_budget="fixed_tiles",
           # transformers 5.23's torchvision MllamaImageProcessor returns one aspect_ratio_ids row for a batch of
           # an image row and a text row (pixel_values has two); the PIL one returns two.
           processor_kwargs={"backend": "pil"},
           # Text rows skip the cross-attention layers, so they pack as a Llama's do.
           packing_images=False, packing_refusal="its cross-attention mask would let an image stay visible to the "
                                                 "next example in the sequence"),
    # SmolVLM (Idefics3 architecture) and SmolVLM2 (`smolvlm`: the same template with a video branch).
    Family("idefics3", ("idefics3", "smolvlm"), "HuggingFaceTB/SmolVLM-256M-Instruct", "<end_of_utterance>",
           vision_tower=("vision_model",), projector=("connector",), extra_inputs=("pixel_attention_mask",),
           image_budget="tiled_longest_edge", video_inputs=("pixel_values", "pixel_attention_mask"),
           video_budget="fixed_size", video_frames_as_images=True),
    # Qwen-VL: the vision tower and its patch merger (the projector) both live under `model.visual`; the template
    # writes `<|vision_start|><|image_pad|><|vision_end|>` per image, one `<|image_pad|>` (processor.image_token)
    # that the processor expands to the image's patch count. mm_token_type_ids marks those tokens for M-RoPE.
    Family("qwen2_vl", ("qwen2_vl",), "Qwen/Qwen2-VL-2B-Instruct", "<|im_end|>",
           vision_tower=("visual",), projector=("merger",), extra_inputs=("image_grid_thw", "mm_token_type_ids"),
           packing="mrope", image_budget="pixels", video_inputs=QWEN_VIDEO, video_budget="pixels", boxes="qwen2_vl"),
    Family("qwen2_5_vl", ("qwen2_5_vl",), "Qwen/Qwen2.5-VL-3B-Instruct", "<|im_end|>",
           vision_tower=("visual",), projector=("merger",), extra_inputs=("image_grid_thw", "mm_token_type_ids"),
           packing="mrope", image_budget="pixels", video_inputs=(*QWEN_VIDEO, "second_per_grid_ts"),
           video_budget="pixels", boxes="qwen2_5_vl"),
    # Qwen3-VL shares Qwen3VLProcessor with Qwen3.5 (so family_for_processor finds this entry for both) and has
    # -Thinking checkpoints; `</think>` is an ordinary added token, so decoding keeps it and what came before it.
    Family("qwen3_vl", ("qwen3_vl",), "Qwen/Qwen3-VL-2B-Instruct", "<|im_end|>",
           vision_tower=("visual",), projector=("merger", "deepstack_merger_list"),
           extra_inputs=("image_grid_thw", "mm_token_type_ids"), reasoning_start="<think>", reasoning_end="</think>",
           packing="mrope", image_budget="pixels", video_inputs=QWEN_VIDEO, video_budget="pixels", boxes="qwen3_vl"),
    # Qwen3.5 (thinking on or off by its template): the closing token is the same; with thinking on, the last
    # reply's supervised text starts with the rest of the empty thinking block ("\n</think>\n\n").
    Family("qwen3_5", ("qwen3_5",), "Qwen/Qwen3.5-2B", "<|im_end|>",
           vision_tower=("visual",), projector=("merger",), extra_inputs=("image_grid_thw", "mm_token_type_ids"),
           reasoning_start="<think>", reasoning_end="</think>", image_budget="pixels", video_inputs=QWEN_VIDEO,
           video_budget="pixels", boxes="qwen3_vl", packing="mrope", linear_attention=("Qwen3_5GatedDeltaNet",)),
    # The template writes <IMG_CONTEXT> per image (processor.image_token), expanded to <img> + tiles + </img>.
    Family("internvl3", ("internvl",), "OpenGVLab/InternVL3-1B-hf", "<|im_end|>",
           vision_tower=("vision_tower",), projector=("multi_modal_projector",), image_budget="max_patches",
           video_inputs=("pixel_values",), video_budget="fixed_size", video_fixed_frames=True, boxes="internvl"),
    # The template writes [IMG] per image; PixtralProcessor expands it to rows of [IMG] + [IMG_BREAK] ... [IMG_END]
    # and returns image_sizes, which the vision tower needs to cut each image's patches back out.
    Family("mistral3", ("mistral3",), "mistralai/Mistral-Small-3.1-24B-Instruct-2503", "</s>",
           vision_tower=("vision_tower",), projector=("multi_modal_projector",), extra_inputs=("image_sizes",),
           image_budget="longest_edge"),
    # The template writes <|image|> per image; Llama4Processor expands it to tiles of <|patch|> and drops its
    # aspect_ratios (not a model input). Its NoPE layers scale attention by the absolute index in the sequence
    # (attn_temperature_tuning), which stays 1 below floor_scale 8192: packed rows are exact up to there.
    Family("llama4", ("llama4",), "meta-llama/Llama-4-Scout-17B-16E-Instruct", "<|eot|>",
           vision_tower=("vision_model",), projector=("multi_modal_projector",), packing_max_tokens=8191,
           image_budget="max_patches"),
    # Gemma 3: the processor's image_token is the boi token `<start_of_image>` the template writes, expanded to
    # `\n\n<start_of_image>` + soft tokens + `<end_of_image>\n\n`; token_type_ids mark the image tokens and the
    # model's training forward needs them on every row (text-only rows too).
    Family("gemma3", ("gemma3",), "google/gemma-3-4b-it", "<end_of_turn>",
           vision_tower=("vision_tower",), projector=("multi_modal_projector",), extra_inputs=("token_type_ids",),
           image_budget="fixed_size", packing_blocks=PackingBlocks("token_type_ids", (1,), full_layers=True)),
    # Gemma 4: its generation prompt adds an empty thought channel (`<|channel>thought\n<channel|>`) that a turn in
    # the conversation lacks, so the span starts after `<|turn>model\n`; mm_token_type_ids mark the image tokens.
    Family("gemma4", ("gemma4",), "google/gemma-4-E2B-it", "<turn|>",
           vision_tower=("vision_tower",), projector=("embed_vision",), other_towers=("audio_tower", "embed_audio"),
           extra_inputs=("mm_token_type_ids", "image_position_ids"),
           video_inputs=("pixel_values_videos", "video_position_ids", "num_frames_per_video"),
           video_budget="soft_tokens", image_budget="soft_tokens",
           packing_blocks=PackingBlocks("mm_token_type_ids", (1, 2), full_layers=False,
                                        config_key="use_bidirectional_attention", config_value="vision"),
           # It thinks in a thought channel (written only beside tool calls), and writes a call, the tool's response
           # and the answer in one model turn: the call ends with `<|tool_response>`, where generation stops for the
           # tool to answer.
           reasoning_start="<|channel>thought", reasoning_end="<channel|>", tool_call_end="<|tool_response>"),
    # PaliGemma 2 checkpoints ship no chat template: one prompt and one answer go through the processor's own
    # prefix/suffix call (sft/labels/prefix_suffix.py): image tokens + <bos> + prompt + "\n" attended bidirectionally,
    # answer + <eos> causally, token_type_ids telling the model which is which.
    Family("paligemma", ("paligemma",), "google/paligemma2-3b-pt-448", "<eos>",
           vision_tower=("vision_tower",), projector=("multi_modal_projector",), extra_inputs=("token_type_ids",),
           labels="prefix_suffix", image_budget="fixed_size", boxes="paligemma",
           # Packed, transformers' packed-sequence mask bounds each example's bidirectional prefix (its forward numbers
           # a row from 1, packed examples restart at 0: RoPE sees only distances, so the logits agree; measured).
           ),
    # LLaVA-1.5: `USER: <image>\n... ASSISTANT: reply` with no token closing the reply; the collator inserts EOS.
    Family("llava", ("llava",), "llava-hf/llava-1.5-7b-hf", "</s>",
           vision_tower=("vision_tower",), projector=("multi_modal_projector",), image_budget="fixed_size"),
    # LLaVA-NeXT (Mistral): `[INST] <image>\n... [/INST] reply</s>`; image_sizes tells the model each image's tiling.
    # Its learnt `image_newline` vector (a loose parameter of the model, read after each row of image features)
    # counts as the language model's, like its token embeddings: PEFT's modules_to_save saves modules only.
    Family("llava_next", ("llava_next",), "llava-hf/llava-v1.6-mistral-7b-hf", "</s>",
           vision_tower=("vision_tower",), projector=("multi_modal_projector",),
           extra_inputs=("image_sizes",), image_budget="pinpoints"),
    Family("llava_onevision", ("llava_onevision",), "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "<|im_end|>",
           vision_tower=("vision_tower",), projector=("multi_modal_projector",),
           extra_inputs=("image_sizes", "batch_num_images"), image_budget="pinpoints",
           video_inputs=("pixel_values_videos",), video_budget="fixed_size", video_fixed_frames=True),
    # Phi-4-multimodal: `<|user|><|image|>...<|end|><|assistant|>reply<|end|>` with no whitespace anywhere; the
    # image tower, its projection and the audio tower all live under `model.embed_tokens_extend`, and the language
    # model fuses q/k/v into one `qkv_proj`. Its image separator vectors (loose parameters of `image_embed`) count
    # as the language model's, as LLaVA-NeXT's image_newline does.
    Family("phi4_multimodal", ("phi4_multimodal",), "microsoft/Phi-4-multimodal-instruct", "<|end|>",
           vision_tower=("img_processor",), projector=("img_projection_up", "img_projection_down"),
           other_towers=("audio_embed",),
           pixel_input="image_pixel_values", extra_inputs=("image_sizes", "image_attention_mask"),
           image_budget="dynamic_hd"),
)


def _by_model_type(families: tuple[Family, ...]) -> dict[str, Family]:
    """model_type -> family; a model type listed twice (which would silently shadow the other entry) is an error."""
    table: dict[str, Family] = {}
    for family in families:
        if family.labels not in LABELLING:
            raise ValueError(f"family {family.name}: labels {family.labels!r} is not one of {', '.join(LABELLING)}")
        for model_type in family.model_types:
            if model_type in table:
                raise ValueError(f"model_type {model_type!r} is listed by families {table[model_type].name} and "
                                 f"{family.name}; each model type belongs to one family")
            table[model_type] = family
    return table


BY_MODEL_TYPE = _by_model_type(FAMILIES)
BY_NAME = {family.name: family for family in FAMILIES}
# The module-name parts an unknown family's vision side is assumed to use (those of the families in the table).
ASSUMED_VISION_MODULES = tuple(sorted({name for family in FAMILIES for name in family.vision_modules}))


def family_for(model_type: str | None) -> Family | None:
    """The family of a checkpoint's `config.model_type` (None for one the table does not know)."""
    return BY_MODEL_TYPE.get(model_type or "")


def family_for_processor(processor) -> Family | None:
    """The family whose checkpoints use this processor class (transformers' own model-type → processor table)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = type(processor).__name__
    return next((family for family in FAMILIES for model_type in family.model_types
                 if PROCESSOR_MAPPING_NAMES.get(model_type) == name), None)


def family_named(name: str) -> Family:
    """A recipe's `family:` value: a family name or a model type the table lists."""
    family = BY_NAME.get(name) or BY_MODEL_TYPE.get(name)
    if family is None:
        raise UserError(f"family: {name!r} is not in the family table; choose one of {', '.join(BY_NAME)}")
    return family


def find_family(model_type: str | None, processor=None, override: str | None = None) -> Family:
    """The one family lookup of a command: the recipe's `family:` key, else the checkpoint's model_type, else the
    processor's class; a checkpoint none of them knows gets the generic contract with assumed fields (said in
    `found_by`)."""
    if override:
        return replace(family_named(override), found_by=f"the recipe's family: {override}")
    family = family_for(model_type)
    if family is not None:
        return replace(family, found_by=f"config.model_type {model_type}")
    family = family_for_processor(processor) if processor is not None else None
    if family is not None:
        return replace(family, found_by=f"its processor class {type(processor).__name__} "
                                        f"(config.model_type {model_type} is not in the table)")
    return Family(name=model_type or "unknown", model_types=(), example="", closing=None,
                  other_towers=ASSUMED_VISION_MODULES, packing=None,
                  packing_refusal="it is not in the family table, so packed rows are not known to be exact",
                  found_by=f"not in the table (config.model_type {model_type}); assumed: labels chat_template, "
                           f"generation stops at EOS only, vision modules {'|'.join(ASSUMED_VISION_MODULES)}, "
                           "no extra processor tensors; set `family:` in the recipe to use a table entry")
