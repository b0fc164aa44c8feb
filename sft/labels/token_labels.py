"""Character spans to token labels: the tokenizer level of the label contract.

The row is tokenized once, whole (its processor call makes every tensor match input_ids); a span boundary is placed
on that token sequence by tokenizing the text after it (no image or video follows) or running the processor on the
text before it (an image or video follows, whose expansion only the processor knows), and checking the pieces line
up. A row's `images` are its visuals: its images, then its video clips (sft.data.video.Clip), each counted by the marker
the template writes for it.
"""

from __future__ import annotations

from collections.abc import Callable
from difflib import SequenceMatcher

from sft.errors import UserError
from sft.labels.video_batch import split_visuals

IGNORE_INDEX = -100


class TokenLabels:
    """Places supervised character spans on a row's token ids."""

    def __init__(self, tokenizer, image_token: str | None, process: Callable, placeholder_ids: frozenset = frozenset(),
                 video_token: str | None = None):
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.video_token = video_token  # what the template writes per video (the processor's video_token)
        self.process = process  # (texts, visuals) -> the processor's batch, for the text before an image or video
        self.placeholder_ids = placeholder_ids  # the image marker's and the processor's image/video token ids

    def visuals_before(self, text: str, char: int, images: list) -> list:
        """The row's images and clips whose markers lie before `char` (all of them: nothing follows)."""
        head = text[:char]
        pictures, clips = split_visuals(images)
        seen_images = head.count(self.image_token) if self.image_token else 0
        seen_clips = head.count(self.video_token) if self.video_token and clips else 0
        return pictures[:seen_images] + clips[:seen_clips]

    def splits_at(self, text: str, char: int) -> bool:
        """Whether the tokenizer puts a token boundary at `char` (checked on the text around it)."""
        low, high = max(0, char - 32), char + 32
        pieces = [text[low:high], text[low:char], text[char:high]]
        whole, left, right = self.tokenizer(pieces, add_special_tokens=False)["input_ids"]
        return left + right == whole

    def token_start(self, text: str, char: int) -> int:
        """`char`, or, when the tokenizer joins the whitespace before it with what follows into one token (Qwen's
        `\n\n` across `<think>\n` | `\n</think>`), where that token starts: labels can only start at a token
        boundary. Asked only where a span start is not one (labels) and for the generation prompt."""
        if char == 0 or not text[char - 1].isspace():
            return char  # no whitespace to move over (a merge there is refused when the labels are set)
        start = char
        while start > max(0, char - 32) and not self.splits_at(text, start):
            if not text[start - 1].isspace():
                return char
            start -= 1
        return start

    def tails(self, text: str, chars: list[int], images: list) -> list[str]:
        """Text after each boundary that has no image or video after it (those are counted from the end of the
        row)."""
        return [text[c:] for c in chars if len(self.visuals_before(text, c, images)) == len(images)]

    def token_indices(self, text: str, chars: list[int], ids: list[int], images: list,
                      tail_ids: list[list[int]] | None = None) -> list[int | None]:
        """Index in `ids` (the full row's tokens) of the token that starts at each character of `chars`; None where
        no token starts there (the tokenizer merged across it)."""
        if tail_ids is None:
            tails = self.tails(text, chars, images)
            tail_ids = self.tokenizer(tails, add_special_tokens=False)["input_ids"] if tails else []
        tail_ids = iter(tail_ids)
        indices = []
        for char in chars:
            before = self.visuals_before(text, char, images)
            images_before = len(before)
            if images_before == len(images):
                tail = next(tail_ids)
                index, same = len(ids) - len(tail), ids[len(ids) - len(tail):] == tail
            else:  # an image follows: run the processor on the head, with the images it holds
                head = self.process([text[:char]], [before] if before else None)
                head_ids = head["input_ids"][0].tolist()
                index, same = len(head_ids), ids[: len(head_ids)] == head_ids
            if not same and 0 < images_before < len(images) and self.splits_at(text, char):
                raise UserError("the processor expands the images before a later one differently from the whole row "
                                "(LLaVA-OneVision tiles a lone image, not one of several); cannot mask by position; "
                                "put the row's images in its first user turn")
            indices.append(index if same else None)
        return indices

    def labels_for(self, text: str, spans: list[tuple[int, int]], ids: list[int], images: list,
                   tail_ids: list[list[int]] | None = None) -> list[int]:
        """`ids` where a supervised span covers the token, IGNORE_INDEX everywhere else."""
        labels = [IGNORE_INDEX] * len(ids)
        chars = [c for span in spans for c in span]
        bounds = self.token_indices(text, chars, ids, images, tail_ids)
        for k, char in enumerate(chars):
            if bounds[k] is None and k % 2 == 0:  # a span start inside a token: from that token, if whitespace
                moved = self.token_start(text, char)
                bounds[k] = self.token_indices(text, [moved], ids, images)[0] if moved != char else None
            if bounds[k] is None:
                raise UserError(f"the tokenizer merges tokens across a turn boundary at "
                                f"{text[max(0, char - 20):char]!r}; cannot mask by position")
        for first, last in zip(bounds[::2], bounds[1::2]):
            labels[first:last] = ids[first:last]  # the reply and its closing token; all else stays -100
        return labels

    def conversation_labels(self, text: str, ids: list[int], images: list) -> list[int]:
        """`completion_only_loss: false`: `ids` everywhere but the image placeholders and the row's first token.

        An image placeholder is a token the processor's image expansion wrote (one that does not line up with the
        tokens of the template's own rendering `text`: Idefics3's tile and row tokens, InternVL's <img>, Pixtral's
        [IMG_BREAK], Gemma 3's soft tokens and the blank lines around them) or a token of the image marker the
        template writes and the processor's image/video token ids (`placeholder_ids`: Gemma 3's <start_of_image>,
        Qwen's <|image_pad|>). Everything else the template writes is supervised: system and user turns, role
        headers, Qwen's <|vision_start|>, each turn's closing token and an EOS inserted after a reply."""
        keep = range(len(ids))
        if images:  # the expansion is what the processor's ids add to the rendering's; aligned, never guessed
            rendered = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            blocks = SequenceMatcher(None, rendered, ids, autojunk=False).get_matching_blocks()
            keep = {i for block in blocks for i in range(block.b, block.b + block.size)}
        labels = [token if i in keep and token not in self.placeholder_ids else IGNORE_INDEX
                  for i, token in enumerate(ids)]
        # No token precedes the first, so no loss reads its label unpacked; packed, it would be learnt from the row
        # before it (TRL's padding-free collator masks it too, trl 1.16.0 DataCollatorForLanguageModeling).
        return [IGNORE_INDEX, *labels[1:]] if labels else labels


def token_kinds(tokenizer, text: str, ids: list[int], segments: list[tuple[int, int, str]]) -> list[str | None]:
    """Each token's kind (`reasoning`, `call`, `tool_result`, or None) from the rendering's character segments
    (sft/labels/reply_spans.py Rendering): the row's tokens aligned with the tokens of the template's text, as
    `conversation_labels` aligns them (an image's expansion matches nothing and has no kind); for the pages and
    `sft preview`, which colour them apart."""
    kinds: list[str | None] = [None] * len(ids)
    if not segments:
        return kinds
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    for block in SequenceMatcher(None, encoded["input_ids"], ids, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            start = offsets[block.a + k][0]
            kinds[block.b + k] = next((kind for a, b, kind in segments if a <= start < b), None)
    return kinds
