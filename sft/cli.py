"""The `sft` command: train, check, preview, plan, tiny, export-adapter, merge, predict, report.

Bad input ends in one line per problem, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

# light: each command imports what it needs on use
from sft.commands import cmd_export_adapter, cmd_merge, cmd_predict, cmd_report, no_overrides

USAGE_EXAMPLES = """examples:
  sft train recipes/smoke.yaml --learning_rate 1e-3
  sft check recipes/llama11b_construction.yaml
  sft preview recipes/smoke.yaml --limit 3 --json
  sft preview recipes/smoke.yaml --html preview.html
  sft report outputs/smoke
  sft tiny mllama .smoke/tiny-mllama
"""


def quiet_library_noise() -> None:
    # bitsandbytes warns once per 8-bit matmul on CPU; deepspeed's accelerator probe prints at import.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    # bitsandbytes 0.50 logs "Failed to load CPU gemm_4bit_forward from kernels-community" at import on a CPU
    # with AVX512-BF16 when the optional `kernels` package is absent: it only means 4-bit matmuls on CPU use
    # bitsandbytes' own (slower) kernel. Nothing is wrong and nothing is for the user to do, so it is not shown.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # transformers 5 renames gradient_checkpointing, which TRL's SFTConfig still sets; nothing for a user to do.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _recipe_and_collator(args, overrides):
    from sft.config.recipe import load_recipe
    from sft.model.processing import open_processing

    recipe = load_recipe(args.recipe, overrides)
    return recipe, open_processing(recipe).collator  # the same processor, family and collator as `sft train`


def cmd_train(args, overrides) -> int:
    from sft.config.recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides)
    strategy = None
    if args.accelerate_config:
        from sft.run.launch import check_pair

        strategy = check_pair(recipe, args.accelerate_config)
    if args.dry_run:
        return dry_run(args, overrides, recipe, strategy)
    if args.accelerate_config:
        return launch(args, overrides)
    from sft.run.train import main as train

    train(recipe)
    return 0


def dry_run(args, overrides, recipe, strategy) -> int:
    """Recipe, accelerate config, plan and every data row checked; no weights are loaded."""
    from sft.check.inspect_data import check
    from sft.plan.estimate import make_plan
    from sft.plan.report import render

    launch = f"; accelerate config {args.accelerate_config}: {strategy}" if strategy else ""
    print(f"recipe {args.recipe}: ok{launch}")
    measured: dict = {}
    code = check(*_recipe_and_collator(args, overrides), measured)  # every row read first: the plan uses them
    plan = make_plan(recipe, measured)
    print(render(plan))
    if not plan.fits:
        print("dry run: the plan does not fit gpu_memory_gib", file=sys.stderr)
    return code or (0 if plan.fits else 1)


def launch(args, overrides) -> int:
    """Re-run this training under `accelerate launch` with the given config (checked above)."""
    import subprocess

    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config]
    if args.num_processes:
        command += ["--num_processes", str(args.num_processes)]
    if not _has_cuda():  # mixed precision needs a GPU; the recipe already trains in fp32 here
        command += ["--mixed_precision", "no"]
    command += ["-m", "sft.cli", "train", args.recipe, *overrides]
    print("launching: " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.run(command).returncode


def cmd_plan(args, overrides) -> int:
    from sft.config.recipe import load_recipe
    from sft.plan.estimate import make_plan
    from sft.plan.report import as_json, render

    plan = make_plan(load_recipe(args.recipe, overrides))
    print(as_json(plan) if args.json else render(plan))
    return 0


def cmd_check(args, overrides) -> int:
    from sft.check.inspect_data import check

    return check(*_recipe_and_collator(args, overrides))


def cmd_preview(args, overrides) -> int:
    from sft.check.inspect_data import preview

    recipe, collator = _recipe_and_collator(args, overrides)
    if args.html:  # the page (sft/pages/preview_page.py); its --limit default is larger than the terminal's
        from sft.pages.preview_page import write_preview_page

        path, counts = write_preview_page(recipe, collator, args.html, args.limit, args.split)
        print(f"wrote {path}: {counts['seen']} rows, {counts['bad']} bad")
        return 1 if counts["bad"] else 0
    return preview(recipe, collator, 5 if args.limit is None else args.limit, args.json, args.split)


def cmd_tiny(args, overrides) -> int:
    from sft.model.tiny import build_tiny

    no_overrides("tiny", overrides)
    print(build_tiny(args.family, args.out, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft", description="Supervised fine-tuning on TRL.", allow_abbrev=False,
                                     epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    overrides_help = "then any recipe key as --key value, overriding the file"

    train = commands.add_parser("train", help="train with a recipe", epilog=overrides_help, allow_abbrev=False)
    train.add_argument("recipe")
    train.add_argument("--dry-run", action="store_true",
                       help="check recipe, accelerate config, plan and data; load no weights")
    train.add_argument("--accelerate-config", help="launch with `accelerate launch` and this config (checked first)")
    train.add_argument("--num-processes", type=int, help="processes for accelerate (default: the config's)")
    train.set_defaults(run_command=cmd_train)

    check = commands.add_parser("check", allow_abbrev=False, epilog=overrides_help,
                                help="validate every data row of a recipe; non-zero exit on bad data")
    check.add_argument("recipe")
    check.set_defaults(run_command=cmd_check)

    preview = commands.add_parser("preview", allow_abbrev=False, epilog=overrides_help,
                                  help="show which tokens each row supervises")
    preview.add_argument("recipe")
    preview.add_argument("--limit", type=int, help="rows to show (default 5; with --html 500)")
    preview.add_argument("--json", action="store_true", help="one JSON object per row")
    preview.add_argument("--split", choices=("train", "eval"), default="train")
    preview.add_argument("--html", metavar="PATH", help="write one offline HTML page of the rows beside their images")
    preview.set_defaults(run_command=cmd_preview)

    report = commands.add_parser("report", help="write RUN/report.html: recipe, curves, predictions beside images")
    report.add_argument("run", nargs="?", help="run dir (default: the most recent under outputs/)")
    report.set_defaults(run_command=cmd_report)

    plan = commands.add_parser("plan", help="parameters and per-GPU memory estimate; no weights loaded",
                               epilog=overrides_help, allow_abbrev=False)
    plan.add_argument("recipe")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(run_command=cmd_plan)

    tiny = commands.add_parser("tiny", help="build a tiny random model with a real processor, offline")
    tiny.add_argument("family", choices=("llama", "mllama", "idefics3"))
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run_command=cmd_tiny)

    export = commands.add_parser("export-adapter",
                                 help="adapter + processor + manifest + model card, ready to ship")
    export.add_argument("--run", help="run dir (default: the most recent under outputs/)")
    export.add_argument("--out", help="target folder (default: exports/<run>-adapter)")
    export.add_argument("--state-dict", action="store_true", help="also write the bare LoRA state dict")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.set_defaults(run_command=cmd_export_adapter)

    merge = commands.add_parser("merge", help="merge the adapter into an unquantized copy of its base")
    merge.add_argument("--run", help="run dir (default: the most recent under outputs/)")
    merge.add_argument("--out", help="target folder (default: exports/<run>-merged-<dtype>)")
    merge.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    merge.add_argument("--force", action="store_true", help="replace a non-empty --out")
    merge.set_defaults(run_command=cmd_merge)

    predict = commands.add_parser("predict",
                                  help="greedy replies per row; the run's eval metrics when rows have replies")
    predict.add_argument("model", nargs="?", help="a run dir or a merged model folder (default: latest run)")
    predict.add_argument("data", nargs="?", help="data file (.jsonl/.json/.parquet/.csv/.arrow), replies optional "
                         "(default: the run's eval_file)")
    predict.add_argument("--out", help="predictions JSONL (default: predictions/<model>.jsonl)")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--max-new-tokens", type=int)
    predict.add_argument("--image-root")
    predict.add_argument("--column-map", help='JSON, e.g. {"completion": "target"}')
    predict.add_argument("--metrics", help="comma-separated, e.g. rouge_l,chrf (default: the run's eval metrics)")
    predict.set_defaults(run_command=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    quiet_library_noise()
    from sft.errors import UserError

    try:
        return args.run_command(args, overrides)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
