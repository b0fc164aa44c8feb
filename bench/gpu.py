"""GPU rows of the benchmark: plain TRL against `sft train` on the same card, same rows, same random weights.

Builds the 11B recipe's architecture (MllamaForConditionalGeneration from recipes/model_configs, Llama 3.2 11B
Vision) with random bf16 weights and, for the vision row, Qwen2.5-VL-7B with a processor around a byte-level BPE
trained on the spot (real chat template and special tokens; only throughput is measured). Each run trains a few
steps in its own process and records median step time, tokens/s, peak GPU memory against the plan, and MFU.

Runs (RUNS below): `trl_8bit_seed` is a plain TRL SFTTrainer script with the seed settings (8-bit, batch 2 x 2,
checkpointing on, the same rows through TRL's prompt-completion path, completion-only loss); `ours_*_seed` is
`sft train` with the recipe as written (checkpointing on, 2 x 2); `ours_*_auto` lets the plan choose checkpointing
and the micro-batch (effective batch 4 kept) and turns on Liger's kernels; `*_ckpt` runs check the plan with
checkpointing on. baseline_ratio = tokens/s of ours_8bit_seed / trl_8bit_seed.

MFU convention: a frozen base with LoRA does forward (2N) and input-gradient backward (2N) per token, so model
FLOPs = 4 x N x tokens, N = the language model's decoder-layer parameters (no embeddings; for Mllama without the
cross-attention layers, idle on text rows); a frozen vision tower adds its forward only, 2 x N_vision x patches.
Checkpoint recomputation is not counted (hardware FLOPs would be 6N). The peak is this card's measured bf16
matmul rate. Peak memory: `device_peak_gib` = max_memory_reserved + what the process holds outside PyTorch's
allocator (CUDA context, cuBLAS workspace), i.e. what must fit the card; the plan estimates that.

Usage (needs CUDA; PROCESSOR_DIR holds the Llama 3.2 Vision tokenizer files, *.gz allowed):
  python bench/gpu.py --processor PROCESSOR_DIR --out bench_results/gpu.json [--steps 6] [--runs a,b,...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "recipes/llama11b_construction.yaml"
CONFIGS = ROOT / "recipes/model_configs"
# Qwen2.5-VL's real chat template (as TRL's tests ship it): $QWEN_TEMPLATE, or a copy carried beside this file.
QWEN_TEMPLATE = Path(os.environ.get("QWEN_TEMPLATE", ROOT / "bench/trl_qwen2_5_vl.jinja"))
BITS = {"8bit": ["--load_in_8bit", "true"], "bf16": ["--load_in_8bit", "false"],
        "4bit": ["--load_in_8bit", "false", "--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"]}
SEED = ["--gradient_checkpointing", "true"]  # the recipe as first written: 2 x 2, checkpointing on
AUTO = ["--gradient_checkpointing", "auto", "--per_device_train_batch_size", "auto", "--use_liger_kernel", "true"]
RUNS = {  # name -> (model, trainer, overrides)
    "trl_8bit_seed": ("llama11b", "trl", BITS["8bit"]),
    "ours_8bit_seed": ("llama11b", "ours", BITS["8bit"] + SEED),
    "ours_8bit_auto": ("llama11b", "ours", BITS["8bit"] + AUTO),
    "ours_bf16_auto": ("llama11b", "ours", BITS["bf16"] + AUTO),
    "ours_4bit_auto": ("llama11b", "ours", BITS["4bit"] + AUTO),
    "ours_bf16_ckpt": ("llama11b", "ours", BITS["bf16"] + SEED),
    "ours_4bit_ckpt": ("llama11b", "ours", BITS["4bit"] + SEED),
    "ours_8bit_seed_upcast": ("llama11b", "ours", BITS["8bit"] + SEED + ["--kbit_fp32_upcast", "true"]),
    "ours_8bit_auto_int8t0": ("llama11b", "ours", BITS["8bit"] + AUTO + ["--llm_int8_threshold", "0"]),
    "qwen7b_bf16_auto_images": ("qwen7b", "ours", BITS["bf16"] + AUTO + ["--max_length", "1024"]),
}
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
WORDS = "rebar formwork beam footing concrete steel load temporary mould structure scaffolding".split()


def bf16_peak_tflops() -> float:
    """Measured bf16 matmul throughput of this card (8192^3, median of 20)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    return 2 * 8192**3 / _median_seconds(lambda: a @ b, 20) / 1e12


