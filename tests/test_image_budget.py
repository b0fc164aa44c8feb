"""Image budgets (`image_max_pixels`, `image_min_pixels`; sft/family/image_budget.py): each family's own processor
setting bounds the resized image, so a large image costs the visual tokens its processor documents for the budget; a
family of one fixed image size refuses the keys in one line; the processor saved with a run keeps the budget; `sft
check` reports the visual tokens of the image rows and the rows dropped for image tokens apart from those too long as
text.

Expected counts come from each processor's own resize rule (named beside each case) on the tiny models of
tests/families/registry.py; where a tiny processor's own setting leaves no room below it, the test gives it a larger
one first (`room`).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoConfig
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
from trl import ModelConfig

from sft.cli import main
from sft.config.data_arguments import DataArguments
from sft.errors import UserError
from sft.family.families import FAMILIES, find_family
from sft.family.image_budget import IMAGE_BUDGETS, ImageBudget, apply_image_budget, match_model_to_processor
from sft.labels.fit import measure
from sft.labels.labelling import make_collator
from sft.model.loading import load_model, load_processor, processor_and_family
from tests.conftest import REAL_PROCESSORS, write_image, write_jsonl, write_recipe
from tests.families.registry import BY_NAME

LARGE, WIDE, TINY, SQUARE = (1200, 1600), (800, 1600), (20, 30), (20, 20)  # (height, width) of the test images


def room(family_models, name: str, tmp_path, **settings):
    """The case's tiny checkpoint, or with `settings` a copy whose image processor has them as its own."""
    folder = family_models.folder(name)
    if not settings:
        return folder
    copy = shutil.copytree(folder, tmp_path / f"{name}-room")
    processor = load_processor(str(copy), AutoConfig.from_pretrained(copy), family=BY_NAME[name].family)
    for key, value in settings.items():
        setattr(processor.image_processor, key, value)
    processor.save_pretrained(copy)
    return copy


def loaded(folder, budget: ImageBudget | None = None):
    """(processor, family) as every command loads them, with `budget`."""
    return processor_and_family(str(folder), AutoConfig.from_pretrained(folder), image_budget=budget)


def image_row(tmp_path, size: tuple[int, int], text: str = "What is it?") -> dict:
    path = write_image(tmp_path / f"image-{size[0]}x{size[1]}.png", size=size)
    return {"where": "rows.jsonl:1", "row": 1, "stored_images": [{"path": str(path), "bytes": None}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "water"}]}]}


def visual(folder, budget: ImageBudget | None, row: dict) -> int:
    """The visual tokens `sft check` and training count for the row (sft.labels.fit.measure)."""
    return counted(*loaded(folder, budget), row)


def counted(processor, family, row: dict) -> int:
    return measure(row, make_collator(processor, family), None, "drop")["image_tokens"]


