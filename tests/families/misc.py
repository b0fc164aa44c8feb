"""Tiny random InternVL 3, Mistral 3 (Pixtral), Llama 4, Gemma 3, LLaVA-1.5, SmolVLM2, LLaVA-NeXT, LLaVA-OneVision
and Gemma 4 models with their real processor classes, built offline, as data for tests/families/build.py.

Each tokenizer is a byte-level BPE trained on the spot (sft.model.tiny.build_tokenizer) that carries the family's real
special tokens (names as in its published tokenizer_config.json); its real chat template is read from
shared/fixtures/chat-templates beside the repository (tests/families/registry.py names the file;
tests/families/misc_PROVENANCE.md says where each comes from). Models are the real architecture classes at hidden
size 32-64, 2 text layers, a 1-2-layer vision tower.
"""

from __future__ import annotations

import torch
import transformers as tf

from sft.model.tiny import finish_tiny_model
from tests.families.build import TinySpec, text_config, vision_config

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
# SmolVLM2 (HuggingFaceTB/SmolVLM2-2.2B-Instruct): SmolVLM's tokens (as sft/model/tiny.py's Idefics3, from the real
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


INTERNVL_TILE, PATCH = 56, 14  # InternVL: 4 x 4 patches a tile, pixel-shuffled (downsample 0.5) to 2 x 2 = 4 tokens
INTERNVL_TOKENS = (INTERNVL_TILE // PATCH) ** 2 // 4
MERGE = 2  # Mistral 3: one image token per 2 x 2 patches (Mistral Small 3.1's spatial_merge_size)
TILE = 28  # Llama 4, Gemma 3 and the LLaVAs: 2 x 2 patches of 14 px
PINPOINTS = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE]]  # LLaVA-NeXT / OneVision tilings
SMOLVLM_TILE, SMOLVLM_PATCH, SMOLVLM_SCALE = 32, 16, 2
GEMMA4_SOFT_TOKENS = 70  # the smallest soft-token budget Gemma 4's image processor accepts
GEMMA4_SIZES = dict(patch_size=16, max_soft_tokens=GEMMA4_SOFT_TOKENS, pooling_kernel_size=2)
LLAMA2_ROLES = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
GEMMA_ROLES = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
QWEN2_ROLES = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
# LLaVA-1.5 and LLaVA-NeXT: a 2-layer CLIP tower whose last layer's patch features (CLS dropped) reach the projector.
CLIP = vision_config(model_type="clip_vision_model", num_hidden_layers=2, image_size=TILE, patch_size=PATCH,
                     projection_dim=32)
LLAVA_VISION = dict(vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False)
LLAVA_PROCESSOR = dict(patch_size=PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1)


def internvl_config(tok):
    return tf.InternVLConfig(
        vision_config=vision_config(image_size=INTERNVL_TILE, patch_size=PATCH),
        text_config=text_config(tok, model_type="qwen2"), image_token_id=tok.context_image_token_id,
        image_seq_length=INTERNVL_TOKENS, tie_word_embeddings=False)


def internvl_processor(tok, template: str):
    size = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    return tf.InternVLProcessor(
        image_processor=tf.GotOcr2ImageProcessor(size=size, crop_to_patches=True, max_patches=2), tokenizer=tok,
        video_processor=tf.InternVLVideoProcessor(size=size), image_seq_length=INTERNVL_TOKENS,
        chat_template=template)


def mistral3_config(tok):
    return tf.Mistral3Config(
        vision_config=vision_config(head_dim=16, image_size=4 * PATCH * MERGE, patch_size=PATCH),
        text_config=text_config(tok, model_type="mistral"), image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=MERGE, vision_feature_layer=-1, tie_word_embeddings=False)


def mistral3_processor(tok, template: str):
    image_processor = tf.PixtralImageProcessor(size={"longest_edge": 2 * PATCH * MERGE}, patch_size=PATCH)
    return tf.PixtralProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                               spatial_merge_size=MERGE, chat_template=template)


def llama4_config(tok):
    # A 2 x 2-patch tile pixel-shuffled (ratio 0.5) to 1 token; the adapter MLP takes the shuffled width (4 x 32).
    vision = vision_config(image_size=TILE, patch_size=PATCH, pixel_shuffle_ratio=0.5, intermediate_size=128,
                           vision_output_dim=64, projector_input_dim=64, projector_output_dim=64)
    text = text_config(tok, intermediate_size_mlp=128, attention_chunk_size=4096, num_local_experts=2,
                       num_experts_per_tok=1, interleave_moe_layer_step=1)  # every layer MoE, as Scout
    ids = tok.convert_tokens_to_ids
    return tf.Llama4Config(vision_config=vision, text_config=text, boi_token_index=ids("<|image_start|>"),
                           eoi_token_index=ids("<|image_end|>"), image_token_index=ids("<|patch|>"))


def llama4_processor(tok, template: str):
    image_processor = tf.Llama4ImageProcessor(size={"height": TILE, "width": TILE}, max_patches=4)
    return tf.Llama4Processor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                              pixel_shuffle_ratio=0.5, chat_template=template)


def gemma3_config(tok):
    ids = tok.convert_tokens_to_ids
    return tf.Gemma3Config(
        vision_config=vision_config(image_size=TILE, patch_size=PATCH),
        text_config=text_config(tok, sliding_window=64), mm_tokens_per_image=4,  # 2 x 2 patches, pooled to 4
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), tie_word_embeddings=False)


def gemma3_projector(model) -> None:
    # transformers initialises the projector weight to zeros (a trained checkpoint overwrites it): images would then
    # reach the language model as zeros and a run could not tell them apart.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)


