"""A tiny random Phi-4-multimodal (microsoft/Phi-4-multimodal-instruct) with its real processor class, built offline.

As tests/families/misc.py's builders: a byte-level BPE trained on the spot (sft.model.tiny.build_tokenizer) carrying the
family's real special tokens, the family's published chat template (tests/families/templates/phi4_multimodal.jinja;
tests/families/templates/PROVENANCE.md says where it and the token names come from), the real architecture class
(Phi4MultimodalForCausalLM: Phi-3-style language model with fused qkv_proj / gate_up_proj, a SigLIP-style image
tower + projector and a Conformer audio tower, all under model.embed_tokens_extend) at hidden size 64, 2 text
layers, a 1-layer vision tower and a 1-block audio tower.

Image geometry: transformers 5.23's Phi4MultimodalImageProcessor counts an image's tokens as
`256 + 1 + sub-crop tokens + sub-crop rows + 16`, the 256 and 16 fixed (a 16 x 16 global grid and its 16 row
separators), so the model must see a 32 x 32 patch grid per crop, pooled 2 x 2 to 16 x 16, whatever the pixel size.
The real checkpoint gets that from 448 px crops and 14 px patches; here 32 px crops and 1 px patches give the same
grid (and the same token layout) at 1/196 of the pixels. `dynamic_hd=1` keeps one sub-crop per image (the real
default is 36), so a 40 x 30 element image is 477 image tokens (a 32 x 32 image 545): fewer is impossible with
this processor class, which always writes 273 for the global crop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.families.build import TinySpec

TEMPLATE = Path(__file__).parent / "templates" / "phi4_multimodal.jinja"

# Phi-4-multimodal-instruct's named special tokens (its tokenizer is Phi-4-mini's o200k one): <|endoftext|> (bos,
# eos, pad and unk), the chat tokens <|system|> <|user|> <|assistant|> <|end|>, the tool tokens, and the image and
# audio placeholders (ids 200010 / 200011, <|endoftext10|> / <|endoftext11|> in the remote-code checkpoint), named
# <|image|> / <|audio|> as transformers' own Phi-4 tests write them, and given to the tokenizer as its named
# image_token / audio_token, which Phi4MultimodalProcessor reads (PROVENANCE.md: the name is inferred).
PHI4_SPECIALS = ["<|endoftext|>", "<|image|>", "<|audio|>", "<|endofprompt|>", "<|assistant|>", "<|end|>",
                 "<|user|>", "<|system|>", "<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>",
                 "<|tool_response|>", "<|tag|>"]
PHI4_NAMED = {"image_token": "<|image|>", "audio_token": "<|audio|>"}
CROP, PATCH = 32, 1  # a 32 x 32 patch grid per crop, as 448 px / 14 px in the real checkpoint


def phi4_config(tok):
    from transformers import Phi4MultimodalConfig

    return Phi4MultimodalConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, original_max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=CROP, patch_size=PATCH, crop_size=CROP, image_token_id=tok.image_token_id,
                           feature_layer=-1),  # the real -2 of 27 layers; with 1 layer, -2 would skip it
        audio_config=dict(num_blocks=1, hidden_size=32, num_attention_heads=2, intermediate_size=32,
                          ext_pw_out_channel=32, depthwise_separable_out_channel=32, nemo_conv_channels=32,
                          audio_token_id=tok.audio_token_id, feature_layer=-1),
    )


def peaked_attention(model) -> None:
    """An image is ~477 tokens here (see above), 97% of a row's keys. At transformers' init (std 0.02) the attention
    logits are ~0.03 apart, so every text position attends almost uniformly and gets the same image average: the
    reply's positions are hard to tell apart (the fire rows blend `f`, `ire` and `<|end|>`) and the 12-epoch element
    run (tests/families/report.py) names both elements on 2 of 5 seeds only (last loss 0.2-0.9). Query and key
    weights at std 0.2 make the random attention peaked (logits ~2.6 apart): 5 of 5 seeds, last loss <= 0.003."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    query_key = (config.num_attention_heads + config.num_key_value_heads) * head_dim  # qkv_proj rows: q, k, then v
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.weight[:query_key].normal_(std=0.2)


def phi4_processor(tok, template):
    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalImageProcessor, Phi4MultimodalProcessor

    return Phi4MultimodalProcessor(
        image_processor=Phi4MultimodalImageProcessor(size={"height": CROP, "width": CROP}, patch_size=PATCH,
                                                     dynamic_hd=1),
        audio_processor=Phi4MultimodalFeatureExtractor(), tokenizer=tok, chat_template=template)


ROLES = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
             unk_token="<|endoftext|>", extra_special_tokens=PHI4_NAMED)
SPEC = TinySpec(PHI4_SPECIALS, ROLES, phi4_config, phi4_processor, prepare=peaked_attention)