def _median_seconds(step, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


# ---- models and rows ---------------------------------------------------------------------------------------------
def build_llama11b(target: Path, processor: Path) -> None:
    import torch
    from transformers import AutoConfig, MllamaForConditionalGeneration

    config = AutoConfig.from_pretrained(str(CONFIGS / "meta-llama--Llama-3.2-11B-Vision-Instruct.json"))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MllamaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    del model
    for item in processor.iterdir():
        if item.name.endswith(".gz"):  # carried compressed to fit the transfer limit
            (target / item.name[:-3]).write_bytes(gzip.decompress(item.read_bytes()))
        elif item.is_file() and item.name != "config.json":
            shutil.copy2(item, target / item.name)


def qwen_processor():
    """Qwen2_5_VLProcessor with Qwen's chat template and special tokens around a small byte-level BPE."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from sft.model.tiny import build_tokenizer

    tok = build_tokenizer(QWEN_SPECIALS, vocab_size=2000)
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    template = QWEN_TEMPLATE.read_text()
    tok.chat_template = template
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=template)


def build_qwen7b(target: Path, processor_unused: Path | None = None) -> None:
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    processor = qwen_processor()
    ids = {name: processor.tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>"), ("pad_token_id", "<|endoftext|>"))}
    config = AutoConfig.from_pretrained(str(CONFIGS / "Qwen--Qwen2.5-VL-7B-Instruct.json"), **ids)
    for name, value in ids.items():  # the random model must find the processor's image tokens
        setattr(config.get_text_config(), name, value)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    processor.save_pretrained(target)


BUILDERS = {"llama11b": build_llama11b, "qwen7b": build_qwen7b}


def write_text_rows(path: Path, tokenizer_dir: Path, count: int = 64, budget: int = 500) -> None:
    """Instruction rows of about `budget` tokens each (rendered), so no row needs shortening on either side."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    output = "A structural element that carries load. " * 4

    def length(index: int, words: int) -> int:
        text = " ".join(WORDS[(index + k) % len(WORDS)] for k in range(words))
        messages = [{"role": "user", "content": f"Define the construction term.\n\n{text}"},
                    {"role": "assistant", "content": output}]
        rendered = tok.apply_chat_template(messages, tokenize=False, date_string="26 Jul 2024")
        return len(tok(rendered, add_special_tokens=False)["input_ids"])

    low, high = 1, 2000
    while low < high:  # the most words that keep row 0 within budget; the others differ by a token or two
        middle = (low + high + 1) // 2
        low, high = (middle, high) if length(0, middle) <= budget else (low, middle - 1)
    words = low - 4
    with path.open("w") as handle:
        for index in range(count):
            text = " ".join(WORDS[(index + k) % len(WORDS)] for k in range(words))
            handle.write(json.dumps({"instruction": "Define the construction term.", "input": text,
                                     "output": output}) + "\n")


def write_image_rows(folder: Path, count: int = 32) -> Path:
    """Rows with one 448 x 448 photo-like image each (256 image tokens after Qwen's 2 x 2 merge) and a prompt."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with (folder / "rows.jsonl").open("w") as handle:
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)).save(folder / f"{index}.png")
            prompt = "Describe the construction element in the picture. " + " ".join(WORDS * 20)
            handle.write(json.dumps({"image": f"{index}.png", "prompt": prompt,
                                     "completion": "A steel beam resting on a concrete footing."}) + "\n")
    return folder / "rows.jsonl"


# ---- one run (child process) -----------------------------------------------------------------------------------
class StepTimer:
    """Trainer callback: wall time of each optimizer step, the device synchronised at both ends."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self
        self.times: list[float] = []

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                import torch

                torch.cuda.synchronize()
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                import torch

                torch.cuda.synchronize()
                timer.times.append(time.perf_counter() - timer.start)

        self.callback = Callback()


def recipe_overrides(model: Path, data: Path, steps: int, out: Path, extra: list[str]) -> list[str]:
    return ["--model_name_or_path", str(model), "--train_file", str(data), "--max_steps", str(steps),
            "--output_dir", str(out), "--save_strategy", "no", "--logging_steps", "1", "--truncation",
            "shorten_prompt", "--dataset_num_proc", "8", "--overwrite_output_dir", "true", *extra]


def run_ours(model: Path, data: Path, steps: int, out: Path, extra: list[str], timer: StepTimer) -> dict:
    from sft.config.recipe import load_recipe
    from sft.run.train import main as train

    recipe = load_recipe(RECIPE, recipe_overrides(model, data, steps, out, extra))
    metrics = train(recipe, extra_callbacks=[timer.callback])
    args = recipe.training
    return {"metrics": metrics, "choices": recipe.auto_choices, "liger": bool(args.use_liger_kernel),
            "batch": [args.per_device_train_batch_size, args.gradient_accumulation_steps],
            "gradient_checkpointing": bool(args.gradient_checkpointing)}


def run_trl(model: Path, data: Path, steps: int, out: Path, timer: StepTimer) -> dict:
    """A plain TRL script: TRL's own quantization, LoRA and prompt-completion path, completion-only loss."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from trl import ModelConfig, SFTConfig, SFTTrainer
    from trl.trainer.utils import get_peft_config, get_quantization_config

    # What a hand-written TRL script targets on Llama 3.2 Vision: q/k/v/o outside the vision tower and projector.
    language_model_attention = r"^(?!.*(vision_model|multi_modal_projector)).*\.(q_proj|k_proj|v_proj|o_proj)$"

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}],
                                  "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
    model_args = ModelConfig(model_name_or_path=str(model), dtype="bfloat16", load_in_8bit=True, use_peft=True,
                             lora_r=8, lora_alpha=32, lora_dropout=0.05,
                             lora_target_modules=language_model_attention)
    base = AutoModelForImageTextToText.from_pretrained(
        str(model), dtype=torch.bfloat16, quantization_config=get_quantization_config(model_args),
        device_map={"": 0})
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, gradient_checkpointing=True, bf16=True, learning_rate=2e-4,
                     max_length=512, completion_only_loss=True, logging_steps=1, save_strategy="no",
                     report_to="none", seed=42, lr_scheduler_type="cosine")
    trainer = SFTTrainer(model=base, args=args, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(str(model)),
                         peft_config=get_peft_config(model_args), callbacks=[timer.callback])
    result = trainer.train()
    trainer.save_state()
    from sft.outputs.manifest import losses

    first, last = losses(trainer.state.log_history)
    return {"metrics": dict(result.metrics) | {"first_loss": first, "last_loss": last},
            "batch": [2, 2], "gradient_checkpointing": True, "liger": False}


def plan_for(extra: list[str], model: Path, data: Path, steps: int, out: Path) -> float:
    """The plan's estimate (GiB) for the recipe this run used, `auto` keys chosen as the run chose them."""
    from sft.config.recipe import load_recipe
    from sft.plan.estimate import GIB, make_plan

    plan = make_plan(load_recipe(RECIPE, recipe_overrides(model, data, steps, out, extra)))
    return plan.total(plan.gradient_checkpointing) / GIB


def model_flops_per_token(model: Path, tokens_per_step: float, patches_per_step: float) -> tuple[int, int, float]:
    """(language model params N, vision params, FLOPs per step) by the MFU convention in the module docstring."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(str(model))
    with torch.device("meta"):
        meta = AutoModelForImageTextToText.from_config(config)
    text = config.get_text_config()
    cross = set(getattr(text, "cross_attention_layers", None) or [])
    language = meta.model.language_model
    lm = sum(p.numel() for n, p in language.named_parameters()
             if n.startswith("layers.") and int(n.split(".")[1]) not in cross)
    vision_module = getattr(meta.model, "visual", None) or getattr(meta.model, "vision_model", None)
    vision = sum(p.numel() for p in vision_module.parameters()) if patches_per_step else 0
    return lm, vision, 4 * lm * tokens_per_step + 2 * vision * patches_per_step


def run_child(name: str, model: Path, data: Path, steps: int, out: Path) -> dict:
    import torch

    kind, trainer_kind, extra = RUNS[name][0], RUNS[name][1], list(RUNS[name][2])
    run_dir = out.parent / f"run-{name}"
    timer = StepTimer()
    patches: list[int] = []
    if kind == "qwen7b":  # count the vision tower's patches per step (image_grid_thw rows are t x h x w)
        from sft.labels.collator import CompletionOnlyCollator

        original = CompletionOnlyCollator.__call__

        def counting(self, rows):
            batch = original(self, rows)
            if "image_grid_thw" in batch:
                patches.append(int(batch["image_grid_thw"].prod(-1).sum()))
            return batch

        CompletionOnlyCollator.__call__ = counting
    result = run_trl(model, data, steps, run_dir, timer) if trainer_kind == "trl" else \
        run_ours(model, data, steps, run_dir, extra, timer)
    state = json.loads((run_dir / "trainer_state.json").read_text())
    tokens = [e["num_tokens"] for e in state["log_history"] if "num_tokens" in e]
    steady = timer.times[len(timer.times) // 2:]  # the first half warms up kernels, bitsandbytes and the allocator
    step_s = sorted(steady)[len(steady) // 2]
    tokens_per_step = (tokens[-1] - tokens[0]) / (len(tokens) - 1) if len(tokens) > 1 else tokens[0]
    accumulation = result["batch"][1]
    patches_per_step = (sum(patches) / len(patches) * accumulation) if patches else 0.0
    lm, vision, flops = model_flops_per_token(model, tokens_per_step, patches_per_step)
    free, total = torch.cuda.mem_get_info()  # the whole card: this process and the parent's context
    outside_allocator = (total - free) - torch.cuda.memory_reserved() - float(os.environ["BENCH_PARENT_USED"])
    plan_extra = extra if trainer_kind == "ours" else BITS["8bit"] + SEED
    metrics = result.pop("metrics")
    return {"run": name, "trainer": trainer_kind, **result, "median_step_s": step_s, "step_times_s": timer.times,
            "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_step / step_s,
            "image_patches_per_step": patches_per_step, "model_tflops_per_s": flops / step_s / 1e12,
            "language_model_params": lm, "vision_params_counted": vision,
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "outside_allocator_gib": outside_allocator / 2**30,
            "device_peak_gib": (torch.cuda.max_memory_reserved() + outside_allocator) / 2**30,
            "plan_estimate_gib": plan_for(plan_extra, model, data, steps, run_dir),
            "first_loss": metrics.get("first_loss"), "last_loss": metrics.get("last_loss")}


# ---- checks that need no 11B model -----------------------------------------------------------------------------
def kbit_layer_probe() -> dict:
    """One 4096 -> 14336 projection over 2048 tokens, forward + input-gradient backward, per weight format."""
    import bitsandbytes as bnb
    import torch

    results = {}
    x16 = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)
    layers = {"bf16": torch.nn.Linear(4096, 14336, bias=False, dtype=torch.bfloat16)}
    for threshold in (6.0, 0.0):
        layer = bnb.nn.Linear8bitLt(4096, 14336, bias=False, has_fp16_weights=False, threshold=threshold)
        layer.weight = bnb.nn.Int8Params(layers["bf16"].weight.data.float().cpu(), requires_grad=False,
                                         has_fp16_weights=False)
        layers[f"int8 threshold {threshold:g}"] = layer
    layers["nf4"] = bnb.nn.Linear4bit(4096, 14336, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layers["nf4"].weight = bnb.nn.Params4bit(layers["bf16"].weight.data.cpu(), requires_grad=False,
                                             quant_type="nf4")
    for name, layer in layers.items():
        layer = layer.cuda().requires_grad_(False)
        for dtype in (torch.bfloat16, torch.float32):
            x = x16.to(dtype).requires_grad_(True)

            def step(layer=layer, x=x):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    layer(x).float().sum().backward()

            for _ in range(3):
                step()
            seconds = _median_seconds(step, 10)
            results[f"{name}, {str(dtype)[6:]} input"] = {"ms": seconds * 1e3,
                                                          "tflops": 4 * 2048 * 4096 * 14336 / seconds / 1e12}
    return results


def liger_check(work: Path) -> dict:
    """Tiny Mllama (images, 8-bit) trained a few steps with and without Liger: the losses must agree."""
    from sft.model.tiny import build_tiny

    model = build_tiny("mllama", work / "tiny-mllama")
    subprocess.run([sys.executable, str(ROOT / "scripts/make_elements.py"), str(work / "elements")],
                   check=False, capture_output=True)
    losses = {}
    for liger in ("false", "true"):
        out = work / f"liger-{liger}"
        command = [sys.executable, "-m", "sft.cli", "train", str(ROOT / "recipes/smoke.yaml"),
                   "--model_name_or_path", str(model), "--train_file", str(work / "elements/train.jsonl"),
                   "--eval_file", str(work / "elements/val.jsonl"), "--output_dir", str(out), "--max_steps", "8",
                   "--eval_strategy", "no", "--load_best_model_at_end", "false", "--save_strategy", "no",
                   "--logging_steps", "1", "--use_liger_kernel", liger, "--overwrite_output_dir", "true"]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            losses[liger] = {"error": done.stderr[-800:]}
            continue
        state = json.loads((out / "trainer_state.json").read_text())
        losses[liger] = [e["loss"] for e in state["log_history"] if "loss" in e]
    return losses


# ---- orchestration -----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processor", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results/gpu.json")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--runs", default="trl_8bit_seed,ours_8bit_seed,ours_8bit_auto,ours_bf16_auto,"
                                          "ours_4bit_auto,ours_bf16_ckpt,ours_4bit_ckpt,qwen7b_bf16_auto_images")
    parser.add_argument("--checks", action="store_true", help="also the int8/nf4 layer probe and the Liger check")
    parser.add_argument("--child")  # internal: one run in a child process
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.child:
        args.out.write_text(json.dumps(run_child(args.child, args.model, args.data, args.steps, args.out)))
        return
    import torch

    if not torch.cuda.is_available():
        print("gpu bench: skipped (no CUDA device)")
        return
    work = Path("/dev/shm/sft-gpu-bench") if shutil.disk_usage("/dev/shm").free > 40 * 1024**3 \
        else Path("/tmp/sft-gpu-bench")
    work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    results |= {"card": torch.cuda.get_device_name(), "bf16_peak_tflops": bf16_peak_tflops()}
    if args.checks:
        results["kbit_layer_probe"] = kbit_layer_probe()
        print(json.dumps(results["kbit_layer_probe"]), flush=True)
        results["liger_check_tiny_mllama_losses"] = liger_check(work)
        print(json.dumps(results["liger_check_tiny_mllama_losses"]), flush=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    data = {}
    for name in [n for n in args.runs.split(",") if n]:
        kind = RUNS[name][0]
        model = work / kind
        if not (model / "config.json").is_file():
            began = time.perf_counter()
            BUILDERS[kind](model, args.processor)
            results[f"build_{kind}_s"] = time.perf_counter() - began
        if kind not in data:
            data[kind] = work / f"rows-{kind}.jsonl"
            if kind == "qwen7b":
                data[kind] = write_image_rows(work / "image-rows")
            else:
                write_text_rows(data[kind], model)
        torch.cuda.empty_cache()  # the parent keeps only its context while a child measures the card
        free, total = torch.cuda.mem_get_info()
        os.environ["BENCH_PARENT_USED"] = str(total - free)
        child_out = work / f"{name}.json"
        command = [sys.executable, __file__, "--child", name, "--model", str(model), "--data", str(data[kind]),
                   "--steps", str(args.steps), "--out", str(child_out)]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            run = json.loads(child_out.read_text())
            run["mfu"] = run["model_tflops_per_s"] / results["bf16_peak_tflops"]
            run["plan_error"] = run["plan_estimate_gib"] / run["device_peak_gib"] - 1
        else:
            run = {"run": name, "error": done.stderr[-3000:]}
        run["wall_s"] = time.perf_counter() - began
        results["runs"] = [r for r in results["runs"] if r.get("run") != name] + [run]
        by_name = {r["run"]: r for r in results["runs"] if "tokens_per_s" in r}
        if {"ours_8bit_seed", "trl_8bit_seed"} <= by_name.keys():
            results["baseline_ratio"] = by_name["ours_8bit_seed"]["tokens_per_s"] / \
                by_name["trl_8bit_seed"]["tokens_per_s"]
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        brief = {k: run.get(k) for k in ("run", "tokens_per_s", "mfu", "device_peak_gib", "plan_estimate_gib",
                                         "plan_error", "batch", "gradient_checkpointing", "liger", "first_loss",
                                         "last_loss", "wall_s")}
        print(json.dumps(brief) if "error" not in run else json.dumps(run)[-2500:], flush=True)
    print(json.dumps({k: v for k, v in results.items() if k not in ("runs", "kbit_layer_probe")}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
