"""Every row shape from every source: the same normalised rows, and exact labels through the real Arrow dataset.

Each case writes real files with `datasets` (parquet and Arrow with embedded `Image` features, a `save_to_disk`
folder, a folder of data files) or by hand (JSONL, a JSON array, CSV with image paths), reads it with
`sft.data.arrow_rows.load_rows` (what `sft train` does), and checks the supervised text of every row on the tiny Mllama
and Idefics3 processors.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value

from sft.data.arrow_rows import load_rows
from sft.data.messages import image_count
from sft.data.sources import DatasetSplit, file_source
from sft.labels.collator import CompletionOnlyCollator
from tests.conftest import write_image
from tests.families.registry import BY_NAME
from tests.families.rows import supervised_text


def user(*parts):
    return {"role": "user", "content": [{"type": "image"} if p is IMAGE else {"type": "text", "text": p}
                                        for p in parts]}


def reply(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


IMAGE = object()
# Each shape: rows as the user writes them, `images` naming image files by index (0, 1), and the replies each row
# must supervise. A text-only row is mixed into every shape.
SHAPES = {
    "instruction": [
        ({"instruction": "Define the term.", "input": "rebar", "output": "A steel bar."}, [0], ["A steel bar."]),
        ({"instruction": "Define formwork.", "output": "A mould."}, [], ["A mould."]),
    ],
    "prompt_completion": [
        ({"prompt": "What element is shown?", "completion": "water"}, [0], ["water"]),
        ({"prompt": "Say fire.", "completion": "fire"}, [], ["fire"]),
    ],
    "conversation": [
        ({"messages": [{"role": "user", "content": "What is shown?"}, {"role": "assistant", "content": "fire"},
                       {"role": "user", "content": "And a beam?"}, {"role": "assistant", "content": "A carrier."}]},
         [1], ["fire", "A carrier."]),
        ({"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi?"},
                       {"role": "assistant", "content": "Hello."}]}, [], ["Hello."]),
    ],
    "content_parts": [  # images in two user turns, one after text (TRL's llava-instruct-mix-vsft form)
        ({"messages": [user("Compare", IMAGE), reply("fire"), user(IMAGE, "with this one?"), reply("water")]},
         [0, 1], ["fire", "water"]),
        ({"messages": [user("No picture here."), reply("fine")]}, [], ["fine"]),
    ],
    "sharegpt": [  # <image> markers in any human turn; none → images open the first user turn
        ({"conversations": [{"from": "human", "value": "What is this? <image>"}, {"from": "gpt", "value": "fire"},
                            {"from": "human", "value": "<image>\nAnd this?"}, {"from": "gpt", "value": "water"}]},
         [1, 0], ["fire", "water"]),
        ({"conversations": [{"from": "human", "value": "What is shown?"}, {"from": "gpt", "value": "earth"}]},
         [0], ["earth"]),
        ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi?"},
                            {"from": "assistant", "value": "Hello."}]}, [], ["Hello."]),
    ],
}
FLAT_SHAPES = ("instruction", "prompt_completion")  # the shapes a CSV can hold
EMBEDDED = ("parquet", "arrow", "save_to_disk", "data_folder")  # sources whose images are embedded bytes


def image_files(tmp_path) -> list:
    return [write_image(tmp_path / "img" / "a.png", (200, 30, 30), (30, 40)),
            write_image(tmp_path / "img" / "b.png", (30, 30, 200), (40, 30))]


def _embedded(rows, files):
    table = [{**row, "images": [{"bytes": files[i].read_bytes(), "path": None} for i in indices] or None}
             for row, indices, _ in rows]
    dataset = Dataset.from_list(table)
    return dataset.cast_column("images", List(Image()))  # as the Hub's VLM sets store them


def write_source(kind: str, tmp_path, shape: str):
    """The shape's rows written as `kind`; returns the Source and how its rows are named."""
    rows, files = SHAPES[shape], image_files(tmp_path)
    by_path = [{**row, **({"images": [f"img/{files[i].name}" for i in indices]} if indices else {})}
               for row, indices, _ in rows]
    if kind == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in by_path))
        return file_source(path), f"{path}:"
    if kind == "json_array":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(by_path, indent=1))
        return file_source(path), f"{path}:row "
    if kind == "csv":
        path = tmp_path / "d.csv"
        columns = sorted({key for r in by_path for key in r} - {"images"}) + ["image"]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            for r in by_path:
                writer.writerow({**{k: v for k, v in r.items() if k != "images"},
                                 "image": r["images"][0] if r.get("images") else ""})
        return file_source(path), f"{path}:row "
    dataset = _embedded(rows, files)
    if kind == "parquet":
        path = tmp_path / "d.parquet"
        dataset.to_parquet(str(path))
        return file_source(path), f"{path}:row "
    if kind == "arrow":
        dataset.save_to_disk(str(tmp_path / "saved"))
        path = tmp_path / "d.arrow"
        shutil.copy(next((tmp_path / "saved").glob("*.arrow")), path)
        return file_source(path), f"{path}:row "
    folder = tmp_path / "ds"
    if kind == "save_to_disk":
        DatasetDict({"train": dataset}).save_to_disk(str(folder))
    else:  # a folder of data files, as a Hub dataset repo lays them out
        (folder / "data").mkdir(parents=True)
        dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return DatasetSplit(str(folder), "train"), f"{folder}[train]:row "


