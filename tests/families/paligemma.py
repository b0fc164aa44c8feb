"""A tiny random PaliGemma 2 with its real processor class, built offline, as data for tests/families/build.py.

PaliGemma 2 checkpoints ship no chat template (shared/fixtures/chat-templates/README.md): the tokenizer here carries
the named special tokens of google/paligemma2-3b-pt-448's tokenizer_config.json (Gemma 2's plus `<image>`; the 1,024
`<loc>` and 128 `<seg>` tokens are left out), trained on the spot; the model is PaliGemmaForConditionalGeneration with
a Gemma 2 language model (hidden 64, 2 layers, sliding window and logit soft-capping as the real one has) and a
1-layer SigLIP tower on 28 px images (4 image tokens instead of 1,024).
"""

from __future__ import annotations

import transformers as tf

from tests.families.build import TinySpec, text_config, vision_config

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<image>"]
TILE, PATCH = 28, 14
TOKENS = (TILE // PATCH) ** 2


def paligemma_config(tok):
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return tf.PaliGemmaConfig(
        vision_config=vision_config(model_type="siglip_vision_model", image_size=TILE, patch_size=PATCH,
                                    num_image_tokens=TOKENS, projection_dim=64),
        text_config=text_config(tok, model_type="gemma2", query_pre_attn_scalar=16, sliding_window=64,
                                max_position_embeddings=1024, tie_word_embeddings=True),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=64, **ids)


def paligemma_processor(tok, template: None):
    image_processor = tf.SiglipImageProcessorPil(size={"height": TILE, "width": TILE}, image_seq_length=TOKENS)
    return tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)


SPEC = TinySpec(SPECIALS, dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"),
                paligemma_config, paligemma_processor)
