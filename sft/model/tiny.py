"""Tiny random models with real processor classes, built offline (the Hub is unreachable in tests and CI).

Three families, each a few hundred thousand parameters: `llama` (text), `mllama` (Llama 3.2 Vision:
cross-attention) and `idefics3` (SmolVLM). The tokenizer is a byte-level BPE trained on the spot; the chat
templates follow the real ones' layout (Llama 3 headers and `<|eot_id|>`; SmolVLM's `User:`/`Assistant:` and
`<end_of_utterance>`), so the label contract is exercised on the same shapes as the real models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

FAMILIES = ("llama", "mllama", "idefics3")

# Words the tokenizer learns as whole tokens, so prompts and answers stay a few tokens long.
_CORPUS = """What element is shown in this picture? Answer with one word.
water fire earth wind. The element is water. The element is fire. The element is earth. The element is wind.
Define the construction term. Rebar is a steel bar used to reinforce concrete. A beam carries load.
Formwork is a temporary mould for concrete. Scaffolding is a temporary structure. A footing spreads load.
system user assistant You are a helpful assistant. Answer briefly.
""" * 20

# Llama 3 layout: header tokens, a blank line, the text, <|eot_id|>. Content may be a string or typed parts.
LLAMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# SmolVLM layout: `<|im_start|>User:<image>text<end_of_utterance>\nAssistant: text<end_of_utterance>\n`.
IDEFICS3_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_LLAMA_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|finetune_right_pad_id|>", "<|python_tag|>", "<|image|>",
]
_IDEFICS3_SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>",
] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def build_tokenizer(specials: list[str], vocab_size: int = 400,
                    extra_lines: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a small built-in corpus (plus `extra_lines`), with `specials` as special
    tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines() + list(extra_lines), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def _llama_tokenizer(with_image: bool) -> PreTrainedTokenizerFast:
    specials = _LLAMA_SPECIALS if with_image else [t for t in _LLAMA_SPECIALS if t != "<|image|>"]
    tok = build_tokenizer(specials)
    tok.bos_token, tok.eos_token, tok.pad_token = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
    tok.chat_template = LLAMA_TEMPLATE
    return tok


def _text_config(tok: PreTrainedTokenizerFast, **extra) -> dict:
    config = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    return config | extra


def finish_tiny_model(model: torch.nn.Module, processor, out: Path) -> None:
    """The last step of every tiny builder: a widened lm_head, generation padding and stopping at the tokenizer's
    pad and EOS, then model and processor (or tokenizer) saved to `out`."""
    # With the usual std 0.02 the logits of a 64-wide model stay near-uniform and a rank-8 LoRA cannot fit the
    # answers in tens of steps; 0.2-0.3 trains (measured on the tiny Mllama).
    torch.nn.init.normal_(model.get_output_embeddings().weight, std=0.25)
    tokenizer = getattr(processor, "tokenizer", processor)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_llama(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _llama_tokenizer(with_image=False)
    finish_tiny_model(LlamaForCausalLM(LlamaConfig(**_text_config(tok))), tok, out)


def build_mllama(out: Path) -> None:
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    tok = _llama_tokenizer(with_image=True)
    image_size = 28  # 2 × 2 patches of 14 px per tile
    config = MllamaConfig(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
            image_size=image_size, patch_size=14, max_num_tiles=4, intermediate_layers_indices=[0],
            vision_output_dim=64,  # hidden_size × (1 + len(intermediate_layers_indices))
        ),
        text_config=_text_config(tok, num_hidden_layers=3, cross_attention_layers=[1]),
        image_token_index=tok.convert_tokens_to_ids("<|image|>"),
    )
    model = MllamaForConditionalGeneration(config)
    # Random Mllama starts its cross-attention gates at 0 (tanh(0) = 0), so no image information would reach the
    # text and an image task could never be learned. Open them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                param.fill_(1.0)
    image_processor = MllamaImageProcessorPil(size={"height": image_size, "width": image_size}, max_image_tiles=4)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=LLAMA_TEMPLATE)
    finish_tiny_model(model, processor, out)


def build_idefics3(out: Path) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tok = build_tokenizer(_IDEFICS3_SPECIALS)
    tok.bos_token, tok.eos_token, tok.pad_token = "<|im_start|>", "<end_of_utterance>", "<|im_end|>"
    tok.chat_template = IDEFICS3_TEMPLATE
    tile, patch, scale = 32, 16, 2
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=tile,
            patch_size=patch,
        ),
        text_config=dict(model_type="llama", **_text_config(tok)),
        scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}
    )
    image_seq_len = (tile // patch) ** 2 // scale**2  # tokens per tile after the pixel-shuffle connector
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=image_seq_len, chat_template=IDEFICS3_TEMPLATE
    )
    finish_tiny_model(model, processor, out)


BUILDERS = {"llama": build_llama, "mllama": build_mllama, "idefics3": build_idefics3}


def build_tiny(family: str, out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `family` model and its processor to `out`; returns the folder."""
    if family not in BUILDERS:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BUILDERS[family](out)
    return out