def gemma3_processor(tok, template: str):
    return tf.Gemma3Processor(image_processor=tf.Gemma3ImageProcessorPil(size={"height": TILE, "width": TILE}),
                              tokenizer=tok, image_seq_length=4, chat_template=template)


def llava_config(tok):
    return tf.LlavaConfig(vision_config=CLIP, text_config=text_config(tok, model_type="llama"),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), **LLAVA_VISION)


def llava_processor(tok, template: str):
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})
    return tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                             **LLAVA_PROCESSOR)


def smolvlm_config(tok):
    return tf.SmolVLMConfig(
        vision_config=vision_config(image_size=SMOLVLM_TILE, patch_size=SMOLVLM_PATCH),
        text_config=text_config(tok, model_type="llama"), scale_factor=SMOLVLM_SCALE,
        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)


def smolvlm_processor(tok, template: str):
    sizes = dict(size={"longest_edge": 2 * SMOLVLM_TILE}, max_image_size={"longest_edge": SMOLVLM_TILE})
    image_processor = tf.SmolVLMImageProcessorPil(**sizes)
    return tf.SmolVLMProcessor(image_processor=image_processor, tokenizer=tok,
                               video_processor=tf.SmolVLMVideoProcessor(**sizes), chat_template=template,
                               image_seq_len=(SMOLVLM_TILE // SMOLVLM_PATCH) ** 2 // SMOLVLM_SCALE**2)


def llava_next_config(tok):
    return tf.LlavaNextConfig(vision_config=CLIP, text_config=text_config(tok, model_type="mistral"),
                              image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS,
                              **LLAVA_VISION)


def llava_next_processor(tok, template: str):
    image_processor = tf.LlavaNextImageProcessorPil(size={"shortest_edge": TILE}, image_grid_pinpoints=PINPOINTS,
                                                    crop_size={"height": TILE, "width": TILE})
    return tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                                 **LLAVA_PROCESSOR)


def llava_onevision_config(tok):
    ids = tok.convert_tokens_to_ids
    return tf.LlavaOnevisionConfig(
        vision_config=vision_config(model_type="siglip_vision_model", num_hidden_layers=2, image_size=TILE,
                                    patch_size=PATCH),
        text_config=text_config(tok, model_type="qwen2"), image_token_index=ids("<image>"),
        video_token_index=ids("<video>"), image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)


def llava_onevision_processor(tok, template: str):
    size = {"height": TILE, "width": TILE}
    return tf.LlavaOnevisionProcessor(
        image_processor=tf.LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=PINPOINTS),
        tokenizer=tok, video_processor=tf.LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", chat_template=template)


def gemma4_config(tok):
    ids = tok.convert_tokens_to_ids
    text = text_config(tok, vocab_size_per_layer_input=len(tok), hidden_size_per_layer_input=16, per_layer_config={},
                       layer_types=["sliding_attention", "full_attention"], sliding_window=64)
    vision = vision_config(num_key_value_heads=2, head_dim=16, patch_size=16, pooling_kernel_size=2,
                           position_embedding_size=64)
    return tf.Gemma4Config(text_config=text, vision_config=vision, audio_config=None, boi_token_id=ids("<|image>"),
                           eoi_token_id=ids("<image|>"), image_token_id=ids("<|image|>"),
                           video_token_id=ids("<|video|>"), tie_word_embeddings=False)


def gemma4_processor(tok, template: str):
    return tf.Gemma4Processor(feature_extractor=tf.Gemma4AudioFeatureExtractor(),
                              image_processor=tf.Gemma4ImageProcessorPil(**GEMMA4_SIZES), tokenizer=tok,
                              video_processor=tf.Gemma4VideoProcessor(**GEMMA4_SIZES), chat_template=template,
                              image_seq_length=GEMMA4_SOFT_TOKENS)


SPECS = {
    "internvl": TinySpec(INTERNVL_SPECIALS, QWEN2_ROLES | {"extra_special_tokens": INTERNVL_NAMED},
                         internvl_config, internvl_processor),
    "mistral3": TinySpec(MISTRAL3_SPECIALS, LLAMA2_ROLES, mistral3_config, mistral3_processor),
    "llama4": TinySpec(LLAMA4_SPECIALS, dict(bos_token="<|begin_of_text|>", eos_token="<|eot|>",
                                             pad_token="<|finetune_right_pad|>"), llama4_config, llama4_processor),
    "gemma3": TinySpec(GEMMA3_SPECIALS, GEMMA_ROLES | {"extra_special_tokens": GEMMA3_NAMED}, gemma3_config,
                       gemma3_processor, prepare=gemma3_projector),
    "llava": TinySpec(LLAVA_SPECIALS, LLAMA2_ROLES, llava_config, llava_processor),
    "smolvlm": TinySpec(SMOLVLM_SPECIALS, dict(bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                               pad_token="<|im_end|>"), smolvlm_config, smolvlm_processor),
    "llava_next": TinySpec(LLAVA_NEXT_SPECIALS, LLAMA2_ROLES, llava_next_config, llava_next_processor),
    "llava_onevision": TinySpec(LLAVA_ONEVISION_SPECIALS, QWEN2_ROLES, llava_onevision_config,
                                llava_onevision_processor),
    "gemma4": TinySpec(GEMMA4_SPECIALS, GEMMA_ROLES | {"extra_special_tokens": GEMMA4_NAMED}, gemma4_config,
                       gemma4_processor),
}

# tests/families/phi4.py (written alongside) finishes its model with this name; new builders call
# sft.model.tiny.finish_tiny_model, or better, are a TinySpec.
_finish = finish_tiny_model
