"""`datasets`: several sources in one run, sized by TRL's `fraction` or the toolkit's `weight`, counted per source.

Real files (JSONL, parquet, a `save_to_disk` folder), the real recipe parser, TRL's own `get_dataset` for the meaning
of `fraction`, and a real training run of the tiny SmolVLM (Idefics3) on an image set mixed with a text set.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datasets import Dataset, DatasetDict

from sft.cli import main as sft
from sft.config.recipe import load_recipe
from sft.data.mixture import load_mixture
from sft.data.sources import sha256_of
from sft.errors import UserError
from sft.run.decide import decide
from sft.run.prepare import prepare_data
from sft.run.train import main as train
from tests.conftest import REPO, write_image, write_jsonl, write_recipe, write_video

ELEMENTS = {"water": (40, 90, 220), "fire": (230, 60, 30)}
LONG = "Formwork is a temporary mould for concrete. " * 30  # far beyond max_length 64


def qa_rows(count: int, tag: str = "q") -> list[dict]:
    return [{"prompt": f"{tag} {i}?", "completion": f"{tag} answer {i}"} for i in range(count)]


def image_rows(folder, count: int, start: int = 0) -> list[dict]:
    rows = []
    for index in range(start, start + count):
        label = list(ELEMENTS)[index % 2]
        write_image(folder / f"img{index}.png", ELEMENTS[label])
        rows.append({"prompt": "What element is shown?", "target": label, "image": f"img{index}.png"})
    return rows


def mixture(tmp_path, entries: list, **keys):
    """The recipe's data (DataArguments) and the mixture it loads (seed from `keys`, default 0)."""
    seed = keys.pop("seed", 0)
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", model_name_or_path="m", datasets=entries, **keys))
    return recipe.data, load_mixture(recipe.data, seed)


def by_source(rows) -> dict[int, list[int]]:
    """Row numbers each source gave, in order."""
    out: dict[int, list[int]] = {}
    for source, row in zip(rows["source"], rows["row"]):
        out.setdefault(source, []).append(row)
    return out


def test_an_image_jsonl_set_and_a_text_parquet_set_train_together_counted_per_source(tiny_models, tmp_path, capsys):
    images = tmp_path / "images"
    train_file = write_jsonl(images / "train.jsonl", image_rows(images, 6))
    val_file = write_jsonl(images / "val.jsonl", image_rows(images, 2, start=6))
    text = [{"instruction": "Define the term.", "input": word, "output": f"A {word}."}
            for word in ("beam", "rebar", "slab")] + [{"instruction": LONG, "output": "A mould."}]
    Dataset.from_list(text).to_parquet(str(tmp_path / "text.parquet"))
    path = write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=str(tiny_models["idefics3"]),
        datasets=[{"path": "json", "data_files": {"train": str(train_file), "test": str(val_file)},
                   "test_split": "test", "column_map": {"completion": "target"}},
                  {"path": str(tmp_path / "text.parquet"), "weight": 2}],
        output_dir=str(tmp_path / "run"), max_length=64, max_dropped_fraction=0.5, num_train_epochs=1,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=3e-3,
        gradient_checkpointing=False, logging_steps=1, seed=0)
    metrics = train(load_recipe(path))

    run = tmp_path / "run"
    assert (run / "adapter_model.safetensors").is_file() and metrics["first_loss"] > 0
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["rows"] == {"train": {"ok": 12, "dropped": 2}, "eval": {"ok": 2}}
    first, second = manifest["datasets"]
    assert first["name"] == f"datasets[0] ({train_file})"
    assert first["files"] == [{"path": str(train_file), "sha256": sha256_of(train_file)},
                              {"path": str(val_file), "sha256": sha256_of(val_file)}]
    assert (first["rows_read"], first["train_rows"], first["size"], first["eval_from"]) == (6, 6, "all rows",
                                                                                            "test_split test")
    assert first["rows"] == {"train": {"ok": 6, "truncated": 0, "dropped": 0},
                             "eval": {"ok": 2, "truncated": 0, "dropped": 0}}
    assert (second["rows_read"], second["train_rows"], second["size"]) == (4, 8, "weight 2")
    assert second["rows"] == {"train": {"ok": 6, "truncated": 0, "dropped": 2}}  # the long row, twice
    assert second["files"] == [{"path": str(tmp_path / "text.parquet"),
                                "sha256": sha256_of(tmp_path / "text.parquet")}]
    err = capsys.readouterr().err
    assert (f"[sft] datasets[1] ({tmp_path / 'text.parquet'}): 4 rows read, 8 in the mixture (weight 2): 6 kept "
            "(0 prompt-shortened), 2 dropped as too long") in err
    assert (f"[sft] datasets[0] ({train_file}) eval: 2 rows (test_split test): 2 kept (0 prompt-shortened), "
            "0 dropped as too long") in err