CASES = [(kind, shape) for kind in ("jsonl", "json_array", "csv", *EMBEDDED) for shape in SHAPES
         if kind != "csv" or shape in FLAT_SHAPES]


def expected(family: str, replies: list[str]) -> str:
    return BY_NAME[family].expected([{"role": "assistant", "content": reply} for reply in replies])


@pytest.mark.parametrize(("kind", "shape"), CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_every_shape_from_every_source_supervises_exactly_its_replies(family_models, tmp_path, kind, shape):
    source, where = write_source(kind, tmp_path, shape)
    dataset = load_rows(source)
    rows = SHAPES[shape]
    assert len(dataset) == len(rows)
    for number, (example, (_, indices, _)) in enumerate(zip(dataset, rows), start=1):
        assert example["row"] == number
        assert example["where"] == f"{where}{number}"
        assert image_count(example["messages"]) == len(indices) == len(example["stored_images"])
        for image in example["stored_images"]:  # stored undecoded: embedded bytes stay bytes, paths stay paths
            assert (image["bytes"] is not None) == (kind in EMBEDDED)
            assert (image["path"] is not None) == (kind not in EMBEDDED)
    for family in ("mllama", "idefics3"):
        collator = CompletionOnlyCollator(family_models.load(BY_NAME[family])[0])
        batch = collator(list(dataset))
        for number, (_, _, replies) in enumerate(rows):
            assert supervised_text(collator, batch, number) == expected(family, replies), (family, number)


def test_images_take_their_places_in_order(family_models, tmp_path):
    """The ShareGPT row's first marker takes image b and its second image a (the row lists [b, a]): decoded pixels
    show which went where."""
    source, _ = write_source("parquet", tmp_path, "sharegpt")
    example = load_rows(source)[0]
    assert [[p["type"] for p in m["content"]] for m in example["messages"]] == [
        ["text", "image"], ["text"], ["image", "text"], ["text"]]
    collator = CompletionOnlyCollator(family_models.load(BY_NAME["idefics3"])[0])
    first, second = collator.load_images(example)
    assert first.getpixel((0, 0)) == (30, 30, 200) and second.getpixel((0, 0)) == (200, 30, 30)


def test_dataset_test_split_is_the_eval_source(tmp_path):
    from sft.config.recipe import DataArguments
    from sft.data.sources import split_sources

    rows = [{"prompt": "a", "completion": "b"}]
    DatasetDict({"train": Dataset.from_list(rows * 3), "test": Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "ds"))
    data = DataArguments(dataset_name=str(tmp_path / "ds"), dataset_test_split="test")
    sources = dict(split_sources(data))
    assert [len(load_rows(sources[name])) for name in ("train", "eval")] == [3, 1]
    assert sources["eval"].name == f"{tmp_path / 'ds'}[test]"


def test_a_plain_struct_image_column_is_read_as_bytes(tmp_path):
    """Parquet written by other tools stores an image as a plain `{bytes, path}` struct, not an Image feature."""
    data = write_image(tmp_path / "a.png").read_bytes()
    features = Features({"prompt": Value("string"), "completion": Value("string"),
                         "image": {"bytes": Value("binary"), "path": Value("string")}})
    Dataset.from_list([{"prompt": "What?", "completion": "water", "image": {"bytes": data, "path": "a.png"}}],
                      features=features).to_parquet(str(tmp_path / "d.parquet"))
    (row,) = load_rows(tmp_path / "d.parquet")
    assert row["stored_images"] == [{"bytes": data, "path": "a.png"}]
