"""Tiny random Qwen-VL models with their real processor classes, built offline.

Four families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (the last with its thinking-on and thinking-off
templates), as data for tests/families/build.py. Each tokenizer is a byte-level BPE trained on the spot
(sft.model.tiny.build_tokenizer) that carries the family's real special tokens, by the names its published
tokenizer_config.json gives them; the family's real chat template is read from the shared fixtures beside the
repository (tests/families/registry.py names the file; tests/families/qwen_PROVENANCE.md says where each comes
from). Models are the real architecture classes at hidden size 64, two language layers and a two-block vision
tower, with a widened lm_head so that a few LoRA steps learn.
"""

from __future__ import annotations

import transformers as tf

import sft  # noqa: F401  (lets torchvision import beside CPU torch before the video processors load)
from tests.families.build import TinySpec, text_config, tiny_tokenizer

# Special (special: true) added tokens of Qwen2-VL-2B-Instruct's tokenizer_config.json, in id order 151643-151656.
# Qwen2.5-VL, Qwen3-VL and Qwen3.5 keep the same names (Qwen3.5 at ids 248044-248057).
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]
# Added tokens marked special: false (they split text but are not control tokens to the collator).
QWEN2_5_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                 "<|repo_name|>", "<|file_sep|>")
QWEN3_ADDED = QWEN2_5_ADDED + ("<tool_response>", "</tool_response>", "<think>", "</think>")

QWEN_ROLES = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")  # bos_token null
TINY_IMAGE_PIXELS = 64 * 64  # every image resized to about 64 x 64 px: a 4 x 4 (or 4 x 5) patch grid
# head_dim 16: the three M-RoPE sections (time, height, width) share its 8 rotary frequencies.
MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1_000_000.0}
INTERLEAVED = MROPE | {"mrope_interleaved": True}
VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)


def qwen_tokenizer(template: str, added: tuple[str, ...] = (), newline_merges: bool = False):
    """Byte-level BPE with Qwen's special tokens, roles, `added` tokens and `template` as its chat template. With
    `newline_merges` it has learnt `\n\n` as one token, as Qwen's real tokenizer has (id 271)."""
    tok = tiny_tokenizer(QWEN_SPECIALS, QWEN_ROLES, added, extra_lines=("\n\n",) * 50 if newline_merges else ())
    tok.chat_template = template
    return tok


def _text(tok, **extra) -> dict:
    return text_config(tok, max_position_embeddings=2048, bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                       **extra)


def _vision_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def qwen2_vl_config(tok):
    return tf.Qwen2VLConfig(text_config=_text(tok, rope_parameters=MROPE), **_vision_ids(tok),
                            vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                                               patch_size=14))


def qwen2_5_vl_config(tok):
    return tf.Qwen2_5_VLConfig(text_config=_text(tok, rope_parameters=MROPE), **_vision_ids(tok),
                               vision_config=VISION | dict(patch_size=14, window_size=56, fullatt_block_indexes=[1]))


def qwen3_vl_config(tok):
    return tf.Qwen3VLConfig(text_config=_text(tok, rope_parameters=INTERLEAVED), **_vision_ids(tok),
                            vision_config=VISION | dict(patch_size=16, num_position_embeddings=64,
                                                        deepstack_visual_indexes=[0]))


def qwen3_5_config(tok):
    # One Gated DeltaNet (linear attention) layer, then one full-attention layer, as 3 : 1 is shipped.
    text = _text(tok, layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                 linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
                 rope_parameters=INTERLEAVED | {"partial_rotary_factor": 1.0})
    return tf.Qwen3_5Config(text_config=text, **_vision_ids(tok),
                            vision_config=VISION | dict(patch_size=16, num_position_embeddings=64))


def processor(processor_class: str, video_class: str, patch: int):
    """The variant's processor maker: Qwen2-VL's image processor and the variant's processor and video classes."""
    def make(tok, template: str):
        size = {"shortest_edge": TINY_IMAGE_PIXELS // 2, "longest_edge": TINY_IMAGE_PIXELS}
        return getattr(tf, processor_class)(
            image_processor=tf.Qwen2VLImageProcessor(patch_size=patch, merge_size=2, size=size), tokenizer=tok,
            video_processor=getattr(tf, video_class)(patch_size=patch, merge_size=2, size=size),
            chat_template=template)
    return make


SPECS = {
    "qwen2_vl": TinySpec(QWEN_SPECIALS, QWEN_ROLES, qwen2_vl_config,
                         processor("Qwen2VLProcessor", "Qwen2VLVideoProcessor", 14)),
    "qwen2_5_vl": TinySpec(QWEN_SPECIALS, QWEN_ROLES, qwen2_5_vl_config,
                           processor("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", 14), added=QWEN2_5_ADDED),
    "qwen3_vl": TinySpec(QWEN_SPECIALS, QWEN_ROLES, qwen3_vl_config,
                         processor("Qwen3VLProcessor", "Qwen3VLVideoProcessor", 16), added=QWEN3_ADDED),
    # Qwen3.5 ships Qwen3-VL's processor class (so sft.family.families.family_for_processor finds the qwen3_vl entry).
    "qwen3_5": TinySpec(QWEN_SPECIALS, QWEN_ROLES, qwen3_5_config,
                        processor("Qwen3VLProcessor", "Qwen3VLVideoProcessor", 16), added=QWEN3_ADDED),
}
