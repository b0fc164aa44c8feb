"""A labelled row's tokens as the pieces a page draws: runs of supervised and unsupervised tokens, each token's text.

Supervision comes from the collator's labels only (label != -100 is supervised), so a page shows exactly what
training supervises: one highlighted run per contiguous stretch of supervised tokens, split where its kind changes
(reasoning, tool calls and tool results are coloured apart).
"""

from __future__ import annotations

from sft.labels.token_labels import IGNORE_INDEX

CONTEXT_TOKENS = 3  # decoded before a token so that a leading space (SentencePiece's "▁") is kept in its text
MAX_GROUP = 8  # tokens joined at most to complete one character split across byte tokens


def supervised_runs(labels: list[int]) -> list[tuple[int, int]]:
    """(start, stop) of each contiguous stretch of supervised labels: the spans a page highlights."""
    runs, start = [], None
    for position, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, position))
            start = None
    return runs


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _pieces(tokenizer, ids: list[int], start: int, stop: int, added: frozenset, collapse: bool) -> list[dict]:
    """ids[start:stop] as pieces `{text, ids, repeat, special}`: one a token, or a few where a character is split
    across byte tokens (decoded alone each would be "\ufffd"); with `collapse`, a run of one repeated added token (an
    image's placeholders, one per patch or tile) is one piece with its count."""
    pieces, first = [], start
    end = start
    while end < stop:
        if collapse and first == end and ids[end] in added:
            last = end
            while last + 1 < stop and ids[last + 1] == ids[end]:
                last += 1
            if last > end:
                pieces.append({"text": _decode(tokenizer, [ids[end]]), "ids": [ids[end]], "repeat": last - end + 1,
                               "special": True})
                first = end = last + 1
                continue
        end += 1
        context = max(0, first - CONTEXT_TOKENS)
        before, after = _decode(tokenizer, ids[context:first]), _decode(tokenizer, ids[context:end])
        if after.endswith("\ufffd") and end < stop and end - first < MAX_GROUP:
            continue  # an incomplete character: its next byte token completes it
        text = after[len(before):] if after.startswith(before) else _decode(tokenizer, ids[first:end])
        pieces.append({"text": text, "ids": ids[first:end], "repeat": 1, "special": ids[first] in added})
        first = end
    return pieces


def token_runs(tokenizer, ids: list[int], labels: list[int], kinds: list[str | None] | None = None) -> list[dict]:
    """The row as runs `{supervised, kind, pieces}` in order: a run ends where supervision or the kind (`kinds`,
    sft/labels/token_labels.py token_kinds) changes, so the supervised runs are `supervised_runs(labels)` split by
    kind."""
    added = frozenset(getattr(tokenizer, "added_tokens_decoder", None) or {})  # special and placeholder tokens
    keys = [(label != IGNORE_INDEX, kind) for label, kind in zip(labels, kinds or [None] * len(ids))]
    runs, start = [], 0
    for position in range(1, len(ids) + 1):
        if position == len(ids) or keys[position] != keys[start]:
            supervised, kind = keys[start]
            runs.append({"supervised": supervised, "kind": kind,
                         "pieces": _pieces(tokenizer, ids, start, position, added, not supervised)})
            start = position
    return runs
