"""A family table field: how a family's image tokens attend both ways, for the masks of its packed rows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackingBlocks:
    """A family whose image tokens attend to each other both ways: packed, the toolkit builds its masks in real token
    indices (sft/model/packed_masks.py)."""

    type_ids: str  # the processor tensor that marks image tokens
    image_types: tuple[int, ...]  # its values on image tokens
    full_layers: bool  # full-attention layers see an image block both ways too (Gemma 3), or causally (Gemma 4)
    config_key: str | None = None  # a text-config key that must equal `config_value` for the blocks to apply
    config_value: object = None

    def bidirectional(self, config) -> bool:
        return self.config_key is None or getattr(config, self.config_key, None) == self.config_value
