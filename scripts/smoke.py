"""`make smoke`: the whole pipeline on a tiny Mllama in 8-bit + LoRA, with pass/fail thresholds.

Builds the tiny model and the element data under .smoke/ (once), trains recipes/smoke.yaml into outputs/smoke
(replacing the previous smoke run), then checks eval accuracy >= 0.9 and last loss <= 0.2 x first loss, and ends
by saying where the run's report is (outputs/smoke/report.html).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from sft.cli import quiet_library_noise
from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.model.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[1]
MIN_ACCURACY, MAX_LOSS_RATIO = 0.9, 0.2


def main() -> int:
    start = time.perf_counter()
    model_dir, data_dir = ROOT / ".smoke/tiny-mllama", ROOT / ".smoke/elements"
    if not (model_dir / "config.json").is_file():
        build_tiny("mllama", model_dir)
    if not (data_dir / "train.jsonl").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts/make_elements.py"), str(data_dir)], check=True)
    recipe = load_recipe(ROOT / "recipes/smoke.yaml")
    out = Path(recipe.training.output_dir)
    if out.exists():
        print(f"[smoke] replacing the previous smoke run in {out}", file=sys.stderr)
        shutil.rmtree(out)
    from sft.run.train import main as train

    metrics = train(recipe)
    seconds = time.perf_counter() - start
    accuracy, first, last = metrics.get("eval_accuracy"), metrics["first_loss"], metrics["last_loss"]
    print(f"smoke: eval accuracy {accuracy:.3f}, loss first {first:.4f} last {last:.4f} "
          f"(ratio {last / first:.3f}), wall time {seconds:.1f} s")
    failures = []
    if accuracy is None or accuracy < MIN_ACCURACY:
        failures.append(f"eval accuracy {accuracy} < {MIN_ACCURACY}")
    if last > MAX_LOSS_RATIO * first:
        failures.append(f"last loss {last:.4f} > {MAX_LOSS_RATIO} x first {first:.4f}")
    for failure in failures:
        print(f"smoke FAILED: {failure}", file=sys.stderr)
    print(f"smoke: the run's report (open it in a browser): {out / 'report.html'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    quiet_library_noise()
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
