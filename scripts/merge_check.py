"""Max |logit difference| between a run (base + adapter, unmerged) and its merged folder, on the run's eval rows.

Usage: python scripts/merge_check.py RUN_DIR MERGED_DIR [--rows 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sft.data.rows import RowError, iter_rows  # noqa: E402
from sft.labels.labelling import make_collator  # noqa: E402
from sft.outputs.export import load_base, load_with_adapter  # noqa: E402
from sft.outputs.predict import default_data, load_for_inference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("merged", type=Path)
    parser.add_argument("--rows", type=int, default=4)
    args = parser.parse_args()
    unmerged, _ = load_with_adapter(args.run)
    merged, _ = load_base(str(args.merged))
    merged.eval()
    _, processing_class, date_string, family = load_for_inference(args.merged)
    collator = make_collator(processing_class, family, date_string=date_string)
    data, image_root, column_map = default_data(args.run)
    rows = [r for r in iter_rows(data, image_root, column_map) if not isinstance(r, RowError)][: args.rows]
    text_only = [{**r, "stored_images": []} for r in rows]  # the same prompts without their images
    worst = 0.0
    for label, batch_rows in (("with images", rows), ("text only", text_only)):
        batch = {k: v for k, v in collator(batch_rows).items() if k != "labels"}
        with torch.no_grad():
            difference = (unmerged(**batch).logits - merged(**batch).logits).abs().max().item()
        worst = max(worst, difference)
        print(f"{label}: max |logit difference| {difference:.3g} over {len(batch_rows)} rows")
    print(f"worst {worst:.3g}")


if __name__ == "__main__":
    main()
