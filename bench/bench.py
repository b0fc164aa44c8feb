"""`make bench`: the data path and the training loop against the alternatives, as ratios taken side by side.

Rows (each a ratio of medians, both sides in this process or back to back):
1. collator throughput (examples/s, batch 8): ours vs TRL's DataCollatorForVisionLanguageModeling vs a naive
   processor-per-example, pad-to-max_length collator; Idefics3 image rows and text rows.
2. padding efficiency (real / all tokens over an epoch) on a skewed glossary-like length distribution: our default
   length-grouped sampler vs random order vs fixed-length padding.
3. training throughput (supervised tokens/s): `sft train` vs a plain TRL SFTTrainer script, tiny text model, same
   rows and steps; where our time goes (data, forward+backward, optimizer).
4. memory as data grows: peak RSS of building the training dataset and of `sft check`, 10k vs 200k text rows,
   1k vs 10k image rows (paths in JSONL), 1k vs 10k rows of a parquet with embedded images and 1k vs 10k video rows
   (paths in JSONL, tiny Qwen2.5-VL: every clip opened when rows are read, its frames decoded when measured).
5. GPU (only with CUDA): see bench/gpu.py.
6. packing (bench/packing.py): supervised tokens/s and padding share, ours padded vs packed vs padding-free vs plain
   TRL packed on text rows; ours padded vs packed on image rows.

Prints one table and writes bench_results/bench.json with the machine, versions and git commit.
Usage: python bench/bench.py [--quick] [--out bench_results/bench.json] [--memory-only parquet_image|video]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from sft.cli import quiet_library_noise  # noqa: E402

quiet_library_noise()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sft.data.messages import with_images  # noqa: E402
from sft.labels.collator import CompletionOnlyCollator  # noqa: E402
from sft.model.tiny import build_tiny  # noqa: E402
from sft.outputs.manifest import _git_commit, _versions  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from packing import bench_packing  # noqa: E402

REAL_SMOLVLM = ROOT.parent / "shared/fixtures/real-processors/SmolVLM-256M-Instruct"
WORDS = "rebar formwork beam footing concrete steel load temporary mould structure scaffolding".split()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def glossary_rows(count: int, rng: random.Random) -> list[dict]:
    """Most answers short, a long tail (log-normal word counts), like a glossary."""
    rows = []
    for _ in range(count):
        words = min(400, max(1, int(rng.lognormvariate(2.0, 1.0))))
        answer = " ".join(rng.choice(WORDS) for _ in range(words))
        rows.append({"instruction": "Define the construction term.", "input": rng.choice(WORDS), "output": answer})
    return rows


def as_messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"},
            {"role": "assistant", "content": row["output"]}]


# ---- 1. collator throughput --------------------------------------------------------------------------------
def naive_collate(processor, examples, images, max_length: int):
    """The original scripts' way: processor per example on the full text, pad every row to max_length, stack."""
    import torch

    rows = []
    for example, imgs in zip(examples, images):
        text = processor.apply_chat_template(example, tokenize=False)
        out = processor(text=[text], images=[imgs] if imgs else None, padding="max_length", max_length=max_length,
                        truncation=False, return_tensors="pt", add_special_tokens=False)
        rows.append(out)
    batch = {"input_ids": torch.cat([r["input_ids"] for r in rows]),
             "attention_mask": torch.cat([r["attention_mask"] for r in rows])}
    if images[0]:
        batch["pixel_values"] = torch.cat([r["pixel_values"] for r in rows])
    batch["labels"] = batch["input_ids"].clone()
    return batch


