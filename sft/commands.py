"""The `sft` commands that work on a finished run: export-adapter, merge, predict, report (sft/cli.py parses them)."""

from __future__ import annotations

from pathlib import Path


def run_dir(run: str | None, doing: str | None = None) -> str:
    """The run a command reads (default: the latest under outputs/); refused while a live run holds it."""
    from sft.outputs.artifacts import latest_run
    from sft.outputs.run_lock import refuse_if_live

    run = run or str(latest_run())
    if doing:
        refuse_if_live(run, doing)
    return run


def run_and_out(args, overrides, command: str, suffix: str) -> tuple[str, str]:
    """The run an export or merge reads and the folder it writes (default exports/<run><suffix>), neither held by a
    live run."""
    from sft.outputs.run_lock import refuse_if_live

    no_overrides(command, overrides)
    run = run_dir(args.run, f"sft {command} of it")
    out = args.out or str(Path("exports") / f"{Path(run).name}{suffix}")
    refuse_if_live(out, f"sft {command} into it")
    return run, out


def cmd_export_adapter(args, overrides) -> int:
    from sft.outputs.export import export_adapter

    run, out = run_and_out(args, overrides, "export-adapter", "-adapter")
    print(f"exported {run} -> {export_adapter(run, out, force=args.force, state_dict=args.state_dict)}")
    return 0


def cmd_merge(args, overrides) -> int:
    from sft.outputs.export import merge

    run, out = run_and_out(args, overrides, "merge", f"-merged-{args.dtype}")
    print(f"merged {run} into its {args.dtype} base -> {merge(run, out, dtype=args.dtype, force=args.force)}")
    return 0


def cmd_predict(args, overrides) -> int:
    import json

    from sft.eval.metrics import metric_names
    from sft.outputs.predict import default_data, held_out_rows, predict

    no_overrides("predict", overrides)
    model = run_dir(args.model, "sft predict with it")
    data, image_root, column_map = (args.data, args.image_root, None) if args.data else default_data(model)
    rows = None if args.data else held_out_rows(model)
    if args.column_map:
        column_map = json.loads(args.column_map)
    metrics = metric_names(args.metrics) if args.metrics else None
    out = args.out or str(Path("predictions") / f"{Path(model).name}.jsonl")
    result = predict(model, data, out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                     image_root=args.image_root or image_root, column_map=column_map, rows=rows, metrics=metrics)
    where = f" of {data}{' (the rows held out for eval)' if rows else ''}, wrote {out}"
    if not result["scored"]:
        print(f"predicted {result['rows']} rows (none has a reference){where}")
    else:
        scores = ", ".join(f"{name} {value:.4g}" for name, value in result["metrics"].items())
        print(f"{scores} on {result['scored']} rows ({result['metrics_why']}){where}")
    return 0


def no_overrides(command: str, overrides: list[str]) -> None:
    from sft.errors import UserError

    if overrides:
        raise UserError(f"sft {command}: unexpected arguments {' '.join(overrides)}")


def cmd_report(args, overrides) -> int:
    from sft.pages.run_report import write_report

    no_overrides("report", overrides)
    print(f"wrote {write_report(run_dir(args.run))}")
    return 0
