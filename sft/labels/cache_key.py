"""The cache key of measured rows: everything that can change a row's tokens or labels, each hashed by content.

`datasets` keeps `fit_to_length`'s measured rows (ids, labels, lengths) in its cache under this key. A key built from
names (the tokenizer's path) served rows measured with the old chat template after a template changed in place, or
with `chat_template_path`: the run trained on one rendering and saved another. So every input is hashed by what it
is, not by where it came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from sft.family.image_budget import image_settings
from sft.labels.labelling import Labeller

# Bump when the labelling code changes what a row becomes (its measured columns, where a span starts or ends).
LABELLING_VERSION = 7
CALL_STATE = ("truncation", "padding")  # a fast tokenizer's settings of its last call, not of its tokens


def tokenizer_content(tokenizer) -> str:
    """The tokenizer as data: its class, vocabulary, merges, normalizer and pre/post-processing (a fast tokenizer's
    `tokenizer.json`), and every added and special token with its id. The backend's truncation and padding are left
    out: they are call state, set by whichever call came last, not what a row's tokens are."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        body = sorted(tokenizer.get_vocab().items())
    else:
        body = {key: value for key, value in json.loads(backend.to_str()).items() if key not in CALL_STATE}
    added = sorted((int(index), str(token)) for index, token in tokenizer.added_tokens_decoder.items())
    return json.dumps([type(tokenizer).__name__, body, added, tokenizer.special_tokens_map], default=str)


def chat_templates(collator: Labeller) -> list:
    """The chat template text the rows are rendered with (the processor's and its tokenizer's; None where absent)."""
    return [getattr(holder, "chat_template", None) for holder in (collator.processing_class, collator.tokenizer)]


def key_parts(collator: Labeller, max_length: int | None, truncation: str) -> dict:
    """What the measured rows depend on besides the rows themselves, by name (tests change each one)."""
    return {
        "labelling_version": LABELLING_VERSION,
        "chat_template": chat_templates(collator),
        "tokenizer": hashlib.sha256(tokenizer_content(collator.tokenizer).encode()).hexdigest(),
        "processor": image_settings(collator.processing_class),  # image and video settings: budgets change lengths
        "family": repr(replace(collator.family, found_by="")),  # closing token, image marker, labels, ...
        "completion_only_loss": collator.completion_only_loss,  # stored labels: the replies', or the conversation's
        "date_string": collator.date_string,
        "enable_thinking": collator.enable_thinking,  # which rows render in thinking mode
        "supervise_empty_thinking": collator.supervise_empty_thinking,  # where a reply without reasoning starts
        "max_length": max_length,
        "truncation": truncation,
    }


def measured_key(rows_fingerprint: str, collator: Labeller, max_length: int | None, truncation: str) -> str:
    """The fingerprint of the measured rows: the rows' own fingerprint (their content) and `key_parts`."""
    parts = {"rows": rows_fingerprint, **key_parts(collator, max_length, truncation)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
