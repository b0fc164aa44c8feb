"""Tiny random InternVL 3, Mistral 3 (Pixtral) and Llama 4 models with their real processor classes, built offline.

Each tokenizer is a byte-level BPE trained on the spot (sft.tiny.build_tokenizer) that carries the family's real
special tokens (names as in its published tokenizer_config.json) and its real chat template, read from
shared/fixtures/chat-templates beside the repository (tests/families/misc_PROVENANCE.md says where each comes from).
Models are the real architecture classes at hidden size 32-64, 2 text layers, a 1-layer vision tower.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sft.tiny import _widen_lm_head, build_tokenizer
from tests.conftest import CHAT_TEMPLATES

TEMPLATES = CHAT_TEMPLATES if CHAT_TEMPLATES.is_dir() else None  # None: the tests skip
TEMPLATE_FILES = {
    "internvl": "transformers_internvl_convert_chat_template.jinja",
    "mistral3": "llamacpp_mistralai-Mistral-Small-3.1-24B-Instruct-2503.jinja",
    "llama4": "transformers_llama4_processing_chat_template.jinja",
    "gemma3": "trl_gemma3.jinja",
    "llava": "llava_1_5_hub_chat_template.jinja",
    "smolvlm": "transformers_smolvlm_DEFAULT_CHAT_TEMPLATE.jinja",
    "llava_next": "trl_llava_next.jinja",
    "llava_onevision": "transformers_llava_onevision_convert_chat_template.jinja",
    "gemma4": "axolotl_gemma4.jinja",
}
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False)

# InternVL3-1B-hf: Qwen2.5's special tokens (its language model is Qwen2.5) plus InternVL's image tokens; the
# processor reads <img>, </img>, <IMG_CONTEXT> and <video> from the tokenizer's named extra special tokens.
INTERNVL_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>",
    "<box>", "</box>", "<video>",
]
INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                  "video_token": "<video>"}
# Mistral Small 3.1's Tekken tokenizer: control tokens 0-19 in rank order ([IMG] is 10, as config.image_token_index).
MISTRAL3_SPECIALS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
]
# Llama 4 Scout: the named ones among its basic, post-training text and vision special tokens (reserved ones left out).
LLAMA4_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|header_start|>",
    "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>", "<|python_start|>", "<|python_end|>",
    "<|finetune_right_pad|>", "<|image_start|>", "<|image_end|>", "<|tile_x_separator|>", "<|tile_y_separator|>",
    "<|image|>", "<|patch|>",
]
# Gemma 3 (google/gemma-3-4b-it tokenizer_config.json): the named special tokens; the processor takes boi/eoi/image
# from the tokenizer's named extra special tokens.
GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                   "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
GEMMA3_NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
# LLaVA-1.5 (llava-hf/llava-1.5-7b-hf): Llama 2's <unk>, <s>, </s>, plus <image> and <pad> added by llava-hf.
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
# SmolVLM2 (HuggingFaceTB/SmolVLM2-2.2B-Instruct): SmolVLM's tokens (as sft/tiny.py's Idefics3, from the real
# SmolVLM-256M files in shared/fixtures) plus the video-frame tokens the SmolVLM2 processor looks up.
SMOLVLM_SPECIALS = ["<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                    "<global-img>", "<video>", "<|endoftext|>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7)
                                                                    for c in range(1, 7)]
# LLaVA-NeXT Mistral (llava-hf/llava-v1.6-mistral-7b-hf): Mistral 7B v0.2's <unk>, <s>, </s>, [INST], [/INST] plus
# <image> and <pad> added by the llava-hf conversion.
LLAVA_NEXT_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<image>", "<pad>"]
# LLaVA-OneVision (llava-hf/llava-onevision-qwen2-0.5b-ov-hf): Qwen2's tokens plus <image> and <video>.
LLAVA_ONEVISION_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
# Gemma 4 (google/gemma-4-E2B-it): the special tokens listed in the fixtures' README (from published
# tokenizer_config.json copies); the processor takes boi/eoi/image and the audio ones from the named extra tokens.
GEMMA4_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|channel>", "<channel|>",
                   "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>", "<|tool>", "<tool|>",
                   "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>', "<|video|>"]
GEMMA4_NAMED = {"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>", "boa_token": "<|audio>",
                "eoa_token": "<audio|>", "audio_token": "<|audio|>"}


def template(family: str) -> str:
    return (TEMPLATES / TEMPLATE_FILES[family]).read_text(encoding="utf-8")


def _finish(model, processor, out: Path) -> None:
    _widen_lm_head(model)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_internvl(out: Path) -> None:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        PreTrainedTokenizerFast,
    )

    trained = build_tokenizer(INTERNVL_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", extra_special_tokens=INTERNVL_NAMED)
    tile, patch = 56, 14  # 4 x 4 patches a tile, pixel-shuffled (downsample 0.5) to 2 x 2 = 4 tokens
    image_seq_length = (tile // patch) ** 2 // 4
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=tile, patch_size=patch),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, **TEXT),
        image_token_id=tok.context_image_token_id, image_seq_length=image_seq_length, tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config)
    size = {"height": tile, "width": tile}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, max_patches=2),
        tokenizer=tok, video_processor=InternVLVideoProcessor(size=size), image_seq_length=image_seq_length,
        chat_template=template("internvl"),
    )
    _finish(model, processor, out)


def build_mistral3(out: Path) -> None:
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        PixtralImageProcessor,
        PixtralProcessor,
        PreTrainedTokenizerFast,
    )

    trained = build_tokenizer(MISTRAL3_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    patch, merge = 14, 2  # one image token per 2 x 2 patches (Mistral Small 3.1's spatial_merge_size)
    config = Mistral3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           head_dim=16, image_size=4 * patch * merge, patch_size=patch),
        text_config=dict(model_type="mistral", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TEXT),
        image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=merge,
        vision_feature_layer=-1, tie_word_embeddings=False,
    )
    model = Mistral3ForConditionalGeneration(config)
    image_processor = PixtralImageProcessor(size={"longest_edge": 2 * patch * merge}, patch_size=patch)
    processor = PixtralProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                 spatial_merge_size=merge, chat_template=template("mistral3"))
    _finish(model, processor, out)


def build_llama4(out: Path) -> None:
    from transformers import (
        Llama4Config,
        Llama4ForConditionalGeneration,
        Llama4ImageProcessor,
        Llama4Processor,
        PreTrainedTokenizerFast,
    )

    trained = build_tokenizer(LLAMA4_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, bos_token="<|begin_of_text|>",
                                  eos_token="<|eot|>", pad_token="<|finetune_right_pad|>")
    tile, patch, vision_hidden = 28, 14, 32  # 2 x 2 patches a tile, pixel-shuffled (ratio 0.5) to 1 token
    config = Llama4Config(
        vision_config=dict(
            hidden_size=vision_hidden, num_hidden_layers=1, num_attention_heads=2, image_size=tile,
            patch_size=patch, pixel_shuffle_ratio=0.5,
            intermediate_size=vision_hidden * 4,  # the pixel-shuffled width the adapter MLP takes (0.5 ** -2 x)
            vision_output_dim=64, projector_input_dim=64, projector_output_dim=64,
        ),
        text_config=dict(
            vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, intermediate_size_mlp=128, attention_chunk_size=4096,
            num_local_experts=2, num_experts_per_tok=1, interleave_moe_layer_step=1,  # every layer MoE, as Scout
            **TEXT,
        ),
        boi_token_index=tok.convert_tokens_to_ids("<|image_start|>"),
        eoi_token_index=tok.convert_tokens_to_ids("<|image_end|>"),
        image_token_index=tok.convert_tokens_to_ids("<|patch|>"),
    )
    model = Llama4ForConditionalGeneration(config)
    image_processor = Llama4ImageProcessor(size={"height": tile, "width": tile}, max_patches=4)
    processor = Llama4Processor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                pixel_shuffle_ratio=0.5, chat_template=template("llama4"))
    _finish(model, processor, out)


def build_gemma3(out: Path) -> None:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        PreTrainedTokenizerFast,
    )

    trained = build_tokenizer(GEMMA3_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>", extra_special_tokens=GEMMA3_NAMED)
    tile, patch, tokens = 28, 14, 4  # 2 x 2 patches, pooled to mm_tokens_per_image
    config = Gemma3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=tile, patch_size=patch),
        text_config=dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, sliding_window=64, **TEXT),
        mm_tokens_per_image=tokens, boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"), tie_word_embeddings=False,
    )
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the projector weight to zeros (a trained checkpoint overwrites it): images would then
    # reach the language model as zeros and a run could not tell them apart.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": tile, "width": tile}),
                                tokenizer=tok, image_seq_length=tokens, chat_template=template("gemma3"))
    _finish(model, processor, out)


def build_llava(out: Path) -> None:
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    trained = build_tokenizer(LLAVA_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tile, patch = 28, 14
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=tile, patch_size=patch, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=template("llava"))
    _finish(model, processor, out)


def build_smolvlm(out: Path) -> None:
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    tok = build_tokenizer(SMOLVLM_SPECIALS)
    tok.bos_token, tok.eos_token, tok.pad_token = "<|im_start|>", "<end_of_utterance>", "<|im_end|>"
    tile, patch, scale = 32, 16, 2
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=tile, patch_size=patch),
        text_config=dict(model_type="llama", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **TEXT),
        scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
    )
    model = SmolVLMForConditionalGeneration(config)
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessorPil(size={"longest_edge": 2 * tile},
                                                 max_image_size={"longest_edge": tile}),
        tokenizer=tok, video_processor=SmolVLMVideoProcessor(), image_seq_len=(tile // patch) ** 2 // scale**2,
        chat_template=template("smolvlm"),
    )
    _finish(model, processor, out)


def build_llava_next(out: Path) -> None:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        PreTrainedTokenizerFast,
    )

    trained = build_tokenizer(LLAVA_NEXT_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tile, patch = 28, 14
    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile]]
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=tile, patch_size=patch, projection_dim=32),
        text_config=dict(model_type="mistral", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": tile}, image_grid_pinpoints=pinpoints,
                                                 crop_size={"height": tile, "width": tile})
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=template("llava_next"))
    _finish(model, processor, out)


def build_llava_onevision(out: Path) -> None:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        PreTrainedTokenizerFast,
    )

    trained = build_tokenizer(LLAVA_ONEVISION_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tile, patch = 28, 14
    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile]]
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=tile, patch_size=patch),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, **TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints, vision_feature_layer=-1, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False,
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    size = {"height": tile, "width": tile}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=pinpoints),
        tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(size=size), num_image_tokens=(tile // patch) ** 2,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        chat_template=template("llava_onevision"),
    )
    _finish(model, processor, out)


def build_gemma4(out: Path) -> None:
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4ImageProcessorPil,
        Gemma4Processor,
        Gemma4VideoProcessor,
        PreTrainedTokenizerFast,
    )

    trained = build_tokenizer(GEMMA4_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>", extra_special_tokens=GEMMA4_NAMED)
    vocab, soft_tokens = len(tok), 70  # 70 is the smallest soft-token budget the image processor accepts
    config = Gemma4Config(
        text_config=dict(vocab_size=vocab, vocab_size_per_layer_input=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         hidden_size_per_layer_input=16, layer_types=["sliding_attention", "full_attention"],
                         per_layer_config={}, sliding_window=64, max_position_embeddings=4096,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         tie_word_embeddings=False),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, head_dim=16, patch_size=16, pooling_kernel_size=2,
                           position_embedding_size=64),
        audio_config=None, boi_token_id=tok.convert_tokens_to_ids("<|image>"),
        eoi_token_id=tok.convert_tokens_to_ids("<image|>"), image_token_id=tok.convert_tokens_to_ids("<|image|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video|>"), tie_word_embeddings=False,
    )
    model = Gemma4ForConditionalGeneration(config)
    sizes = dict(patch_size=16, max_soft_tokens=soft_tokens, pooling_kernel_size=2)
    processor = Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(),
                                image_processor=Gemma4ImageProcessorPil(**sizes), tokenizer=tok,
                                video_processor=Gemma4VideoProcessor(**sizes), chat_template=template("gemma4"),
                                image_seq_length=soft_tokens)
    _finish(model, processor, out)


BUILDERS = {"internvl": build_internvl, "mistral3": build_mistral3, "llama4": build_llama4, "gemma3": build_gemma3,
            "llava": build_llava, "smolvlm": build_smolvlm, "llava_next": build_llava_next,
            "llava_onevision": build_llava_onevision, "gemma4": build_gemma4}


def build(family: str, out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `family` model and its processor to `out`; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BUILDERS[family](out)
    return out