def test_fraction_keeps_exactly_the_rows_trl_get_dataset_keeps(tmp_path):
    from trl import DatasetMixtureConfig, get_dataset
    from trl.scripts.utils import DatasetConfig

    sizes, fractions = (40, 30, 10), (0.2, 0.3, 0.5)
    files = [write_jsonl(tmp_path / f"s{i}.jsonl", qa_rows(n, f"s{i}")) for i, n in enumerate(sizes)]
    _, mixed = mixture(tmp_path, [{"path": "json", "data_files": str(f), "fraction": share}
                                  for f, share in zip(files, fractions)])
    trl_mix = get_dataset(DatasetMixtureConfig(datasets=[
        DatasetConfig(path="json", data_files=str(f), fraction=share) for f, share in zip(files, fractions)]))
    ours = [message[1]["content"][0]["text"] for message in mixed.train["messages"]]
    assert ours == trl_mix["train"]["completion"]
    # shares 0.2 / 0.3 / 0.5 of the largest mixture that repeats no row: 20 rows, the third source's 10 all kept
    assert {source: len(rows) for source, rows in by_source(mixed.train).items()} == {0: 4, 1: 6, 2: 10}
    assert by_source(mixed.train)[0] == [1, 2, 3, 4]  # TRL keeps each source's first rows


def test_weight_repeats_whole_copies_then_a_seeded_sample(tmp_path):
    write_jsonl(tmp_path / "small.jsonl", qa_rows(10, "small"))
    write_jsonl(tmp_path / "big.jsonl", qa_rows(20, "big"))
    entries = [{"path": str(tmp_path / "small.jsonl"), "weight": 2.5}, {"path": str(tmp_path / "big.jsonl"),
                                                                         "weight": 0.25}]
    _, mixed = mixture(tmp_path, entries)
    small, big = by_source(mixed.train)[0], by_source(mixed.train)[1]
    assert len(small) == 25 and len(big) == 5
    assert sorted(Counter(Counter(small).values()).items()) == [(2, 5), (3, 5)]  # all twice, a sampled 5 thrice
    assert len(set(big)) == 5
    again = by_source(mixture(tmp_path, entries)[1].train)
    assert again == {0: small, 1: big}  # the same seed: the same rows
    other = by_source(mixture(tmp_path, entries, seed=1)[1].train)
    assert sorted(other[0]) != sorted(small) and sorted(other[1]) != sorted(big)  # another seed: another sample
    assert [c.size for c in mixed.counts] == ["weight 2.5", "weight 0.25"]


