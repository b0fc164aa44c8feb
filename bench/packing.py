"""`make bench` row 6: packing on CPU, side by side in one process, on the same rows for the same steps.

Runs (text rows of a glossary-like length spread on the tiny Llama; element image rows on the tiny Idefics3):
`sft train` padded, with `packing: true` and with `padding_free: true`, and on text rows plain TRL with
`packing: true` (TRL packs text only). Each counts, over the batches it trains on, the supervised tokens and the
positions the model computes (padding included), so the row reports supervised tokens/s and the padding share.
On CPU, sdpa gets a packed sequence's block-diagonal mask as a dense tensor, so packed steps may be slower per
token than padded ones here: the row shows that packing runs and wastes no padding, not how attention is timed.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from trl import SFTTrainer

IGNORE_INDEX = -100


@contextmanager
def counting():
    """Supervised tokens and computed positions of every training batch (any SFTTrainer, ours or plain TRL)."""
    counts = {"supervised": 0, "positions": 0, "padding": 0}
    original = SFTTrainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        labels = inputs["labels"]
        counts["supervised"] += int((labels != IGNORE_INDEX).sum())
        counts["positions"] += labels.numel()
        if "attention_mask" in inputs:
            counts["padding"] += int((inputs["attention_mask"] == 0).sum())
        return original(self, model, inputs, num_items_in_batch)

    SFTTrainer.training_step = training_step
    try:
        yield counts
    finally:
        SFTTrainer.training_step = original


def rates(counts: dict, runtime: float) -> dict:
    return {"supervised_tokens_per_s": counts["supervised"] / runtime, "tokens_per_s": counts["positions"] / runtime,
            "supervised_share": counts["supervised"] / counts["positions"],
            "padding_share": counts["padding"] / counts["positions"], "runtime_s": runtime}


def ours(model_dir: Path, data: Path, work: Path, name: str, steps: int, **keys) -> dict:
    from sft.config.recipe import load_recipe
    from sft.run.train import main as train

    work.mkdir(parents=True, exist_ok=True)
    recipe = work / f"{name}.yaml"
    recipe.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in ({
        "model_name_or_path": str(model_dir), "train_file": str(data), "output_dir": str(work / name),
        "max_steps": steps, "learning_rate": 1e-3, "logging_steps": steps, "save_strategy": "no", "seed": 0,
        "gradient_checkpointing": False, "use_peft": False} | keys).items()))
    with counting() as counts:
        runtime = train(load_recipe(recipe))["train_runtime"]
    return rates(counts, runtime)


def plain_trl_packed(model_dir: Path, rows: list[dict], work: Path, steps: int, max_length: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    dataset = Dataset.from_list([{"prompt": [m[0]], "completion": [m[1]]} for m in rows])
    args = SFTConfig(output_dir=str(work / "trl-packed"), use_cpu=True, bf16=False, max_steps=steps,
                     per_device_train_batch_size=1, learning_rate=1e-3, logging_steps=steps, save_strategy="no",
                     report_to="none", gradient_checkpointing=False, seed=0, max_length=max_length, packing=True,
                     packing_strategy="bfd")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), train_dataset=dataset, args=args,
                         processing_class=AutoTokenizer.from_pretrained(model_dir))
    with counting() as counts:
        runtime = trainer.train().metrics["train_runtime"]
    return rates(counts, runtime)


def bench_packing(models: dict[str, Path], work: Path, text_rows: list[dict], image_data: Path,
                  steps: int, repeats: int = 2) -> dict:
    """Padded vs packed vs padding-free (ours), and plain TRL packed on text rows. `text_rows` are messages pairs
    (user, assistant); a packed step holds as many rows as fit max_length, a padded one 8. Each run `repeats` times,
    the order reversed on every other round (a run of a few seconds varies by 10 % or more), figures averaged."""
    work.mkdir(parents=True, exist_ok=True)
    text = work / "text.jsonl"
    text.write_text("".join(json.dumps({"messages": m}) + "\n" for m in text_rows))
    padded = {"per_device_train_batch_size": 8, "max_length": 512}
    packed = {"per_device_train_batch_size": 1, "max_length": 512}
    image = {"max_length": 1024, "column_map": {"completion": "target"}}
    runs = {
        ("text", "ours padded"): lambda out: ours(models["llama"], text, out, "padded", steps, **padded),
        ("text", "ours packing"): lambda out: ours(models["llama"], text, out, "packed", steps, packing=True, **packed),
        ("text", "ours padding_free"): lambda out: ours(models["llama"], text, out, "free", steps, padding_free=True,
                                                        **padded),
        ("text", "plain TRL packing"): lambda out: plain_trl_packed(models["llama"], text_rows, out, steps, 512),
        ("image", "ours padded"): lambda out: ours(models["idefics3"], image_data, out, "image-padded", steps,
                                                   per_device_train_batch_size=8, **image),
        ("image", "ours packing"): lambda out: ours(models["idefics3"], image_data, out, "image-packed", steps,
                                                    per_device_train_batch_size=1, packing=True, **image),
    }
    measured: dict = {key: [] for key in runs}
    for round_ in range(repeats):
        for key in (list(runs) if round_ % 2 == 0 else list(runs)[::-1]):
            measured[key].append(runs[key](work / f"round{round_}"))
    result: dict = {}
    for (rows, name), figures in measured.items():
        result.setdefault(rows, {})[name] = {k: sum(f[k] for f in figures) / len(figures) for k in figures[0]}
    return result