def bench_collators(processor, image_paths: list[str] | None, repeats: int) -> dict:
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    ours = CompletionOnlyCollator(processor)
    rng = random.Random(0)
    rows = [as_messages(r) for r in glossary_rows(8, rng)]
    pils = [[Image.open(p).convert("RGB")] for p in image_paths] if image_paths else [[] for _ in rows]
    our_rows = [{"messages": m, "stored_images": [p] if image_paths else []}
                for m, p in zip(rows, image_paths or [None] * 8)]
    trl = DataCollatorForVisionLanguageModeling(processor=processor, completion_only_loss=True)

    def trl_batch():  # images decoded inside the timing, as ours and as a dataset's Image column does
        decoded = [[Image.open(p).convert("RGB")] for p in image_paths] if image_paths else [[] for _ in rows]
        return trl([{"prompt": [m[0]], "completion": [m[1]], "images": imgs} for m, imgs in zip(rows, decoded)])

    def naive_batch():
        template_rows = [ours.replies.template_messages(with_images(m, len(imgs))) for m, imgs in zip(rows, pils)]
        imgs = [[Image.open(p).convert("RGB")] for p in image_paths] if image_paths else [[] for _ in rows]
        return naive_collate(processor, template_rows, imgs, max_length=max(len(ours.encode(r).input_ids)
                                                                            for r in our_rows[:1]) + 2048)

    def times(fn, count=10):  # one repetition = `count` batches, so a ~ms batch is timed above the noise
        return lambda: [fn() for _ in range(count)]

    count = 1 if image_paths else 10
    result = {"ours": 8 * count / median_time(times(lambda: ours(our_rows), count), repeats)}
    try:
        result["trl"] = 8 * count / median_time(times(trl_batch, count), repeats)
    except Exception as exc:  # TRL's collator fails on some processors; that is a finding, not a crash
        result["trl"] = None
        result["trl_error"] = str(exc).splitlines()[0][:160]
    result["naive"] = 8 * count / median_time(times(naive_batch, count), repeats)
    return result


# ---- 2. padding efficiency ---------------------------------------------------------------------------------
def padding_efficiency(lengths: list[int], batch_size: int = 8, max_length: int = 512) -> dict:
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    def efficiency(order):
        real = padded = 0
        for start in range(0, len(order), batch_size):
            batch = [lengths[i] for i in order[start:start + batch_size]]
            real += sum(batch)
            padded += max(batch) * len(batch)
        return real / padded

    generator = torch.Generator().manual_seed(0)
    grouped = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=generator))
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    fixed = sum(lengths) / (max_length * len(lengths))
    return {"length_grouped (default)": efficiency(grouped), "random": efficiency(shuffled), "fixed_length": fixed}


# ---- 3. training throughput ---------------------------------------------------------------------------------
def bench_training(model_dir: Path, work: Path, rows: list[dict], steps: int) -> dict:
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sft.config.recipe import load_recipe
    from sft.run.train import main as train

    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collator = CompletionOnlyCollator(tokenizer)
    supervised = [collator.encode({"messages": as_messages(r), "stored_images": []}).supervised_tokens for r in rows]
    common = dict(max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=steps,
                  save_strategy="no", report_to="none", gradient_checkpointing=False, seed=0, max_length=512)
    rows_seen = steps * 8
    tokens_seen = sum(supervised) * rows_seen / len(rows)  # expected supervised tokens in the rows trained on

    class StepTimer(TrainerCallback):
        """Wall time of optimizer steps (pre_optimizer_step -> optimizer_step), summed."""

        def __init__(self):
            self.optimizer = 0.0

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.optimizer += time.perf_counter() - self._start

    collate_time = [0.0]
    original_call = CompletionOnlyCollator.__call__

    def timed_call(self, examples):
        start = time.perf_counter()
        try:
            return original_call(self, examples)
        finally:
            collate_time[0] += time.perf_counter() - start

    recipe_path = work / "bench.yaml"
    recipe_path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in (common | {
        "model_name_or_path": str(model_dir), "train_file": str(data), "output_dir": str(work / "ours"),
        "use_peft": False}).items()) + "\n")
    timer = StepTimer()
    CompletionOnlyCollator.__call__ = timed_call
    try:
        ours = train(load_recipe(recipe_path), extra_callbacks=[timer])["train_runtime"]
    finally:
        CompletionOnlyCollator.__call__ = original_call

    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    dataset = Dataset.from_list([{"prompt": [m[0]], "completion": [m[1]]} for m in map(as_messages, rows)])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), processing_class=tokenizer,
                         train_dataset=dataset, args=SFTConfig(output_dir=str(work / "trl"), use_cpu=True,
                                                               bf16=False, **common))
    plain = trainer.train().metrics["train_runtime"]
    return {"ours_tokens_per_s": tokens_seen / ours, "trl_tokens_per_s": tokens_seen / plain,
            "ours_runtime_s": ours, "trl_runtime_s": plain,
            "time_share": {"data (collator)": collate_time[0] / ours, "optimizer": timer.optimizer / ours,
                           "forward+backward and the rest": 1 - (collate_time[0] + timer.optimizer) / ours}}