def qwen_tokens(size: tuple[int, int], factor: int, min_pixels: int, max_pixels: int) -> int:
    """Qwen-VL's documented count: smart_resize to multiples of patch x merge, then one token per merged patch."""
    height, width = smart_resize(*size, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return height * width // factor**2


QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5_nothink")


@pytest.mark.parametrize("name", QWEN)
def test_qwen_max_pixels_bounds_a_large_image(family_models, tmp_path, name):
    factor = loaded(family_models.folder(name))[0].image_processor.patch_size * 2  # 14 or 16 px patches, merged 2 x 2
    folder = room(family_models, name, tmp_path, size=SizeDict(shortest_edge=factor**2, longest_edge=64 * factor**2))
    row = image_row(tmp_path, LARGE)
    budget = 16 * factor**2
    assert visual(folder, None, row) == qwen_tokens(LARGE, factor, factor**2, 64 * factor**2)
    assert visual(folder, ImageBudget(max_pixels=budget), row) == qwen_tokens(LARGE, factor, factor**2, budget) == 12
    assert visual(folder, None, row) > 12


@pytest.mark.parametrize("name", QWEN)
def test_qwen_min_pixels_raises_a_tiny_image(family_models, tmp_path, name):
    folder = family_models.folder(name)
    factor = loaded(folder)[0].image_processor.patch_size * 2
    row = image_row(tmp_path, TINY)
    own = loaded(folder)[0].image_processor.size
    assert visual(folder, None, row) == qwen_tokens(TINY, factor, own["shortest_edge"], own["longest_edge"])
    raised = visual(folder, ImageBudget(min_pixels=4 * factor**2), row)
    assert raised == qwen_tokens(TINY, factor, 4 * factor**2, own["longest_edge"]) > visual(folder, None, row)


# (case, own settings given first, budget, image (height, width), visual tokens with the budget, without it) and the
# processor's rule that gives the count:
KNOBS = [
    # SmolVLM: longest_edge = sqrt(1024) = 32 = one 32 px tile, no split: <fake><global-img> + 1 x <image> + <fake>
    # (image_seq_len 1); its own 64 px splits into 2 x 2 tiles + the global one, with row/col tokens and newlines.
    ("idefics3", {}, 1024, LARGE, 4, 19),
    ("smolvlm", {}, 1024, LARGE, 4, 19),
    # Pixtral: longest_edge 28 -> 28 x 21 px, padded to 2 x 2 patches of 14, merged 2 x 2: one [IMG] + [IMG_END];
    # its own 56 -> 56 x 42 px -> 2 rows of 2 [IMG] + [IMG_BREAK] / [IMG_END].
    ("mistral3", {}, 28 * 28, LARGE, 2, 6),
    # InternVL: max_patches 1 tile of 56 px: <img> + 4 x <IMG_CONTEXT> + </img>; its own 2 tiles for a 2:1 image
    # add the thumbnail: 3 tiles of 4.
    ("internvl", {}, 56 * 56, WIDE, 6, 14),
    # Llama 4: max_patches 2 tiles of 28 px (1 x 2, one <|patch|> each after pixel shuffle), separators, the global
    # tile and <|image_start|>/<|image_end|>: 8; its own 4 tiles (2 x 2): 12.
    ("llama4", {}, 2 * 28 * 28, LARGE, 8, 12),
    # Gemma 4: max_soft_tokens 140 (the largest of 70/140/280/... with 140 x (16 x 2)^2 <= the budget): 1600 x 1200
    # scaled to 416 x 320 px = 13 x 10 soft tokens + <|image> + <image|>; at 280: 608 x 448 = 19 x 14 + 2.
    ("gemma4", {"max_soft_tokens": 280}, 140 * 32 * 32, LARGE, 132, 268),
]


@pytest.mark.parametrize("name, own, budget, size, expected, unbudgeted", KNOBS)
def test_max_pixels_gives_the_documented_visual_tokens(family_models, tmp_path, name, own, budget, size, expected,
                                                       unbudgeted):
    folder = room(family_models, name, tmp_path, **own)
    row = image_row(tmp_path, size)
    assert visual(folder, None, row) == unbudgeted
    assert visual(folder, ImageBudget(max_pixels=budget), row) == expected < unbudgeted


@pytest.mark.parametrize("name", ["llava_next", "llava_onevision"])
def test_pinpoints_outside_the_budget_are_dropped_and_the_model_follows(family_models, tmp_path, name):
    folder = family_models.folder(name)
    row = image_row(tmp_path, WIDE)
    processor, family = loaded(folder, ImageBudget(max_pixels=28 * 28))
    assert processor.image_processor.image_grid_pinpoints == [[28, 28]]  # [28, 56] and [56, 28] are 1568 px
    collator = make_collator(processor, family)
    batch = collator([row])
    assert batch["pixel_values"].shape[1] == 2  # the base image + one 28 px tile (its own grids: 2 tiles of 28 x 56)
    # The processor's own count for a 28 x 28 grid (base features, unpadded grid features, newlines), less the CLS
    # feature that the `default` feature strategy drops:
    strategy = processor.vision_feature_select_strategy
    features = processor._get_number_of_features(*WIDE, 28, 28) - (strategy == "default")
    assert visual(folder, ImageBudget(max_pixels=28 * 28), row) == features < visual(folder, None, row)
    model = load_model(ModelConfig(model_name_or_path=str(folder)), family=family).eval()
    with pytest.raises(RuntimeError, match="split_with_sizes"):  # the model's own grids would cut 3 patches
        model(**batch)
    match_model_to_processor(model, processor)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_pinpoints_min_pixels_raises_a_small_image(family_models, tmp_path):
    # A square image fits the 28 x 28 grid; within 1568 px or more it is scaled into a 28 x 56 one (two tiles; the
    # model's unpadding then keeps the features of the image's own square, so its token count stays).
    folder = family_models.folder("llava_next")
    row = image_row(tmp_path, SQUARE)
    tiles = {}
    for budget in (None, ImageBudget(min_pixels=28 * 56)):
        processor, family = loaded(folder, budget)
        tiles[budget] = make_collator(processor, family)([row])["pixel_values"].shape[1]
    assert processor.image_processor.image_grid_pinpoints == [[28, 56], [56, 28]]
    assert tiles == {None: 1 + 1, ImageBudget(min_pixels=28 * 56): 1 + 2}  # the base image + the grid's tiles


def test_tiles_min_pixels_raises_a_small_image(family_models, tmp_path):
    # InternVL: min_patches 2 -> a 2-tile grid + its thumbnail: 3 tiles of 4 tokens + <img>, </img>.
    folder = family_models.folder("internvl")
    row = image_row(tmp_path, TINY)
    assert (visual(folder, None, row), visual(folder, ImageBudget(min_pixels=2 * 56 * 56), row)) == (6, 14)


def test_phi4_dynamic_hd_bounds_the_crops(family_models, tmp_path):
    folder = room(family_models, "phi4_multimodal", tmp_path, dynamic_hd=4)
    row = image_row(tmp_path, LARGE)
    crops = {}
    for budget in (None, ImageBudget(max_pixels=32 * 32)):
        processor, family = loaded(folder, budget)
        crops[budget] = make_collator(processor, family)([row])["image_pixel_values"].shape[1]
    assert crops == {None: 1 + 4, ImageBudget(max_pixels=32 * 32): 1 + 1}  # the global image + 32 px crops
    assert visual(folder, ImageBudget(max_pixels=32 * 32), row) < visual(folder, None, row)


@pytest.mark.parametrize("name, size", [("gemma3", "28x28 px"), ("paligemma", "28x28 px"), ("llava", "28x28 px"),
                                        ("mllama", "28x28 tiles")])
@pytest.mark.parametrize("budget", [ImageBudget(max_pixels=10**6), ImageBudget(min_pixels=10)])
def test_fixed_size_families_refuse_the_budget_in_one_line(family_models, name, size, budget):
    with pytest.raises(UserError) as refused:
        loaded(family_models.folder(name), budget)
    message = str(refused.value)
    assert message.startswith(f"{budget.key}: {name}'s processor") and size in message and "\n" not in message


@pytest.mark.parametrize("name", ["idefics3", "mistral3", "llama4", "gemma4", "phi4_multimodal"])
def test_min_pixels_is_refused_where_the_processor_has_no_such_setting(family_models, name):
    with pytest.raises(UserError, match=r"^image_min_pixels: .*; only image_max_pixels applies to it$"):
        loaded(family_models.folder(name), ImageBudget(min_pixels=10))


def test_text_and_unknown_families_refuse_the_budget(family_models):
    with pytest.raises(UserError, match=r"^image_max_pixels: llama is a text model"):
        loaded(family_models.folder("llama"), ImageBudget(max_pixels=1000))
    processor, _ = loaded(family_models.folder("qwen2_vl"))
    with pytest.raises(UserError, match=r"^image_max_pixels: family acme_vl names no image budget setting"):
        apply_image_budget(processor, find_family("acme_vl"), ImageBudget(max_pixels=1000))


def test_a_budget_below_the_smallest_image_is_refused(family_models):
    with pytest.raises(UserError, match=r"^image_max_pixels 100 is below one merged patch .*\(28x28 = 784 px\)"):
        loaded(family_models.folder("qwen2_vl"), ImageBudget(max_pixels=100))
    with pytest.raises(UserError, match=r"^image_max_pixels: no grid resolution of llava_next's processor"):
        loaded(family_models.folder("llava_next"), ImageBudget(max_pixels=100))


SAVED = [("qwen2_vl", ImageBudget(1000, 2000)), ("idefics3", ImageBudget(max_pixels=1024)),
         ("mistral3", ImageBudget(max_pixels=784)), ("internvl", ImageBudget(max_pixels=56 * 56)),
         ("llama4", ImageBudget(max_pixels=2 * 784)), ("llava_next", ImageBudget(max_pixels=784)),
         ("llava_onevision", ImageBudget(max_pixels=784))]


@pytest.mark.parametrize("name, budget", SAVED)
def test_the_saved_processor_keeps_the_budget(family_models, tmp_path, name, budget):
    # What training's processing_class.save_pretrained writes into the run, and what `sft predict` loads back.
    folder = family_models.folder(name)
    processor, _ = loaded(folder, budget)
    processor.save_pretrained(tmp_path / "run")
    reloaded, family = processor_and_family(str(tmp_path / "run"), AutoConfig.from_pretrained(folder))
    assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert reloaded.image_processor.to_dict() != loaded(folder)[0].image_processor.to_dict()
    row = image_row(tmp_path, WIDE)
    assert counted(reloaded, family, row) == visual(folder, budget, row)


def test_every_vision_family_names_its_budget_setting():
    for family in FAMILIES:
        assert family.image_budget in (IMAGE_BUDGETS if family.vision_tower else (None,)), family.name


@pytest.mark.parametrize("keys, message", [
    (dict(image_max_pixels=0), "image_max_pixels must be a positive number of pixels, got 0"),
    (dict(image_min_pixels=5000, image_max_pixels=4000), "image_min_pixels 5000 is above image_max_pixels 4000"),
])
def test_budget_keys_are_checked_when_the_recipe_loads(keys, message):
    with pytest.raises(UserError, match=f"^{message}$"):
        DataArguments(train_file="rows.jsonl", **keys)


def test_check_reports_visual_tokens_and_rows_dropped_for_image_tokens(family_models, tmp_path, capsys):
    folder = room(family_models, "qwen2_vl", tmp_path, size=SizeDict(shortest_edge=784, longest_edge=64 * 784))
    write_image(tmp_path / "photo.png", size=LARGE)  # 54 visual tokens unbudgeted, 12 within 16 x 28 x 28 px
    write_image(tmp_path / "icon.png", size=TINY)  # 1 visual token
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        {"prompt": "What is it?", "completion": "water", "image": "photo.png"},
        {"prompt": "What is it?", "completion": "fire", "image": "icon.png"},
        {"prompt": "Formwork is a temporary mould. " * 20, "completion": "earth"},
    ])
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(folder), train_file=str(rows),
                          max_length=64, output_dir=str(tmp_path / "run"), max_dropped_fraction=1.0)
    assert main(["check", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "3 rows, 1 ok, 0 prompt-shortened, 2 dropped (1 text too long for max_length 64; 1 dropped: image " \
           "tokens, their text alone fits)" in out
    assert out.rstrip().endswith("visual tokens per image row: min 1, median 27.5, max 54 (2 image rows)")
    assert main(["check", str(recipe), "--image_max_pixels", str(16 * 784)]) == 0
    out = capsys.readouterr().out
    assert "3 rows, 2 ok, 0 prompt-shortened, 1 dropped (1 text too long for max_length 64; 0 dropped: image " \
           "tokens, their text alone fits)" in out
    assert out.rstrip().endswith("visual tokens per image row: min 1, median 6.5, max 12 (2 image rows)")


SMOLVLM = REAL_PROCESSORS / "SmolVLM-256M-Instruct"


@pytest.mark.skipif(not SMOLVLM.is_dir(), reason=f"{SMOLVLM} is absent")
def test_real_smolvlm_budget_becomes_a_longest_edge_of_whole_tiles(tmp_path):
    # SmolVLM-256M: 512 px tiles of 64 tokens, longest_edge 2048. 1600 x 1200 -> 2048 x 1536 = 4 x 3 tiles + the
    # global one (832 image tokens); within 1024 x 1024 px: longest_edge 1024 -> 1024 x 768, padded to 2 x 2 tiles + 1.
    image = write_image(tmp_path / "photo.png", size=LARGE)
    from PIL import Image

    counts = {}
    for budget in (None, ImageBudget(max_pixels=1024 * 1024)):
        processor, _ = processor_and_family(str(SMOLVLM), AutoConfig.from_pretrained(SMOLVLM), image_budget=budget)
        batch = processor(text=["User:<image>What is it?"], images=[[Image.open(image).convert("RGB")]],
                          return_tensors="pt")
        image_tokens = (batch["input_ids"][0] == processor.image_token_id).sum().item()
        counts[budget] = (batch["pixel_values"].shape[1], image_tokens)
    assert counts == {None: (13, 13 * 64), ImageBudget(max_pixels=1024 * 1024): (5, 5 * 64)}


def test_a_budgeted_llava_next_run_predicts_and_merges_with_the_same_grids(family_models, tmp_path):
    # Training saves the budgeted processor; predict and merge load the base model, whose own config lists every
    # grid: each makes it choose among the processor's (sft.family.image_budget.match_model_to_processor).
    import json

    from sft.config.recipe import load_recipe
    from sft.outputs.export import merge
    from sft.outputs.predict import load_for_inference
    from sft.run.train import main as train

    write_image(tmp_path / "wide.png", size=WIDE)
    row = {"prompt": "What is it?", "completion": "water", "image": "wide.png"}
    rows = write_jsonl(tmp_path / "rows.jsonl", [row] * 4)
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder("llava_next")),
                          train_file=str(rows), output_dir=str(tmp_path / "run"), max_length=64, num_train_epochs=1,
                          per_device_train_batch_size=2, gradient_checkpointing=False, image_max_pixels=28 * 28)
    train(load_recipe(recipe))
    model, processor, _, family = load_for_inference(tmp_path / "run")
    assert processor.image_processor.image_grid_pinpoints == model.config.image_grid_pinpoints == [[28, 28]]
    with torch.no_grad():
        assert torch.isfinite(model(**make_collator(processor, family)([image_row(tmp_path, WIDE)])).loss)
    merged = merge(tmp_path / "run", tmp_path / "merged", dtype="fp32")
    assert json.loads((merged / "config.json").read_text())["image_grid_pinpoints"] == [[28, 28]]
