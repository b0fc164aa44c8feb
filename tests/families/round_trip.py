"""One check for every family: export, merge into the unquantized base, and predict agree with the run."""

from __future__ import annotations

from pathlib import Path

import torch

from sft.outputs.export import export_adapter, load_base, load_with_adapter, merge
from sft.outputs.predict import predict


def assert_merge_and_predict_agree(run: Path, base_dir: Path, batches: list[dict], tmp_path: Path) -> None:
    """Merged (fp32) logits equal base + adapter within 1e-4 and differ from the base (the adapter learnt);
    the exported adapter is complete; predictions from the run dir and the merged folder are the same strings."""
    unmerged, _ = load_with_adapter(run, torch.float32)
    merged_dir = merge(run, tmp_path / "merged", dtype="fp32")
    merged, _ = load_base(str(merged_dir), torch.float32)
    base, _ = load_base(str(base_dir), torch.float32)
    with torch.no_grad():
        for batch in batches:
            expected = unmerged(**batch).logits
            assert (expected - merged.eval()(**batch).logits).abs().max().item() <= 1e-4
            assert (expected - base.eval()(**batch).logits).abs().max().item() > 1e-2

    exported = export_adapter(run, tmp_path / "export")
    assert (exported / "adapter_model.safetensors").is_file()
    # The chat template travels with the adapter; a family without one (PaliGemma 2) has none to ship.
    assert (exported / "chat_template.jinja").is_file() == (run / "chat_template.jinja").is_file()
    data = run.parent / "val.jsonl"
    from_run = predict(run, data, tmp_path / "a.jsonl", column_map={"completion": "target"})
    from_merged = predict(merged_dir, data, tmp_path / "b.jsonl", column_map={"completion": "target"})
    assert from_run["predictions"] == from_merged["predictions"] and from_run["scored"] == 4
