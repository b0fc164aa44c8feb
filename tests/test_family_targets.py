"""LoRA and quantization keep to the language model, for every family in tests/families/registry.py.

The language model is found from the model itself (`get_decoder()`), not from the family table, so these tests
check the table's `vision_modules` as well as sft/model/targets.py's choice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sft.family.families import FAMILIES
from sft.family.parts import PARTS
from sft.model.targets import INPUT_PROJECTIONS, OUTPUT_PROJECTIONS, is_quantized, lora_targets, not_quantized
from tests.families.registry import CASES, cases


def linears(module: torch.nn.Module, prefix: str = "") -> set[str]:
    return {f"{prefix}{name}" for name, layer in module.named_modules() if isinstance(layer, torch.nn.Linear)}


def language_and_vision(model) -> tuple[set[str], set[str]]:
    """The linear layers of the language model (its decoder, lm_head aside) and those outside it (vision tower,
    projector)."""
    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    # Less what feeds its input embeddings: a decoder may hold the image and audio towers there (Phi-4-multimodal's
    # embed_tokens_extend).
    embedding = {f"{prefix}.{name}." for name, _ in decoder.named_children() if "embed" in name}
    language = {name for name in linears(decoder, f"{prefix}.") if not name.startswith(tuple(embedding))}
    head = {name for name, module in model.named_modules() if module is model.get_output_embeddings()}
    return language - head, linears(model) - language - head


@pytest.mark.parametrize("case", cases(CASES))
def test_lora_targets_are_the_language_models_attention_projections_only(family_models, case):
    _, model = family_models.load(case)
    language, _ = language_and_vision(model)
    targets = [name for name, _ in lora_targets(model, case.family)]
    attention = {name for name in language if name.rsplit(".", 1)[-1] in INPUT_PROJECTIONS + OUTPUT_PROJECTIONS}
    assert targets and set(targets) == attention  # every attention projection of the language model, nothing else
    by_layer: dict[str, set[str]] = {}
    for name in targets:
        layer, leaf = name.rsplit(".", 1)
        by_layer.setdefault(layer, set()).add(leaf)
    # q, k, v and o of each attention layer (or Phi's fused qkv and o); Gated DeltaNet layers (Qwen3.5) have none.
    assert all(leaves in ({"q_proj", "k_proj", "v_proj", "o_proj"}, {"qkv_proj", "o_proj"})
               for leaves in by_layer.values()), by_layer


@pytest.mark.parametrize("case", cases(CASES))
def test_no_vision_linear_is_quantized_and_every_language_one_is(family_models, case):
    _, model = family_models.load(case)
    language, vision = language_and_vision(model)
    assert bool(vision) == case.vision  # a vision model has linears outside its language model
    assert [name for name in vision if is_quantized(name, case.family)] == []
    assert [name for name in language if not is_quantized(name, case.family)] == []
    assert not is_quantized("lm_head", case.family)


def test_every_family_derives_lora_targets_and_the_quantization_skip_list_from_the_table():
    for family in FAMILIES:
        for module in family.vision_modules:
            assert f".*{module}" in not_quantized(family)
            assert not is_quantized(f"model.{module}.layers.0.attention.q_proj", family)
    # No second list of vision module names anywhere in sft/: every other module reads the table.
    # (sft/family/parts.py's part names are the recipe's vocabulary, one of which is also a module name: vision_tower.)
    names = {module for family in FAMILIES for module in family.vision_modules} - set(PARTS)
    for source in (Path(__file__).resolve().parents[1] / "sft").rglob("*.py"):
        if source.name != "families.py":
            text = source.read_text(encoding="utf-8")
            assert not [n for n in names if f'"{n}"' in text or f"'{n}'" in text], source.name
