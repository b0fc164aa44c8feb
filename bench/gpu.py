"""GPU row of the benchmark: the 11B recipe's architecture with random weights, trained a few steps.

Builds MllamaForConditionalGeneration from recipes/model_configs (Llama 3.2 11B Vision) with random bf16 weights,
saves it (RAM disk when there is room), then trains it with the real recipe (batch 2 x 512, gradient
checkpointing) in 8-bit + LoRA, bf16 LoRA and 4-bit QLoRA, each in its own process, and records step time,
tokens/s, peak GPU memory, the plan's estimate and model FLOPs utilisation against the card's measured bf16 peak.

MFU convention: a frozen base with LoRA does forward (2N) and input-gradient backward (2N) per token, so model
FLOPs = 4 x N x tokens, N = the language model's parameters without embeddings (rows are text-only, so the vision
tower and cross-attention layers are idle). Gradient-checkpoint recomputation is not counted (hardware FLOPs
would be 6N).

Usage (needs CUDA and the Llama 3.2 Vision processor files in PROCESSOR_DIR):
  python bench/gpu.py --processor PROCESSOR_DIR --out bench_results/gpu.json [--steps 8]
"""

from __future__ import annotations

import argparse
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
CONFIG = ROOT / "recipes/model_configs/meta-llama--Llama-3.2-11B-Vision-Instruct.json"
MODES = {"8bit": ["--load_in_8bit", "true"], "bf16": ["--load_in_8bit", "false"],
         "4bit": ["--load_in_8bit", "false", "--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"]}


def bf16_peak_tflops() -> float:
    """Measured bf16 matmul throughput of this card (8192^3, median of 20)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    return 2 * 8192**3 / times[len(times) // 2] / 1e12


def build_random_model(target: Path, processor: Path) -> None:
    import torch
    from transformers import AutoConfig, MllamaForConditionalGeneration

    config = AutoConfig.from_pretrained(str(CONFIG))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MllamaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    del model
    for item in processor.iterdir():
        if item.name.endswith(".gz"):  # carried compressed to fit the transfer limit
            import gzip

            (target / item.name[:-3]).write_bytes(gzip.decompress(item.read_bytes()))
        elif item.is_file() and item.name != "config.json":
            shutil.copy2(item, target / item.name)


def write_rows(path: Path, count: int = 64) -> None:
    """Instruction rows longer than 512 tokens; `shorten_prompt` trims each to fit, so batches are ~2 x 512."""
    words = "rebar formwork beam footing concrete steel load temporary mould structure scaffolding".split()
    with path.open("w") as handle:
        for index in range(count):
            text = " ".join(words[(index + k) % len(words)] for k in range(700))
            handle.write(json.dumps({"instruction": "Define the construction term.", "input": text,
                                     "output": "A structural element that carries load. " * 4}) + "\n")


def run_mode(mode: str, model: Path, data: Path, steps: int, out: Path) -> dict:
    import torch
    from transformers import TrainerCallback

    from sft.plan import GIB, make_plan
    from sft.recipe import load_recipe
    from sft.train import main as train

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    overrides = ["--model_name_or_path", str(model), "--train_file", str(data), "--max_steps", str(steps),
                 "--output_dir", str(out), "--save_strategy", "no", "--logging_steps", "1",
                 "--truncation", "shorten_prompt", "--dataset_num_proc", "8", *MODES[mode]]
    recipe = load_recipe(RECIPE, overrides)
    timer = StepTimer()
    metrics = train(recipe, extra_callbacks=[timer])
    state = json.loads((out / "trainer_state.json").read_text())
    tokens = [e["num_tokens"] for e in state["log_history"] if "num_tokens" in e]
    steady = timer.times[2:] or timer.times  # the first steps warm up kernels and the allocator
    step_s = sorted(steady)[len(steady) // 2]
    tokens_per_step = (tokens[-1] - tokens[0]) / (len(tokens) - 1) if len(tokens) > 1 else tokens[0]
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(str(model)).get_text_config()
    plan = make_plan(recipe)
    lm_params = _language_model_params(model)
    flops = 4 * lm_params * tokens_per_step
    return {"mode": mode, "median_step_s": step_s, "tokens_per_step": tokens_per_step,
            "tokens_per_s": tokens_per_step / step_s, "gpu_peak_memory_gib": metrics.get("gpu_peak_memory_gib"),
            "plan_estimate_gib": plan.total(True) / GIB, "model_tflops_per_s": flops / step_s / 1e12,
            "language_model_params": lm_params, "hidden_size": text.hidden_size,
            "first_loss": metrics.get("first_loss"), "last_loss": metrics.get("last_loss")}


def _language_model_params(model: Path) -> int:
    """Parameters of the language model's self-attention layers and MLPs (no embeddings, no vision)."""
    import torch
    from transformers import AutoConfig, MllamaForConditionalGeneration

    with torch.device("meta"):
        meta = MllamaForConditionalGeneration(AutoConfig.from_pretrained(str(model)))
    text = meta.config.get_text_config()
    cross = set(text.cross_attention_layers)
    return sum(p.numel() for n, p in meta.model.language_model.named_parameters()
               if n.startswith("layers.") and int(n.split(".")[1]) not in cross)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processor", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results/gpu.json")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--modes", default="8bit,bf16,4bit")
    parser.add_argument("--mode")  # internal: one mode in a child process
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.mode:
        result = run_mode(args.mode, args.model, args.data, args.steps, args.out.parent / f"run-{args.mode}")
        args.out.write_text(json.dumps(result))
        return
    import torch

    if not torch.cuda.is_available():
        print("gpu bench: skipped (no CUDA device)")
        return
    work = Path("/dev/shm/sft-gpu-bench") if shutil.disk_usage("/dev/shm").free > 40 * 1024**3 \
        else Path("/tmp/sft-gpu-bench")
    work.mkdir(parents=True, exist_ok=True)
    results = {"card": torch.cuda.get_device_name(), "bf16_peak_tflops": bf16_peak_tflops(), "runs": []}
    start = time.perf_counter()
    build_random_model(work / "model", args.processor)
    results["build_and_save_s"] = time.perf_counter() - start
    write_rows(work / "rows.jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for mode in args.modes.split(","):
        child_out = work / f"{mode}.json"
        command = [sys.executable, __file__, "--mode", mode, "--model", str(work / "model"), "--data",
                   str(work / "rows.jsonl"), "--steps", str(args.steps), "--out", str(child_out)]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            run = json.loads(child_out.read_text())
            run["mfu"] = run["model_tflops_per_s"] / results["bf16_peak_tflops"]
        else:
            run = {"mode": mode, "error": done.stderr[-1500:]}
        run["wall_s"] = time.perf_counter() - began
        results["runs"].append(run)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(run), flush=True)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
