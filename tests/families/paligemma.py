"""A tiny random PaliGemma 2 with its real processor class, built offline.

PaliGemma 2 checkpoints ship no chat template (shared/fixtures/chat-templates/README.md): the tokenizer here carries
the named special tokens of google/paligemma2-3b-pt-448's tokenizer_config.json (Gemma 2's plus `<image>`; the 1,024
`<loc>` and 128 `<seg>` tokens are left out), trained on the spot; the model is PaliGemmaForConditionalGeneration with
a Gemma 2 language model (hidden 64, 2 layers, sliding window and logit soft-capping as the real one has) and a
1-layer SigLIP tower on 28 px images (4 image tokens instead of 1,024).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sft.tiny import _widen_lm_head, build_tokenizer

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<image>"]


def build(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny model and its processor to `out`; returns the folder."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        PreTrainedTokenizerFast,
        SiglipImageProcessorPil,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    trained = build_tokenizer(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    tile, patch = 28, 14
    tokens = (tile // patch) ** 2
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=tile, patch_size=patch,
                           num_image_tokens=tokens, projection_dim=64),
        text_config=dict(model_type="gemma2", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         query_pre_attn_scalar=16, sliding_window=64, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    model = PaliGemmaForConditionalGeneration(config)
    _widen_lm_head(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    processor = PaliGemmaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": tile, "width": tile}, image_seq_length=tokens),
        tokenizer=tok)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
