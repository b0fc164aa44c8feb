"""The one skeleton every tiny family model is built with: a tokenizer trained on the spot with the family's special
tokens → a tiny config of the real architecture → the model class the toolkit loads it with → the real processor
class with the family's chat template → sft.model.tiny.finish_tiny_model (widened lm_head, generation ids, save).

A family is a `TinySpec`: data plus two small functions (its config and its processor), written in
tests/families/misc.py, qwen.py and paligemma.py; tests/families/registry.py names the specs' cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from sft.model.loading import model_class_for
from sft.model.tiny import build_tokenizer, finish_tiny_model

# The language model of every spec-built family: hidden 64, 2 layers, 4 query and 2 key/value heads of 16.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False)


def text_config(tok, **extra) -> dict:
    """The tiny language-model config for `tok`'s vocabulary and special-token ids (`extra` overrides)."""
    return dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id, **TEXT) | extra


def vision_config(**extra) -> dict:
    """A 1-layer vision tower, hidden 32 (`extra`: image and patch size, model_type, overrides)."""
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2) | extra


@dataclass(frozen=True)
class TinySpec:
    """One family's tiny model: its tokenizer's special tokens and roles, its config and its processor."""

    specials: list[str]  # special tokens by their published names (ids are the trained tokenizer's)
    roles: dict  # bos_token / eos_token / pad_token / unk_token, extra_special_tokens (named ones the processor reads)
    config: Callable  # tok -> the architecture's config
    processor: Callable  # (tok, chat template text or None) -> the real processor class
    added: tuple[str, ...] = ()  # added tokens that are not special (Qwen's <think>, <tool_call>, ...)
    prepare: Callable = field(default=lambda model: None)  # model -> None: a weight a checkpoint would overwrite
    extra_lines: tuple[str, ...] = ()  # more tokenizer training text (its merges), and the vocabulary size
    vocab_size: int = 400


def tiny_tokenizer(specials: list[str], roles: dict, added: tuple[str, ...] = (),
                   extra_lines: tuple[str, ...] = (), vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on sft.model.tiny's corpus (plus `extra_lines`) with `specials`, their roles and
    `added`."""
    trained = build_tokenizer(specials, vocab_size, extra_lines=extra_lines)
    tok = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, **roles)
    tok.add_tokens([AddedToken(token, special=False, normalized=False) for token in added])
    return tok


def build_from(spec: TinySpec, out, template: str | None) -> None:
    """Write `spec`'s tiny model and processor (with chat template `template`) to `out`."""
    tok = tiny_tokenizer(spec.specials, spec.roles, spec.added, spec.extra_lines, spec.vocab_size)
    config = spec.config(tok)
    model = model_class_for(config).from_config(config)
    spec.prepare(model)
    finish_tiny_model(model, spec.processor(tok, template), out)
