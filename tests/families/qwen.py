"""Tiny random Qwen-VL models with their real processor classes, built offline.

Four families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (the last with its thinking-on and thinking-off
templates). Each tokenizer is a byte-level BPE trained on the spot (sft.tiny.build_tokenizer) that carries the
family's real special tokens, by the names its published tokenizer_config.json gives them, and the family's real
chat template, read from the shared fixtures beside the repository (tests/families/qwen_PROVENANCE.md says where
each comes from). Models are the real architecture classes at hidden size 64, two language layers and a two-block
vision tower, with a widened lm_head so that a few LoRA steps learn.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken

import sft  # noqa: F401  (lets torchvision import beside CPU torch before the video processors load)
from sft.tiny import _widen_lm_head, build_tokenizer
from tests.conftest import CHAT_TEMPLATES

TEMPLATES = CHAT_TEMPLATES  # the tests skip when it is absent

# Special (special: true) added tokens of Qwen2-VL-2B-Instruct's tokenizer_config.json, in id order 151643-151656.
# Qwen2.5-VL, Qwen3-VL and Qwen3.5 keep the same names (Qwen3.5 at ids 248044-248057).
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]
# Added tokens marked special: false (they split text but are not control tokens to the collator).
QWEN2_5_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                 "<|repo_name|>", "<|file_sep|>"]
QWEN3_ADDED = QWEN2_5_ADDED + ["<tool_response>", "</tool_response>", "<think>", "</think>"]

# name -> (chat template file in shared/fixtures/chat-templates, non-special added tokens)
VARIANTS = {
    "qwen2_vl": ("trl_qwen2_5_vl.jinja", []),  # Qwen2-VL ships the byte-identical template (fixtures README)
    "qwen2_5_vl": ("trl_qwen2_5_vl.jinja", QWEN2_5_ADDED),
    "qwen3_vl": ("trl_qwen3_vl.jinja", QWEN3_ADDED),
    "qwen3_5_think": ("trl_qwen3_5_think.jinja", QWEN3_ADDED),
    "qwen3_5_nothink": ("trl_qwen3_5_nothink.jinja", QWEN3_ADDED),
}
TINY_IMAGE_PIXELS = 64 * 64  # every image resized to about 64 x 64 px: a 4 x 4 (or 4 x 5) patch grid


def chat_template(name: str) -> str:
    return (TEMPLATES / VARIANTS[name][0]).read_text(encoding="utf-8")


def qwen_tokenizer(name: str, newline_merges: bool = False):
    """Byte-level BPE with Qwen's special tokens, roles and the variant's real chat template. With `newline_merges`
    it has learnt `\n\n` as one token, as Qwen's real tokenizer has (id 271)."""
    tok = build_tokenizer(QWEN_SPECIALS, extra_lines=("\n\n",) * 50 if newline_merges else ())
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in VARIANTS[name][1]])
    # tokenizer_config.json: bos_token null, eos_token <|im_end|>, pad_token <|endoftext|>.
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.chat_template = chat_template(name)
    return tok


def _text(tok, **extra) -> dict:
    config = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    return config | extra


def _vision_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _model_and_processor(name: str, tok):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3_5Config,
        Qwen3_5ForConditionalGeneration,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    # head_dim 16: the three M-RoPE sections (time, height, width) share its 8 rotary frequencies.
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1_000_000.0}
    if name == "qwen2_vl":
        patch = 14
        config = Qwen2VLConfig(
            text_config=_text(tok, rope_parameters=mrope),
            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=patch),
            **_vision_ids(tok))
        model, processor_class, video_class = (Qwen2VLForConditionalGeneration(config), Qwen2VLProcessor,
                                               Qwen2VLVideoProcessor)
    elif name == "qwen2_5_vl":
        patch = 14
        config = Qwen2_5_VLConfig(
            text_config=_text(tok, rope_parameters=mrope),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=patch, window_size=56, fullatt_block_indexes=[1]),
            **_vision_ids(tok))
        model, processor_class, video_class = (Qwen2_5_VLForConditionalGeneration(config), Qwen2_5_VLProcessor,
                                               Qwen2VLVideoProcessor)
    elif name == "qwen3_vl":
        patch = 16
        config = Qwen3VLConfig(
            text_config=_text(tok, head_dim=16, rope_parameters=mrope | {"mrope_interleaved": True}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=patch, num_position_embeddings=64, deepstack_visual_indexes=[0]),
            **_vision_ids(tok))
        model, processor_class, video_class = (Qwen3VLForConditionalGeneration(config), Qwen3VLProcessor,
                                               Qwen3VLVideoProcessor)
    else:  # qwen3_5: one Gated DeltaNet (linear attention) layer, then one full-attention layer, as 3 : 1 is shipped
        patch = 16
        config = Qwen3_5Config(
            text_config=_text(tok, head_dim=16, layer_types=["linear_attention", "full_attention"],
                              linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=16,
                              linear_value_head_dim=16,
                              rope_parameters=mrope | {"mrope_interleaved": True, "partial_rotary_factor": 1.0}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=patch, num_position_embeddings=64),
            **_vision_ids(tok))
        model, processor_class, video_class = (Qwen3_5ForConditionalGeneration(config), Qwen3VLProcessor,
                                               Qwen3VLVideoProcessor)
    size = {"shortest_edge": TINY_IMAGE_PIXELS // 2, "longest_edge": TINY_IMAGE_PIXELS}
    image_processor = Qwen2VLImageProcessor(patch_size=patch, merge_size=2, size=size)
    video_processor = video_class(patch_size=patch, merge_size=2, size=size)
    processor = processor_class(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                chat_template=tok.chat_template)
    return model, processor


def build_qwen(name: str, out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model of Qwen variant `name` (a key of VARIANTS) and its processor to `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = qwen_tokenizer(name)
    model, processor = _model_and_processor(name, tok)
    _widen_lm_head(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