# ---- 4. memory as the data grows -----------------------------------------------------------------------------
MEMORY_SCRIPT = """
import sys, time, os
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, {root!r})
from sft.cli import main, quiet_library_noise
quiet_library_noise()
import torch, transformers, trl, datasets  # imports peak high once; their pages stay resident and count below
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak-RSS mark (VmHWM) so it covers the data work only (Linux >= 4.0)
start = time.perf_counter()
if {what!r} == "check":
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["check", {recipe!r}])
else:
    from sft.config.recipe import load_recipe
    from sft.run.prepare import prepare_split
    from sft.labels.labelling import make_collator
    from sft.model.loading import load_processor_and_family
    from sft.data.arrow_rows import load_rows
    recipe = load_recipe({recipe!r})
    collator = make_collator(*load_processor_and_family(recipe.model), max_length=recipe.training.max_length)
    rows = load_rows(recipe.data.train_file, recipe.data.image_root, recipe.data.column_map)
    prepare_split(recipe, collator, "train", rows)
seconds = time.perf_counter() - start
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak_kib / 1024, seconds)
"""


def peak_rss(what: str, recipe: Path) -> tuple[float, float]:
    code = MEMORY_SCRIPT.format(root=str(ROOT), what=what, recipe=str(recipe))
    env = dict(os.environ, HF_DATASETS_CACHE=str(recipe.parent / f"cache-{what}"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    rss_mib, seconds = map(float, out.stdout.split()[-2:])
    return rss_mib, seconds


def write_memory_rows(kind: str, folder: Path, count: int, rng: random.Random, image_dir: Path) -> Path:
    """`count` rows of `kind`: glossary text (JSONL), image paths (JSONL), or a parquet whose images are embedded
    bytes, each row its own image (so the file, ~4 KiB a row, grows with the rows as a Hub VLM set does)."""
    answers = ["water", "fire", "earth", "wind"]
    if kind == "parquet_image":
        from datasets import Dataset, List
        from datasets import Image as ImageFeature

        def rows():
            for index in range(count):
                pixels = np.random.default_rng(index).integers(0, 255, (32, 40, 3), dtype=np.uint8)
                encoded = io.BytesIO()
                Image.fromarray(pixels).save(encoded, format="PNG")
                yield {"messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                                                 {"type": "text", "text": "What element is shown?"}]},
                                    {"role": "assistant", "content": [{"type": "text", "text": rng.choice(answers)}]}],
                       "images": [{"bytes": encoded.getvalue(), "path": None}]}

        path = folder / "train.parquet"
        # The image column is cast to the `Image` feature, as the Hub's VLM sets store it (bytes embedded).
        # Row groups of 1000 rows (~4 MiB) at both sizes: pyarrow reads a whole row group at once, so a file written
        # as one 37 MiB group (datasets' default aims at 100 MB groups) would measure the group, not the row count.
        Dataset.from_generator(rows, cache_dir=str(folder / "gen")).cast_column(
            "images", List(ImageFeature())).to_parquet(str(path), batch_size=1000)
        return path
    path = folder / "train.jsonl"
    with path.open("w") as handle:
        for index in range(count):
            row = glossary_rows(1, rng)[0]
            if kind in ("image", "video"):
                media = {"image": str(image_dir / f"{index % 16}.png")} if kind == "image" else \
                    {"video": str(image_dir / f"{index % 16}.mp4")}
                row = media | {"prompt": "What element is shown?", "completion": rng.choice(answers)}
            handle.write(json.dumps(row) + "\n")
    return path


def video_model(work: Path) -> Path:
    """The tiny Qwen2.5-VL of the family tests (its real processor classes; its chat template from shared/fixtures)."""
    from tests.families.registry import BY_NAME, build

    return build(BY_NAME["qwen2_5_vl"], work / "qwen2_5_vl")


def bench_memory(models: dict[str, Path], work: Path, sizes: dict[str, tuple[int, int]]) -> dict:
    rng = random.Random(0)
    result = {}
    image_dir = work / "images"
    image_dir.mkdir(exist_ok=True)
    for index in range(16):
        Image.fromarray((np.random.default_rng(index).random((32, 40, 3)) * 255).astype(np.uint8)).save(
            image_dir / f"{index}.png")
        if "video" in sizes:  # 16 clips of 8 frames, 2 seconds at 4 a second (4 sampled at the default 2 a second)
            from tests.conftest import write_video

            write_video(image_dir / f"{index}.mp4", tuple(int(c) for c in np.random.default_rng(index).integers(
                0, 255, 3)), frames=8, fps=4)
    for kind, (small, large) in sizes.items():
        for count in (small, large):
            folder = work / f"{kind}-{count}"
            folder.mkdir(exist_ok=True)
            data = write_memory_rows(kind, folder, count, rng, image_dir)
            model = models["llama" if kind == "text" else "video" if kind == "video" else "mllama"]
            recipe = folder / "recipe.yaml"
            recipe.write_text(f"model_name_or_path: {model}\ntrain_file: {data}\nmax_length: 1024\n"
                              "dataset_num_proc: 2\n")  # both cores measure rows, as a user would set it
            for what in ("dataset", "check"):
                rss, seconds = peak_rss(what, recipe)
                result[f"{kind} {what} {count}"] = {"peak_rss_mib": rss, "rows_per_s": count / seconds}
        for what in ("dataset", "check"):
            result[f"{kind} {what} growth"] = (result[f"{kind} {what} {large}"]["peak_rss_mib"]
                                                / result[f"{kind} {what} {small}"]["peak_rss_mib"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a minute), for trying the bench out")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results/bench.json")
    parser.add_argument("--memory-only", choices=("text", "image", "parquet_image", "video"),
                        help="run only this memory row and print it (nothing written)")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    sizes = {"text": (1_000, 10_000), "image": (100, 1_000), "parquet_image": (100, 1_000),
             "video": (100, 1_000)} if args.quick else \
        {"text": (10_000, 200_000), "image": (1_000, 10_000), "parquet_image": (1_000, 10_000),
         "video": (1_000, 10_000)}
    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    if args.memory_only:  # one memory row alone, e.g. after a change to the data path
        models = {f: build_tiny(f, work / f) for f in ("llama", "mllama")} | {"video": video_model(work)}
        memory = bench_memory(models, work, {args.memory_only: sizes[args.memory_only]})
        print(table({"memory": memory}))
        return
    models = {f: build_tiny(f, work / f) for f in ("llama", "mllama", "idefics3")} | {"video": video_model(work)}
    results: dict = {}

    from transformers import AutoProcessor

    image_paths = []
    for index in range(8):
        path = work / f"img{index}.png"
        Image.fromarray(np.full((36, 48, 3), 30 * index, dtype=np.uint8)).save(path)
        image_paths.append(str(path))
    idefics3 = AutoProcessor.from_pretrained(REAL_SMOLVLM if REAL_SMOLVLM.is_dir() else models["idefics3"])
    results["collator"] = {
        "processor": "SmolVLM-256M (real)" if REAL_SMOLVLM.is_dir() else "tiny Idefics3",
        "idefics3_image_rows": bench_collators(idefics3, image_paths, repeats),
        "idefics3_text_rows": bench_collators(idefics3, None, repeats),
    }
    lengths_rows = glossary_rows(2000, random.Random(1))
    from transformers import AutoTokenizer

    text_collator = CompletionOnlyCollator(AutoTokenizer.from_pretrained(models["llama"]))
    lengths = [len(text_collator.encode({"messages": as_messages(r), "stored_images": []}).input_ids)
               for r in lengths_rows]
    results["padding"] = padding_efficiency(lengths)
    results["training"] = bench_training(models["llama"], work, glossary_rows(256, random.Random(2)),
                                         steps=10 if args.quick else 120)
    element_rows = work / "elements.jsonl"
    element_rows.write_text("".join(json.dumps({"image": image_paths[i % 8], "prompt": "What element is shown?",
                                                "target": ("water", "fire")[i % 2]}) + "\n" for i in range(64)))
    results["packing"] = bench_packing(models, work / "packing", list(map(as_messages, glossary_rows(
        256, random.Random(3)))), element_rows, steps=4 if args.quick else 200)
    results["memory"] = bench_memory(models, work, sizes)
    results["gpu"] = "skipped: no CUDA device" if not _cuda() else "run bench/gpu.py"
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    results["versions"], results["git_commit"] = _versions(), _git_commit()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwrote {args.out}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def table(r: dict) -> str:
    lines = [f"{'row':<58}{'value':>12}{'target':>10}"]

    def add(name, value, target=""):
        lines.append(f"{name:<58}{value:>12}{target:>10}")

    for kind in ("idefics3_image_rows", "idefics3_text_rows") if "collator" in r else ():
        c = r["collator"][kind]
        trl = f"{c['ours'] / c['trl']:.2f}x" if c.get("trl") else "TRL fails"
        add(f"1 collator {kind}: ours/TRL ({c['ours']:.0f} ex/s)", trl, ">=1.0x")
        add(f"1 collator {kind}: ours/naive", f"{c['ours'] / c['naive']:.2f}x")
    for name, value in r.get("padding", {}).items():
        add(f"2 padding efficiency, {name}", f"{value:.3f}", ">=0.90" if "default" in name else "")
    if "training" in r:
        t = r["training"]
        add(f"3 training sup. tokens/s: ours/TRL ({t['ours_tokens_per_s']:.0f} vs {t['trl_tokens_per_s']:.0f})",
            f"{t['ours_tokens_per_s'] / t['trl_tokens_per_s']:.2f}x", ">=1.0x")
        for part, share in t["time_share"].items():
            add(f"3   time share: {part}", f"{share:.1%}")
    for key, value in r["memory"].items():
        if key.endswith("growth"):
            add(f"4 peak RSS growth, {key[:-7]}", f"{value:.2f}x", "<=1.2x")
        else:
            add(f"4   {key}: peak RSS MiB / rows/s", f"{value['peak_rss_mib']:.0f}/{value['rows_per_s']:.0f}")
    if "gpu" in r:
        add("5 GPU", str(r["gpu"])[:12])
    for rows, runs in r.get("packing", {}).items():
        base = runs["ours padded"]["supervised_tokens_per_s"]
        for run, m in runs.items():
            packed = "packing" in run or "free" in run
            add(f"6 {rows} {run}: sup. tok/s {m['supervised_tokens_per_s']:.0f} / padded",
                f"{m['supervised_tokens_per_s'] / base:.2f}x")
            add(f"6   {rows} {run}: all tokens/s", f"{m['tokens_per_s']:.0f}")
            add(f"6   {rows} {run}: padding share", f"{m['padding_share']:.1%}", "<2%" if packed else "")
        if "plain TRL packing" in runs:
            ratio = (runs["ours packing"]["supervised_tokens_per_s"]
                     / runs["plain TRL packing"]["supervised_tokens_per_s"])
            add(f"6 {rows} ours packing / plain TRL packing", f"{ratio:.2f}x", ">=1.0x")
            add(f"6   supervised share: ours {runs['ours packing']['supervised_share']:.1%}, TRL "
                f"{runs['plain TRL packing']['supervised_share']:.1%}", "")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