def test_a_bad_row_names_its_entry_its_file_and_its_row(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", qa_rows(3))
    rows = qa_rows(4)
    rows[2]["completion"] = ""
    Dataset.from_list(rows).to_parquet(str(tmp_path / "b.parquet"))
    with pytest.raises(UserError) as error:
        mixture(tmp_path, [{"path": str(tmp_path / "a.jsonl")}, {"path": str(tmp_path / "b.parquet")}])
    assert str(error.value) == (f"1 bad row(s):\ndatasets[1] ({tmp_path / 'b.parquet'}): row 3: \"completion\" must "
                                "be a non-empty string, got ''")
    write_jsonl(tmp_path / "a.jsonl", [qa_rows(1)[0], "{oops"])
    with pytest.raises(UserError, match=rf"datasets\[0\] \({tmp_path / 'a.jsonl'}\): line 2: not JSON"):
        mixture(tmp_path, [{"path": str(tmp_path / "a.jsonl")}])


def test_check_and_preview_read_every_source_and_name_the_bad_row(tiny_models, tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", qa_rows(3))
    write_jsonl(tmp_path / "b.jsonl", [*qa_rows(1), {"prompt": "no reply"}])
    path = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_models["llama"]), max_length=64,
                        datasets=[{"path": str(tmp_path / "a.jsonl"), "weight": 3},
                                  {"path": str(tmp_path / "b.jsonl")}])
    assert sft(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"train datasets[0] ({tmp_path / 'a.jsonl'}): 3 rows, 3 ok" in out
    assert f"train datasets[1] ({tmp_path / 'b.jsonl'}): 2 rows, 1 ok" in out and "1 bad" in out
    assert f"datasets[1] ({tmp_path / 'b.jsonl'}): line 2: \"completion\" must be a non-empty string" in err

    write_jsonl(tmp_path / "b.jsonl", qa_rows(2, "b"))
    assert sft(["preview", str(path), "--limit", "1", "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["row"], r["where"], r["supervised_text"][:10]) for r in shown] == [
        (1, f"datasets[0] ({tmp_path / 'a.jsonl'}): line 1", "q answer 0"),
        (1, f"datasets[1] ({tmp_path / 'b.jsonl'}): line 1", "b answer 0")]


@pytest.mark.parametrize(("entries", "extra", "message"), [
    ([{"path": "a.jsonl", "wieght": 2}], {}, r"datasets\[0\] \(a.jsonl\): unknown key 'wieght' \(did you mean "
                                            r"'weight'\?\); an entry takes path, name, data_dir"),
    ([{"path": "a.jsonl"}], {"train_file": "t.jsonl"}, r"datasets is set with train_file: give every source as a "
                                                       r"datasets entry"),
    ([{"path": "a.jsonl"}], {"column_map": {"completion": "t"}}, r"datasets is set with column_map"),
    ([{"path": "a.jsonl", "fraction": 0.5}, {"path": "b.jsonl"}], {},
     r"fraction is set for datasets\[0\] but not for datasets\[1\]; set it for every entry or none"),
    ([{"path": "a.jsonl", "fraction": 0.5}, {"path": "b.jsonl", "fraction": 0.5, "weight": 2}], {},
     r"fraction and weight both set; give one"),
    ([{"path": "a.jsonl", "weight": -1}], {}, r"datasets\[0\] \(a.jsonl\): weight must be a number >= 0, got -1"),
    ([{"path": "a.jsonl", "test_split": "train"}], {}, r"test_split 'train' is its training split"),
    ([{"split": "train"}], {}, r"datasets\[0\]: path is required"),
    ([{"path": "a.jsonl", "test_split": "test"}], {"eval_split_size": 2}, r"eval_split_size is set with a datasets "
                                                                           r"entry's test_split"),
])
def test_bad_entries_are_refused_in_one_line(tmp_path, entries, extra, message):
    with pytest.raises(UserError, match=message) as error:
        load_recipe(write_recipe(tmp_path / "r.yaml", model_name_or_path="m", datasets=entries, **extra))
    assert "\n" not in str(error.value)


def test_eval_rows_per_source_held_out_before_weighting_or_from_a_test_split(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", qa_rows(10, "a"))
    write_jsonl(tmp_path / "b.jsonl", qa_rows(6, "b"))
    data, mixed = mixture(tmp_path, [{"path": str(tmp_path / "a.jsonl"), "weight": 2},
                                     {"path": str(tmp_path / "b.jsonl")}], eval_split_size=2)
    held = by_source(mixed.eval)
    assert {source: len(rows) for source, rows in held.items()} == {0: 2, 1: 2}
    assert not set(held[0]) & set(by_source(mixed.train)[0])  # a repeated row never lands in eval
    assert len(by_source(mixed.train)[0]) == 16  # (10 - 2 held out) x weight 2
    assert [record["row_numbers"] for record in mixed.eval_split["datasets"]] == [held[0], held[1]]
    assert data.eval_split_size == 2

    DatasetDict({"train": Dataset.from_list(qa_rows(5, "t")), "test": Dataset.from_list(qa_rows(3, "e"))}) \
        .save_to_disk(str(tmp_path / "saved"))
    _, mixed = mixture(tmp_path, [{"path": str(tmp_path / "a.jsonl")},
                                  {"path": str(tmp_path / "saved"), "test_split": "test"}])
    assert by_source(mixed.eval) == {1: [1, 2, 3]} and len(mixed.train) == 15
    assert mixed.eval[0]["where"] == f"datasets[1] ({tmp_path / 'saved'}[test]): row 1"
    assert mixed.counts[1].line("eval") == (f"datasets[1] ({tmp_path / 'saved'}[train]) eval: 3 rows (test_split "
                                            "test): 3 kept (0 prompt-shortened), 0 dropped as too long")


def test_trl_data_dir_and_columns_keep_their_meaning(tmp_path):
    for name, count in (("part1", 2), ("part2", 3)):
        write_jsonl(tmp_path / "folder" / f"{name}.jsonl", [{**row, "system": "Be brief."} for row in qa_rows(count)])
    _, mixed = mixture(tmp_path, [{"path": "json", "data_dir": str(tmp_path / "folder"),
                                   "columns": ["prompt", "completion"]}])
    assert len(mixed.train) == 5  # every file of data_dir, as load_dataset("json", data_dir=...) reads them
    assert all(message[0]["role"] == "user" for message in mixed.train["messages"])  # `system` not selected
    _, mixed = mixture(tmp_path, [{"path": "json", "data_files": str(tmp_path / "folder" / "*.jsonl")}])
    assert mixed.train["where"][:3] == [f"datasets[0] ({tmp_path / 'folder' / 'part1.jsonl'}): line 1",
                                        f"datasets[0] ({tmp_path / 'folder' / 'part1.jsonl'}): line 2",
                                        f"datasets[0] ({tmp_path / 'folder' / 'part2.jsonl'}): line 1"]


def test_datasets_on_the_command_line_replace_the_files_list(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", qa_rows(2))
    write_jsonl(tmp_path / "b.jsonl", qa_rows(3))
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", datasets=[{"path": "x.jsonl", "weight": 4}])
    recipe = load_recipe(path, ["--datasets", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert [(entry.path, entry.weight) for entry in recipe.data.datasets] == [(str(tmp_path / "a.jsonl"), None),
                                                                             (str(tmp_path / "b.jsonl"), None)]
    assert len(load_mixture(recipe.data, 0).train) == 5


def test_the_shipped_mixture_recipe_plans_offline(capsys):
    recipe = load_recipe(REPO / "recipes/mixture_example.yaml")
    assert [entry.weight for entry in recipe.data.datasets] == [2, 0.5, 0.01]
    assert recipe.data.datasets[0].test_split == "test" and recipe.training.eval_strategy == "epoch"
    assert sft(["plan", str(REPO / "recipes/mixture_example.yaml")]) == 0
    assert "fits" in capsys.readouterr().out


@pytest.mark.parametrize("case_name", ["qwen2_5_vl", "smolvlm"])
def test_an_image_set_a_text_set_and_a_video_set_train_together_counted_per_source(family_models, tmp_path, case_name):
    """The issue's mixture: a JSONL image set, a parquet text set and a video set in one run, on the tiny video
    families of the two shapes (Qwen's M-RoPE video grid, SmolVLM2's frames as tiles)."""
    images = tmp_path / "images"
    image_file = write_jsonl(images / "train.jsonl", image_rows(images, 4))
    Dataset.from_list(qa_rows(4, "text")).to_parquet(str(tmp_path / "text.parquet"))
    clips = tmp_path / "clips"
    for label, colour in ELEMENTS.items():
        write_video(clips / f"{label}.mp4", colour)
    video_file = write_jsonl(clips / "train.jsonl", [
        {"prompt": "What colour is the clip?", "completion": label, "video": f"{label}.mp4"} for label in ELEMENTS] * 2)
    path = write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=str(family_models.folder(case_name)),
        datasets=[{"path": str(image_file), "column_map": {"completion": "target"}},
                  {"path": str(tmp_path / "text.parquet"), "weight": 0.5},
                  {"path": str(video_file), "weight": 2}],
        output_dir=str(tmp_path / "run"), max_length=1024, num_train_epochs=1, video_max_frames=4,
        per_device_train_batch_size=4, learning_rate=3e-3, gradient_checkpointing=False, logging_steps=1, seed=0)
    metrics = train(load_recipe(path))

    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert metrics["first_loss"] > 0 and manifest["rows"] == {"train": {"ok": 14}}
    counts = [(source["rows_read"], source["train_rows"], source["rows"]["train"]["ok"])
              for source in manifest["datasets"]]
    assert counts == [(4, 4, 4), (4, 2, 2), (4, 8, 8)]


def test_check_the_dry_run_and_the_data_page_show_the_mixture_that_training_takes(tiny_models, tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [*qa_rows(3), {"prompt": LONG, "completion": "too long"}])
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows(4, "b"))
    path = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_models["llama"]), max_length=64,
                        max_dropped_fraction=0.5, output_dir=str(tmp_path / "run"), num_train_epochs=1,
                        datasets=[{"path": str(a), "weight": 2}, {"path": str(b), "weight": 0.5}])
    lines = [f"datasets[0] ({a}): 4 rows read, 8 in the mixture (weight 2): 6 kept (0 prompt-shortened), 2 dropped "
             "as too long",
             f"datasets[1] ({b}): 4 rows read, 2 in the mixture (weight 0.5): 2 kept (0 prompt-shortened), 0 dropped "
             "as too long"]
    assert sft(["check", str(path)]) == 0
    checked = capsys.readouterr().out
    assert sft(["train", str(path), "--dry-run"]) == 0
    dry_run = capsys.readouterr().out
    assert sft(["preview", str(path), "--html", str(tmp_path / "page.html")]) == 0
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    prepare_data(decide(load_recipe(path)))  # the train stages that read and count the rows (no weights)
    logged = capsys.readouterr().err
    for line in lines:
        assert f"mixture {line}" in checked and f"mixture {line}" in dry_run
        assert f"<div>{line}</div>" in page
        assert f"[sft] {line}" in logged  # what training took, said the same way before it
