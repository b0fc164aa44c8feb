"""Text rows are tokenized and labelled once, when they are measured; a batch of them is then built from the stored
ids and labels, and it is exactly the batch the full render would make."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from sft.labels.fit import measure
from sft.labels.labelling import make_collator
from sft.labels.packing import PackedBatches
from tests.families.registry import BY_NAME, cases
from tests.families.rows import SHAPES, row


def measured(collator, example: dict) -> dict:
    return {**example, **measure(example, collator, 1024, "drop")}


@pytest.mark.parametrize("case", cases([BY_NAME["llama"], BY_NAME["mllama"], BY_NAME["idefics3"]]))
def test_a_batch_from_stored_ids_is_the_batch_the_render_makes(family_models, tmp_path, case):
    processor, _ = family_models.load(case)
    collator = make_collator(processor, case.family, pad_to_multiple_of=8)
    examples = [row(tmp_path, SHAPES[shape], where=f"t.jsonl:{n}") for n, shape in enumerate(SHAPES, start=1)]
    stored = [measured(collator, example) for example in examples]
    assert all(example["row_ids"] and example["row_labels"] for example in stored)
    rendered, from_ids = collator(examples), collator(stored)
    assert set(rendered) == set(from_ids)
    for key in rendered:
        assert torch.equal(rendered[key], from_ids[key]), key


@pytest.mark.parametrize("case", cases([BY_NAME["gemma3"], BY_NAME["qwen2_5_vl"], BY_NAME["idefics3"]]))
def test_rows_whose_processor_makes_more_than_ids_are_rendered_each_batch(family_models, tmp_path, case):
    processor, _ = family_models.load(case)
    collator = make_collator(processor, case.family)
    text, image = (measured(collator, row(tmp_path, SHAPES["prompt_completion"], images=n)) for n in (0, 1))
    assert image["row_ids"] == [] and image["row_labels"] == []  # an image row: its tensors come from the processor
    # Gemma 3's and Qwen's processors mark token types on text rows too, so their text rows are rendered as well.
    assert bool(text["row_ids"]) == (case.name == "idefics3")


@pytest.mark.parametrize("case", cases([BY_NAME["llama"], BY_NAME["idefics3"]]))
def test_packed_text_rows_laid_end_to_end_from_stored_ids_are_the_rendered_pack(family_models, tmp_path, case):
    processor, _ = family_models.load(case)
    collator = make_collator(processor, case.family)
    examples = [row(tmp_path, SHAPES[shape], where=f"t.jsonl:{n}") for n, shape in enumerate(SHAPES, start=1)]
    stored = Dataset.from_list([measured(collator, example) for example in examples])
    batches = PackedBatches(collator, stored, case.family)
    from_ids = batches([{"pack": [0, 1], "length": 0}, {"pack": [2], "length": 0}])
    rendered = batches.concatenate(collator(examples))
    assert set(from_ids) == set(rendered)
    for key, value in rendered.items():
        assert torch.equal(value, from_ids[key]) if torch.is_tensor(value) else value == from_ids[key], key
