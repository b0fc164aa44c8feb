"""The `sft` command: train, check, preview, tiny. Bad input ends in one line per problem, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

USAGE_EXAMPLES = """examples:
  sft train recipes/smoke.yaml --learning_rate 1e-3
  sft check recipes/llama11b_construction.yaml
  sft preview recipes/smoke.yaml --limit 3 --json
  sft tiny mllama .smoke/tiny-mllama
"""


def quiet_library_noise() -> None:
    # bitsandbytes warns once per 8-bit matmul on CPU; deepspeed's accelerator probe prints at import.
    warnings.filterwarnings("ignore", message="MatMul8bitLt")
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _recipe_and_collator(args, overrides):
    from sft.collator import CompletionOnlyCollator
    from sft.model import load_processing_class
    from sft.recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides)
    processing_class = load_processing_class(recipe.model, recipe.training.trust_remote_code)
    collator = CompletionOnlyCollator(processing_class, date_string=recipe.data.date_string,
                                      max_length=recipe.training.max_length)
    return recipe, collator


def cmd_train(args, overrides) -> int:
    from sft.recipe import load_recipe
    from sft.train import main as train

    train(load_recipe(args.recipe, overrides))
    return 0


def cmd_check(args, overrides) -> int:
    from sft.inspect_data import check

    return check(*_recipe_and_collator(args, overrides))


def cmd_preview(args, overrides) -> int:
    from sft.inspect_data import preview

    recipe, collator = _recipe_and_collator(args, overrides)
    return preview(recipe, collator, args.limit, args.json, args.split)


def cmd_tiny(args, overrides) -> int:
    from sft.tiny import build_tiny

    if overrides:
        raise SystemExit(f"sft tiny: unexpected arguments {' '.join(overrides)}")
    print(build_tiny(args.family, args.out, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft", description="Supervised fine-tuning on TRL.",
                                     epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    overrides_help = "then any recipe key as --key value, overriding the file"

    train = commands.add_parser("train", help="train with a recipe", epilog=overrides_help)
    train.add_argument("recipe")
    train.set_defaults(run=cmd_train)

    check = commands.add_parser("check", help="validate every data row of a recipe; non-zero exit on bad data",
                                epilog=overrides_help)
    check.add_argument("recipe")
    check.set_defaults(run=cmd_check)

    preview = commands.add_parser("preview", help="show which tokens each row supervises", epilog=overrides_help)
    preview.add_argument("recipe")
    preview.add_argument("--limit", type=int, default=5, help="rows to show (default 5)")
    preview.add_argument("--json", action="store_true", help="one JSON object per row")
    preview.add_argument("--split", choices=("train", "eval"), default="train")
    preview.set_defaults(run=cmd_preview)

    tiny = commands.add_parser("tiny", help="build a tiny random model with a real processor, offline")
    tiny.add_argument("family", choices=("llama", "mllama", "idefics3"))
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=cmd_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    quiet_library_noise()
    from sft.errors import UserError

    try:
        return args.run(args, overrides)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
